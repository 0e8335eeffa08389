"""The panel's learned similarity (issue #17): its settings, .ui and parameter node, the training command, the
progress of a similarity training, the bad-input messages, and a tiny real training and registration.

Real MRML (the slicer-core wheel). Independent truths: the engine's name
tables (`SIMILARITIES`, `RESIDUALS`, `learning.so4.EMBEDDINGS`), the module
file and the .ui read as text (ast, XML), hand-written argv and JSON
progress lines (the format `learning.progress` documents), the engine's
renderer for the preview, and a real ``diffreg train --kind similarity``
process for the end-to-end run.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import re
import subprocess
import sys
import time
import types
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import slicer
import torch

from DiffRegLogic import mrml
from DiffRegLogic.drr import render
from DiffRegLogic.errors import InputError
from DiffRegLogic.mrml import settings, training
from DiffRegLogic.similarity.registry import RESIDUALS, SIMILARITIES

import test_mrml_bad_inputs as bad
from test_mrml_bad_inputs import ROOT, _never_read, _volume, refused

scene, phantom, case, panel = bad.scene, bad.phantom, bad.case, bad.panel  # the fixtures of the bad-input tests

MODULE = ROOT / "DiffReg" / "DiffReg.py"
UI = ROOT / "DiffReg" / "Resources" / "UI" / "DiffReg.ui"
LEARNED = settings.SIMILARITY_LEARNED
NEW_FIELDS = ("similarityModelPath", "polishSimilarity", "trainingKind", "trainingEmbedding")


def _engine_has_the_learned_similarity() -> bool:
    """DiffRegLogic.learning.similarity_inference exists and `diffreg train` takes ``--kind similarity``."""
    if importlib.util.find_spec("DiffRegLogic.learning.similarity_inference") is None:
        return False
    try:  # (an engine half-written while these tests run counts as not there)
        from DiffRegLogic.cli.app import build_parser

        build_parser().parse_args(["train", "--kind", "similarity", "--embedding", "so4", "--ct", "ct.nrrd",
                                   "--out", "sim.pt"])
    except (SystemExit, Exception):
        return False
    return True


needs_core = pytest.mark.skipif(not _engine_has_the_learned_similarity(), reason=(
    "the engine module DiffRegLogic.learning.similarity_inference (load_similarity, register_learned) or "
    "`diffreg train --kind similarity --embedding` is not in this checkout yet (the engine side of issue #17)"))


# --------------------------------------------------------------------------
# The fields, their choices, the parameter node and the .ui agree
# --------------------------------------------------------------------------


def test_choices_are_the_engine_names_plus_the_learned_similarity():
    assert settings.CHOICES["similarity"] == tuple(SIMILARITIES) + (LEARNED,) and LEARNED not in SIMILARITIES
    assert settings.SIMILARITIES == tuple(SIMILARITIES)  # the engine's own names are kept
    assert settings.CHOICES["polishSimilarity"] == ("none",) + tuple(SIMILARITIES)
    assert settings.CHOICES["trainingKind"] == ("pose network", "learned similarity")
    from DiffRegLogic.learning import so4

    assert settings.CHOICES["trainingEmbedding"] == tuple(so4.EMBEDDINGS)  # the engine's embeddings
    from DiffRegLogic.cli import train_similarity

    assert settings.EMBEDDINGS == tuple(train_similarity.EMBEDDINGS)  # what `train --embedding` accepts
    defaults = settings.Setup()
    assert (defaults.similarity, defaults.polishSimilarity, defaults.trainingKind, defaults.trainingEmbedding) == (
        "zncc", "zncc", settings.TRAINING_POSE, "so4")
    assert defaults.similarityModelPath == pathlib.Path() and "similarityModelPath" in settings.PATH_FIELDS
    assert set(settings.TRAINED_MODEL_FIELDS.values()) <= set(settings.PATH_FIELDS)
    assert [training.model_field(kind) for kind in settings.TRAINING_KINDS] == ["poseModelPath", "similarityModelPath"]
    with pytest.raises(InputError, match="trainingKind is 'gan'; choose one of pose network, learned similarity"):
        training.model_field("gan")


def _parameter_node_fields() -> dict[str, ast.AnnAssign]:
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DiffRegParameterNode")
    return {s.target.id: s for s in cls.body if isinstance(s, ast.AnnAssign)}


def test_parameter_node_and_ui_have_the_new_fields():
    fields = _parameter_node_fields()
    assert list(fields) == settings.Setup.field_names()  # same fields, same order
    tables = {"similarity": "SIMILARITY_CHOICES", "polishSimilarity": "POLISH_SIMILARITIES",
              "trainingKind": "TRAINING_KINDS", "trainingEmbedding": "EMBEDDINGS"}
    for name, table in tables.items():
        annotation = ast.unparse(fields[name].annotation)
        assert annotation == f"Annotated[str, Choice(list(settings.{table}))]", name
        assert getattr(settings, table) is settings.CHOICES[name], name
    assert ast.unparse(fields["similarityModelPath"].annotation) == "pathlib.Path"
    assert ast.unparse(fields["similarityModelPath"].value) == "pathlib.Path()"
    assert ast.unparse(fields["trainingKind"].value) == "settings.TRAINING_POSE"
    assert [ast.literal_eval(fields[n].value) for n in ("polishSimilarity", "trainingEmbedding")] == ["zncc", "so4"]

    root = ET.parse(UI).getroot()

    def bound(section: str) -> dict[str, ET.Element]:
        widget = next(w for w in root.iter("widget") if w.get("name") == section)
        out = {}
        for w in widget.iter("widget"):
            for prop in w.findall("property"):
                if prop.get("name") == "SlicerParameterName":
                    out[prop.find("string").text] = w
        return out

    options, train = bound("optionsCollapsibleButton"), bound("trainingCollapsibleButton")
    expected = {"similarityModelPath": (options, "ctkPathLineEdit", "similarityModelPathLineEdit"),
                "polishSimilarity": (options, "QComboBox", "polishSimilarityComboBox"),
                "trainingKind": (train, "QComboBox", "trainingKindComboBox"),
                "trainingEmbedding": (train, "QComboBox", "trainingEmbeddingComboBox")}
    for name, (section, cls, widget_name) in expected.items():
        assert section[name].get("class") == cls and section[name].get("name") == widget_name, name
    everywhere = [p.find("string").text for p in root.iter("property") if p.get("name") == "SlicerParameterName"]
    assert all(everywhere.count(name) == 1 for name in NEW_FIELDS)
    path = options["similarityModelPath"]
    props = {p.get("name"): p for p in path.findall("property")}
    assert set(props["filters"].find("set").text.split("|")) == {"ctkPathLineEdit::Files", "ctkPathLineEdit::Readable"}
    assert [s.text for s in props["nameFilters"].iter("string")] == ["*.pt"]
    # every row of the two form layouts is used once per column (the inserted rows renumbered the rest)
    for layout in ("optionsFormLayout", "trainingFormLayout"):
        items = next(e for e in root.iter("layout") if e.get("name") == layout).findall("item")
        cells = [(int(i.get("row")), c) for i in items
                 for c in ((0, 1) if i.get("colspan") == "2" else (int(i.get("column")),))]
        assert len(cells) == len(set(cells)) and {r for r, _ in cells} == set(range(max(r for r, _ in cells) + 1))


def test_new_fields_survive_the_parameter_node(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    setup = settings.Setup(similarity=LEARNED, similarityModelPath=pathlib.Path("/models/sim.pt"),
                           polishSimilarity="none", trainingKind=settings.TRAINING_SIMILARITY,
                           trainingEmbedding="euclidean")
    settings.write_parameter_node(node, setup)
    assert node.GetParameter("similarity") == "learned (model file)" and node.GetParameter("polishSimilarity") == "none"
    loaded = settings.read_parameter_node(node)
    assert loaded == setup and isinstance(loaded.similarityModelPath, pathlib.Path)


@pytest.mark.parametrize("field, value", [("polishSimilarity", "learned (model file)"), ("trainingKind", "pose"),
                                          ("trainingEmbedding", "so3"), ("similarity", "learned")])
def test_unknown_choices_are_refused(field, value):
    setup = settings.Setup(**{field: value})
    with pytest.raises(InputError, match=re.escape(f"{field} is '{value}'; choose one of")):
        setup.check_choices()


# --------------------------------------------------------------------------
# The training command, both kinds (exact argv)
# --------------------------------------------------------------------------


def test_training_command_for_both_kinds(tmp_path):
    ct, geometry, pose, model = (str(tmp_path / n) for n in ("ct.nrrd", "g.json", "p.json", "sim.pt"))
    common = dict(trainingMinutes=2.5, trainingImageSize=64, trainingMaxRotation=25.5, trainingMaxTranslation=40.0,
                  trainingBackbone="small", trainingDevice="cpu", trainingModelPath=pathlib.Path(model))
    similarity = settings.Setup(trainingKind=settings.TRAINING_SIMILARITY, trainingEmbedding="se3", **common)
    assert training.training_command("/opt/PythonSlicer", ct, geometry, model, similarity, pose) == [
        "/opt/PythonSlicer", "-u", "-m", "DiffRegLogic.cli", "train", "--kind", "similarity", "--ct", ct,
        "--geometry", geometry, "--reference-pose", pose, "--out", model, "--max-rot", "25.5", "--max-trans", "40",
        "--minutes", "2.5", "--image-size", "64", "--embedding", "se3", "--device", "cpu", "--progress", "json"]
    # the pose network: today's command, the embedding ignored
    pose_kind = settings.Setup(trainingKind=settings.TRAINING_POSE, trainingEmbedding="euclidean", **common)
    assert training.training_command("py", ct, geometry, model, pose_kind, steps=2) == [
        "py", "-u", "-m", "DiffRegLogic.cli", "train", "--ct", ct, "--geometry", geometry, "--out", model,
        "--max-rot", "25.5", "--max-trans", "40", "--steps", "2", "--image-size", "64", "--backbone", "small",
        "--device", "cpu", "--progress", "json"]
    # the similarity's defaults: so4, steps and extra arguments last
    defaults = settings.Setup(trainingKind=settings.TRAINING_SIMILARITY, trainingModelPath=pathlib.Path(model))
    assert training.training_command("py", ct, geometry, model, defaults, steps=3, extra_args=["--seed", 1])[5:] == [
        "--kind", "similarity", "--ct", ct, "--geometry", geometry, "--out", model, "--max-rot", "30",
        "--max-trans", "40", "--steps", "3", "--image-size", "128", "--embedding", "so4", "--device", "auto",
        "--progress", "json", "--seed", "1"]
    defaults.trainingEmbedding = "so4x"
    with pytest.raises(InputError, match="trainingEmbedding is 'so4x'"):
        training.training_command("py", ct, geometry, model, defaults)


# --------------------------------------------------------------------------
# The progress of a similarity training
# --------------------------------------------------------------------------

RECORDED = [
    '{"event": "start", "steps": 50, "minutes": null, "image_size": 32, "batch_size": 4, "device": "cpu"}\n',
    '{"event": "progress", "step": 10, "steps": 50, "fraction": 0.2, "elapsed_s": 4.0, "eta_s": 16.0, "loss": 0.9, '
    '"lr": 0.001, "images_per_s": 12.5, "val_cosine": null}\n',
    '{"event": "validation", "step": 25, "cosine": 0.7125, "baseline_cosine": 0.4975, "distance_corr": 0.7525}\r\n',
    '{"event": "checkpoint", "step": 25, "path": "/data/sim.pt"}\n',
    '{"event": "progress", "step": 30, "steps": 50, "fraction": 0.6, "elapsed_s": 12.0, "eta_s": 8.0, "loss": 0.45, ',
    '"lr": 0.0005, "images_per_s": 12.5, "val_cosine": 0.7125}\n',
]


def test_monitor_reads_a_similarity_run():
    monitor = training.TrainingMonitor("/data/sim.pt")
    monitor.feed("".join(RECORDED[:2]))
    status = monitor.status()
    assert monitor.fraction == 0.2 and status == "20% step 10/50, loss 0.9, val cosine ?, elapsed 0:04, ETA 0:16"
    monitor.feed(RECORDED[2])
    assert monitor.validation["cosine"] == 0.7125
    from DiffRegLogic.learning.progress import format_progress

    assert format_progress(monitor.validation) == (
        "Validation at step 25: cosine 0.71 (baseline 0.50), distance correlation 0.75")
    for chunk in RECORDED[3:]:
        monitor.feed(chunk)
    assert monitor.fraction == 0.6 and monitor.checkpoint["path"] == "/data/sim.pt"
    assert monitor.status() == "60% step 30/50, loss 0.45, val cosine 0.71, elapsed 0:12, ETA 0:08"
    assert "mTRE" not in monitor.status()
    monitor.feed('{"event": "done", "step": 50, "elapsed_s": 20.0, "cosine": 0.8812, "path": "/data/sim.pt"}\n')
    assert monitor.finish(0) == training.DONE and monitor.saved_path() == "/data/sim.pt"
    assert monitor.status() == "Training done: 50 steps in 0:20, cosine 0.88, saved /data/sim.pt"
    # a pose network's records keep their mTRE
    pose = {"event": "progress", "step": 1, "steps": 2, "fraction": 0.5, "loss": 2.0, "val_mtre_mm": 12.25}
    assert "val mTRE 12.2 mm" in format_progress(pose) and "cosine" not in format_progress(pose)
    assert format_progress({"event": "done", "step": 2, "elapsed_s": 1.0, "mtre_mm_median": 3.5}).endswith("3.50 mm")


# --------------------------------------------------------------------------
# Bad input: clear messages before any work; Levenberg-Marquardt allowed
# --------------------------------------------------------------------------


def test_learned_similarity_without_a_usable_model_is_refused_before_any_node_is_read(scene, case, monkeypatch,
                                                                                      tmp_path):
    _never_read(monkeypatch, "")
    setup = case.setup
    setup.similarity = LEARNED
    message = refused(scene, setup, r"no model file is chosen", actions=("register",))
    assert "Options > Similarity model file (similarityModelPath)" in message
    setup.similarityModelPath = tmp_path / "missing.pt"
    refused(scene, setup, rf"model file {tmp_path / 'missing.pt'} does not exist", actions=("register",))
    setup.similarityModelPath = tmp_path
    refused(scene, setup, "is a folder", actions=("register",))
    (tmp_path / "sim.pt").write_bytes(b"any")  # exists: the views are checked next
    setup.similarityModelPath = tmp_path / "sim.pt"
    setup.secondXrayVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "second")
    refused(scene, setup, r"registers one X-ray: clear Inputs > Second X-ray", actions=("register",))


def test_levenberg_marquardt_works_with_the_learned_similarity_and_its_polish(case):
    setup = case.setup
    setup.similarity, setup.optimizer = LEARNED, "lm"
    assert mrml.registration_options(setup).optimizer == "lm"  # the learned similarity has a residual
    setup.polishSimilarity = "mse"
    assert mrml.registration_options(setup).similarity == "mse"  # the polish measure, with its residual
    assert "ssim" not in RESIDUALS  # so LM cannot polish with it:
    setup.polishSimilarity = "ssim"
    with pytest.raises(InputError, match=r"Polish similarity \(polishSimilarity\) 'ssim' does not work with the "
                                         r"optimizer 'lm'.*has no least-squares residual.*or choose polish 'none'"):
        mrml.registration_options(setup)
    setup.polishSimilarity = "none"
    assert mrml.registration_options(setup).optimizer == "lm"
    setup.optimizer, setup.polishSimilarity = "adam", "ssim"  # a gradient optimiser polishes with anything
    assert mrml.registration_options(setup).similarity == "ssim"
    from DiffRegLogic.mrml.actions import similarity_label

    assert similarity_label(setup) == "learned + polish ssim"
    setup.polishSimilarity = "none"
    assert similarity_label(setup) == "learned"


def test_progress_of_the_two_stages_reads_as_one_run():
    """`register_learned` calls back from two registrations; the bar sees the polish as one more level."""
    from DiffRegLogic.mrml.actions import _stage_progress
    from DiffRegLogic.registration.results import Progress

    def progress(level, n_levels, total):
        return Progress(level, n_levels, 0, total, 0.5, 0.5, 0.1)

    learned = [progress(0, 2, 1), progress(0, 2, 2), progress(1, 2, 3), progress(1, 2, 4)]
    polish = [progress(0, 1, 1), progress(0, 1, 2)]
    remap = _stage_progress(polished=True)
    seen = [remap(info) for info in learned + polish]
    assert [(info.level, info.n_levels, stage) for info, stage in seen] == [
        (0, 3, 0), (0, 3, 0), (1, 3, 0), (1, 3, 0), (2, 3, 1), (2, 3, 1)]
    assert [info.total_iterations for info, _ in seen] == [1, 2, 3, 4, 1, 2]
    alone = _stage_progress(polished=False)
    assert [alone(info) for info in learned] == [(info, 0) for info in learned]  # no polish: as the engine says


def test_the_preview_needs_no_similarity_model(scene, case):
    setup = case.setup
    setup.similarity = LEARNED  # no model file: Render DRR still works
    outputs = mrml.render_preview(scene, setup)
    inputs = mrml.read_inputs(setup)
    with torch.no_grad():
        expected = render(inputs.volume, inputs.detector, inputs.pose)[0].numpy()
    np.testing.assert_allclose(slicer.util.arrayFromVolume(outputs.drr)[0], expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------
# The panel (DiffReg.py loaded as Slicer loads it)
# --------------------------------------------------------------------------


def _fill(node, setup) -> None:
    for name in settings.Setup.field_names():
        setattr(node, name, getattr(setup, name))


def test_panel_buttons_follow_the_learned_similarity_and_the_training_kind(scene, case, panel, tmp_path):
    widget, node = panel.widget, panel.widget._parameterNode
    _fill(node, case.setup)
    node.similarity = LEARNED
    widget._updateButtons(node)
    ui = widget.ui
    assert ui.renderButton.enabled is True and ui.registerButton.enabled is False
    assert "learned similarity's model file" in ui.registerButton.toolTip
    assert ui.similarityModelPathLineEdit.enabled is True and ui.polishSimilarityComboBox.enabled is True
    node.similarityModelPath = tmp_path / "sim.pt"
    widget._updateButtons(node)
    assert ui.registerButton.enabled is True and ui.registerButton.toolTip == ""
    node.similarity = "zncc"
    node.trainingKind = settings.TRAINING_SIMILARITY
    widget._updateButtons(node)
    assert ui.similarityModelPathLineEdit.enabled is False and ui.polishSimilarityComboBox.enabled is False
    assert ui.trainingBackboneComboBox.enabled is False and ui.trainingEmbeddingComboBox.enabled is True
    node.trainingKind = settings.TRAINING_POSE
    widget._updateButtons(node)
    assert ui.trainingBackboneComboBox.enabled is True and ui.trainingEmbeddingComboBox.enabled is False


def test_panel_trains_a_similarity_and_fills_its_model_path(scene, case, panel, tmp_path):
    """The Train button's logic builds the similarity command; its end fills similarityModelPath (not the pose's)."""
    widget, node = panel.widget, panel.widget._parameterNode
    _fill(node, case.setup)
    model = tmp_path / "sim.pt"
    node.trainingModelPath, node.trainingKind, node.trainingEmbedding = model, settings.TRAINING_SIMILARITY, "se3"
    done = '{"event": "done", "step": 2, "elapsed_s": 1.0, "cosine": 0.5, "path": "%s"}' % model.as_posix()
    launched = []

    def launch(argv, cwd):
        launched.append(argv)
        return subprocess.Popen([sys.executable, "-c", f"print({done!r})"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    run = widget.logic.startTraining(node, launch=launch)
    (argv,) = launched
    assert argv[5:7] == ["--kind", "similarity"] and argv[argv.index("--embedding") + 1] == "se3"
    assert "--backbone" not in argv and argv[argv.index("--out") + 1] == str(model)
    stopped = []
    widget._trainingTimer = types.SimpleNamespace(stop=lambda: stopped.append(True))
    widget._trainingRun, widget._trainingNode, widget._trainingKind = run, node, node.trainingKind
    deadline = time.monotonic() + 30.0
    while widget._trainingRun is not None and time.monotonic() < deadline:
        widget._onTrainingTimer()
        time.sleep(0.02)
    assert widget._trainingRun is None and stopped and run.monitor.state == training.DONE
    assert node.similarityModelPath == model and node.poseModelPath == pathlib.Path()
    assert "cosine 0.50" in widget.ui.trainingStatusLabel.text


# --------------------------------------------------------------------------
# A tiny real training through the bridge, then a registration on the model it wrote
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(phantom, tmp_path_factory):
    """``diffreg train --kind similarity --steps 2 --image-size 32`` on the exported tiny phantom (TrainingRun)."""
    hu, grid, image, truth = phantom
    folder = tmp_path_factory.mktemp("similarity")
    export = slicer.vtkMRMLScene()
    previous, slicer.mrmlScene = getattr(slicer, "mrmlScene", None), export
    try:
        ct = _volume(export, hu, grid, "CT")
        xray = _volume(export, image[None], np.diag([-bad.PIXEL, -bad.PIXEL, 1.0, 1.0]), "X-ray")
        setup = settings.Setup(inputVolume=ct, xrayVolume=xray, sdd=1000.0, primaryAngle=23.0, secondaryAngle=-8.0,
                               sourceToIsocenter=600.0, trainingKind=settings.TRAINING_SIMILARITY,
                               trainingImageSize=32, trainingDevice="cpu", trainingModelPath=folder / "sim.pt")
        files = training.export_training_inputs(setup, folder / "run")
    finally:
        export.Clear(1)
        slicer.mrmlScene = previous
    command = training.training_command(sys.executable, files.ct, files.geometry, setup.trainingModelPath, setup,
                                        files.reference_pose, steps=2,
                                        extra_args=["--batch-size", "2", "--pool-pairs", "4"])
    process = subprocess.Popen(command, cwd=training.engine_root(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    run = training.TrainingRun(process, training.TrainingMonitor(setup.trainingModelPath))
    started = time.monotonic()
    run.wait(timeout=300)
    return types.SimpleNamespace(run=run, model=setup.trainingModelPath, command=command,
                                 seconds=time.monotonic() - started)


@needs_core
def test_tiny_similarity_training_through_the_bridge(trained):
    monitor = trained.run.monitor
    assert monitor.state == training.DONE, (monitor.error, list(monitor.lines))
    assert trained.model.is_file() and monitor.saved_path() == str(trained.model)
    assert [r["event"] for r in monitor.records][0] == "start" and monitor.done["step"] == 2
    assert monitor.fraction == 1.0 and "cosine" in monitor.done and "mTRE" not in monitor.status()
    from DiffRegLogic.learning.similarity_inference import load_similarity

    model = load_similarity(str(trained.model))  # the file is a similarity model of the asked embedding
    assert model.info["kind"] == "similarity" and model.info["embedding"] == "so4" and model.residual is not None


@needs_core
def test_registration_on_the_trained_similarity(scene, case, trained, tmp_path):
    assert trained.run.monitor.state == training.DONE, list(trained.run.monitor.lines)
    setup = case.setup
    setup.similarity, setup.similarityModelPath, setup.levels, setup.iterations = LEARNED, trained.model, "2 1", 3
    calls = []
    done = mrml.run_registration(scene, setup, progress=lambda info, text: calls.append(text))
    matrix = mrml.transform_matrix(done.outputs.transform)
    np.testing.assert_allclose(matrix, np.linalg.inv(done.result.pose.numpy()), atol=1e-9)  # C-arm in patient
    assert done.similarity == "learned + polish zncc" and "learned + polish zncc: zncc" in done.message
    stages = done.result.stages
    assert [stage["similarity"] for stage in stages] == ["learned", "zncc"] and "stages: learned" in done.message
    assert done.result.iterations == sum(stage["iterations"] for stage in stages)
    # the progress runs over both stages: 2 learned levels, then the polish as level 3 of 3
    measures = [(text.split(": ")[0].split(",")[0], text.split(": ")[1].split()[0]) for text in calls]
    assert len(calls) == done.result.iterations and measures[0] == ("level 1/3", "learned")
    polish = [m for m in measures if m[1] == "zncc"]
    assert len(polish) == stages[1]["iterations"] and set(polish) == {("level 3/3", "zncc")}
    assert measures[:len(measures) - len(polish)] == [m for m in measures if m[1] == "learned"]
    drr = slicer.util.arrayFromVolume(done.outputs.drr)[0]
    with torch.no_grad():
        expected = render(mrml.volume_from_node(case.ct), mrml.read_inputs(setup).detector, done.result.pose)[0]
    np.testing.assert_allclose(drr, expected.numpy(), rtol=1e-5, atol=1e-5)  # the DRR shows the written pose
    # no polish: the learned similarity's pose and numbers alone
    setup.polishSimilarity, setup.levels = "none", "2"
    alone = mrml.run_registration(scene, setup)
    assert [stage["similarity"] for stage in alone.result.stages] == ["learned"] and alone.similarity == "learned"
    assert alone.message.split(" in ")[0].endswith(
        f"learned {alone.result.initial_similarity:.4f} -> {alone.result.similarity:.4f}")
    assert "polish" not in alone.message and alone.outputs.transform is done.outputs.transform
    np.testing.assert_allclose(mrml.transform_matrix(alone.outputs.transform),
                               np.linalg.inv(alone.result.pose.numpy()), atol=1e-9)
    # files that are no similarity model for this CT: the model file's own message, before any output
    from DiffRegLogic.learning import checkpoint

    data = torch.load(trained.model, weights_only=False)
    torch.save({**data, "format": checkpoint.FORMAT}, tmp_path / "pose.pt")  # says it is a pose network
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    setup.outputTransform = setup.outputDrr = None
    for name, match in (("pose.pt", "is a DiffReg pose network, not a learned similarity"),
                        ("junk.pt", "is not a readable DiffReg learned similarity")):
        setup.similarityModelPath = tmp_path / name
        refused(scene, setup, match, actions=("register",))
    setup.similarityModelPath = trained.model
    voxels = slicer.util.arrayFromVolume(case.ct)
    voxels[0, 0, 0] += 100.0  # another CT for the patient-specific model
    slicer.util.arrayFromVolumeModified(case.ct)
    refused(scene, setup, "was trained on another CT", actions=("register",))
