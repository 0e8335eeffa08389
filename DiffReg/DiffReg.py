"""DiffReg: register a patient's CT to an intra-operative X-ray in 3D Slicer.

The scripted module (module, parameter node, widget, logic, self-test) is a
thin layer: every action calls the engine through `DiffRegLogic.mrml`, which
is tested outside the application against real MRML. The engine package
`DiffRegLogic` sits beside this file in the packaged extension, and one folder
up in a source checkout (added to ``sys.path`` below).

Slicer runs this file as the Python module ``DiffReg`` and finds the classes by
name (``DiffReg``, ``DiffRegWidget``, ...); the logic class must be called
``DiffRegLogic`` (its module name, hence its parameter node, is the class name
without "Logic"). That class rebinds the global name ``DiffRegLogic``, so the
engine is only ever reached through ``from DiffRegLogic... import ...``
statements, which the import system resolves in ``sys.modules``, never
through the bare name (a test checks this).
"""

import contextlib
import importlib.util
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import unittest
from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def _addEngineToPath() -> None:
    """Make the DiffRegLogic package importable: beside this file (extension) or one folder up (source checkout)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(folder, "DiffRegLogic", "__init__.py")):
            if folder not in sys.path:
                sys.path.insert(0, folder)  # first: this checkout's engine wins over any pip-installed copy
            return


_addEngineToPath()
from DiffRegLogic.mrml import settings  # noqa: E402  (no torch, no VTK; the rest of the engine: on first use)

README_URL = "https://github.com/diffreg/diffreg#readme"
TORCH_REQUIREMENT = ">=2.1"
TRAINING_POLL_MS = 500
"""How often the panel reads the training process's output (ms)."""


#
# DiffReg
#


