"""A broad probe of bad input through ``python -m DiffRegLogic.cli`` (issue 18); a script, not collected by pytest.

    python Testing/cli/probe_bad_inputs.py -j 2 --timeout 60 [--only TEXT] [--list]

Runs every case of ``test_bad_inputs.py``'s tables, each class crossed with
every command and flag it applies to (bad CT files x every ``--ct`` and
``--labels``, bad X-rays x every ``--xray``, bad JSON x every JSON flag,
unwritable paths x every output flag), and every numeric flag of every
command with the values nan, inf, -1, 0, 1e308, 2**70 and 'abc' (minus the
ones that are valid for that flag), as subprocesses in their own folders
with a timeout. Each case is classified (first match wins):

    input overwritten  an input file changed or went away
    hang               still running after --timeout s (killed)
    traceback          "Traceback" on stderr or stdout
    accepted           exit status 0
    files left         failed, but left a file or folder behind
    clean error        exit 2, stderr exactly one "error: " line
    unclean error      any other failure (status 1 or 3, several lines, killed by a signal)

Prints the count per class, the total, and every case that is not a clean
error (with its last stderr line). Exit status 0 when every case is a clean
error, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(HERE.parent)]

import test_bad_inputs as t  # noqa: E402  (the case tables and input builders)

CLASSES = ("clean error", "traceback", "hang", "input overwritten", "accepted", "files left", "unclean error")
VALUES = ("nan", "inf", "-1", "0", "1e308", str(2 ** 70), "abc")
"""Numeric flag values tried on every numeric flag (those valid for a flag are left out, see `VALID`)."""

# values among VALUES that are valid (or not clearly invalid) for a flag, by flag; nan, inf, 'abc' never are
VALID = {
    "--seed": {"0"}, "--noise-seed": {"0"}, "--frame": {"0"},
    "--filtration-mm-al": {"0"}, "--soft-width-hu": {"0"}, "--blur-mm": {"0"}, "--scatter-fraction": {"0"},
    "--bone-hu": {"-1"}, "--mu-bone": {"0"}, "--air-max-hu": {"-1", "0"}, "--bone-min-hu": {"-1", "0"},
    "--scatter-sigma-mm": {"0"}, "--heel": {"-1", "0"},
    "--max-rot": {"-1", "0", "1e308", str(2 ** 70)}, "--max-trans": {"-1", "0"},
    "--clinical": {"-1", "0", "1e308", str(2 ** 70)}, "--isocenter": {"-1", "0"},
}


COMMANDS = ("register", "render", "pose", "demo", "experiment robustness", "experiment landscape",
            "experiment polychromatic")
REALISM = {"--noise-photons", "--blur-mm", "--scatter-fraction", "--scatter-sigma-mm", "--heel", "--noise-seed"}
UNREAD = {
    "experiment robustness": {"--points"} | REALISM,
    "experiment landscape": {"--n", "--levels", "--iterations", "--batch", "--seed"} | REALISM,
    "experiment polychromatic": {"--points"},
}
"""Flags a command accepts but does not read (the experiments share one parser): not probed there."""
OWN = {"--n", "--max-rot", "--max-trans", "--points", "--levels", "--iterations", "--batch", "--seed"}
"""The experiments' own numeric flags; their shared (engine, physics, HU, realism) flags get `SHARED_VALUES`."""
SHARED_VALUES = ("inf", "-1", "1e308")


def experiment_argv(kind: str):
    """An argv builder (like test_bad_inputs' ``*_argv``) for ``experiment KIND`` on the case, kept short."""
    def build(f: t.Inputs, *extra: str, **over) -> list:
        defaults = {"--out": f.new(kind), "--ct": f.ct, "--geometry": f.geometry, "--truth": f.truth}
        fast = ["--n", "1", "--levels", "1", "--iterations", "2", "--batch", "1", "--optimizers", "adam",
                "--points", "3", "--device", "cpu"]
        return t._argv(["experiment", kind], defaults, over, [*fast, *extra])
    return build


BUILDERS = {
    "register": t.register_argv, "render": t.render_argv, "demo": lambda f, *extra, **over: t.demo_argv(
        f, "--levels", "8", "--iterations", "2", *extra, **over),
    **{f"experiment {kind}": experiment_argv(kind) for kind in ("robustness", "landscape", "polychromatic")},
}
"""A short valid run of each command, extra flags last (the last of a flag wins); pose is built per flag."""

