"""Learned parts of DiffReg, trained on DRRs of the patient's own CT.

The patient-specific pose network (the MICCAI 2023 poster's method:
EfficientNet-b0 + a regularised autoencoder + self-attention with a 2D
positional embedding + incremental learning), one module per job:

* `poses`: the pose range and the sampling of training poses about a
  reference view (motions of the CT about its centre);
* `data`: DRRs rendered in batches without gradients (`DRRSource`), the
  training pool that grows in stages (`TrainingPool`), the fixed validation
  set, and `network_input` (resize + standardise; training and inference);
* `augment`: X-ray realism on DRR line integrals (noise, blur, scatter,
  window/gamma, inversion, collimation, occluders);
* `rotations`, `networks`, `losses`: the 6D / quaternion rotation outputs, the
  network (`PoseNet`, each part switchable), the structure and pose losses;
* `schedule`, `trainer`, `checkpoint`, `distributed`, `progress`: warm-up +
  cosine under a step or time budget, the training loop, model files with CT
  and detector fingerprints (loaded with ``weights_only=True``), torchrun /
  DistributedDataParallel, and the JSON progress lines (torch-free);
* `inference`: `PoseNetworkInitializer`, the trained network as an
  *initialiser* ``(xray, detector, volume) -> (K, 4, 4)`` start poses (the
  protocol of `DiffRegLogic.registration.initializers`): pass it to
  `DiffRegLogic.registration.register` as the start.

A learned similarity (Chen & Kong's SO(4) embedding distance) will plug in as
a `DiffRegLogic.similarity.Measure` given as ``RegistrationOptions.similarity``.

Networks use MONAI or plain ``torch.nn`` (timm and torchvision do not
import beside the CPU build of torch), and nothing is downloaded: weights
start random and are trained on the patient's DRRs.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".poses": "PoseRange sample_motions reference_view poses_from_motions motions_from_poses",
    ".data": "DRRSource TrainingPool network_input training_detector validation_set",
    ".augment": "Augmentation augment NO_AUGMENTATION DEFAULT_AUGMENTATION",
    ".rotations": "rotation_6d_to_matrix matrix_to_rotation_6d quaternion_output_to_matrix",
    ".networks": "PoseNet PoseNetConfig PosePrediction count_parameters",
    ".losses": "sobel_magnitude ssim structure_loss pose_loss",
    ".trainer": "TrainConfig TrainResult train",
    ".checkpoint": "ModelInfo load_pose_network fingerprint_volume fingerprint_detector",
    ".progress": "progress_line parse_progress_line format_progress",
    ".inference": "PoseNetworkInitializer",
})
__all__ = sorted(__getattr__.table)
