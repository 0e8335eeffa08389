"""The ``diffreg`` entry point: the parser (one module per command) and the error contract.

    diffreg demo     --out DIR                    # the main job on the built-in phantom
    diffreg register --ct CT --xray X --geometry G.json --init P.json --out R.json [--search wide]
                     [--xray X2 --geometry G2.json --init P2.json]   # a second view
    diffreg train    --ct CT --geometry G.json --out MODEL.pt [--minutes 10]   # a pose network for register --model
    diffreg render   --ct CT --geometry G.json --pose P.json --out OUT
    diffreg experiment landscape|robustness|polychromatic|realism --out DIR [--n N --max-rot 45 --max-trans 60]
    diffreg pose     --ct CT --clinical PRIMARY SECONDARY --source-to-isocenter 600 --out P.json

The error contract, for every command:

* bad input (missing or unreadable files, bad JSON, values out of range,
  wrong shapes, CUDA absent) and bad command lines print one ``error: ...``
  line that says what to fix and exit with status 2 (3 for out of memory);
* every output path is checked before any work (`validation.outputs`): an
  output that is an input, a folder, or in a folder this user cannot write
  is refused; outputs are written under temporary names and moved into
  place only when the command succeeded, so a failure leaves nothing;
* SIGINT (Ctrl-C) and SIGTERM end the command with one ``error:
  interrupted`` line, status 130 or 143, and no partial outputs
  (experiments keep the rows already finished and say where; ``train``
  keeps its last checkpoint in ``--out``, rewritten atomically during the
  run, so that ``--resume`` can continue it, and says so; an error after a
  checkpoint leaves that checkpoint);
* the file system refusing (a name too long, a full disk, no permission)
  is one ``error: cannot use ...`` line, status 2;
* anything else is a bug: one ``error: internal error ...`` line naming the
  command and asking for a report, status 1; ``--debug`` (or
  ``DIFFREG_DEBUG=1``) shows the traceback.

Building the parser and checking the arguments import no torch, numba or
numpy, so help texts and argument errors come back at once; a command's
``run`` imports what it uses.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import sys
import threading
from typing import Sequence

from .. import __version__
from ..errors import InputError
from . import demo, experiment, pose, register, render, train

COMMANDS = (demo, register, train, experiment, render, pose)
"""One module per command, each with ``add_parser(subparsers)``, ``check(args) -> Outputs`` and
``run(args, outputs) -> int``."""

BUG_REPORTS = "https://github.com/diffreg/diffreg/issues"
"""Where the last-resort handler asks users to report an internal error."""
EXIT_INPUT, EXIT_MEMORY, EXIT_BUG = 2, 3, 1
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}

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
    parser.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub).add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                             help="show the traceback of an internal error")
    return parser


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where the program is (as SIGINT raises KeyboardInterrupt), so that cleanups run."""

    signal = signal.SIGTERM


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM raises `Interrupted` while the block runs (main thread only; the old handler is restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
            if "triton" not in sys.modules:
                gc.freeze()
            else:  # triton's bindings report every object still alive (frozen ones too) at exit as leaked
                gc.unfreeze()
            gc.enable()


class _Caught(list):
    succeeded = False


@contextlib.contextmanager
def _warnings_after_success():
    """Python warnings (numpy's, ITK's through Python, torch's) held back while a command runs.

    A failed command prints its one ``error:`` line and nothing else; a
    command that succeeded prints each distinct warning afterwards as one
    ``warning: ...`` line.
    """
    import warnings

    caught = _Caught()
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("default")
        yield caught
    if caught.succeeded:
        for text in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in records):
            print("warning: " + " ".join(text.split()), file=sys.stderr)


def _out_of_memory(command: str, exc: BaseException) -> int:
    _error(f"out of memory in '{command}' ({str(exc) or 'allocation failed'}): use a smaller detector, fewer "
           "--n-starts, a lower --max-memory-mb, or another device")
    return EXIT_MEMORY


def _error(message: str) -> None:
    print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)  # one line, always


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    command = f"diffreg {args.command}"
    with _signals_interrupt(), _warnings_after_success() as caught:
        try:
            outputs = args.check(args)  # arguments and every output path, before any heavy import or work
            status = args.func(args, outputs)
            caught.succeeded = status == 0
            return status
        except InputError as exc:
            _error(exc)
            return EXIT_INPUT
        except MemoryError as exc:
            return _out_of_memory(command, exc)
        except OSError as exc:  # the file system refused (a name too long, disk full, no permission): not a bug
            where = f" {exc.filename}" if exc.filename else ""
            _error(f"cannot use{where}: {exc.strerror or exc}; check the path, the free space and the permissions")
            return EXIT_INPUT
        except KeyboardInterrupt as exc:
            number = getattr(exc, "signal", signal.SIGINT)
            kept = getattr(exc, "kept", None)
            what = getattr(exc, "kept_message", None) or (
                f"the rows finished so far are in {kept}" if kept else "no output was written")
            _error(f"interrupted ({signal.Signals(number).name}) during '{command}'; {what}")
            return EXIT_SIGNAL[number]
        except Exception as exc:  # a bug: one line, the traceback only when asked for
            if any(k.__name__ == "OutOfMemoryError" for k in type(exc).__mro__):  # torch's, without importing torch
                return _out_of_memory(command, exc)
            if getattr(args, "debug", False) or os.environ.get("DIFFREG_DEBUG"):
                import traceback

                traceback.print_exc()
            _error(f"internal error in '{command}': {type(exc).__name__}: {exc}. This is a bug in DiffReg "
                   f"{__version__}; please report it with the command line at {BUG_REPORTS} (rerun with "
                   "--debug for the traceback)")
            return EXIT_BUG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
