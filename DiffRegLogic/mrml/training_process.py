"""The training process as the panel sees it: its output parsed (`TrainingMonitor`), its life (`TrainingRun`).

Split from `DiffRegLogic.mrml.training` (which builds the process's inputs
and command line); Qt-free and importable without torch:

* `TrainingMonitor`: fed the process's output (lines or chunks, ``\\r`` of
  progress bars included), it keeps the latest progress record
  (`DiffRegLogic.learning.progress`), the fraction done (0..1), a status line
  and the final state: ``done``, ``failed`` (with the ``error: ...`` line) or
  ``cancelled``;
* `TrainingRun`: a started process (a ``subprocess.Popen`` as
  ``slicer.util.launchConsoleProcess`` returns it: text stdout with stderr
  merged) whose output a thread reads into a queue; the panel's timer calls
  `TrainingRun.poll`, which feeds the monitor on the main thread. `cancel`
  ends the process (terminate, which the command answers by keeping its
  last checkpoint and exiting 143; killed if it is still running after
  `TERMINATE_GRACE_S`).
"""

from __future__ import annotations

import collections
import os
import queue
import re
import threading
import time
from typing import Any, Callable

TERMINATE_GRACE_S = 30.0
"""Seconds a cancelled process gets to write its checkpoint before it is killed."""
SIGNAL_EXITS = (130, 137, 143, -2, -9, -15)
"""Exit statuses of a process ended by a signal (SIGINT, SIGKILL, SIGTERM; shell and Popen spellings)."""

IDLE, RUNNING, DONE, FAILED, CANCELLED = "idle", "running", "done", "failed", "cancelled"
"""`TrainingMonitor.state` values."""


# ---------------------------------------------------------------- the process's output

_ERROR_LINE = re.compile(r"^(?:[\w.\- ]+: )?error: (?P<message>.*)$")
"""``error: ...`` (the command's error contract) or argparse's ``prog: error: ...``."""


