"""The panel's actions on a scene: read a setup's inputs, render a DRR preview, register, retry on the CPU.

Every function takes a `Setup` (the panel's settings, nodes included) and
the scene; input nodes are only read, results go to output nodes
(`DiffRegLogic.mrml.outputs`). With the similarity "learned (model file)"
the registration runs on the learned similarity network of
``similarityModelPath`` and then polishes with ``polishSimilarity``
(`DiffRegLogic.learning.similarity_inference.register_learned`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..volume.ct import Volume
from ..xray.convention import resolve_at_pose
from ..xray.image import XRay
from .carm import detector_from_setup, detector_plane_matrix, geometry_from_xray
from .checks import check_option_fields, check_setup
from .matrices import parent_to_world
from .nodes import _write_volume, volume_from_node, xray_from_node
from .outputs import (DERIVED_ROLES, Outputs, ensure_outputs, place_outputs, restore_on_failure,
                      write_detector_images, write_loss_curve, write_pose)
from .learned import _final_measure, _stage_notes, _stage_progress, load_learned_similarity, similarity_label
from .poses import initial_pose, network_initializer
from .settings import POLISH_NONE, POSE_FROM_NETWORK, SIMILARITY_LEARNED, Setup, learned_model_path
from .views import second_view


@dataclass
class Inputs:
    """Engine-side inputs of one setup."""

    volume: Volume
    xray: XRay
    detector: Detector
    pose: torch.Tensor  # initial camera_from_world (4, 4) float64
    ct_parent: Any = None  # (4, 4) the CT's parent-to-world when read: every pose is written against it
    second: Any = None  # registration.views.View of the second X-ray, or None
    starts: Any = None  # (K, 4, 4) start hypotheses (the pose network's; ``pose`` is the first), or None
    start_note: str | None = None  # where the start came from, when the results line should say so

    def detected(self) -> list[str]:
        """What was found where nothing stated an X-ray's intensity convention, one phrase per X-ray."""
        found = []
        for label, xray in (("X-ray", self.xray), ("second X-ray", getattr(self.second, "xray", None))):
            convention = None if xray is None else xray.meta.get("intensity_detected")
            if convention is not None:
                found.append(f"{label} detected as {convention.replace('_', ' ')}")
        return found


def polychromatic_model(volume: Volume, setup: Setup) -> Volume:
    """The CT's materials (air, soft tissue, bone) seen by the setup's tube (kVp, added filtration), on the CPU.

    Rendered with the setup's renderer as the tracer, the DRR is -log(I / I0)
    of the polychromatic beam through those materials (energy-integrating
    detector), as ``diffreg register --renderer polychromatic`` does.
    """
    from ..physics.beam import Beam
    from ..physics.materials import MaterialVolume
    from ..physics.spectra import tube_spectrum

    beam = Beam(tube_spectrum(float(setup.tubeVoltage), float(setup.filtrationMmAl)))
    return MaterialVolume.from_volume(volume.to("cpu"), beam)