class DiffReg(ScriptedLoadableModule):
    """Module description shown in Slicer's Help & Acknowledgement section."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DiffReg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["DiffReg developers"]
        self.parent.helpText = _(
            "Registers a CT volume to an intra-operative X-ray (2D/3D rigid registration) with a differentiable "
            "DRR renderer and gradient-based optimisation, coarse to fine.<br><br>"
            "Pick the CT (Hounsfield units) and the X-ray (a single-slice volume), check the C-arm geometry "
            "(read from the X-ray's DICOM tags when present), give a start (C-arm angles, a transform, or a pose "
            "network trained on this CT), press <b>Render DRR</b> to preview and <b>Register</b> to optimise.<br><br>"
            "<b>Train pose network</b> trains, in a background process, a network on DRRs of this CT around the "
            "start view; with the start 'pose network (model file)' it predicts the start from the X-ray "
            "itself. With Network 'learned similarity' it trains a similarity instead: the similarity "
            "'learned (model file)' then registers on it and polishes with an image similarity.<br><br>"
            "Geometry convention: the output transform places the C-arm frame in patient RAS (source at the "
            "origin, +z along the principal ray towards the detector, +x along detector columns, +y along rows, "
            "mm); the CT does not move. The DRR and a copy of the X-ray lie on the detector plane under that "
            "transform, with the source and detector outline as a model. Choose 'patient in C-arm' to get the "
            "transform that moves the CT instead.<br><br>"
            'See the <a href="{url}">README</a> for details.'
        ).format(url=README_URL)
        self.parent.acknowledgementText = _(
            "DiffReg is an open-source project. Its registration method follows the differentiable-DRR approach "
            "of DiffDRR (Gopalakrishnan and Golland). Module layout after Slicer's scripted-module template."
        )


#
# DiffRegParameterNode
#


@parameterNodeWrapper
class DiffRegParameterNode:
    """Every setting of the panel (same names, defaults and choices as DiffRegLogic.mrml.settings.Setup).

    The choices of renderer, similarity, optimiser and intensity convention are
    the engine's registries (through `settings`). Units: mm, degrees, pixels.
    Zero geometry numbers mean "read from the X-ray".
    """

    # inputs
    inputVolume: vtkMRMLScalarVolumeNode
    xrayVolume: vtkMRMLScalarVolumeNode
    xrayIntensity: Annotated[str, Choice(list(settings.INTENSITIES))] = "auto"
    secondXrayVolume: vtkMRMLScalarVolumeNode
    # geometry
    sdd: Annotated[float, WithinRange(0.0, 10000.0)] = 0.0
    pixelSpacingRow: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    pixelSpacingColumn: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    principalPointAtCenter: bool = True
    principalPointColumn: Annotated[float, WithinRange(-100000.0, 100000.0)] = 0.0
    principalPointRow: Annotated[float, WithinRange(-100000.0, 100000.0)] = 0.0
    # initial pose
    initialPoseMode: Annotated[str, Choice(list(settings.INITIAL_POSE_MODES))] = settings.POSE_FROM_ANGLES
    initialTransform: vtkMRMLLinearTransformNode
    primaryAngle: Annotated[float, WithinRange(-180.0, 180.0)] = 0.0
    secondaryAngle: Annotated[float, WithinRange(-90.0, 90.0)] = 0.0
    sourceToIsocenter: Annotated[float, WithinRange(0.0, 10000.0)] = 0.0
    poseModelPath: pathlib.Path = pathlib.Path()
    secondAnglesFromXray: bool = True
    secondPrimaryAngle: Annotated[float, WithinRange(-180.0, 180.0)] = 90.0
    secondSecondaryAngle: Annotated[float, WithinRange(-90.0, 90.0)] = 0.0
    # options
    renderer: Annotated[str, Choice(list(settings.RENDERERS))] = "siddon"
    similarity: Annotated[str, Choice(list(settings.SIMILARITY_CHOICES))] = "zncc"
    similarityModelPath: pathlib.Path = pathlib.Path()
    polishSimilarity: Annotated[str, Choice(list(settings.POLISH_SIMILARITIES))] = "zncc"
    optimizer: Annotated[str, Choice(list(settings.OPTIMIZERS))] = "adam"
    levels: str = "8 4 2 1"
    iterations: Annotated[int, WithinRange(1, 100000)] = 150
    starts: Annotated[int, WithinRange(1, 1000)] = 1
    device: Annotated[str, Choice(list(settings.DEVICES))] = "auto"
    maxMemoryMb: Annotated[float, WithinRange(16.0, 1048576.0)] = 2048.0
    polychromatic: bool = False
    tubeVoltage: Annotated[float, WithinRange(60.0, 120.0)] = 80.0
    filtrationMmAl: Annotated[float, WithinRange(0.0, 20.0)] = 0.0
    search: Annotated[str, Choice(list(settings.SEARCHES))] = "local"
    searchRotation: Annotated[float, WithinRange(0.0, 180.0)] = 45.0
    searchTranslation: Annotated[float, WithinRange(0.0, 1000.0)] = 60.0
    robust: Annotated[str, Choice(list(settings.ROBUST_WEIGHTS))] = "none"
    footprintMask: bool = False
    nuisance: Annotated[str, Choice(list(settings.NUISANCES))] = "none"
    # training a network (background process): the pose network or the learned similarity
    trainingKind: Annotated[str, Choice(list(settings.TRAINING_KINDS))] = settings.TRAINING_POSE
    trainingMinutes: Annotated[float, WithinRange(0.1, 10080.0)] = 10.0
    trainingImageSize: Annotated[int, WithinRange(32, 1024)] = 128
    trainingMaxRotation: Annotated[float, WithinRange(0.0, 180.0)] = 30.0
    trainingMaxTranslation: Annotated[float, WithinRange(0.0, 1000.0)] = 40.0
    trainingBackbone: Annotated[str, Choice(list(settings.BACKBONES))] = "efficientnet-b0"
    trainingEmbedding: Annotated[str, Choice(list(settings.EMBEDDINGS))] = "so4"
    trainingDevice: Annotated[str, Choice(list(settings.DEVICES))] = "auto"
    trainingModelPath: pathlib.Path = pathlib.Path()
    # outputs
    transformMeaning: Annotated[str, Choice(list(settings.TRANSFORM_MEANINGS))] = settings.CARM_IN_PATIENT
    outputTransform: vtkMRMLLinearTransformNode
    outputDrr: vtkMRMLScalarVolumeNode
    overlayMode: Annotated[str, Choice(list(settings.OVERLAY_MODES))] = "blend"
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


#
# DiffRegWidget
#


class DiffRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds Resources/UI/DiffReg.ui to the parameter node and calls the logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False
        self._lastXrayID = None
        self._lastOverlay = None
        self._chart = None
        self._runIterations = 1
        self._trainingRun = None  # DiffRegLogic.mrml.TrainingRun while a training process runs
        self._trainingNode = None  # the parameter node the training was started from
        self._trainingKind = settings.TRAINING_POSE  # what it trains (settings.TRAINING_KINDS)
        self._trainingTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DiffReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DiffRegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.readGeometryButton.connect("clicked(bool)", self.onReadGeometryButton)
        self.ui.renderButton.connect("clicked(bool)", self.onRenderButton)
        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.showChartButton.connect("clicked(bool)", self.onShowChartButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTrainingButton)
        self.ui.cancelButton.enabled = False
        self.ui.stopTrainingButton.enabled = False
        self.ui.progressBar.setValue(0)
        self.ui.trainingProgressBar.setValue(0)

        import qt  # the application's; imported here so that the module file loads without it (tests)

        self._trainingTimer = qt.QTimer()
        self._trainingTimer.setInterval(TRAINING_POLL_MS)
        self._trainingTimer.connect("timeout()", self._onTrainingTimer)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._trainingTimer is not None:
            self._trainingTimer.stop()
        if self._trainingRun is not None:  # the module is closed (Slicer exits): end the process, keep its checkpoint
            self._trainingRun.shutdown()  # waits for the checkpoint (kills after 10 s), removes the exported CT
            self._trainingRun = None

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._parameterNode = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._lastXrayID = self._xrayID()
            self._onParameterNodeModified()

    def _xrayID(self):
        node = self._parameterNode.xrayVolume if self._parameterNode else None
        return node.GetID() if node else None

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Enable buttons for valid inputs; auto-fill geometry when a new X-ray is picked; follow overlay settings."""
        node = self._parameterNode
        if node is None:
            return
        self._updateButtons(node)
        torchReady = importlib.util.find_spec("torch") is not None  # the engine needs it; installed on first action
        xrayID = self._xrayID()
        if xrayID != self._lastXrayID:
            self._lastXrayID = xrayID
            if xrayID and torchReady:
                try:
                    self.ui.statusLabel.text = self.logic.fillGeometry(node)
                except Exception as error:  # an observer must not raise: report in the panel
                    if not _isInputError(error):  # bad input is its message alone; anything else is a bug
                        logging.exception("DiffReg: reading the X-ray geometry failed")
                    self.ui.statusLabel.text = _("Could not read the X-ray geometry: {error}").format(error=error)
        overlay = (node.overlayMode, node.overlayOpacity)
        if overlay != self._lastOverlay and torchReady and not self._running and node.outputDrr is not None:
            self._lastOverlay = overlay
            try:
                self.logic.showOverlay(node)
            except Exception as error:  # e.g. no DRR rendered into these outputs yet
                self.ui.statusLabel.text = str(error)

    def _updateButtons(self, node) -> None:
        """Enable what the current settings allow; disabled buttons say why in their tooltip."""
        self.ui.principalPointColumnSpinBox.enabled = not node.principalPointAtCenter
        self.ui.principalPointRowSpinBox.enabled = not node.principalPointAtCenter
        fromTransform = node.initialPoseMode == settings.POSE_FROM_TRANSFORM
        self.ui.initialTransformSelector.enabled = fromTransform
        self.ui.poseModelPathLineEdit.enabled = node.initialPoseMode == settings.POSE_FROM_NETWORK
        for widget in (self.ui.primaryAngleSliderWidget, self.ui.secondaryAngleSliderWidget,
                       self.ui.sourceToIsocenterSpinBox):  # with the network: the training's reference view
            widget.enabled = not fromTransform
        for widget in (self.ui.tubeVoltageSpinBox, self.ui.filtrationSpinBox):
            widget.enabled = node.polychromatic
        learned = node.similarity == settings.SIMILARITY_LEARNED
        self.ui.similarityModelPathLineEdit.enabled = learned
        self.ui.polishSimilarityComboBox.enabled = learned
        for widget in (self.ui.searchRotationSpinBox, self.ui.searchTranslationSpinBox):
            widget.enabled = node.search != "local"
        secondView = node.secondXrayVolume is not None
        self.ui.secondAnglesFromXrayCheckBox.enabled = secondView
        for widget in (self.ui.secondPrimaryAngleSliderWidget, self.ui.secondSecondaryAngleSliderWidget):
            widget.enabled = secondView and not node.secondAnglesFromXray
        reason = self._whyNotReady(node)
        self.ui.renderButton.enabled = reason is None
        self.ui.renderButton.toolTip = reason or ""
        reason = reason or self._whyNotReadyToRegister(node)  # the preview needs no similarity model
        self.ui.registerButton.enabled = reason is None
        self.ui.registerButton.toolTip = reason or ""
        self.ui.readGeometryButton.enabled = node.xrayVolume is not None and not self._running
        training = self._trainingRun is not None
        reason = self._whyNotReadyToTrain(node)
        similarity = node.trainingKind == settings.TRAINING_SIMILARITY
        self.ui.trainButton.enabled = reason is None
        self.ui.trainButton.toolTip = reason or (
            _("Train a learned similarity on DRRs of the CT in a background process") if similarity else
            _("Train a pose network on DRRs of the CT in a background process"))
        self.ui.stopTrainingButton.enabled = training
        for widget in (self.ui.trainingKindComboBox, self.ui.trainingMinutesSpinBox, self.ui.trainingImageSizeSpinBox,
                       self.ui.trainingMaxRotationSpinBox, self.ui.trainingMaxTranslationSpinBox,
                       self.ui.trainingDeviceComboBox, self.ui.trainingModelPathLineEdit):
            widget.enabled = not training
        self.ui.trainingBackboneComboBox.enabled = not training and not similarity  # the pose network's
        self.ui.trainingEmbeddingComboBox.enabled = not training and similarity  # the learned similarity's

    def _whyNotReadyToTrain(self, node):
        if self._trainingRun is not None:
            return _("A training is running")
        if node.inputVolume is None:
            return _("Select the input CT volume")
        if node.xrayVolume is None:
            return _("Select the input X-ray: its size and the Geometry section give the detector to train for")
        if not settings.path_is_set(node.trainingModelPath):
            return _("Choose where to save the model (Save model as)")
        if node.initialPoseMode == settings.POSE_FROM_TRANSFORM and node.initialTransform is None:
            return _("Select the initial transform (the reference view), or start from C-arm angles")
        return None

    def _whyNotReady(self, node):
        if self._running:
            return _("A registration is running")
        if node.inputVolume is None:
            return _("Select the input CT volume")
        if node.xrayVolume is None:
            return _("Select the input X-ray")
        if node.initialPoseMode == settings.POSE_FROM_TRANSFORM and node.initialTransform is None:
            return _("Select the initial transform, or start from C-arm angles")
        if node.initialPoseMode == settings.POSE_FROM_NETWORK and not settings.path_is_set(node.poseModelPath):
            return _("Choose the pose network's model file under Initial pose, or train one")
        return None

    def _whyNotReadyToRegister(self, node):
        if node.similarity == settings.SIMILARITY_LEARNED and not settings.path_is_set(node.similarityModelPath):
            return _("Choose the learned similarity's model file under Options, or train one "
                     "(Train pose network, Network 'learned similarity')")
        if node.similarity == settings.SIMILARITY_LEARNED and node.secondXrayVolume is not None:
            return _("The learned similarity registers one X-ray: clear the second X-ray, or pick an image "
                     "similarity")
        return None

    # ---- actions --------------------------------------------------------

    def onReadGeometryButton(self) -> None:
        with self._errorDisplay(_("Could not read the X-ray geometry."), waitCursor=True):
            ensureDependencies(self.resourcePath("requirements.txt"))
            self.ui.statusLabel.text = self.logic.fillGeometry(self._parameterNode)

    def onRenderButton(self) -> None:
        with self._errorDisplay(_("Failed to render the DRR."), waitCursor=True):
            ensureDependencies(self.resourcePath("requirements.txt"))
            self.logic.renderPreview(self._parameterNode, confirmCpuRetry=self._confirmCpuRetry)
            self._showOverlay(fit=True)
            self.ui.statusLabel.text = _("DRR rendered at the initial pose")

    def onRegisterButton(self) -> None:
        node = self._parameterNode  # kept: the scene may be closed while events are processed during the run
        with self._errorDisplay(_("Registration failed."), waitCursor=False):
            ensureDependencies(self.resourcePath("requirements.txt"))
            self._setRunning(True)
            self._runIterations = max(1, node.iterations)
            try:
                done = self.logic.register(node, self._onProgress, self._isCancelRequested,
                                           confirmCpuRetry=self._confirmCpuRetry)
            finally:
                self._setRunning(False)
            result = done.result
            self.ui.statusLabel.text = done.message
            self.ui.resultsLabel.text = _(
                "{similarity}: {before:.4f} → {after:.4f} · iterations {iterations} · {seconds:.1f} s · {state}"
            ).format(similarity=done.similarity or node.similarity, before=result.initial_similarity,
                     after=result.similarity, iterations=result.iterations, seconds=result.seconds,
                     state=_("converged") if result.converged else (
                         _("cancelled") if result.cancelled else _("not converged")))
            if done.notes:  # the network's start, detected conventions, the views' similarities, the wide search
                self.ui.resultsLabel.text += " · " + " · ".join(done.notes)
            self.ui.progressBar.setValue(100 if not result.cancelled else self.ui.progressBar.value)
            self._chart = done.chart
            if self._parameterNode is node:
                self._showOverlay(fit=True)

    def onCancelButton(self) -> None:
        self._cancelRequested = True
        self.ui.statusLabel.text = _("Cancelling: the best pose so far will be kept")

    def onTrainButton(self) -> None:
        """Export the inputs and start the training process; a timer then follows it (the GUI never waits)."""
        node = self._parameterNode
        with self._errorDisplay(_("Could not start the training."), waitCursor=True):
            ensureDependencies(self.resourcePath("requirements.txt"))
            modelPath = node.trainingModelPath
            if os.path.isfile(modelPath) and not slicer.util.confirmOkCancelDisplay(
                    _("{path} exists. Replace it with the new model?").format(path=modelPath)):
                return
            self.ui.trainingProgressBar.setValue(0)
            self.ui.trainingStatusLabel.text = _("Exporting the CT and the geometry…")
            slicer.app.processEvents()
            self._trainingRun = self.logic.startTraining(node)
            self._trainingNode, self._trainingKind = node, node.trainingKind
            self.ui.trainingStatusLabel.text = self._trainingRun.monitor.status()
            self._trainingTimer.start()
            self._onParameterNodeModified()

    def onStopTrainingButton(self) -> None:
        if self._trainingRun is not None:
            self._trainingRun.cancel()
            self.ui.trainingStatusLabel.text = self._trainingRun.monitor.status()

    def _onTrainingTimer(self) -> None:
        """Every TRAINING_POLL_MS: the process's new output into the bar and the status line; its end."""
        run = self._trainingRun
        if run is None:
            self._trainingTimer.stop()
            return
        try:
            finished = run.poll()
        except Exception:  # a timer slot must not raise: report and stop following the process
            logging.exception("DiffReg: following the training process failed")
            run.cancel()
            finished = True
        monitor = run.monitor
        self.ui.trainingProgressBar.setValue(int(round(100 * monitor.fraction)))
        self.ui.trainingStatusLabel.text = monitor.status()
        if not finished:
            return
        self._trainingTimer.stop()
        self._trainingRun = None
        logging.info("DiffReg training: %s", monitor.status())
        if monitor.state == "failed":
            logging.warning("DiffReg training output (last lines):\n%s", "\n".join(monitor.lines))
            slicer.util.errorDisplay(monitor.status(), detailedText="\n".join(monitor.lines))
        saved, trained = monitor.saved_path(), self._trainingNode
        self._trainingNode = None
        if saved and monitor.state in ("done", "cancelled") and trained is not None \
                and trained.parameterNode.GetScene() is not None:  # its scene was not closed meanwhile
            # ready for the start 'pose network (model file)', or the similarity 'learned (model file)'
            setattr(trained, settings.TRAINED_MODEL_FIELDS[self._trainingKind], pathlib.Path(saved))
        if self._parameterNode is not None:
            self._onParameterNodeModified()

    def onShowChartButton(self) -> None:
        chart = self._chart or self.logic.lossChart(self._parameterNode)
        if chart is None:
            slicer.util.errorDisplay(_("Register first: the loss curve is drawn from the last registration."))
            return
        slicer.modules.plots.logic().ShowChartInLayout(chart)

    # ---- helpers --------------------------------------------------------

    @contextlib.contextmanager
    def _errorDisplay(self, message: str, waitCursor: bool):
        """``slicer.util.tryWithErrorDisplay``, except for bad input (the engine's InputError).

        Bad input is shown as the heading and the engine's message (what is
        wrong, what to do) in the error dialog and the status line, without
        a traceback, and goes no further; any other exception is a bug and
        keeps Slicer's dialog with the traceback, raised on.
        """
        with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
            try:
                yield
            except Exception as error:
                if not _isInputError(error):
                    raise
                logging.warning("DiffReg: %s %s", message, error)
                self.ui.statusLabel.text = str(error)
                slicer.util.errorDisplay(f"{message}\n\n{error}")

    @staticmethod
    def _confirmCpuRetry(message: str) -> bool:
        """Asked when a run went out of GPU memory: retry this run on the CPU (the Device setting stays)?"""
        return slicer.util.confirmYesNoDisplay(message)

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self._cancelRequested = False
        self.ui.cancelButton.enabled = running
        if running:
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.text = _("Registering…")
        self._onParameterNodeModified()

    def _isCancelRequested(self) -> bool:
        return self._cancelRequested

    def _onProgress(self, progress, text: str) -> None:
        """Called by the engine after every iteration: update the bar, keep the GUI responsive."""
        iterations = self._runIterations
        fraction = (progress.level + min(1.0, (progress.iteration + 1) / iterations)) / progress.n_levels
        self.ui.progressBar.setValue(int(100 * fraction))
        self.ui.statusLabel.text = text
        slicer.app.processEvents()

    def _showOverlay(self, fit: bool) -> None:
        self.logic.showOverlay(self._parameterNode)
        layoutManager = slicer.app.layoutManager()  # None without a main window (e.g. --no-main-window tests)
        if fit and layoutManager is not None:
            sliceWidget = layoutManager.sliceWidget("Red")
            if sliceWidget is not None:
                sliceWidget.sliceLogic().FitSliceToAll()


