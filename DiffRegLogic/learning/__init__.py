"""Learned parts of DiffReg, trained on DRRs of the patient's own CT (empty for now: the room is ready).

What goes here, and where it plugs in:

* **a pose-regression network** (the MICCAI 2023 poster's method:
  EfficientNet-b0 + regularised autoencoder + self-attention with a 2D
  positional embedding + incremental learning) is an *initialiser*: an
  object ``(xray, detector, volume) -> (K, 4, 4)`` start poses, the protocol
  of `DiffRegLogic.registration.initializers`. Pass it to
  `DiffRegLogic.registration.register` as the start;
* **a learned similarity** (Chen & Kong's SO(4) embedding distance) is a
  *similarity*: a `DiffRegLogic.similarity.Measure` (or a ``torch.nn.Module``
  ``(drr, xray, mask) -> (B,)`` with a ``residual`` for Levenberg-Marquardt
  and its own ``dtype``), given as ``RegistrationOptions.similarity``;
* **training data** comes from `DiffRegLogic.drr.DRR` (a ``torch.nn.Module``
  over the renderer) and `DiffRegLogic.geometry.random_motions` (seeded
  poses about the CT centre);
* planned layout: ``data.py`` (pose sampling and DRR batches),
  ``networks.py``, ``losses.py``, ``trainer.py`` (progress, checkpoints,
  resume, DDP), ``inference.py`` (the initialiser / measure objects).

Networks use MONAI or plain ``torch.nn`` (timm and torchvision do not
import beside the CPU build of torch), and nothing is downloaded: weights
start random and are trained on the patient's DRRs.
"""

__all__: list[str] = []
