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
