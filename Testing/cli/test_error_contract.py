"""The last-resort handler: an unexpected exception is one `error: internal error ...` line (status 1), the
traceback only under --debug; MemoryError is status 3 with advice; every message is one line."""

from __future__ import annotations

import pytest

from DiffRegLogic.cli import app, main, pose
from DiffRegLogic.errors import InputError

ARGS = ["pose", "--clinical", "10", "0", "--source-to-isocenter", "500"]


def _raise(exc):
    def run(args, outputs=None):
        raise exc
    return run


def test_an_internal_error_is_one_line_naming_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pose, "run", _raise(ZeroDivisionError("division by zero")))
    assert main(ARGS + ["--out", str(tmp_path / "p.json")]) == app.EXIT_BUG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: internal error in 'diffreg pose': ZeroDivisionError: division by zero. This is a "
                          "bug in DiffReg")
    assert app.BUG_REPORTS in err and "--debug" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys, where):
    monkeypatch.setattr(pose, "run", _raise(KeyError("x")))
    argv = ARGS + ["--out", str(tmp_path / "p.json")]
    argv = ["--debug"] + argv if where == "before" else argv + ["--debug"]
    assert main(argv) == app.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'x'" in err
    assert err.strip().splitlines()[-1].startswith("error: internal error in 'diffreg pose': KeyError")


def test_memory_errors_and_multi_line_messages(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pose, "run", _raise(MemoryError()))
    assert main(ARGS + ["--out", str(tmp_path / "p.json")]) == app.EXIT_MEMORY
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: out of memory in 'diffreg pose' (allocation failed)")
    monkeypatch.setattr(pose, "run", _raise(InputError("first line\n  second line")))
    assert main(ARGS + ["--out", str(tmp_path / "p.json")]) == app.EXIT_INPUT
    assert capsys.readouterr().err == "error: first line second line\n"


@pytest.mark.parametrize("extra, message", [
    (["--source-to-isocenter", "0"], "--source-to-isocenter must be > 0 mm"),
    (["--source-to-isocenter", "-5"], "--source-to-isocenter must be > 0 mm"),
    (["--source-to-isocenter", "nan"], "--source-to-isocenter must be a finite number, got nan"),
    (["--clinical", "inf", "0"], "--clinical PRIMARY_DEG must be a finite number, got inf"),
    (["--isocenter", "0", "nan", "0"], "--isocenter must be a finite number"),
    (["--out-suffix"], "--out must be a .json file"),
])
def test_pose_refuses_non_finite_and_non_positive_numbers_before_reading_the_ct(tmp_path, capsys, extra, message):
    argv = ["pose", "--clinical", "10", "0", "--source-to-isocenter", "500", "--out", str(tmp_path / "p.json")]
    if extra == ["--out-suffix"]:
        argv[-1] = str(tmp_path / "p.txt")
    else:
        argv += extra
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_torch_out_of_memory_is_an_out_of_memory_error(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(pose, "run", _raise(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate")))
    assert main(ARGS + ["--out", str(tmp_path / "p.json")]) == app.EXIT_MEMORY
    assert capsys.readouterr().err.startswith("error: out of memory in 'diffreg pose' (CUDA out of memory.")


def test_the_loss_curve_of_a_start_at_the_optimum_is_drawn_on_a_linear_axis():
    """1 - similarity = 0 everywhere has no log axis; the curve must not fail after the registration ran."""
    from types import SimpleNamespace

    import numpy as np

    from DiffRegLogic.cli.common import loss_curve

    at_optimum = SimpleNamespace(options={"similarity": "zncc"}, similarity=1.0,
                                 trace=[{"level": 0, "iteration": i, "best_similarity": 1.0} for i in range(3)])
    no_trace = SimpleNamespace(options={"similarity": "zncc"}, similarity=0.9, trace=[])
    for result in (at_optimum, no_trace):
        picture = loss_curve(result)
        assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.std() > 0


@pytest.mark.parametrize("extra, message", [
    (["--soft-width-hu", "-1"], "soft_width_hu must be >= 0 HU"),
    (["--air-max-hu", "inf"], "air_max_hu must be a finite number"),
    (["--implant", "1=titanium"], "--implant needs a label map"),
])
def test_the_polychromatic_experiment_uses_and_checks_the_material_flags(tmp_path, capsys, extra, message):
    """Found by the probe: these flags were accepted and ignored by the polychromatic experiment."""
    out = tmp_path / "poly"
    assert main(["experiment", "polychromatic", "--out", str(out), "--n", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_a_name_too_long_for_the_file_system_is_a_clean_error(tmp_path, capsys):
    """Found in review: ENAMETOOLONG from a path check was an internal error (status 1)."""
    long_name = str(tmp_path / ("a" * 300 + ".json"))
    assert main(ARGS + ["--out", long_name]) == 2
    assert main(["render", "--ct", "phantom", "--geometry", long_name, "--pose", long_name,
                 "--out", str(tmp_path / "d.npy")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") and "too long" in line for line in err), err
    assert list(tmp_path.iterdir()) == []