POLY_ONLY = {"--kvp", "--filtration-mm-al", "--energy-bins", "--air-max-hu", "--bone-min-hu", "--soft-width-hu"}
"""Flags that only a polychromatic run reads: tried with --renderer polychromatic."""


def numeric_flags(command: str) -> list[tuple[str, int]]:
    """(flag, number of values) of every int/float option of ``command``, read from the parser itself."""
    from DiffRegLogic.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command.split()[0]]
    return [(a.option_strings[0], a.nargs if isinstance(a.nargs, int) else 1)
            for a in sub._actions if a.type in (int, float) and a.option_strings]


def _numeric_case(command: str, flag: str, nargs: int, position: int, value: str) -> t.Case:
    def case(f: t.Inputs) -> list:
        values = ["10", "-5"] if flag == "--clinical" else ["1"] * nargs
        values[position] = value
        tested = [flag, *values]
        if command == "pose":
            if flag in ("--spherical", "--sdd"):
                spherical = tested if flag == "--spherical" else ["--spherical", "0", "0", "0", "0", "0", "0"]
                sdd = tested if flag == "--sdd" else ["--sdd", "1000"]
                return t.pose_argv(f, *spherical, *sdd)
            clinical = tested if flag == "--clinical" else ["--clinical", "10", "-5"]
            distance = tested if flag == "--source-to-isocenter" else ["--source-to-isocenter", "600"]
            more = tested if flag == "--isocenter" else []
            return t.pose_argv(f, *clinical, *distance, *more)
        extra = []
        if flag in POLY_ONLY:
            extra += ["--renderer", "polychromatic"]
        if command == "render" and flag == "--noise-seed":
            extra += ["--noise-photons", "1000"]
        if command == "render" and flag == "--keep-labels":
            extra += ["--labels", f.labels]
        return BUILDERS[command](f, *extra, *tested)

    return case


def numeric_cases() -> dict[str, t.Case]:
    """Every numeric flag of every command x `VALUES`, less the values valid for the flag."""
    angles = {"-1", "0", "1e308", str(2 ** 70)}
    cases = {}
    for command in COMMANDS:
        for flag, nargs in numeric_flags(command):
            if flag in UNREAD.get(command, ()):
                continue
            for position in ([0, 3] if flag == "--spherical" else [0]):  # an angle and an offset
                valid = set(VALID.get(flag, ()))
                if flag == "--spherical":
                    valid |= angles if position < 3 else {"-1", "0"}
                if flag == "--keep-labels":
                    valid |= {"-1", "0"}
                values = VALUES if not command.startswith("experiment") or flag in OWN else SHARED_VALUES
                for value in values:
                    if value not in valid:
                        label = f"{flag}[{position}]" if nargs > 1 else flag
                        cases[f"{command} {label} {value}"] = _numeric_case(command, flag, nargs, position, value)
    return cases