def _isInputError(error: BaseException) -> bool:
    """Whether ``error`` is the engine's bad-input error (its message is meant for the user as it is)."""
    from DiffRegLogic.errors import InputError  # torch-free

    return isinstance(error, InputError)


#
# Dependencies
#


def ensureDependencies(requirementsPath: str) -> None:
    """Make torch (through the PyTorch extension) and the requirements importable; ask before installing anything.

    Called from button handlers only, never at import. Raises RuntimeError with
    what to do when a dependency is missing and not installed.
    """
    if importlib.util.find_spec("torch") is None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError as error:
            raise RuntimeError(_(
                "DiffReg needs PyTorch, which Slicer installs through the 'PyTorch' extension. Install that "
                "extension from the Extensions Manager, restart Slicer, and try again.")) from error
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torch = torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                raise RuntimeError(_("PyTorch was not installed; DiffReg cannot run without it."))
    try:
        from slicer import packaging as slicerPackaging  # Slicer >= 5.11
    except ImportError:
        slicerPackaging = None
    if slicerPackaging is not None and hasattr(slicerPackaging, "pip_ensure"):
        slicerPackaging.pip_ensure(slicerPackaging.load_requirements(requirementsPath), requester="DiffReg")
        return
    from DiffRegLogic.mrml import dependencies

    missing = dependencies.missing_requirements(dependencies.read_requirements(requirementsPath))
    if not missing:
        return
    if not slicer.util.confirmOkCancelDisplay(
            _("DiffReg needs these Python packages: {packages}. Install them now?").format(packages=", ".join(missing))):
        raise RuntimeError(_("Missing Python packages: {packages}").format(packages=", ".join(missing)))
    slicer.util.pip_install(missing)


