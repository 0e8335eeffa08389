"""Fuzzing the ``diffreg`` command line in-process: bad files, flags and arrays give a clean error or a result.

The property, for every example of every target:

* ``main(argv)`` returns 0 (success: every declared output exists, nothing
  else was written, stderr holds no warning), or returns 2 with exactly one stderr line that
  starts with ``error: `` (and is not the internal-error line asking for a
  bug report);
* no exception escapes, no traceback or warning reaches stderr on failure;
* no file is written on failure (neither the outputs nor anything else, in
  the example's folder or the working directory);
* no input changes (sha256 of every input before and after);
* an example takes at most `DEADLINE_MS` (hypothesis ``deadline``); one
  running past `HANG_S` is stopped by an alarm and reported as a hang, and
  one that allocates more than `MEMORY_HEADROOM_GIB` is stopped by an
  address-space limit, so a bug cannot take CI down with it (a hang inside
  compiled code, which the alarm cannot interrupt, ends the run after
  4 x `HANG_S` with every thread's stack: `faulthandler`).

Targets: the geometry file and the pose file as JSON values and as bytes
(``render``; the pose also as ``register --init``), numeric flags of
``render``, ``register`` and ``pose``, arrays as X-rays (``.npy``) and as CTs
(NIfTI, NRRD, MHA; also hand-written headers with any spacing and direction,
and truncated files). Strategies: `fuzz_strategies`.

Profiles: ``ci`` (default; derandomized, about a minute on two cores) and
``thorough`` (2000 examples per target), chosen with
``DIFFREG_FUZZ_PROFILE=thorough``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

import fuzz_strategies as fs

DEADLINE_MS = 5000
"""Longest an example may take (hypothesis reports a slower one)."""
HANG_S = 30.0
"""An example still running after this long is interrupted and reported as a hang."""
MEMORY_HEADROOM_GIB = 4
"""Address space an example may add to the process before allocations fail (Linux)."""

_COMMON = dict(derandomize=True, database=None, deadline=DEADLINE_MS, print_blob=True,
               phases=(Phase.explicit, Phase.generate, Phase.shrink),
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("ci", **_COMMON)
settings.register_profile("thorough", max_examples=2000, **_COMMON)
PROFILE = os.environ.get("DIFFREG_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "thorough"):
    raise ValueError(f"DIFFREG_FUZZ_PROFILE must be ci or thorough, got {PROFILE!r}")


def examples(ci: int) -> settings:
    """The target's settings: ``ci`` examples in the ci profile, the profile's own count otherwise."""
    profile = settings.get_profile(PROFILE)
    return settings(profile, max_examples=ci) if PROFILE == "ci" else profile


# ------------------------------------------------------------------------------------------------ the inputs

CT_SHAPE = (12, 12, 12)
CT_SPACING_MM = 10.0


@dataclass(repr=False)
class Env:
    """Files shared by every example (read-only for the command) and the folders examples go in."""

    root: Path
    ct: Path
    geometry: Path
    pose: Path
    xray: Path
    cwd: Path
    pristine: dict
    """The bytes of each shared input, to compare with and to restore after an example that changed it."""

    def __repr__(self) -> str:  # hypothesis prints the fixtures of a falsifying example
        return f"Env({self.root})"

    def folder(self) -> Path:
        """A fresh, empty folder for one example (hypothesis runs the test body many times)."""
        return Path(tempfile.mkdtemp(dir=self.root / "examples"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    """A 12^3 CT centred on the origin, the 16 x 16 geometry, a pose facing it, its DRR; the kernels loaded."""
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("fuzz")
    (root / "examples").mkdir()
    (root / "cwd").mkdir()
    hu = np.random.default_rng(0).uniform(-1000, 1500, CT_SHAPE).astype(np.float32)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((CT_SPACING_MM,) * 3)
    image.SetOrigin((-(CT_SHAPE[0] - 1) / 2 * CT_SPACING_MM,) * 3)  # the grid centre at the origin
    ct = root / "ct.nii.gz"
    sitk.WriteImage(image, str(ct))
    geometry, pose, xray = root / "geometry.json", root / "pose.json", root / "xray.npy"
    geometry.write_text(json.dumps(fs.VALID_GEOMETRY))
    pose.write_text(json.dumps({"camera_from_world": fs.VALID_POSE_MATRIX}))
    render = ["render", "--ct", str(ct), "--geometry", str(geometry), "--pose", str(pose), "--device", "cpu"]
    warm = root / "warm"
    warm.mkdir()
    # the kernels every target uses, loaded (compiled or read from numba's cache) before any deadline counts
    _warm(render + ["--out", str(warm / "siddon.npy")])
    assert np.load(warm / "siddon.npy").max() > 1.0, "the test pose must see the CT"
    # the X-ray: the DRR with quantum noise, so that a registration from the test pose starts below similarity 1
    _warm(render + ["--out", str(xray), "--noise-photons", "1e4", "--blur-mm", "2", "--scatter-fraction", "0.1"])
    for renderer in ("trilinear", "polychromatic"):
        _warm(render + ["--out", str(warm / f"{renderer}.npy"), "--renderer", renderer])
    _warm(_register_argv(ct, xray, geometry, pose, warm / "result.json", warm / "drr.npy", warm / "overlay.png",
                         warm / "curve.png"))
    shutil.rmtree(warm)
    pristine = {path: path.read_bytes() for path in (ct, geometry, pose, xray)}
    return Env(root, ct, geometry, pose, xray, root / "cwd", pristine)


def _warm(argv: list[str]) -> None:
    """Run a command that must succeed (the fixture's valid inputs), showing its stderr if it does not."""
    import io

    from DiffRegLogic.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv)
    assert status == 0, f"the valid case {argv} failed with status {status}: {err.getvalue()}"