def crossed_cases() -> dict[str, t.Case]:
    """Each class of the test tables crossed with every command and flag it applies to."""
    cases = {}
    ct_flags = {
        "render --ct": lambda f, p: t.render_argv(f, ct=p),
        "render --labels": lambda f, p: t.render_argv(f, labels=p),
        "register --ct": lambda f, p: t.register_argv(f, ct=p),
        "pose --ct": lambda f, p: t.pose_argv(f, ct=p),
        "experiment robustness --ct": lambda f, p: t.robustness_argv(f, ct=p),
    }
    xray_flags = {
        "register --xray": lambda f, p: t.register_argv(f, xray=p),
        "experiment robustness --xray": lambda f, p: t.robustness_argv(f, xray=p),
    }
    geometry_flags = {
        "render --geometry": lambda f, p: t.render_argv(f, geometry=p),
        "register --geometry": lambda f, p: t.register_argv(f, geometry=p),
        "experiment robustness --geometry": lambda f, p: t.robustness_argv(f, geometry=p),
    }
    pose_flags = {
        "render --pose": lambda f, p: t.render_argv(f, pose=p),
        "register --init": lambda f, p: t.register_argv(f, init=p),
        "register --truth": lambda f, p: t.register_argv(f, truth=p),
        "experiment robustness --truth": lambda f, p: t.robustness_argv(f, truth=p),
    }
    for flags, bad in ((ct_flags, t.BAD_CTS), (xray_flags, t.BAD_XRAYS), (geometry_flags, t.BAD_GEOMETRIES),
                       (pose_flags, t.BAD_POSES)):  # each flag with each bad file of its kind
        for flag, build in flags.items():
            for name, make in bad.items():
                cases[f"{flag}: {name}"] = lambda f, b=build, m=make: b(f, m(f))
    json_flags = {**t.JSON_FLAGS, **{k: v for k, v in {**geometry_flags, **pose_flags}.items() if k not in t.JSON_FLAGS}}
    for flag, build in json_flags.items():
        for content, make in t.JSON_CONTENTS.items():
            def case(f, b=build, m=make, flag=flag):
                data = f.geometry_data if flag.endswith("--geometry") else f.start_data
                return b(f, m(f, data))
            cases[f"{flag}: {content}"] = case
    outputs = {
        **t.OUTPUTS,
        "register --overlay": (t.register_argv, "overlay", False, "overlay.png"),
        "register --curve": (t.register_argv, "curve", False, "curve.png"),
        "experiment landscape --out": (BUILDERS["experiment landscape"], "out", True, "landscape"),
        "experiment polychromatic --out": (BUILDERS["experiment polychromatic"], "out", True, "polychromatic"),
    }
    for output, (_, _, is_folder, _) in outputs.items():
        for problem in t.output_problems(is_folder):
            cases[f"{output}: {problem}"] = t.output_path_case(output, problem, outputs)
    overwrites = {
        "register --overlay = --ct": lambda f: t.register_argv(f, overlay=f.link("ct.png", f.ct)),
        "register --curve = --init (hard link)": lambda f: t.register_argv(f, curve=f.link("c.png", f.start, hard=True)),
        "render --out = --pose (hard link)": lambda f: t.render_argv(f, out=f.link("p.npy", f.start, hard=True)),
        "render --out = --geometry (symlink)": lambda f: t.render_argv(f, out=f.link("g.npy", f.geometry)),
        "pose --out = --ct (spelled through ..)": lambda f: t.pose_argv(
            f, out=str(Path(f.folder) / ".." / Path(f.folder).name / "ct.nii.gz")),
        "experiment robustness --out = the CT": lambda f: t.robustness_argv(f, out=f.ct),
    }
    cases.update(overwrites)
    return cases


def all_cases() -> dict[str, t.Case]:
    cases, names = {}, set()
    for group, table in t.ALL_CASES.items():
        cases.update({f"[{group}] {k}": v for k, v in table.items()})
        names |= set(table)
    cases.update({f"[crossed] {k}": v for k, v in crossed_cases().items() if k not in names})
    cases.update({f"[crop] register --crop {c!r}": (lambda f, c=c: t.register_argv(f, crop=c))
                  for c in ("", "a,b,c,d", "1.5,0,0,0", "1e2,0,0,0", " , , , ", "1,2,3", "0x1,0,0,0", "-1,0,0,0")})
    cases.update({f"[numeric] {k}": v for k, v in numeric_cases().items()})
    return cases


BASELINES = {
    "register": lambda f: t.register_argv(f),
    "register (PNG X-ray, truth, every output)": lambda f: t.register_argv(
        f, xray=f.xray_png, truth=f.truth, drr=f.new("drr.npy"), overlay=f.new("o.png"), curve=f.new("c.png")),
    "register --renderer polychromatic": lambda f: BUILDERS["register"](f, "--renderer", "polychromatic"),
    "render --renderer polychromatic": lambda f: t.render_argv(f, renderer="polychromatic"),
    "demo --renderer polychromatic": lambda f: BUILDERS["demo"](f, "--renderer", "polychromatic"),
    "experiment robustness --renderer polychromatic": lambda f: BUILDERS["experiment robustness"](
        f, "--renderer", "polychromatic"),
    "pose --isocenter": lambda f: t.pose_argv(f, "--clinical", "10", "-5", "--source-to-isocenter", "600",
                                              "--isocenter", "1", "1", "1"),
    "render": lambda f: t.render_argv(f),
    "render --labels --keep-labels 1 --noise-photons 1000": lambda f: t.render_argv(
        f, "--keep-labels", "1", "--noise-photons", "1000", labels=f.labels),
    "pose --clinical": lambda f: t.pose_argv(f),
    "pose --spherical": lambda f: t.pose_argv(f, "--spherical", "0", "0", "0", "0", "0", "0", "--sdd", "1000"),
    "demo": lambda f: BUILDERS["demo"](f),
    **{f"experiment {kind}": (lambda f, kind=kind: BUILDERS[f"experiment {kind}"](f))
       for kind in ("robustness", "landscape", "polychromatic")},
}
"""Valid runs of the argv builders the bad cases start from: each must succeed, or the probe tests nothing."""


