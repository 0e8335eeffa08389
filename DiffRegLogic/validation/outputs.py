"""Output paths of one command: checked before any work, written under temporary names, moved into place at the end.

A command lists its inputs and declares each output (`Outputs.file`,
`Outputs.folder`) before it reads or computes anything; a declaration is
refused with `InputError`, naming the option, when the path

* resolves to an input (the same file, through a symlink or a hard link
  too) or to another output of the same command;
* is an existing folder (for a file) or an existing file (for a folder);
* lies below a regular file, or in a folder this user cannot write.

The command then writes through `Outputs.staged`: each file goes to a hidden
temporary name beside its destination; when the block ends without an
exception, every file is moved into place (``os.replace``, atomic per file);
on any exception, KeyboardInterrupt included, the temporary files and the
folders the block created are removed, so a failed or interrupted command
leaves nothing behind. Torch-free.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InputError


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if ``a`` and ``b`` name one file or folder (symlinks and hard links followed; missing paths by name)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would resolve
        return os.path.realpath(a) == os.path.realpath(b)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long for the file system: not a file this command can read
        return False


def _format_suffix(path: Path) -> str:
    """``.nii.gz`` or the last suffix of ``path``, in lower case."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _existing_ancestor(path: Path) -> Path:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


@contextlib.contextmanager
def _os_errors(option: str, path):
    """An OSError while checking a path (a name too long, a loop of links, ...) as an `InputError`."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"{option} {path}: {exc.strerror or exc}; give another path") from None


class Outputs:
    """The files and folders one command will write; see the module docstring.

    ``inputs`` are the paths the command reads (``None`` entries and the
    built-in phantom's name are ignored). A folder input (a DICOM series)
    protects every file inside it.
    """

    def __init__(self, inputs: Iterable[str | os.PathLike | None] = ()):
        self.inputs = [Path(p) for p in inputs if p is not None and str(p) != "phantom" and _exists(Path(p))]
        self.declared: list[tuple[Path, str]] = []

    # -- declaration (before any work) -----------------------------------------------------------------------

    def file(self, path: str | os.PathLike | None, option: str) -> Path | None:
        """Check that ``path`` (given as ``option``, e.g. ``--out``) can be written as a new or replaced file."""
        if path is None:
            return None
        with _os_errors(option, path):
            return self._file(Path(path), option)

    def _file(self, path: Path, option: str) -> Path:
        if path.is_dir():
            raise InputError(f"{option} {path} is a folder; give a file name inside it")
        if str(path).endswith(("/", os.sep)) or path.name in ("", ".", ".."):
            raise InputError(f"{option} {path} names a folder; give a file name")
        self._not_an_input(path, option)
        self._writable_parent(path, option)
        self.declared.append((path, option))
        return path

    def folder(self, path: str | os.PathLike, option: str, names: Iterable[str] = ()) -> Path:
        """Check that folder ``path`` can be made (or exists) and that the files ``names`` in it can be written."""
        with _os_errors(option, path):
            return self._folder(Path(path), option, names)

    def _folder(self, path: Path, option: str, names: Iterable[str]) -> Path:
        if path.exists() and not path.is_dir():
            raise InputError(f"{option} {path} is a file; give a folder (new or existing)")
        for item in self.inputs:
            if same_file(item, path):
                raise InputError(f"{option} {path} is the input {item}; give a new folder")
        if path.exists():
            if not os.access(path, os.W_OK | os.X_OK):
                raise InputError(f"{option} {path}: this user cannot write into that folder; choose another")
        else:
            self._writable_parent(path, option)
        for name in names:
            if (path / name).is_dir():
                raise InputError(f"{option} {path}: {name} in it is a folder; the command writes a file of that "
                                 "name there: remove it or choose another folder")
            self._not_an_input(path / name, f"{option} ({name})")
        self.declared.append((path, option))
        return path

    def _not_an_input(self, path: Path, option: str) -> None:
        for item in self.inputs:
            inside = item.is_dir() and path.parent.exists() and same_file(path.parent, item)
            if same_file(item, path) or inside:
                what = f"inside the input folder {item}" if inside else f"the input {item}"
                raise InputError(f"{option} {path} is {what}: an input is never overwritten; "
                                 "give another output path")
        for other, other_option in self.declared:
            if same_file(other, path):
                raise InputError(f"{option} {path} is also {other_option}; give each output its own path")

    @staticmethod
    def _writable_parent(path: Path, option: str) -> None:
        ancestor = _existing_ancestor(path)
        if not ancestor.is_dir():
            raise InputError(f"{option} {path}: {ancestor} is a file, not a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"{option} {path}: this user cannot write into {ancestor}; choose another folder")

    # -- writing (after the work) ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def staged(self) -> Iterator["_Stage"]:
        """A `_Stage` whose ``path(p)`` gives the temporary name to write ``p`` to; see the module docstring."""
        stage = _Stage()
        try:
            yield stage
        except BaseException:
            stage.discard()
            raise
        stage.commit()


class _Stage:
    """Temporary files of one `Outputs.staged` block and the folders made for them."""

    def __init__(self):
        self.files: list[tuple[Path, Path]] = []  # (temporary, final)
        self.made: list[Path] = []

    def path(self, final: str | os.PathLike) -> Path:
        """A short hidden temporary path beside ``final`` ending in its format suffix in lower case.

        Writers that choose the format by the suffix (and numpy, which appends
        ``.npy`` to any other ending) then write exactly this file, whatever
        the case or the length of the final name.
        """
        final = Path(final)
        self._make_parents(final.parent)
        temporary = final.parent / f".{uuid.uuid4().hex[:10]}.partial{_format_suffix(final)}"
        self.files.append((temporary, final))
        return temporary

    def folder(self, final: str | os.PathLike) -> Path:
        """Make folder ``final`` (and its parents) now; removed again if the block fails while it is empty."""
        self._make_parents(Path(final))
        return Path(final)

    def _make_parents(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for item in reversed(missing):
            item.mkdir()
            self.made.append(item)

    def commit(self) -> None:
        """Move every temporary file into place; on any failure remove what is left and raise `InputError`."""
        try:
            for temporary, final in self.files:  # every file written, before any is moved
                if not temporary.exists():
                    raise RuntimeError(f"the writer of {final} wrote no file (expected {temporary.name})")
            for temporary, final in self.files:
                os.replace(temporary, final)
        except OSError as exc:
            self.discard()
            raise InputError(f"cannot write {exc.filename or ''}: {exc.strerror or exc}") from None
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        for temporary, _ in self.files:
            with contextlib.suppress(OSError):
                temporary.unlink()
        for folder in reversed(self.made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