#
# DiffRegLogic
#


class DiffRegLogic(ScriptedLoadableModuleLogic):
    """Thin: turns the parameter node into a Setup and calls the engine's MRML bridge. No GUI calls.

    The engine is imported inside the methods, after the widget made sure
    torch is installed. Named by the template (module name = class name
    without "Logic"); the engine package of the same name is only imported by
    name (``from DiffRegLogic import mrml``), never used through this global.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return DiffRegParameterNode(super().getParameterNode())

    @staticmethod
    def _fileForInstance(uid: str):
        database = getattr(slicer, "dicomDatabase", None)
        return database.fileForInstance(uid) if database is not None else None

    @staticmethod
    def _storeOutputs(parameterNode, setup) -> None:
        """Output nodes the engine created for ``setup`` go into the parameter node (the next run reuses them)."""
        if setup.outputTransform is not None and parameterNode.outputTransform is not setup.outputTransform:
            parameterNode.outputTransform = setup.outputTransform
        if setup.outputDrr is not None and parameterNode.outputDrr is not setup.outputDrr:
            parameterNode.outputDrr = setup.outputDrr

    def _runWithCpuFallback(self, parameterNode, action, confirmCpuRetry=None):
        """``action(setup)`` on the Setup of the parameter node, retried on the CPU when it runs out of GPU memory.

        The retry (only when ``confirmCpuRetry(message)`` returns True) runs
        on a copy of the Setup with device "cpu"
        (`DiffRegLogic.mrml.with_cpu_fallback`): the parameter node keeps the
        user's device. Output nodes any attempt created are stored in the
        parameter node.
        """
        from DiffRegLogic import mrml

        def attempt(setup):
            try:
                result = action(setup)
            finally:
                self._storeOutputs(parameterNode, setup)
            if setup.device != parameterNode.device:
                logging.info("DiffReg: ran on the %s after running out of memory (Device stays %r)", setup.device,
                             parameterNode.device)
            return result

        setup = settings.Setup.from_object(parameterNode)
        return mrml.with_cpu_fallback(setup, attempt, confirmCpuRetry or (lambda message: False))

    def fillGeometry(self, parameterNode, overwrite: bool = True) -> str:
        """Geometry fields from the X-ray (what it states replaces the current values; the rest is kept)."""
        from DiffRegLogic import mrml

        setup = settings.Setup.from_object(parameterNode)
        before = settings.Setup.from_object(parameterNode)
        geo = mrml.fill_geometry(setup, self._fileForInstance, overwrite=overwrite)
        with slicer.util.NodeModify(parameterNode):  # one Modified event for all fields
            for name in settings.Setup.field_names():  # write back exactly the fields the engine filled in
                value = getattr(setup, name)
                if name not in settings.NODE_FIELDS and value != getattr(before, name):
                    # the wrapper takes the field's own Python type (float, not a numpy scalar)
                    setattr(parameterNode, name, type(getattr(before, name))(value))
        source = _("DICOM tags of {path}").format(path=geo.source) if geo.source != "node" else _("the node spacing")
        return _("Geometry read from {source}").format(source=source)

    def renderPreview(self, parameterNode, confirmCpuRetry=None):
        """DRR at the initial pose into the output nodes (created when empty).

        Out of GPU memory: once more on the CPU when ``confirmCpuRetry(message)``
        returns True; the parameter node keeps its device.
        """
        from DiffRegLogic import mrml

        def render(setup):
            return mrml.render_preview(slicer.mrmlScene, setup, file_for_instance=self._fileForInstance)

        return self._runWithCpuFallback(parameterNode, render, confirmCpuRetry)

    def register(self, parameterNode, progress=None, cancel=None, confirmCpuRetry=None):
        """Register; returns the engine's SceneResult. ``progress(Progress, text)``, ``cancel() -> bool``.

        Out of GPU memory: once more on the CPU when ``confirmCpuRetry(message)``
        returns True; the parameter node keeps its device.
        """
        from DiffRegLogic import mrml

        def run(setup):
            return mrml.run_registration(slicer.mrmlScene, setup, progress=progress, cancel=cancel,
                                         file_for_instance=self._fileForInstance)

        done = self._runWithCpuFallback(parameterNode, run, confirmCpuRetry)
        logging.info("DiffReg: %s", done.message)
        return done

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python for console processes (PythonSlicer), else this interpreter."""
        return shutil.which("PythonSlicer") or sys.executable

    def startTraining(self, parameterNode, launch=None):
        """Start ``diffreg train`` in a background process for the parameter node; returns its `TrainingRun`.

        ``trainingKind`` picks the network: the pose network, or the learned
        similarity (``diffreg train --kind similarity --embedding ...``).

        The CT, detector and reference view are written to a temporary
        folder (removed when the process ended); the model goes to
        ``trainingModelPath``. ``launch(argv, cwd) -> Popen`` (default:
        ``slicer.util.launchConsoleProcess`` with Slicer's environment).
        The caller polls the run (`TrainingRun.poll`); nothing here waits.
        """
        from DiffRegLogic import mrml

        setup = settings.Setup.from_object(parameterNode)
        mrml.check_training_fields(setup)
        base = getattr(getattr(slicer, "app", None), "temporaryPath", None)
        folder = tempfile.mkdtemp(prefix="DiffRegTraining-", dir=base if base and os.path.isdir(base) else None)
        try:
            files = mrml.export_training_inputs(setup, folder, self._fileForInstance)
            command = mrml.training_command(self.pythonExecutable(), files.ct, files.geometry,
                                            setup.trainingModelPath, setup, files.reference_pose)
            logging.info("DiffReg: training: %s", " ".join(command))
            if launch is None:
                process = slicer.util.launchConsoleProcess(command, useStartupEnvironment=False,
                                                           cwd=mrml.engine_root())
            else:
                process = launch(command, mrml.engine_root())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        monitor = mrml.TrainingMonitor(os.path.abspath(setup.trainingModelPath))
        return mrml.TrainingRun(process, monitor, cleanup=lambda: shutil.rmtree(folder, ignore_errors=True))

    def lossChart(self, parameterNode):
        """The plot chart node of the last registration into the selected outputs (None before any)."""
        from DiffRegLogic import mrml

        return mrml.loss_chart(settings.Setup.from_object(parameterNode))

    def showOverlay(self, parameterNode) -> None:
        """X-ray under the DRR (blend) or the difference / checkerboard image, in the Red slice view."""
        from DiffRegLogic import mrml

        setup = settings.Setup.from_object(parameterNode)
        mrml.show_overlay(slicer.mrmlScene, mrml.existing_outputs(setup), setup.overlayMode, setup.overlayOpacity)