def run_case(name: str, case: t.Case, cache: dict, workdir: Path, timeout: float, memory_gb: float,
             threads: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="case_", dir=workdir))
    f = t.Inputs(folder, cache)
    try:
        argv = case(f)
    except Exception as exc:  # the probe's own fault: report it, do not count it as the tool's
        return {"name": name, "class": "probe error", "detail": f"{type(exc).__name__}: {exc}", "seconds": 0.0}
    before = t.snapshot(folder)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    hung = False
    try:
        run = subprocess.run(t.command_line(argv, memory_gb), cwd=folder, env=env, capture_output=True, text=True,
                             errors="replace", timeout=timeout)
        code, out, err = run.returncode, run.stdout, run.stderr
    except subprocess.TimeoutExpired as exc:
        hung = True
        code = None
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    seconds = time.perf_counter() - start
    after = t.snapshot(folder)
    changed = [k for k in before if after.get(k) != before[k]]
    created = sorted(set(after) - set(before))
    lines = err.splitlines()
    if changed:
        kind, detail = "input overwritten", f"changed {changed}"
    elif hung:
        kind, detail = "hang", f"no end after {timeout:g} s"
    elif "Traceback" in err + out:
        kind, detail = "traceback", (lines[-1] if lines else "")
    elif code == 0:
        kind, detail = "accepted", (out.strip().splitlines() or [""])[-1]
    elif created:
        kind, detail = "files left", f"left {created}; {lines[-1] if lines else ''}"
    elif code == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        kind, detail = "clean error", lines[0]
    else:
        kind, detail = "unclean error", f"status {code}, {len(lines)} stderr lines: {(lines or [''])[-1]}"
    shutil.rmtree(folder, ignore_errors=True)
    return {"name": name, "class": kind, "detail": detail[:300], "seconds": seconds, "argv": argv}


def _run_all(cases: dict, cache: dict, workdir: Path, args, threads: int) -> list[dict]:
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_case, name, case, cache, workdir, args.timeout, args.memory_gb, threads)
                   for name, case in cases.items()]
        results = []
        for future in futures:
            results.append(future.result())
            if args.verbose:
                r = results[-1]
                print(f"{r['class']:17s} {r['seconds']:5.1f} s  {r['name']}: {r['detail']}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-j", "--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    parser.add_argument("--memory-gb", type=float, default=12.0, help="address-space limit per case (0: none)")
    parser.add_argument("--only", action="append", default=[], help="run the cases whose name holds this text")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--no-baselines", action="store_true", help="skip the valid runs checked first")
    parser.add_argument("--verbose", action="store_true", help="print every case's result as it comes")
    args = parser.parse_args(argv)
    cases = all_cases()
    if args.only:
        cases = {k: v for k, v in cases.items() if any(text in k for text in args.only)}
    if args.list:
        print("\n".join(cases))
        print(f"{len(cases)} cases")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="diffreg_probe_"))
    start = time.perf_counter()
    try:
        cache = t.write_inputs(workdir / "inputs")
        threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
        baselines = [] if args.no_baselines else _run_all(BASELINES, cache, workdir, args, threads)
        broken = [r for r in baselines if r["class"] != "accepted"]
        for r in broken:
            print(f"BASELINE FAILED (the probe's valid run; its cases test nothing): {r['name']}: {r['class']}: "
                  f"{r['detail']}\n  argv: {r.get('argv')}")
        results = _run_all(cases, cache, workdir, args, threads)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    counts = Counter(r["class"] for r in results)
    extra = tuple(sorted(set(counts) - set(CLASSES)))
    print(f"\n{len(results)} bad cases in {time.perf_counter() - start:.0f} s (jobs {args.jobs}, timeout "
          f"{args.timeout:g} s; {len(baselines) - len(broken)}/{len(baselines)} valid baselines ran)")
    for kind in CLASSES + extra:
        print(f"  {kind:18s} {counts.get(kind, 0)}")
    bad = [r for r in results if r["class"] != "clean error"]
    if bad:
        print("\nfailing cases:")
        for kind in CLASSES[1:] + extra:
            for r in (r for r in bad if r["class"] == kind):
                print(f"  {kind:17s} {r['seconds']:5.1f} s  {r['name']}: {r['detail']}")
    slow = sorted(results, key=lambda r: -r["seconds"])[:5]
    print("\nslowest: " + "; ".join(f"{r['name']} {r['seconds']:.1f} s" for r in slow))
    return 0 if not bad and not broken else 1


if __name__ == "__main__":
    sys.exit(main())
