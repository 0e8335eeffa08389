"""Training on several processes: `torchrun` + `DistributedDataParallel` (gloo on CPU, nccl on CUDA).

Run the same training command under ``torchrun --nproc_per_node N``; torchrun
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in each process's environment, `DistributedContext.from_env`
reads them, and the trainer then

* wraps the network in ``DistributedDataParallel`` (gradients averaged over
  the ranks at each backward; BatchNorm becomes SyncBatchNorm on CUDA),
* lets each rank render its own share of the DRR pool (seed offset by the
  rank, ``pool_images / world_size`` images each) and draw its own batch
  (``batch_size`` per rank: the effective batch is ``world_size`` times larger),
* validates, writes checkpoints and reports progress on rank 0 only; the
  others wait at a barrier.

Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialised and
every helper here is a no-op, so a single process needs no launcher.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from ..errors import InputError

__all__ = ["DistributedContext", "RANK_SEED_OFFSET"]

RANK_SEED_OFFSET = 1_000_003
"""Seed offset between ranks: rank r seeds its pool and its draws with ``seed + r * RANK_SEED_OFFSET``."""


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"environment variable {name}={text!r} must be a whole number (torchrun sets it)") from None


@dataclass
class DistributedContext:
    """Where this process stands in a (possibly) distributed run.

    Attributes:
        rank: global rank (0 = main process).
        world_size: number of processes (1 = not distributed).
        local_rank: rank on this machine (selects the CUDA device).
        backend: "gloo" (CPU) or "nccl" (CUDA); None when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    _initialised_here: bool = False

    @classmethod
    def from_env(cls, device: str | torch.device = "cpu") -> "DistributedContext":
        """The context torchrun's environment describes; ``device`` picks the backend (nccl for CUDA, else gloo)."""
        world = _env_int("WORLD_SIZE", 1)
        rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
        if world < 1 or not 0 <= rank < world or local < 0:
            raise InputError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
        if world == 1:
            return cls()
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        return cls(rank=rank, world_size=world, local_rank=local, backend=backend)

    @property
    def enabled(self) -> bool:
        """True for a run of more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that validates, writes checkpoints and reports progress."""
        return self.rank == 0

    def device(self, device: str | torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` for a CUDA run of several processes, else ``device``."""
        device = torch.device(device)
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def init(self, timeout_s: float = 1800.0) -> None:
        """Join the process group (no-op when not distributed or already joined)."""
        if not self.enabled or torch.distributed.is_initialized():
            return
        if self.backend == "nccl":
            torch.cuda.set_device(self.local_rank)
        torch.distributed.init_process_group(self.backend, rank=self.rank, world_size=self.world_size,
                                             timeout=datetime.timedelta(seconds=timeout_s))
        self._initialised_here = True

    def destroy(self) -> None:
        """Leave the process group if `init` joined it."""
        if self._initialised_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self._initialised_here = False

    def barrier(self) -> None:
        """Wait for every rank (no-op when not distributed)."""
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def seed(self, seed: int) -> int:
        """This rank's seed for its pool and its draws (``seed`` itself on rank 0), in [0, 2**32)."""
        return (int(seed) + self.rank * RANK_SEED_OFFSET) % 2**32

    def share(self, total: int) -> int:
        """This rank's share of ``total`` items (the first ``total % world`` ranks take one more), at least 1."""
        base, extra = divmod(int(total), self.world_size)
        return max(1, base + (1 if self.rank < extra else 0))

    def broadcast_float(self, value: float, device: str | torch.device = "cpu") -> float:
        """Rank 0's ``value`` on every rank (the ranks agree on the clock and so on when to stop)."""
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._collective_device(device))
        torch.distributed.broadcast(t, src=0)
        return float(t.item())

    def gather_objects(self, obj):
        """List of every rank's ``obj`` (pickled; small things only), or ``[obj]`` when not distributed."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` wrapped in DistributedDataParallel (SyncBatchNorm on CUDA), or as it is when not distributed."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
        return DistributedDataParallel(model)

    def _collective_device(self, device) -> torch.device:
        """nccl only moves CUDA tensors: this rank's GPU whatever ``device`` says; gloo: the CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return getattr(model, "module", model)