#
# DiffRegTest
#


class DiffRegTest(ScriptedLoadableModuleTest):
    """Self-test: phantom CT and simulated X-ray as nodes, registration from a perturbed start, mTRE < 1 mm."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        try:
            self.test_DiffReg1()
        except unittest.SkipTest as reason:  # Slicer's SelfTests call runTest directly
            logging.warning("DiffReg self-test skipped: %s", reason)

    def test_DiffReg1(self):
        self.delayDisplay("Starting the DiffReg self-test")
        if importlib.util.find_spec("torch") is None:
            self.skipTest("PyTorch is not installed: install the PyTorch extension and press Render DRR once")
        from DiffRegLogic.mrml import selftest

        logic = DiffRegLogic()
        case = selftest.build_case(slicer.mrmlScene)
        parameterNode = logic.getParameterNode()
        with slicer.util.NodeModify(parameterNode):
            for name in settings.Setup.field_names():
                setattr(parameterNode, name, getattr(case.setup, name))
        logic.renderPreview(parameterNode)
        done = logic.register(parameterNode)
        case.setup.outputTransform = parameterNode.outputTransform
        report = selftest.check_case(case)
        self.assertLess(report["mtre_after_mm"], 1.0)
        self.assertTrue(report["inputs_unchanged"])
        self.assertFalse(done.result.cancelled)
        self.delayDisplay(f"DiffReg self-test passed: mTRE {report['mtre_before_mm']:.1f} -> "
                          f"{report['mtre_after_mm']:.2f} mm")