def read_inputs(setup: Setup, file_for_instance: Callable[[str], str] | None = None) -> Inputs:
    """Check the setup and turn its nodes into engine inputs (nodes only read).

    The panel's choices and numbers and the output nodes are checked first
    (`DiffRegLogic.mrml.checks.check_setup`), then each node before its
    voxels are copied; InputError with the panel's message otherwise.

    With the start mode "pose network (model file)" the model of
    ``poseModelPath`` (which refuses another CT or detector) predicts the
    start from the X-ray: ``starts`` holds its hypotheses (K, 4, 4), ``pose``
    the first. Where nothing stated the X-ray's intensity convention, it is
    detected as ``diffreg register --model`` does
    (`DiffRegLogic.learning.inference.network_start`: at the reference view,
    then again at the network's pose), so that the network sees the line
    integrals it was trained on.
    """
    from ..devices import resolve_device

    check_setup(setup, DERIVED_ROLES)
    device = resolve_device(setup.device)
    ct = volume_from_node(setup.inputVolume)
    volume = (polychromatic_model(ct, setup) if setup.polychromatic else ct).to(device)
    xray = xray_from_node(setup.xrayVolume, setup.xrayIntensity, file_for_instance)
    geo = geometry_from_xray(setup.xrayVolume, file_for_instance, xray)
    detector = detector_from_setup(setup, geo)
    network = None
    if setup.initialPoseMode == POSE_FROM_NETWORK:  # trained on the monochromatic CT: it checks that one
        ct = volume if ct is volume or not setup.polychromatic else ct.to(device)
        network = network_initializer(setup, ct, detector)
    pose = initial_pose(setup, volume, geo) if network is None else None
    render_options = {"max_memory_mb": float(setup.maxMemoryMb)}
    second = second_view(setup, volume, geo, detector, file_for_instance)
    starts = note = None
    try:
        if network is not None:  # convention and poses as diffreg register --model finds them (network_start)
            from ..geometry import check_pose
            from ..learning.inference import network_start

            resolved, starts = network_start(network, xray, detector, volume, setup.renderer, **render_options)
            starts = check_pose(starts, name="the pose network's start poses").detach().to(torch.float64).cpu()
            pose = starts[0]
            note = (f"start from the pose network ({starts.shape[0]} hypotheses, "
                    f"{1000 * float(getattr(network, 'last_seconds', 0.0)):.0f} ms)")
        else:  # where nothing states the convention (no DICOM tag), it is detected against a DRR at the start
            resolved = resolve_at_pose(xray, detector, volume, pose, setup.renderer, **render_options)
        xray = resolved
        if second is not None:
            second.xray = resolve_at_pose(second.xray, second.detector, volume, second.from_first @ pose,
                                          setup.renderer, **render_options)
            second.mask = second.xray.mask
    except (MemoryError, torch.cuda.OutOfMemoryError) as exc:
        raise _resource_errors(exc) from exc
    return Inputs(volume, xray, detector, pose, parent_to_world(setup.inputVolume), second, starts, note)


class OutOfMemory(RuntimeError):
    """The renderer ran out of (GPU) memory; the message offers the CPU or smaller tiles."""


