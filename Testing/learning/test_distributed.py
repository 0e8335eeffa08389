"""Distributed training (`DiffRegLogic.learning.distributed`): torchrun's environment, and DDP on 2 gloo processes.

Truth: the gradients a single process computes on the combined batch of 8
images (a loss that is a batch mean) must equal the DDP-averaged gradients
of two processes that each saw half of it; after a 2-process `train`, both
ranks hold the weights rank 0 wrote, the checkpoint records both ranks'
generators, and only rank 0 reported progress. One torchrun launch
(``ddp_worker.py``) serves both checks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from DiffRegLogic.errors import InputError
from DiffRegLogic.learning.distributed import RANK_SEED_OFFSET, DistributedContext

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402


# ---------------------------------------------------------------------- the environment


def test_context_reads_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    single = DistributedContext.from_env("cpu")
    assert (single.rank, single.world_size, single.enabled, single.is_main, single.backend) == (0, 1, False, True, None)
    assert single.share(10) == 10 and single.seed(5) == 5
    single.init()  # no process group for one process
    assert not torch.distributed.is_initialized()

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    second = DistributedContext.from_env("cpu")
    assert (second.rank, second.world_size, second.local_rank, second.backend) == (1, 3, 1, "gloo")
    assert not second.is_main and second.enabled
    assert second.seed(5) == 5 + RANK_SEED_OFFSET
    assert DistributedContext.from_env("cuda").backend == "nccl"
    # shares of 10 over 3 ranks: 4, 3, 3 (sum 10)
    assert [DistributedContext(rank=r, world_size=3).share(10) for r in range(3)] == [4, 3, 3]

    monkeypatch.setenv("RANK", "3")
    with pytest.raises(InputError, match="RANK=3, WORLD_SIZE=3"):
        DistributedContext.from_env("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InputError, match="WORLD_SIZE"):
        DistributedContext.from_env("cpu")


# ---------------------------------------------------------------------- two gloo processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run ddp_worker.py under torchrun with 2 CPU processes; the output folder."""
    out = tmp_path_factory.mktemp("ddp")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(HERE / "ddp_worker.py"), str(out)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def test_ddp_gradients_equal_one_process_on_the_combined_batch(two_ranks):
    averaged = torch.load(two_ranks / "grads.pt", weights_only=True)
    model = ddp_worker.network()
    images, motions = ddp_worker.gradient_batch()
    ddp_worker.batch_loss(model(images), images, motions).backward()
    single = {name: p.grad for name, p in model.named_parameters()}
    assert set(averaged) == set(single)
    assert sum(float(g.abs().sum()) for g in single.values()) > 0
    for name, grad in single.items():
        torch.testing.assert_close(averaged[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # and not trivially: one half alone gives other gradients
    model.zero_grad()
    ddp_worker.batch_loss(model(images[:4]), images[:4], motions[:4]).backward()
    assert any(not torch.allclose(p.grad, single[n], atol=1e-5) for n, p in model.named_parameters())


def test_two_process_train_writes_one_checkpoint_from_rank_0(two_ranks):
    files = sorted(p.name for p in two_ranks.iterdir())
    assert files.count("model.pt") == 1 and not [f for f in files if f.endswith(".tmp")]
    saved = torch.load(two_ranks / "model.pt", weights_only=True)
    assert saved["world_size"] == 2 and saved["step"] == 3 and saved["complete"]
    states = saved["generator_states"]
    assert len(states) == 2 and not torch.equal(states[0], states[1])  # each rank drew its own batches
    for rank in (0, 1):  # DDP kept the replicas identical
        weights = torch.load(two_ranks / f"weights_{rank}.pt", weights_only=True)
        for name, value in saved["weights"].items():
            torch.testing.assert_close(weights[name], value, rtol=0, atol=0, msg=name)
    main = json.loads((two_ranks / "events_0.json").read_text())
    other = json.loads((two_ranks / "events_1.json").read_text())
    assert other["events"] == [] and other["step"] == main["step"] == 3
    kinds = [e["event"] for e in main["events"]]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("checkpoint") == 1
    assert main["events"][0]["world_size"] == 2
    assert [e["step"] for e in main["events"] if e["event"] == "progress"] == [1, 2, 3]
    # each progress record counts both ranks' images: batch 2 per rank
    assert all(e["images_per_s"] > 0 for e in main["events"] if e["event"] == "progress")
