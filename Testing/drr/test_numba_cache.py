"""The fused kernels import and render from a read-only install (a shared Slicer), caching in a per-user folder."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from DiffRegLogic.drr import numba_cache

numba = pytest.importorskip("numba")

PACKAGE = Path(numba_cache.__file__).resolve().parents[1]  # .../DiffRegLogic


@pytest.fixture()
def fresh(monkeypatch, tmp_path):
    """numba_cache as before its first use, with numba's own setting cleared and the temp folder in tmp_path."""
    monkeypatch.setattr(numba_cache, "_configured", False)
    monkeypatch.setattr(numba_cache, "_chosen", None)
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return tmp_path, blocker  # nothing can be created below a file, even by root


def test_a_writable_package_folder_is_numbas_default(fresh, monkeypatch):
    tmp_path, _ = fresh
    monkeypatch.setattr(numba_cache, "_PACKAGE_CACHE", tmp_path / "pkg" / "__pycache__")
    assert numba_cache.configure() and numba_cache.cache_dir() == str(tmp_path / "pkg" / "__pycache__")
    assert numba.config.CACHE_DIR == ""


def test_a_read_only_package_falls_back_to_the_user_cache_then_the_temp_folder(fresh, monkeypatch):
    tmp_path, blocker = fresh
    monkeypatch.setattr(numba_cache, "_PACKAGE_CACHE", blocker / "__pycache__")
    assert numba_cache.configure()
    assert numba_cache.cache_dir() == str(tmp_path / "xdg" / "diffreg" / "numba") == numba.config.CACHE_DIR

    monkeypatch.setattr(numba_cache, "_configured", False)
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    assert numba_cache.configure()
    assert Path(numba_cache.cache_dir()).parent == tmp_path / "tmp"
    assert Path(numba_cache.cache_dir()).name.startswith("diffreg-numba-")


def test_nothing_writable_compiles_without_a_cache(fresh, monkeypatch):
    _, blocker = fresh
    monkeypatch.setattr(numba_cache, "_PACKAGE_CACHE", blocker / "__pycache__")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(blocker))
    assert numba_cache.configure() is False and numba_cache.cache_dir() is None
    assert numba.config.CACHE_DIR == ""


def test_the_users_numba_cache_dir_is_kept(fresh, monkeypatch):
    tmp_path, blocker = fresh
    monkeypatch.setattr(numba_cache, "_PACKAGE_CACHE", blocker / "__pycache__")
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path / "mine"))
    assert numba_cache.configure() and numba_cache.cache_dir() == str(tmp_path / "mine")
    assert numba.config.CACHE_DIR == str(tmp_path / "mine")


# ---- for real: a read-only copy of the package, run by a user who cannot write to it --------------------------

_RENDER = """
import torch
from DiffRegLogic import Detector, Volume, render
from DiffRegLogic.drr import numba_cache
from DiffRegLogic.volume.phantoms import grid_affine
volume = Volume(torch.full((6, 7, 8), 0.02), grid_affine((8, 7, 6), (1.0, 1.0, 1.0)))
pose = torch.eye(4, dtype=torch.float64)
pose[2, 3] = 50.0
detector = Detector(4, 5, 100.0, (1.0, 1.0))
drr = render(volume, detector, pose, backend="fused")
reference = render(volume, detector, pose, backend="reference")
assert float(drr.max()) > 0.1 and float((drr - reference).abs().max()) < 1e-5, (drr, reference)
print("CACHE", numba_cache.cache_dir())
"""


def _runs(prefix: list[str], env: dict) -> bool:
    try:
        return subprocess.run(prefix + [sys.executable, "-c", "pass"], env=env, capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _unprivileged(env: dict) -> tuple[list[str], int] | None:
    """A command prefix that runs Python without the right to write to read-only files, and its user id."""
    if os.name != "posix":
        return None
    if os.geteuid() != 0:
        return [], os.geteuid()  # chmod already binds this user
    if shutil.which("runuser") and _runs(["runuser", "-u", "nobody", "--"], env):
        import pwd

        return ["runuser", "-u", "nobody", "--"], pwd.getpwnam("nobody").pw_uid
    # root, but the interpreter is not reachable for nobody (e.g. under /root): root without the capabilities
    # that override file permissions is bound by chmod like any other user
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    if shutil.which("setpriv") and _runs(prefix, env):
        return prefix, 0
    return None


def _read_only(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        for name in files:
            os.chmod(os.path.join(root, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(root, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def test_fused_render_from_a_read_only_install_caches_in_a_user_folder():
    base = Path(tempfile.mkdtemp(prefix="diffreg-ro-"))
    try:
        os.chmod(base, 0o755)
        home, scratch = base / "home", base / "tmp"
        home.mkdir()
        scratch.mkdir()
        os.chmod(scratch, 0o777)  # the user's temp folder
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CACHE", "XDG_"))}
        env.update(HOME=str(home), TMPDIR=str(scratch), PYTHONPATH=str(base / "site"),
                   PYTHONDONTWRITEBYTECODE="1")
        who = _unprivileged(env)
        if who is None:
            pytest.skip("running as root with neither 'runuser -u nobody' (able to run this Python) nor setpriv: "
                        "no user here is stopped by read-only files")
        prefix, uid = who
        shutil.copytree(PACKAGE, base / "site" / "DiffRegLogic", ignore=shutil.ignore_patterns("__pycache__"))
        _read_only(base / "site")
        os.chmod(home, 0o555)  # no ~/.cache either
        done = subprocess.run(prefix + [sys.executable, "-c", _RENDER], env=env, cwd=str(base), capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        for bad in ("cannot cache", "Traceback", "NumbaWarning", "rror"):
            assert bad not in done.stderr, done.stderr[-3000:]
        expected = scratch / f"diffreg-numba-{uid}"
        assert f"CACHE {expected}" in done.stdout
        assert list(expected.rglob("*.nbi")), "numba wrote no cache index in the fallback folder"
        assert not list((base / "site").rglob("*.nb*")), "something was written into the read-only install"
    finally:
        for root, dirs, files in os.walk(base):
            os.chmod(root, 0o755)
        shutil.rmtree(base, ignore_errors=True)
