"""Threads: DiffReg makes idle OpenMP threads sleep unless told otherwise, and caps threads on request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from DiffRegLogic.devices import THREADS_VARIABLE, set_threads
from DiffRegLogic.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_wait_policy_is_passive_unless_the_environment_says_otherwise(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    env["PYTHONPATH"] = str(ROOT)
    code = "import os, DiffRegLogic; print(os.environ['OMP_WAIT_POLICY'])"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == expected, run.stderr


def test_set_threads_caps_torch_and_the_fused_kernels(monkeypatch):
    numba = pytest.importorskip("numba")
    before = torch.get_num_threads(), numba.get_num_threads()
    try:
        assert set_threads(1) == 1
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
        monkeypatch.setenv(THREADS_VARIABLE, "1")
        assert set_threads() == 1
        monkeypatch.delenv(THREADS_VARIABLE)
        assert set_threads() == torch.get_num_threads()  # nothing asked: unchanged
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])


@pytest.mark.parametrize("value, message", [("two", "DIFFREG_THREADS must be a whole number of threads, got 'two'"),
                                            ("0", "DIFFREG_THREADS must be >= 1"), ("5000", "<= 1024")])
def test_bad_thread_settings_are_refused(monkeypatch, value, message):
    monkeypatch.setenv(THREADS_VARIABLE, value)
    with pytest.raises(InputError, match=message):
        set_threads()
    with pytest.raises(InputError, match="threads must be >= 1"):
        set_threads(0)
