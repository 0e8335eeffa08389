"""Worker of `test_distributed.py`, run by ``torch.distributed.run --nproc_per_node 2`` (gloo, CPU).

Usage: ``python -m torch.distributed.run --nproc_per_node 2 ddp_worker.py OUT_DIR``. Each rank

1. computes, with a DistributedDataParallel copy of a seeded small PoseNet,
   the loss gradient on its half of a seeded batch of 8 images (rank r takes
   images 4r..4r+3); rank 0 saves the averaged gradients to ``grads.pt``;
2. runs a tiny `train` (3 steps, 2 images per rank) that writes
   ``model.pt``; every rank saves its final weights (``weights_RANK.pt``)
   and the progress records it received (``events_RANK.json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def batch_loss(prediction, images, motions):
    """The trainer's loss for a batch (pose loss / 10 + structure loss), batch means throughout."""
    from DiffRegLogic.geometry.rigid import so3_exp
    from DiffRegLogic.learning.losses import pose_loss, sobel_magnitude, structure_loss

    rotation = so3_exp(motions[:, :3]).float()
    loss = pose_loss(prediction.rotation, prediction.translation_mm, rotation, motions[:, 3:].float()) / 10.0
    return loss + structure_loss(prediction.reconstruction, sobel_magnitude(images))


def gradient_batch():
    """(images (8, 1, 32, 32), motions (8, 6)) from a fixed seed."""
    generator = torch.Generator().manual_seed(1234)
    images = torch.randn(8, 1, 32, 32, generator=generator)
    motions = (torch.rand(8, 6, generator=generator, dtype=torch.float64) * 2 - 1) * torch.tensor(
        [0.3, 0.3, 0.3, 20.0, 20.0, 20.0], dtype=torch.float64)
    return images, motions


def network():
    from DiffRegLogic.learning.networks import PoseNet, PoseNetConfig

    torch.manual_seed(0)
    return PoseNet(PoseNetConfig(image_size=32, backbone="small", dropout=0.0))


def tiny_setup():
    """(volume, detector, reference pose, config) of the 2-process end-to-end run."""
    from DiffRegLogic.experiments.demo import demo_detector
    from DiffRegLogic.learning.augment import NO_AUGMENTATION
    from DiffRegLogic.learning.networks import PoseNetConfig
    from DiffRegLogic.learning.poses import PoseRange, reference_view
    from DiffRegLogic.learning.trainer import TrainConfig
    from DiffRegLogic.volume.phantoms import chest_phantom

    volume = chest_phantom(shape_ijk=(32, 28, 24), spacing=(10.4, 10.4, 12.0))
    detector = demo_detector().downsample(4)
    config = TrainConfig(network=PoseNetConfig(image_size=32, backbone="small", attention=False,
                                               positional_embedding=False, dropout=0.0),
                         pose_range=PoseRange((10.0,) * 3, (10.0,) * 3), steps=3, batch_size=2, pool_images=4,
                         stages=2, validation_images=4, target_points=50, augmentation=NO_AUGMENTATION,
                         log_every=1, validate_every=0, checkpoint_every=0)
    return volume, detector, reference_view(volume, detector), config


def main(out: Path) -> None:
    from DiffRegLogic.learning.distributed import DistributedContext
    from DiffRegLogic.learning.trainer import train

    context = DistributedContext.from_env("cpu")
    context.init()
    rank = context.rank
    model = network()
    ddp = context.wrap(model, torch.device("cpu"))
    images, motions = gradient_batch()
    part = slice(4 * rank, 4 * rank + 4)
    batch_loss(ddp(images[part]), images[part], motions[part]).backward()
    if context.is_main:
        torch.save({name: p.grad.detach().clone() for name, p in model.named_parameters()}, out / "grads.pt")
    context.barrier()

    volume, detector, reference, config = tiny_setup()
    events = []
    result = train(volume, detector, reference, config, checkpoint_path=out / "model.pt", progress=events.append,
                   bar=False)
    torch.save(result.model.state_dict(), out / f"weights_{rank}.pt")
    (out / f"events_{rank}.json").write_text(json.dumps({"events": events, "step": result.step,
                                                         "world_size": context.world_size}))
    context.destroy()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