def _register_argv(ct, xray, geometry, init, out, drr=None, overlay=None, curve=None) -> list[str]:
    """A cheap registration: one level, two iterations, on the 16 x 16 detector."""
    argv = ["register", "--ct", str(ct), "--xray", str(xray), "--geometry", str(geometry), "--init", str(init),
            "--out", str(out), "--device", "cpu", "--levels", "1", "--iterations", "2", "--quiet"]
    for option, path in (("--drr", drr), ("--overlay", overlay), ("--curve", curve)):
        if path is not None:
            argv += [option, str(path)]
    return argv


# ------------------------------------------------------------------------------------------------ the property

class Hang(BaseException):
    """Raised by the alarm in a running example (a BaseException, so that no handler in the tool swallows it)."""


@contextlib.contextmanager
def _guarded():
    """Alarm after `HANG_S`; address space capped at the current size plus `MEMORY_HEADROOM_GIB` (Linux)."""
    def alarm(signum, frame):
        raise Hang(f"still running after {HANG_S:g} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    faulthandler.dump_traceback_later(4 * HANG_S, exit=True)  # a hang in compiled code: end CI, with the stacks
    limits = None
    try:
        import resource

        size = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmSize:"))
        limits = resource.getrlimit(resource.RLIMIT_AS)
        cap = size + MEMORY_HEADROOM_GIB * 2**30
        if limits[1] == resource.RLIM_INFINITY or cap < limits[1]:
            resource.setrlimit(resource.RLIMIT_AS, (cap, limits[1]))
        else:
            limits = None
    except (ImportError, OSError, StopIteration, ValueError):
        limits = None
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if limits is not None:
            resource.setrlimit(resource.RLIMIT_AS, limits)


_INTERNAL = {}


def _internal_error(name: str) -> type:
    """One AssertionError subclass per exception type behind an internal error, so hypothesis keeps them apart."""
    return _INTERNAL.setdefault(name, type(f"InternalError_{name}", (AssertionError,), {}))


def check_cli(capfd, env: Env, folder: Path, argv: list[str], outputs: list[Path]) -> int:
    """Run ``main(argv)`` in ``env.cwd`` and assert the property of the module docstring; returns the status."""
    from DiffRegLogic.cli import main

    inputs = {path: _sha(path) for path in folder.rglob("*") if path.is_file()}
    listing = _listing(folder)
    capfd.readouterr()
    old_cwd = os.getcwd()
    os.chdir(env.cwd)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught, _guarded():
            warnings.resetwarnings()  # what a user sees: Python's default filters, every occurrence
            warnings.simplefilter("always")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            status = main(argv)  # an exception escaping here fails the example with its own traceback
    finally:
        os.chdir(old_cwd)
    seconds = time.perf_counter() - start
    err = capfd.readouterr().err
    shown = [f"{w.category.__name__}: {w.message}" for w in caught]
    lines = [line for line in err.splitlines() if line.strip()] + shown
    where = f"\n  argv: {argv}\n  status {status} after {seconds:.2f} s\n  stderr: {lines}"

    event(f"exit {status}")
    assert "Traceback (most recent call last)" not in err, f"a traceback reached stderr{where}"
    stray = _listing(env.cwd)
    for path in env.cwd.iterdir():  # cleaned up, so that one bad example does not fail all that follow
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    assert not stray, f"files written in the working directory: {sorted(stray)}{where}"
    changed = [str(p) for p, sha in inputs.items() if not p.exists() or _sha(p) != sha]
    for path, content in env.pristine.items():
        if not path.is_file() or path.read_bytes() != content:
            changed.append(str(path))
            if path.is_dir():
                shutil.rmtree(path)
            path.write_bytes(content)  # restored for the examples that follow
    assert not changed, f"inputs changed or removed: {changed}{where}"
    if status == 0:
        assert not lines, f"exit 0 with warnings or messages on stderr{where}"
        missing = [str(p) for p in outputs if not p.exists()]
        assert not missing, f"exit 0 but outputs missing: {missing}{where}"
        extra = _listing(folder) - listing - {str(p.relative_to(folder)) for p in outputs}
        assert not extra, f"exit 0 but files written besides the outputs: {sorted(extra)}{where}"
    else:
        internal = [line for line in lines if line.startswith("error: internal error")]
        if status == 1 and internal:
            kind = re.match(r"error: internal error in '[^']*': (\w+)", internal[0])
            raise _internal_error(kind.group(1) if kind else "unknown")(f"an internal error (a bug), not a clean "
                                                                         f"error{where}")
        assert status == 2, f"exit status {status}, not 0 or 2{where}"
        assert len(lines) == 1, f"{len(lines)} stderr lines (warnings included), not one{where}"
        assert lines[0].startswith("error: "), f"the stderr line does not start with 'error: '{where}"
        written = _listing(folder) - listing
        assert not written, f"files left behind on failure: {sorted(written)}{where}"
    shutil.rmtree(folder)  # kept only when the example fails
    return status


def _write(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


def _render_argv(env: Env, folder: Path, ct=None, geometry=None, pose=None) -> tuple[list[str], list[Path]]:
    out = folder / "out.npy"
    argv = ["render", "--ct", str(ct or env.ct), "--geometry", str(geometry or env.geometry),
            "--pose", str(pose or env.pose), "--out", str(out), "--device", "cpu"]
    return argv, [out]


def _register_case(env: Env, folder: Path, xray=None, init=None, pictures=False) -> tuple[list[str], list[Path]]:
    outputs = [folder / "result.json", folder / "drr.npy"] + ([folder / "overlay.png", folder / "curve.png"]
                                                              if pictures else [])
    return _register_argv(env.ct, xray or env.xray, env.geometry, init or env.pose, *outputs), outputs


# --------------------------------------------------------------------------------- (a) the geometry file

@examples(120)
@given(data=fs.geometry_data)
@example(data={**fs.VALID_GEOMETRY, "source_to_detector_mm": 1e308})  # the reproducers of issue 18
@example(data={**fs.VALID_GEOMETRY, "pixel_spacing_mm": [1e308, 1e308]})
@example(data={**fs.VALID_GEOMETRY, "rows": 100_000, "cols": 100_000})
@example(data={**fs.VALID_GEOMETRY, "source_to_detector_mm": 10**400})
@example(data={**fs.VALID_GEOMETRY, "rows": 10**400})  # found by the fuzz: OverflowError in check_number
@example(data={**fs.VALID_GEOMETRY, "rows": 7, "cols": 6, "pixel_spacing_mm": [6.7e16, 6.7e16],
               "principal_point_px": [2952, 10363]})
def test_render_geometry_json_values(env, capfd, data):
    folder = env.folder()
    geometry = _write(folder, "geometry.json", json.dumps(data).encode())
    check_cli(capfd, env, folder, *_render_argv(env, folder, geometry=geometry))


@examples(80)
@given(content=fs.json_file_bytes(fs.geometry_data, fs.VALID_GEOMETRY))
@example(content=b"\xff\xfe\x00garbage")
@example(content=json.dumps({**fs.VALID_GEOMETRY, "n\u00e9": 1}).encode("latin-1"))
@example(content=json.dumps(fs.VALID_GEOMETRY).encode("utf-16"))
@example(content=b"[" * 100_000 + b"]" * 100_000)
def test_render_geometry_file_bytes(env, capfd, content):
    folder = env.folder()
    geometry = _write(folder, "geometry.json", content)
    check_cli(capfd, env, folder, *_render_argv(env, folder, geometry=geometry))


# --------------------------------------------------------------------------------------- (b) the pose file

_POSE = {"camera_from_world": fs.VALID_POSE_MATRIX}


@examples(100)
@given(data=fs.pose_data)
@example(data={"camera_from_world": [[1, 0, 0, 1e300], [0, 0, -1, 0], [0, 1, 0, 500], [0, 0, 0, 1]]})
@example(data={"camera_from_world": [[1, 0, 0, 10**400], [0, 0, -1, 0], [0, 1, 0, 500], [0, 0, 0, 1]]})
def test_render_pose_json_values(env, capfd, data):
    folder = env.folder()
    pose = _write(folder, "pose.json", json.dumps(data).encode())
    check_cli(capfd, env, folder, *_render_argv(env, folder, pose=pose))


@examples(60)
@given(content=fs.json_file_bytes(fs.pose_data, _POSE))
def test_render_pose_file_bytes(env, capfd, content):
    folder = env.folder()
    pose = _write(folder, "pose.json", content)
    check_cli(capfd, env, folder, *_render_argv(env, folder, pose=pose))


@examples(60)
@given(content=st.one_of(
    st.fixed_dictionaries({"camera_from_world": fs.near_matrices(fs.VALID_POSE_MATRIX)}).map(json.dumps),
    fs.pose_data.map(json.dumps), fs.json_file_bytes(fs.pose_data, _POSE)))
def test_register_init_file(env, capfd, content):
    folder = env.folder()
    init = _write(folder, "init.json", content.encode() if isinstance(content, str) else content)
    check_cli(capfd, env, folder, *_register_case(env, folder, init=init, pictures=True))


# ------------------------------------------------------------------------------------ (c) numeric flags

@examples(150)
@given(flags=fs.flag_settings(fs.RENDER_FLAGS), renderer=st.sampled_from(("siddon", "trilinear", "polychromatic")))
@example(flags=["--step-voxels=1e-6"], renderer="trilinear")
@example(flags=["--max-memory-mb=inf"], renderer="siddon")
@example(flags=["--noise-photons=1e-300"], renderer="siddon")
@example(flags=["--blur-mm=1e9"], renderer="siddon")
@example(flags=["--scatter-fraction=0.2", "--scatter-sigma-mm=1e9"], renderer="siddon")
def test_render_numeric_flags(env, capfd, flags, renderer):
    folder = env.folder()
    argv, outputs = _render_argv(env, folder)
    check_cli(capfd, env, folder, argv + ["--renderer", renderer] + flags, outputs)


@examples(100)
@given(flags=fs.flag_settings(fs.REGISTER_FLAGS))
@example(flags=[f"--seed={2**70}"])
@example(flags=[f"--seed={10**400}"])  # found by the fuzz: OverflowError in check_number
@example(flags=["--n-starts=200000"])
@example(flags=["--levels=1e6"])
@example(flags=["--crop=a,b,c,d"])
def test_register_numeric_flags(env, capfd, flags):
    folder = env.folder()
    argv, outputs = _register_case(env, folder)
    check_cli(capfd, env, folder, argv + flags, outputs)


@examples(120)
@given(flags=fs.pose_flags())
@example(flags=["--clinical", "nan", "inf", "--source-to-isocenter=500"])
@example(flags=["--clinical", "10", "20", "--source-to-isocenter=0"])
@example(flags=["--spherical", "0", "0", "0", "0", "0", "0", "--sdd=1000", "--source-to-isocenter=-5"])
def test_pose_numeric_flags(env, capfd, flags):
    folder = env.folder()
    out = folder / "pose.json"
    check_cli(capfd, env, folder, ["pose", "--ct", str(env.ct), "--out", str(out)] + flags, [out])


# ------------------------------------------------------------------------------ (d) arrays as X-rays and CTs

@examples(100)
@given(array=st.one_of(fs.valid_xrays, fs.arrays(fs.xray_shapes), fs.arrays(fs.xray_shapes)),
       truncate=st.sampled_from((1.0,) * 6 + (0.0, 0.3, 0.9)))
@example(array=np.full((16, 16), 1e300), truncate=1.0)
@example(array=np.zeros((0, 16)), truncate=1.0)
def test_register_xray_arrays(env, capfd, array, truncate):
    folder = env.folder()
    content = fs.npy_bytes(array)
    xray = _write(folder, "xray.npy", content[:int(len(content) * truncate)])
    check_cli(capfd, env, folder, *_register_case(env, folder, xray=xray))


_CT_FORMATS = ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha")
_spacings = st.one_of(st.just((2.0, 2.0, 2.0)), st.tuples(*[st.one_of(
    st.floats(1e-4, 1000.0), st.sampled_from((1e-300, 1e300, float("nan"), float("inf"))))] * 3))


@examples(100)
@given(array=fs.arrays(fs.ct_shapes, fs.CT_DTYPES), name=st.sampled_from(_CT_FORMATS), spacing=_spacings,
       vector=st.integers(0, 4).map(lambda n: n == 0), truncate=st.sampled_from((1.0,) * 6 + (0.3, 0.6, 0.95)))
@example(array=np.full((4, 4, 4), np.nan, np.float32), name="ct.nii.gz", spacing=(2.0, 2.0, 2.0), vector=False,
         truncate=1.0)
@example(array=np.zeros((6, 6, 6), np.int16), name="ct.nii", spacing=(2.0, 2.0, 2.0), vector=False, truncate=0.5)
@example(array=np.full((4, 4, 4), 100 + 1j, np.complex64), name="ct.nii.gz", spacing=(2.0, 2.0, 2.0), vector=False,
         truncate=1.0)  # found by the fuzz: a complex CT read with a ComplexWarning
def test_render_ct_arrays(env, capfd, array, name, spacing, vector, truncate):
    folder = env.folder()
    path = folder / name
    fs.write_sitk_ct(path, array, spacing, vector, truncate)
    check_cli(capfd, env, folder, *_render_argv(env, folder, ct=path))


@examples(100)
@given(array=fs.arrays(st.tuples(*[st.integers(1, 6)] * 3), ("float32", "int16", "float64")),
       geometry=fs.header_geometry(), mha=st.booleans(), truncate=st.sampled_from((1.0,) * 4 + (0.0, 0.5)))
@example(array=np.zeros((4, 4, 4), np.float32), mha=False, truncate=1.0,  # found by the fuzz: RuntimeWarning
         geometry={"spacing": [1.0, 1.0, 1e300], "direction": np.eye(3).tolist(), "origin": [0.0, 0.0, 0.0]})
@example(array=np.zeros((4, 4, 4), np.float32), mha=False, truncate=1.0,  # found: |space direction| overflows
         geometry={"spacing": [1e300, 1.0, 1.0], "direction": [[0.6, 0, 0], [0.8, 1, 0], [0, 0, 1]],
                   "origin": [0.0, 0.0, 0.0]})
def test_render_ct_headers(env, capfd, array, geometry, mha, truncate):
    folder = env.folder()
    writer, name = (fs.mha_bytes, "ct.mha") if mha else (fs.nrrd_bytes, "ct.nrrd")
    path = _write(folder, name, writer(array, geometry, truncate))
    check_cli(capfd, env, folder, *_render_argv(env, folder, ct=path))
