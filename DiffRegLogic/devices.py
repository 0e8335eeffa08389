"""Choosing the torch device, with a clear error when CUDA is asked for but absent."""

from __future__ import annotations

import torch

from .errors import InputError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> torch.device.

    Raises InputError when CUDA is requested and this PyTorch build or machine
    has none, or when the GPU index does not exist.
    """
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise InputError(
                f"device {name!r} was requested but CUDA is not available (PyTorch {torch.__version__}, {build}); "
                "use --device cpu, or install a CUDA build of PyTorch on a machine with an NVIDIA GPU"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"device {name!r} does not exist: this machine has {count} CUDA device(s)")
    elif device.type != "cpu":
        raise InputError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


THREADS_VARIABLE = "DIFFREG_THREADS"
"""Environment variable: the CPU threads of torch and the fused renderers (default: every core this process may use)."""


def set_threads(n: int | None = None) -> int:
    """Cap the CPU threads of torch and of the fused (numba) renderers at ``n``; returns the number used.

    ``None`` takes ``DIFFREG_THREADS`` if set, else leaves the defaults (the
    cores this process may use). Running several registrations on one
    machine at once, give each ``cores / processes`` threads.
    """
    import os

    from .limits import check_number

    if n is None:
        text = os.environ.get(THREADS_VARIABLE, "").strip()
        if not text:
            return torch.get_num_threads()
        try:
            n = int(text)
        except ValueError:
            raise InputError(f"{THREADS_VARIABLE} must be a whole number of threads, got {text!r}") from None
        name = THREADS_VARIABLE
    else:
        name = "threads"
    n = check_number(name, n, 1, 1024, integer=True)
    torch.set_num_threads(n)
    from .drr import fused_cpu

    fused_cpu.set_threads(n)
    return n