class TrainingMonitor:
    """What a training process's output says: the latest progress, the fraction done, the final state.

    Feed it text with `feed` (any chunks: lines are split at ``\\n`` and
    ``\\r``); call `finish` with the exit status when the process ended.
    Progress records are the JSON lines of `DiffRegLogic.learning.progress`;
    other lines (tqdm bars, warnings) are kept as the last ``keep_lines``
    lines of text (`lines`), and an ``error: ...`` line is the error.

    Attributes: ``state`` (idle, running, done, failed, cancelled),
    ``fraction`` (0..1), ``latest`` (the last progress record or None),
    ``records`` (every record, in order), ``validation`` / ``checkpoint`` /
    ``done`` (the last record of that event), ``error`` (message of the last
    error line), ``return_code``, ``cancel_requested``.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, keep_lines: int = 50) -> None:
        self.model_path = None if model_path is None else os.fspath(model_path)
        self.state = IDLE
        self.fraction = 0.0
        self.latest: dict | None = None
        self.records: list[dict] = []
        self.validation: dict | None = None
        self.checkpoint: dict | None = None
        self.done: dict | None = None
        self.error: str | None = None
        self.return_code: int | None = None
        self.cancel_requested = False
        self.lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._pending = ""

    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED, CANCELLED)

    def feed(self, text: str) -> list[dict]:
        """Take more output; returns the progress records completed by it (a line ends at ``\\n`` or ``\\r``)."""
        parts = re.split(r"\r\n|\r|\n", self._pending + text)
        self._pending = parts.pop()
        return [r for r in (self._line(part) for part in parts) if r is not None]

    def flush(self) -> list[dict]:
        """Take the last, unterminated line (the process ended)."""
        rest, self._pending = self._pending, ""
        record = self._line(rest) if rest else None
        return [] if record is None else [record]

    def _line(self, line: str) -> dict | None:
        from ..learning.progress import parse_progress_line

        line = line.strip()
        if not line:
            return None
        record = parse_progress_line(line)
        if record is None:
            self.lines.append(line)
            match = _ERROR_LINE.match(line)
            if match:
                self.error = match.group("message").strip() or line
            return None
        self._record(record)
        return record

    def _record(self, record: dict) -> None:
        self.records.append(record)
        if not self.finished:
            self.state = RUNNING
        event = record["event"]
        if event == "progress":
            self.latest = record
            fraction = record.get("fraction")
            if fraction is None and record.get("steps") and record.get("step") is not None:
                fraction = record["step"] / record["steps"]
            if isinstance(fraction, (int, float)) and not isinstance(fraction, bool):
                self.fraction = min(1.0, max(0.0, float(fraction)))
        elif event == "validation":
            self.validation = record
        elif event == "checkpoint":
            self.checkpoint = record
        elif event == "done":
            self.done = record
            self.fraction = 1.0

    def request_cancel(self) -> None:
        """The user asked to stop: an exit by signal (or any exit before 'done') then counts as cancelled."""
        self.cancel_requested = True

    def finish(self, return_code: int) -> str:
        """The process ended with ``return_code``: settle and return the final state."""
        self.flush()
        self.return_code = int(return_code)
        if self.done is not None and self.return_code == 0:
            self.state = DONE
        elif self.cancel_requested or self.return_code in SIGNAL_EXITS:
            self.state = CANCELLED
        else:
            self.state = FAILED
            if self.error is None:
                last = f": {self.lines[-1]}" if self.lines else ""
                self.error = (f"the training process ended without finishing{last}" if self.return_code == 0 else
                              f"the training process ended with exit status {self.return_code}{last}")
        return self.state

    def saved_path(self) -> str | None:
        """The model file the run wrote (the 'done' or last 'checkpoint' record's path, else the requested one)."""
        for record in (self.done, self.checkpoint):
            if record is not None and record.get("path"):
                return str(record["path"])
        return self.model_path if self.done is not None else None

    def status(self) -> str:
        """One human line: the latest progress (step, loss, validation mTRE or, for a learned similarity, the
        validation cosine, ETA) or the outcome."""
        from ..learning.progress import format_progress

        if self.state == DONE:
            return format_progress({**self.done, "path": self.saved_path()})
        if self.state == FAILED:
            return f"Training failed: {self.error}"
        if self.state == CANCELLED:
            path = (self.checkpoint or {}).get("path")
            if path:
                return (f"Training stopped at step {self.checkpoint.get('step', '?')}; the last checkpoint is in "
                        f"{path} (a usable model)")
            return "Training stopped before its first checkpoint; no model was saved"
        if self.cancel_requested:
            return "Stopping the training: it keeps its last checkpoint…"
        if self.latest is not None:
            return format_progress(self.latest)
        if self.records:
            return format_progress(self.records[-1])
        return "Starting the training (rendering the first DRRs)…"


class TrainingRun:
    """A started training process, its output read by a thread and fed to a `TrainingMonitor` by `poll`.

    ``process``: a ``subprocess.Popen`` with text ``stdout`` (stderr merged),
    as ``slicer.util.launchConsoleProcess(..., blocking=True)`` returns it.
    The reader thread only moves lines into a queue; `poll` (the panel's
    timer, on the main thread) feeds them to the monitor, enforces the grace
    period of a cancel, and on the process's end settles the monitor and
    calls ``cleanup`` once. ``clock``: seconds (``time.monotonic``).
    """

    def __init__(self, process, monitor: TrainingMonitor | None = None, *, cleanup: Callable[[], Any] | None = None,
                 grace_s: float = TERMINATE_GRACE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.process = process
        self.monitor = monitor or TrainingMonitor()
        self.grace_s = float(grace_s)
        self._cleanup = cleanup
        self._clock = clock
        self._terminated_at: float | None = None
        self._killed = False
        self._queue: queue.Queue = queue.Queue()
        self._eof = False
        self._thread = threading.Thread(target=self._read, name="DiffReg training output", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        stream = self.process.stdout
        try:
            while True:
                try:
                    line = stream.readline()
                except UnicodeDecodeError:  # a non-UTF-8 line (a locale issue): skipped
                    continue
                except (OSError, ValueError):  # the pipe was closed
                    break
                if not line:
                    break
                self._queue.put(line)
        finally:
            self._queue.put(None)

    def _drain(self, wait_s: float = 0.0) -> None:
        first = True
        while not self._eof:
            try:
                item = self._queue.get(timeout=wait_s) if first and wait_s > 0 else self._queue.get_nowait()
            except queue.Empty:
                return
            first = False
            if item is None:
                self._eof = True
            else:
                self.monitor.feed(item)

    @property
    def finished(self) -> bool:
        return self.monitor.finished

    def poll(self, wait_s: float = 0.0) -> bool:
        """Feed what the process printed to the monitor; True once it ended (the monitor then holds the outcome).

        ``wait_s`` > 0: wait up to that long for the next output first (scripts; the panel's timer never waits).
        """
        if self.monitor.finished:
            return True
        self._drain(wait_s)
        code = self.process.poll()
        if code is None:
            if (self._terminated_at is not None and not self._killed
                    and self._clock() - self._terminated_at >= self.grace_s):
                self._killed = True
                self.process.kill()
            return False
        if not self._eof:  # the process ended: its last lines are still on their way
            self._thread.join(timeout=5.0)
            self._drain()
        self.monitor.finish(code)
        if self._cleanup is not None:
            cleanup, self._cleanup = self._cleanup, None
            cleanup()
        return True

    def cancel(self) -> None:
        """Ask the process to stop (terminate: it keeps its last checkpoint); `poll` kills it after the grace period."""
        self.monitor.request_cancel()
        if self.process.poll() is None and self._terminated_at is None:
            self._terminated_at = self._clock()
            self.process.terminate()

    def shutdown(self, timeout_s: float = 10.0) -> str:
        """End the process now (the module is closed): terminate, wait up to ``timeout_s`` for it to write its
        checkpoint, kill it if it is still running, then run the cleanup (the exported CT is removed); the state."""
        import subprocess

        self.cancel()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._killed = True
            self.process.kill()
            self.process.wait(timeout=timeout_s)
        self.poll()
        if self._cleanup is not None:  # poll ran it unless the process is somehow still alive
            cleanup, self._cleanup = self._cleanup, None
            cleanup()
        return self.monitor.state

    def wait(self, timeout: float | None = None) -> str:
        """Block until the process ended (scripts and tests; the panel polls instead); returns the final state."""
        self.process.wait(timeout=timeout)
        self._thread.join(timeout=timeout)
        self.poll()
        return self.monitor.state