def _resource_errors(exc: BaseException) -> BaseException:
    """A clear error for out-of-memory failures; others unchanged."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return OutOfMemory(
            f"out of memory: {exc}. Choose Device 'cpu' under Options, or lower 'Memory budget (MB)' so the DRR is "
            "rendered in smaller tiles"
        )
    return exc


def with_cpu_fallback(setup: Setup, action: Callable[[Setup], Any], confirm: Callable[[str], bool]) -> Any:
    """``action(setup)``; when it runs out of memory off the CPU and ``confirm(message)`` agrees, once more on the CPU.

    The retry runs on a copy of the setup with ``device = "cpu"``: the
    caller's setup (and the parameter node it came from) keeps the user's
    device choice. Output nodes the retry created are copied back, so the
    next run reuses them.
    """
    try:
        return action(setup)
    except OutOfMemory as error:
        if setup.device == "cpu" or not confirm(f"{error}\n\nRetry on the CPU?"):
            raise
    retry = dataclasses.replace(setup, device="cpu")
    try:
        return action(retry)
    finally:
        setup.outputTransform, setup.outputDrr = retry.outputTransform, retry.outputDrr


def registration_options(setup: Setup):
    """`RegistrationOptions` of the setup (through `make_options`, the one place options are built).

    The panel's Options numbers are checked first (InputError naming the field).
    With the learned similarity the options' similarity is the polish measure
    (``"zncc"`` without a polish): `register_learned` puts the learned
    similarity in its place for the registration and polishes with the
    named one. Levenberg-Marquardt works with the learned similarity (it has
    a residual); a polish measure without a residual is refused with it.
    """
    from ..registration.options import make_options

    check_option_fields(setup)
    learned = setup.similarity == SIMILARITY_LEARNED
    options = make_options(optimizer=setup.optimizer, similarity="zncc" if learned else setup.similarity,
                           renderer=setup.renderer, levels=setup.level_factors(), max_iterations=int(setup.iterations),
                           n_starts=int(setup.starts), max_memory_mb=float(setup.maxMemoryMb), search=setup.search,
                           search_rotation_deg=float(setup.searchRotation),
                           search_translation_mm=float(setup.searchTranslation), robust=setup.robust,
                           footprint_mask=bool(setup.footprintMask), nuisance=setup.nuisance)
    if learned and setup.polishSimilarity != POLISH_NONE:
        try:
            options = make_options(options, similarity=setup.polishSimilarity)
        except InputError as error:
            raise InputError(f"Options > Polish similarity (polishSimilarity) {setup.polishSimilarity!r} does not "
                             f"work with the optimizer {setup.optimizer!r}: {error}; or choose polish 'none'") from None
    return options


def render_preview(scene, setup: Setup, pose=None, file_for_instance=None) -> Outputs:
    """Render the DRR at ``pose`` (default: the initial pose) into the outputs; returns them.

    Bad input raises InputError before any output is touched; a failure
    while writing leaves the outputs as they were (`restore_on_failure`).
    """
    from ..drr.rendering import render

    options = registration_options(setup)
    inputs = read_inputs(setup, file_for_instance)
    if pose is not None:
        from ..geometry import check_pose

        pose = check_pose(torch.as_tensor(pose, dtype=torch.float64), name="the pose to render")[0]
    pose = inputs.pose if pose is None else pose
    try:
        with torch.no_grad():
            drr = render(inputs.volume, inputs.detector, pose.to(inputs.volume.mu.device), options.renderer,
                         **options.render_options())[0]
    except (MemoryError, torch.cuda.OutOfMemoryError) as exc:
        raise _resource_errors(exc) from exc
    with restore_on_failure(scene, setup):
        outputs = ensure_outputs(scene, setup)
        write_detector_images(outputs, inputs.detector, drr.cpu().numpy(), inputs.xray.image.cpu().numpy())
        place_outputs(outputs, setup.transformMeaning)
        write_pose(outputs, pose, setup.transformMeaning, setup.inputVolume, inputs.ct_parent)
    return outputs


@dataclass
class SceneResult:
    """What a registration in the scene produced."""

    result: Any  # registration.RegistrationResult
    outputs: Outputs
    chart: Any
    message: str
    notes: list = dataclasses.field(default_factory=list)  # detected conventions, per-view similarities, search
    similarity: str = ""  # how the results name the similarity (`similarity_label`): "zncc", "learned + polish zncc"


def run_registration(scene, setup: Setup, progress: Callable | None = None, cancel: Callable[[], bool] | None = None,
                     file_for_instance=None, live_every: int = 5, live_pixels: int = 128) -> SceneResult:
    """Register the setup's CT to its X-ray and write the pose, DRR, overlay and loss curve into output nodes.

    ``progress(Progress, text)`` is called after every iteration (the
    module updates its bar there and processes GUI events); every
    ``live_every`` iterations (0 = never) the output transform is moved to the
    best pose so far and the DRR node shows that pose, rendered on the same
    detector with at most ``live_pixels`` pixels per side (it covers the
    same detector area, so the overlay stays aligned) from a CT averaged to
    that pixel size, so the preview costs little next to an iteration.
    ``cancel()`` returning True stops the run: the best pose so far is
    written and the message says so. Bad input raises InputError
    before any output is touched; if the run fails later, every output node
    gets its previous content back and the nodes it created are removed
    (`restore_on_failure`). Input nodes are only read.

    With the similarity "learned (model file)", its model file is checked
    before any node is read and loaded (it refuses another CT or detector)
    before any output is touched; the run is `register_learned` with the
    polish of ``polishSimilarity``, and the message names both
    ("learned + polish zncc") and each stage.
    """
    options = registration_options(setup)
    learned_model_path(setup)  # the learned similarity's model file and views: before any node is read
    inputs = read_inputs(setup, file_for_instance)
    learned = load_learned_similarity(setup, inputs)
    with restore_on_failure(scene, setup):
        return _register_into_outputs(scene, setup, options, inputs, progress, cancel, live_every, live_pixels,
                                      learned)


def _register_into_outputs(scene, setup: Setup, options, inputs: Inputs, progress, cancel, live_every: int,
                           live_pixels: int, learned=None) -> SceneResult:
    """`run_registration` after its inputs were read; the caller undoes the outputs if this raises."""
    from ..drr.rendering import render
    from ..registration.engine import register
    from ..registration.pyramid import preview_level

    outputs = ensure_outputs(scene, setup)
    place_outputs(outputs, setup.transformMeaning)
    xray_image = inputs.xray.image.cpu().numpy()
    write_detector_images(outputs, inputs.detector, xray=xray_image)
    live = preview_level(inputs.volume, inputs.detector, inputs.pose, live_pixels)
    label = similarity_label(setup)
    polish = None if learned is None or setup.polishSimilarity == POLISH_NONE else setup.polishSimilarity
    stage_of = _stage_progress(polish is not None) if learned is not None else None

    def callback(info) -> None:
        measure = setup.similarity
        if stage_of is not None:
            info, stage = stage_of(info)
            measure = "learned" if stage == 0 else polish
        text = (f"level {info.level + 1}/{info.n_levels}, iteration {info.iteration + 1}: "
                f"{measure} {info.similarity:.4f}")
        if live_every and info.pose is not None and info.total_iterations % live_every == 0:
            write_pose(outputs, info.pose, setup.transformMeaning, setup.inputVolume, inputs.ct_parent)
            with torch.no_grad():
                drr = render(live.volume, live.detector, info.pose.to(inputs.volume.mu.device), options.renderer,
                             **options.render_options())[0]
            _write_volume(outputs.drr, drr.cpu().numpy(), detector_plane_matrix(live.detector))
        if progress is not None:
            progress(info, text)

    start = inputs.pose
    if inputs.starts is not None:  # several hypotheses (the pose network's) feed the multi-start
        from ..registration.initializers import FixedPose

        start = FixedPose(inputs.starts)
    try:
        device = inputs.volume.mu.device
        if learned is not None:  # the learned similarity, then the polish (`register_learned`)
            from ..learning.similarity_inference import register_learned

            result = register_learned(inputs.volume, inputs.xray.image.to(device), inputs.detector, start, options,
                                      learned, polish=polish, mask=inputs.xray.mask, callback=callback, cancel=cancel)
        elif inputs.second is None:
            result = register(inputs.volume, inputs.xray.image.to(device), inputs.detector, start, options,
                              mask=inputs.xray.mask, callback=callback, cancel=cancel)
        else:
            from ..registration.views import View, register_views

            first = View(inputs.xray.image.to(device), inputs.detector, inputs.xray.mask, name="X-ray")
            second = View(inputs.second.xray.image.to(device), inputs.second.detector, inputs.second.mask,
                          inputs.second.from_first, inputs.second.name)
            result = register_views(inputs.volume, [first, second], start, options, callback=callback,
                                    cancel=cancel)
        with torch.no_grad():
            drr = render(inputs.volume, inputs.detector, result.pose.to(inputs.volume.mu.device), options.renderer,
                         **options.render_options())[0].cpu().numpy()
    except (MemoryError, torch.cuda.OutOfMemoryError) as exc:
        raise _resource_errors(exc) from exc
    write_pose(outputs, result.pose, setup.transformMeaning, setup.inputVolume, inputs.ct_parent)
    write_detector_images(outputs, inputs.detector, drr=drr)
    final = label if learned is None else _final_measure(result, polish)  # what the final numbers measure
    chart = write_loss_curve(scene, outputs, result.trace, final)
    state = ("cancelled: the best pose so far was written" if result.cancelled else
             "converged" if result.converged else f"stopped ({result.stop_reason.replace('_', ' ')})")
    measured = label if final == label else f"{label}: {final}"
    message = (f"{state}; {measured} {result.initial_similarity:.4f} -> {result.similarity:.4f} in "
               f"{result.iterations} iterations, {result.seconds:.1f} s")
    notes = ([inputs.start_note] if inputs.start_note else []) + inputs.detected() + _stage_notes(result)
    if getattr(result, "view_similarities", None) is not None and len(result.view_similarities) > 1:
        notes.append("views: " + ", ".join(f"{v:.4f}" for v in result.view_similarities))
    if getattr(result, "search", None):
        notes.append(f"wide search tried {result.search.get('candidates')} candidate poses")
    if notes:
        message += "; " + "; ".join(notes)
    return SceneResult(result, outputs, chart, message, notes, label)
