"""The ``diffreg`` entry point: the parser (one module per command) and the error contract.

    diffreg demo     --out DIR                    # the main job on the built-in phantom
    diffreg register --ct CT --xray X --geometry G.json --init P.json --out R.json
    diffreg render   --ct CT --geometry G.json --pose P.json --out OUT
    diffreg experiment landscape|robustness|polychromatic --out DIR [--n 100 --max-rot 45 --max-trans 60]
    diffreg pose     --ct CT --clinical PRIMARY SECONDARY --source-to-isocenter 600 --out P.json

Errors in the input (missing files, bad JSON, wrong shapes, CUDA absent) and
in the command line itself (unknown option, missing value) print one
``error: ...`` line that says what to fix and exit with status 2 (3 for out
of memory). Input files are only read; outputs go to the paths given.
Building the parser and checking the arguments import no torch, numba or
numpy, so help texts and argument errors come back at once; a command's
``run`` imports what it uses.
"""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Sequence

from .. import __version__
from ..errors import InputError
from . import demo, experiment, pose, register, render

COMMANDS = (demo, register, experiment, render, pose)
"""One module per command, each with ``add_parser(subparsers)`` and ``run(args) -> int``."""

_program_run = False
"""True while `main` runs a whole program (``argv=None``): `imports_done` then manages the collector."""


def imports_done() -> None:
    """A command's ``run`` calls this once its heavy imports are loaded (torch, the engine; numba's kernels).

    In a program run the collector is off from the start, and what the
    imports built (some 300 000 objects that live until the exit) is frozen
    here (`gc.freeze`) before it is switched back on: the collections that
    follow, during the run and at the exit, no longer walk those objects,
    which cost about half a second per run on two cores. Called from tests
    or other Python code (``main(argv)``), it does nothing.
    """
    if _program_run:
        gc.freeze()
        gc.enable()


class _Parser(argparse.ArgumentParser):
    """argparse with the tool's error contract: a usage error is one ``error: ...`` line and status 2."""

    def error(self, message: str):
        if "expected one argument" in message:
            message += "; a value that starts with '-' is written --option=VALUE"
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffreg", description="Differentiable DRRs and 2D/3D CT-to-X-ray registration.")
    parser.add_argument("--version", action="version", version=f"diffreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (``--help`` and usage errors too, instead of raising SystemExit).

    ``argv=None`` (the console script, ``python -m DiffRegLogic.cli``) reads
    ``sys.argv`` and marks a whole program run: the collector waits for the
    imports (`imports_done`), and the objects alive at the end are frozen, so
    that the interpreter's shutdown does not walk torch's and numba's object
    graphs (about a second on two busy cores).
    """
    global _program_run
    if argv is None:  # a program run: no collections while torch and the engine load (see imports_done)
        _program_run = True
        gc.disable()
    try:
        return _run(argv)
    finally:
        if argv is None:  # nothing runs after this but the exit: leave the collection of what is left to the OS
            _program_run = False
            gc.freeze()
            gc.enable()


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        check = getattr(args, "check", None)
        if check is not None:
            check(args)
        return args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"error: out of memory: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
