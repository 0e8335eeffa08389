"""Where numba keeps the compiled fused kernels (`fused_cpu`), also for a read-only install.

numba caches compiled functions next to their source, in this package's
``drr/__pycache__``; when that is not writable (a shared Slicer install, a
system site-packages), it falls back to ``~/.cache/numba``, and when that is
not writable either, ``cache=True`` fails at import with "cannot cache
function ...: no locator available". `configure` runs before the kernels are
defined and picks, in this order:

1. ``NUMBA_CACHE_DIR`` (numba's own setting) when the user set it to a
   writable folder: untouched;
2. ``drr/__pycache__`` when a file can be created there (numba's default);
3. a per-user folder, the first writable of ``<user cache dir>/diffreg/numba``
   (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on
   macOS, ``%LOCALAPPDATA%`` on Windows) and
   ``<tempfile.gettempdir()>/diffreg-numba-<user id>``; numba is pointed at it
   by setting ``numba.config.CACHE_DIR`` (read when each cached function is
   located, so this works after numba was imported);
4. nowhere: the kernels are compiled in every process, without a cache.

`cache_dir` says which one this process uses (None: no cache). Writability
is tested by creating a file, not by ``os.access`` (which answers for the
real user id and ignores read-only mounts and ACLs).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_PACKAGE_CACHE = Path(__file__).resolve().parent / "__pycache__"
_chosen: str | None = None
_configured = False


def _writable(folder: Path) -> bool:
    """True if ``folder`` exists or can be made, and a file can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return True
    except OSError:
        return False


def _user_id() -> str:
    if hasattr(os, "getuid"):
        return str(os.getuid())
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (no USERNAME, no pwd entry): one shared name
        return "user"


def _user_cache_root() -> Path | None:
    """The platform's per-user cache folder, or None when the home folder is unknown."""
    try:
        if sys.platform == "win32":
            base = os.environ.get("LOCALAPPDATA")
            return Path(base) if base else Path.home() / "AppData" / "Local"
        if sys.platform == "darwin":
            return Path.home() / "Library" / "Caches"
        base = os.environ.get("XDG_CACHE_HOME")
        return Path(base) if base else Path.home() / ".cache"
    except (KeyError, RuntimeError):  # Path.home() without HOME and without a pwd entry
        return None


def fallback_folders() -> list[Path]:
    """The per-user folders tried, in order, when this package's folder is not writable."""
    folders = []
    root = _user_cache_root()
    if root is not None:
        folders.append(root / "diffreg" / "numba")
    folders.append(Path(tempfile.gettempdir()) / f"diffreg-numba-{_user_id()}")
    return folders


def configure() -> bool:
    """Choose the kernels' cache folder (see the module docstring); True if they can be cached.

    Call before the ``@njit(cache=...)`` decorators run; later calls return
    the first answer.
    """
    global _chosen, _configured
    if _configured:
        return _chosen is not None
    import numba

    _configured = True
    user_set = numba.config.CACHE_DIR or os.environ.get("NUMBA_CACHE_DIR")
    if user_set and _writable(Path(user_set)):
        _chosen = str(user_set)
        numba.config.CACHE_DIR = _chosen  # also when the variable was set after numba was imported
    elif _writable(_PACKAGE_CACHE):
        _chosen = str(_PACKAGE_CACHE)
    else:
        _chosen = next((str(f) for f in fallback_folders() if _writable(f)), None)
        if _chosen is not None:
            numba.config.CACHE_DIR = _chosen
    return _chosen is not None


def cache_dir() -> str | None:
    """The folder the fused kernels are cached in by this process (None: compiled without a cache).

    With numba's own ``NUMBA_CACHE_DIR`` or a fallback folder, numba puts
    the files in a sub-folder named after this package's path.
    """
    if not _configured:
        try:
            configure()
        except ImportError:  # no numba: no fused kernels, nothing cached
            return None
    return _chosen
