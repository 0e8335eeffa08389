"""Checks of the Slicer extension: .ui, parameter node, module file, CMake lists, catalog entry, requirements.

The Slicer application (Qt, ScriptedLoadableModule, parameterNodeWrapper)
cannot run here, so `DiffReg/DiffReg.py` is read with `ast`, the `.ui` with
an XML parser, and each is checked against the other and against the
Qt-free engine (`DiffRegLogic.mrml.settings`, `DiffRegLogic.mrml`). The
module file is also loaded the way Slicer loads it (as the Python module
``DiffReg``, from its path) with stand-ins for the three application-only
parts of the ``slicer`` package, and its logic is run against real MRML
(the slicer-core wheel).
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import importlib.util
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import types
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import pytest
from packaging.utils import canonicalize_name

from DiffRegLogic import _compat, mrml
from DiffRegLogic.errors import InputError
from DiffRegLogic.mrml import dependencies, settings

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "DiffReg"
MODULE = MODULE_DIR / "DiffReg.py"
UI = MODULE_DIR / "Resources" / "UI" / "DiffReg.ui"
PACKAGE = ROOT / "DiffRegLogic"

NOT_IN_SLICER = {
    "torch": "installed by the PyTorch extension (SlicerPyTorch), which picks the build for the CUDA driver; "
             "pip must never pull it inside Slicer",
    "matplotlib": "declared for the command line tool and the experiment reports only; nothing that runs inside "
                  "Slicer uses it (the panel draws its loss curve with MRML plot chart nodes)",
}
"""pyproject dependencies that DiffReg/Resources/requirements.txt leaves out, and why."""

# connectGui matches widgets by exact class: field kind -> the classes that can bind it
BINDABLE = {
    "node": {"qMRMLNodeComboBox"},
    "choice": {"QComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "int": {"QSpinBox", "QSlider"},
    "bool": {"QCheckBox", "QPushButton"},
    "str": {"QLineEdit", "QTextEdit"},
    "pathlib.Path": {"ctkPathLineEdit"},  # Slicer's ctkPathLineEditToPathConnector takes pathlib types only
}


@pytest.fixture(scope="module")
def module_tree() -> ast.Module:
    return ast.parse(MODULE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def _fields(tree: ast.Module) -> dict[str, tuple[str, ast.expr | None, ast.expr]]:
    """DiffRegParameterNode fields: name -> (kind, default expression, annotation)."""
    out = {}
    for stmt in _class(tree, "DiffRegParameterNode").body:
        if not isinstance(stmt, ast.AnnAssign):
            continue
        ann = stmt.annotation
        text = ast.unparse(ann)
        if text.startswith("vtkMRML"):
            kind = "node"
        elif "Choice(" in text:
            kind = "choice"
        else:
            base = ann.slice.elts[0] if isinstance(ann, ast.Subscript) else ann
            kind = ast.unparse(base)
        out[stmt.target.id] = (kind, stmt.value, ann)
    return out


def _evaluate(expr: ast.expr):
    """A field default: a literal, an attribute of DiffRegLogic.mrml.settings, or ``pathlib.Path(<literals>)``."""
    if isinstance(expr, ast.Attribute) and ast.unparse(expr.value) == "settings":
        return getattr(settings, expr.attr)
    if isinstance(expr, ast.Call) and ast.unparse(expr.func) == "pathlib.Path" and not expr.keywords:
        return pathlib.Path(*(ast.literal_eval(a) for a in expr.args))
    return ast.literal_eval(expr)


def _parameter_name(widget: ET.Element) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == "SlicerParameterName":
            return prop.find("string").text
    return None


def _property(widget: ET.Element, name: str):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


# --------------------------------------------------------------------------
# .ui and parameter node
# --------------------------------------------------------------------------


def test_ui_parses_with_a_qmrmlwidget_root():
    root = ET.parse(UI).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "DiffReg"
    custom = {c.find("class").text for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= custom  # every Slicer/CTK class is declared


def test_parameter_node_matches_the_engine_setup(module_tree):
    fields = _fields(module_tree)
    assert list(fields) == settings.Setup.field_names()
    defaults = settings.Setup()
    for name, (kind, default, ann) in fields.items():
        if kind == "node":
            assert default is None, name
            continue
        assert default is not None, f"{name} needs an explicit default"
        assert _evaluate(default) == getattr(defaults, name), name
        if kind == "choice":
            # Choice(list(settings.<TABLE>)) where <TABLE> is the settings table of this field's choices
            choice = next(c for c in ast.walk(ann) if isinstance(c, ast.Call) and ast.unparse(c.func) == "Choice")
            (listed,) = choice.args
            assert isinstance(listed, ast.Call) and ast.unparse(listed.func) == "list", name
            (table,) = listed.args
            assert isinstance(table, ast.Attribute) and ast.unparse(table.value) == "settings", name
            assert table.attr in _settings_tables(), f"{name}: settings.{table.attr} is not a table of settings.py"
            assert getattr(settings, table.attr) is settings.CHOICES[name], name
            assert getattr(defaults, name) in settings.CHOICES[name]


def _settings_tables() -> set[str]:
    """Upper-case names assigned in DiffRegLogic/mrml/settings.py itself (not names it imports)."""
    tree = ast.parse(Path(settings.__file__).read_text(encoding="utf-8"))
    return {t.id for stmt in tree.body if isinstance(stmt, ast.Assign) for t in stmt.targets
            if isinstance(t, ast.Name) and t.id.isupper()}


def test_every_parameter_has_one_widget_of_a_bindable_class(module_tree, ui_widgets):
    fields = _fields(module_tree)
    bound: dict[str, list[ET.Element]] = {}
    for widget in ui_widgets.values():
        name = _parameter_name(widget)
        if name is not None:
            bound.setdefault(name, []).append(widget)
    assert set(bound) == set(fields), "SlicerParameterName must name exactly the parameter-node fields"
    for name, widgets in bound.items():
        assert len(widgets) == 1, f"{name} is bound to {len(widgets)} widgets"
        widget = widgets[0]
        kind = fields[name][0]
        assert widget.get("class") in BINDABLE[kind], f"{name}: {widget.get('class')} cannot bind a {kind}"
        if widget.get("class") == "ctkSliderWidget":  # the connector needs a bounded range
            assert "WithinRange" in ast.unparse(fields[name][2]), name
        if kind == "node":
            types = [s.text for s in _property(widget, "nodeTypes").iter("string")]
            assert types == [ast.unparse(fields[name][2])], name


def test_module_names_only_existing_widgets_and_engine_functions(module_tree, ui_widgets):
    ui_names, mrml_names, settings_names = set(), set(), set()
    for node in ast.walk(module_tree):
        if isinstance(node, ast.Attribute):
            base = ast.unparse(node.value)
            if base == "self.ui":
                ui_names.add(node.attr)
            elif base == "mrml":
                mrml_names.add(node.attr)
            elif base == "settings":
                settings_names.add(node.attr)
    assert ui_names and ui_names <= set(ui_widgets), sorted(ui_names - set(ui_widgets))
    assert all(hasattr(mrml, n) for n in mrml_names), sorted(n for n in mrml_names if not hasattr(mrml, n))
    assert all(hasattr(settings, n) for n in settings_names)
    # the collapsible sections the issue asks for
    for section in ("inputs", "geometry", "initialPose", "options", "run", "results"):
        assert ui_widgets[f"{section}CollapsibleButton"].get("class") == "ctkCollapsibleButton"
    assert _property(ui_widgets["optionsCollapsibleButton"], "collapsed").find("bool").text == "true"
    for button in ("renderButton", "registerButton", "cancelButton"):
        assert ui_widgets[button].get("class") == "QPushButton"
    assert ui_widgets["progressBar"].get("class") == "QProgressBar"


def test_training_section_and_model_file_widgets(module_tree, ui_widgets):
    """Issue 16 item 6: the collapsed "Train pose network" section, its buttons, and the network start's model file."""
    section = ui_widgets["trainingCollapsibleButton"]
    assert section.get("class") == "ctkCollapsibleButton"
    assert _property(section, "text").find("string").text == "Train pose network"
    assert _property(section, "collapsed").find("bool").text == "true"
    inside = {w.get("name"): w.get("class") for w in section.iter("widget")}
    expected = {"trainingMinutesSpinBox": "QDoubleSpinBox", "trainingImageSizeSpinBox": "QSpinBox",
                "trainingMaxRotationSpinBox": "QDoubleSpinBox", "trainingMaxTranslationSpinBox": "QDoubleSpinBox",
                "trainingBackboneComboBox": "QComboBox", "trainingDeviceComboBox": "QComboBox",
                "trainingModelPathLineEdit": "ctkPathLineEdit", "trainButton": "QPushButton",
                "stopTrainingButton": "QPushButton", "trainingProgressBar": "QProgressBar",
                "trainingStatusLabel": "QLabel"}
    assert {name: inside.get(name) for name in expected} == expected
    bound = {name: _parameter_name(w) for name, w in ui_widgets.items() if name in expected}
    assert {v for v in bound.values() if v} == {"trainingMinutes", "trainingImageSize", "trainingMaxRotation",
                                                "trainingMaxTranslation", "trainingBackbone", "trainingDevice",
                                                "trainingModelPath"}
    # the model paths: .pt files; the training's a save dialog (Writable), the start's an open dialog
    for name, mode in (("trainingModelPathLineEdit", "Writable"), ("poseModelPathLineEdit", "Readable")):
        widget = ui_widgets[name]
        flags = _property(widget, "filters").find("set").text.split("|")
        assert {"ctkPathLineEdit::Files", f"ctkPathLineEdit::{mode}"} <= set(flags), name
        assert [t.text for t in _property(widget, "nameFilters").iter("string")] == ["*.pt"], name
    initial = {w.get("name") for w in ui_widgets["initialPoseCollapsibleButton"].iter("widget")}
    assert "poseModelPathLineEdit" in initial
    assert _parameter_name(ui_widgets["poseModelPathLineEdit"]) == "poseModelPath"
    # the spin boxes allow exactly what the parameter node's ranges allow (which check_training_fields accepts)
    fields = _fields(module_tree)
    for name, widget_name in (("trainingMinutes", "trainingMinutesSpinBox"),
                              ("trainingImageSize", "trainingImageSizeSpinBox"),
                              ("trainingMaxRotation", "trainingMaxRotationSpinBox"),
                              ("trainingMaxTranslation", "trainingMaxTranslationSpinBox")):
        call = next(c for c in ast.walk(fields[name][2]) if isinstance(c, ast.Call))
        low, high = (ast.literal_eval(a) for a in call.args)
        widget = ui_widgets[widget_name]
        bounds = [float(_property(widget, p)[0].text) for p in ("minimum", "maximum")]
        assert bounds == [low, high], name
    assert settings.INITIAL_POSE_MODES[-1] == settings.POSE_FROM_NETWORK
    from DiffRegLogic.cli import train

    assert settings.BACKBONES == train.BACKBONES  # the panel offers what the command accepts


def test_node_selectors_get_the_scene():
    root = ET.parse(UI).getroot()
    selectors = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert selectors == connected


def test_module_file_follows_the_template(module_tree):
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in module_tree.body if isinstance(n, ast.ClassDef)}
    assert classes["DiffReg"] == ["ScriptedLoadableModule"]
    assert classes["DiffRegWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["DiffRegLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["DiffRegTest"] == ["ScriptedLoadableModuleTest"]
    decorators = [ast.unparse(d) for d in _class(module_tree, "DiffRegParameterNode").decorator_list]
    assert decorators == ["parameterNodeWrapper"]
    widget_methods = {f.name for f in _class(module_tree, "DiffRegWidget").body if isinstance(f, ast.FunctionDef)}
    assert {"setup", "cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose",
            "initializeParameterNode", "setParameterNode"} <= widget_methods
    # torch and the engine's torch modules are imported lazily (inside functions), never at module import
    top_imports = set()
    for stmt in module_tree.body:
        if isinstance(stmt, ast.Import):
            top_imports |= {a.name for a in stmt.names}
        elif isinstance(stmt, ast.ImportFrom):
            top_imports |= {f"{stmt.module}.{a.name}" for a in stmt.names}
    assert not any(name.startswith("torch") for name in top_imports)
    assert {n for n in top_imports if n.startswith("DiffRegLogic")} == {"DiffRegLogic.mrml.settings"}


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def test_module_never_reaches_the_engine_through_the_logic_class_name(module_tree):
    """The template's logic class ``DiffRegLogic`` rebinds the global name of the engine package.

    Slicer runs DiffReg.py as the module ``DiffReg``; ``class DiffRegLogic``
    makes the global ``DiffRegLogic`` the class. ``from DiffRegLogic... import
    x`` is resolved by the import system (sys.modules), so it always finds
    the package; ``import DiffRegLogic.x`` would bind the bare name, and any
    ``DiffRegLogic.x`` then reads an attribute of the class.
    """
    logic = _class(module_tree, "DiffRegLogic")
    members = {n.name for n in logic.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    members |= {t.id for n in logic.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    parents = _parents(module_tree)
    engine_imports = []
    for node in ast.walk(module_tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] != "DiffRegLogic", \
                    f"line {node.lineno}: 'import {alias.name}' binds the logic class's name; use 'from ... import'"
        elif isinstance(node, ast.ImportFrom):
            assert all((a.asname or a.name) != "DiffRegLogic" for a in node.names), f"line {node.lineno}"
            if (node.module or "").split(".")[0] == "DiffRegLogic":
                engine_imports += [(node.lineno, node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Name) and node.id == "DiffRegLogic":
            assert isinstance(node.ctx, ast.Load), f"line {node.lineno}: DiffRegLogic is rebound"
            parent = parents[node]
            if isinstance(parent, ast.Attribute):  # only the class's own members
                assert parent.attr in members, f"line {node.lineno}: DiffRegLogic.{parent.attr} is not a logic member"
            else:  # otherwise the class is instantiated
                assert isinstance(parent, ast.Call) and parent.func is node, f"line {node.lineno}"
        elif isinstance(node, ast.Global):
            assert "DiffRegLogic" not in node.names
    assert engine_imports
    for lineno, module, name in engine_imports:  # what is imported exists, at its new path
        parts = module.split(".")
        assert not (len(parts) > 1 and parts[1] in _compat.MOVED), f"line {lineno}: {module} is an old path"
        assert not (module == "DiffRegLogic" and name in _compat.MOVED), f"line {lineno}: DiffRegLogic.{name} moved"
        target = importlib.import_module(module)
        assert hasattr(target, name) or importlib.util.find_spec(f"{module}.{name}"), f"line {lineno}: {name}"


def test_panel_never_writes_the_device_into_the_parameter_node(module_tree):
    """Review fix: an out-of-memory retry on the CPU runs on a copy of the Setup (mrml.with_cpu_fallback)."""
    for node in ast.walk(module_tree):
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        for target in targets:
            for leaf in ast.walk(target):
                assert not (isinstance(leaf, ast.Attribute) and leaf.attr == "device"), \
                    f"line {node.lineno}: {ast.unparse(target)} = ..."
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "setattr" and len(node.args) > 1:
            assert not (isinstance(node.args[1], ast.Constant) and node.args[1].value == "device"), node.lineno
    uses = {ast.unparse(n) for n in ast.walk(module_tree)
            if isinstance(n, ast.Attribute) and n.attr == "with_cpu_fallback"}
    assert uses == {"mrml.with_cpu_fallback"}


# --------------------------------------------------------------------------
# The module file loaded the way Slicer loads it
# --------------------------------------------------------------------------


def _slicer_application_stand_ins() -> dict[str, types.ModuleType]:
    """Minimal ``slicer.i18n``, ``slicer.parameterNodeWrapper`` and ``slicer.ScriptedLoadableModule``.

    These are the parts of the ``slicer`` package that only the application
    has (slicer-core provides the MRML classes, ``slicer.util`` and VTK). The
    logic base class finds its parameter node as Slicer's does (module name =
    class name without "Logic", a singleton vtkMRMLScriptedModuleNode); the
    parameter node wrapper stores each field in the node as Slicer's wrapper
    does (`settings.write_parameter_node`) and, like it, takes only the
    field's Python type.
    """
    import slicer

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")

    class Choice:
        def __init__(self, choices):
            self.choices = list(choices)

    class WithinRange:
        def __init__(self, low, high):
            self.low, self.high = low, high

    def parameterNodeWrapper(cls):
        fields = list(cls.__annotations__)
        defaults = settings.Setup()

        class Wrapped:
            def __init__(self, node):
                object.__setattr__(self, "parameterNode", node)

            def __getattr__(self, name):
                if name not in fields:
                    raise AttributeError(name)
                return getattr(settings.read_parameter_node(self.parameterNode), name)

            def __setattr__(self, name, value):
                if name not in fields:
                    raise AttributeError(f"{name} is not a parameter of {cls.__name__}")
                if name not in settings.NODE_FIELDS and type(value) is not type(getattr(defaults, name)):
                    raise TypeError(f"{name}: {type(value).__name__} given, {type(getattr(defaults, name)).__name__} "
                                    "expected")
                setup = settings.read_parameter_node(self.parameterNode)
                setattr(setup, name, value)
                settings.write_parameter_node(self.parameterNode, setup)

        Wrapped.__name__ = Wrapped.__qualname__ = cls.__name__
        return Wrapped

    wrapper.Choice, wrapper.WithinRange, wrapper.parameterNodeWrapper = Choice, WithinRange, parameterNodeWrapper

    loadable = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = type(self).__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent
            self.moduleName = type(self).__name__.removesuffix("Widget")

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__.removesuffix("Logic")

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
                node.UnRegister(None)
                node.SetSingletonTag(self.moduleName)
                node.SetAttribute("ModuleName", self.moduleName)
                node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
                node = slicer.mrmlScene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(loadable, cls.__name__, cls)
    return {m.__name__: m for m in (i18n, wrapper, loadable)}


@pytest.fixture
def slicer_scene(monkeypatch):
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    yield scene
    scene.Clear(1)


@pytest.fixture
def loaded_module(monkeypatch, slicer_scene):
    """DiffReg.py executed as Slicer >= 5.9 does: importlib spec from its path, registered as sys.modules["DiffReg"]."""
    for name, stand_in in _slicer_application_stand_ins().items():
        monkeypatch.setitem(sys.modules, name, stand_in)
    monkeypatch.setattr(sys, "path", list(sys.path))  # _addEngineToPath may insert the checkout
    spec = importlib.util.spec_from_file_location("DiffReg", MODULE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "DiffReg", module)
    spec.loader.exec_module(module)
    return module


def test_loaded_module_resolves_the_engine_by_import(loaded_module):
    package = sys.modules["DiffRegLogic"]
    assert isinstance(package, types.ModuleType) and Path(package.__file__).parent == PACKAGE
    assert loaded_module.settings is importlib.import_module("DiffRegLogic.mrml.settings")
    # the global name belongs to the logic class, which the template needs: its module name picks the parameter node
    assert isinstance(loaded_module.DiffRegLogic, type) and loaded_module.DiffRegLogic.__module__ == "DiffReg"
    logic = loaded_module.DiffRegLogic()
    assert logic.moduleName == "DiffReg"
    node = logic.getParameterNode()
    assert node.parameterNode.GetAttribute("ModuleName") == "DiffReg"
    assert node.device == settings.Setup().device and node.renderer == settings.Setup().renderer
    # a method that imports the engine inside it (after the class rebound the name) gets the package's modules
    assert logic.lossChart(node) is None


@pytest.mark.parametrize("start_device", ["auto", "cuda"])
def test_cpu_retry_keeps_the_device_in_the_parameter_node(loaded_module, slicer_scene, monkeypatch, start_device):
    """Review fix, through the module's own logic: the retry runs on the CPU, the parameter node keeps the device."""
    import slicer.util

    from DiffRegLogic.drr import rendering
    from DiffRegLogic.mrml import actions, selftest

    case = selftest.build_case(slicer_scene, device=start_device)
    logic = loaded_module.DiffRegLogic()
    parameterNode = logic.getParameterNode()
    for name in settings.Setup.field_names():
        setattr(parameterNode, name, getattr(case.setup, name))
    devices, prompts = [], []
    real_read_inputs, real_render = actions.read_inputs, rendering.render

    def read_inputs(setup, *args, **kwargs):
        devices.append(setup.device)
        if setup.device == "cuda":  # this machine may have no GPU: stand in for one
            setup = settings.Setup(**{**vars(setup), "device": "cpu"})
        return real_read_inputs(setup, *args, **kwargs)

    def render(*args, **kwargs):  # a renderer that runs out of memory off the CPU
        if devices[-1] != "cpu":
            raise MemoryError("simulated: CUDA out of memory")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(actions, "read_inputs", read_inputs)
    monkeypatch.setattr(rendering, "render", render)

    # declined: the error reaches the panel, nothing was retried, the device stays
    with pytest.raises(mrml.OutOfMemory, match="Device 'cpu'"):
        logic.renderPreview(parameterNode, confirmCpuRetry=lambda message: prompts.append(message) or False)
    assert devices == [start_device] and len(prompts) == 1 and "Retry on the CPU?" in prompts[0]
    assert parameterNode.device == start_device

    # accepted: once more on the CPU; the outputs it made are stored, the device is not
    devices.clear()
    outputs = logic.renderPreview(parameterNode, confirmCpuRetry=lambda message: prompts.append(message) or True)
    assert devices == [start_device, "cpu"] and len(prompts) == 2
    assert parameterNode.device == start_device
    assert parameterNode.parameterNode.GetParameter("device") == start_device
    assert parameterNode.outputDrr is outputs.drr and parameterNode.outputTransform is outputs.transform
    drr = slicer.util.arrayFromVolume(outputs.drr)
    assert drr.shape == (1, selftest.ROWS, selftest.COLS) and drr.max() > 0

    # a registration retried the same way reuses those outputs and leaves the device alone
    devices.clear()
    parameterNode.iterations = 3
    parameterNode.levels = "2"
    done = logic.register(parameterNode, confirmCpuRetry=lambda message: True)
    assert devices == [start_device, "cpu"] and done.outputs.drr is outputs.drr
    assert parameterNode.device == start_device and parameterNode.outputTransform is outputs.transform


def test_logic_starts_the_training_in_the_background(loaded_module, slicer_scene, tmp_path):
    """The Train button's logic: inputs exported, the command launched in the engine's folder, never waited for."""
    from DiffRegLogic.mrml import selftest, training

    case = selftest.build_case(slicer_scene)
    logic = loaded_module.DiffRegLogic()
    parameterNode = logic.getParameterNode()
    for name in settings.Setup.field_names():
        setattr(parameterNode, name, getattr(case.setup, name))
    parameterNode.trainingModelPath = tmp_path / "model.pt"
    parameterNode.trainingMinutes = 3.0
    launched = []
    done = '{"event": "done", "step": 5, "elapsed_s": 1.0, "mtre_mm_median": 4.0, "path": "%s"}' % (
        tmp_path / "model.pt").as_posix()

    def launch(argv, cwd):
        files = [argv[argv.index(option) + 1] for option in ("--ct", "--geometry", "--reference-pose")]
        launched.append((argv, cwd, [Path(f).is_file() for f in files]))
        return subprocess.Popen([sys.executable, "-c", f"print({done!r})"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    run = logic.startTraining(parameterNode, launch=launch)
    (argv, cwd, existed), = launched
    assert argv[:5] == [logic.pythonExecutable(), "-u", "-m", "DiffRegLogic.cli", "train"] and all(existed)
    assert argv[argv.index("--minutes") + 1] == "3" and argv[argv.index("--out") + 1] == str(tmp_path / "model.pt")
    assert cwd == training.engine_root() and isinstance(run, training.TrainingRun)
    folder = Path(argv[argv.index("--ct") + 1]).parent
    assert run.wait(timeout=60) == "done" and run.monitor.saved_path() == str(tmp_path / "model.pt")
    assert not folder.exists()  # the exported inputs are removed once the process ended
    # a bad setting: refused before anything is exported or launched
    parameterNode.trainingImageSize = 100
    with pytest.raises(InputError, match="multiple of 32"):
        logic.startTraining(parameterNode, launch=launch)
    assert len(launched) == 1


def test_engine_never_imports_qt_or_the_slicer_gui():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("qt", "ctk", "PythonQt", "slicer"), f"{path} imports {name}"


def test_settings_import_without_torch():
    """What DiffReg.py imports at module level (and the dependency check) needs neither torch nor VTK nor Slicer."""
    code = ("import sys; import DiffRegLogic.mrml.settings, DiffRegLogic.mrml.dependencies; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'vtk', 'vtkmodules', 'slicer', "
            "'qt', 'matplotlib')); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_choices_are_engine_names():
    """The panel offers exactly the engine's registries, in their order."""
    from DiffRegLogic.drr.backends import RENDERERS
    from DiffRegLogic.registration.optimizers import OPTIMIZERS
    from DiffRegLogic.similarity.registry import SIMILARITIES
    from DiffRegLogic.xray.intensity import INTENSITY_CONVENTIONS

    assert settings.INTENSITIES == tuple(INTENSITY_CONVENTIONS)
    assert settings.SIMILARITIES == tuple(SIMILARITIES)
    assert settings.OPTIMIZERS == tuple(OPTIMIZERS)
    assert settings.RENDERERS == tuple(RENDERERS)
    for field, table in (("xrayIntensity", INTENSITY_CONVENTIONS), ("optimizer", OPTIMIZERS), ("renderer", RENDERERS)):
        assert settings.CHOICES[field] == tuple(table), field
    # the engine's similarities, then the learned one (a model file, not a registry name)
    assert settings.CHOICES["similarity"] == tuple(SIMILARITIES) + (settings.SIMILARITY_LEARNED,)


def test_slicer_side_never_imports_matplotlib():
    """Why requirements.txt may leave matplotlib out: the module file and the MRML bridge do not import it."""
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not any(name.split(".")[0] == "matplotlib" for name in names)
    code = ("import importlib, pkgutil, sys, DiffRegLogic.mrml as bridge; "
            "[importlib.import_module(f'DiffRegLogic.mrml.{m.name}') for m in pkgutil.iter_modules(bridge.__path__)]; "
            "assert 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_engine_on_the_path_from_source_and_from_the_package(tmp_path, module_tree):
    """`_addEngineToPath` finds DiffRegLogic one folder up (source checkout) or beside the module (extension)."""
    function = next(n for n in module_tree.body if isinstance(n, ast.FunctionDef) and n.name == "_addEngineToPath")
    code = compile(ast.Module(body=[function], type_ignores=[]), str(MODULE), "exec")
    for layout, expected in (("source", "repo"), ("package", "repo/lib/qt-scripted-modules")):
        base = tmp_path / layout
        module_dir = base / ("repo/DiffReg" if layout == "source" else "repo/lib/qt-scripted-modules")
        module_dir.mkdir(parents=True)
        engine_parent = base / expected
        (engine_parent / "DiffRegLogic").mkdir(parents=True, exist_ok=True)
        (engine_parent / "DiffRegLogic" / "__init__.py").write_text("")
        namespace = {"__file__": str(module_dir / "DiffReg.py"), "os": __import__("os"), "sys": sys}
        exec(code, namespace)
        namespace["_addEngineToPath"]()
        try:
            assert sys.path[0] == str(engine_parent)
        finally:
            sys.path.remove(str(engine_parent))


# --------------------------------------------------------------------------
# CMake, packaging, catalog entry, requirements
# --------------------------------------------------------------------------


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, variable
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def _relative(path: Path, base: Path = ROOT) -> str:
    return path.relative_to(base).as_posix()


def _engine_files(root: Path = ROOT) -> tuple[set[str], set[str]]:
    """(scripts, data): every .py of the engine package, and every other file it ships (no __pycache__)."""
    files = [p for p in (root / "DiffRegLogic").rglob("*")
             if p.is_file() and "__pycache__" not in p.relative_to(root).parts]
    scripts = {_relative(p, root) for p in files if p.suffix == ".py"}
    return scripts, {_relative(p, root) for p in files if p.suffix != ".py"}


def _cmake_globs(text: str) -> dict[str, tuple[str, list[str]]]:
    """``file(GLOB_RECURSE <var> RELATIVE <base> CONFIGURE_DEPENDS <patterns>)`` calls: var -> (base, patterns)."""
    globs = {}
    for match in re.finditer(r"file\(\s*GLOB(_RECURSE)?\s+(\w+)\s(.*?)\)", text, re.S):
        assert match.group(1), f"{match.group(2)}: GLOB_RECURSE, so that subpackages are included"
        words = match.group(3).split()
        assert "CONFIGURE_DEPENDS" in words, f"{match.group(2)}: re-glob at build time when files are added"
        assert words[0] == "RELATIVE", match.group(2)
        globs[match.group(2)] = (words[1], [w for w in words[2:] if w != "CONFIGURE_DEPENDS"])
    return globs


def _cmake_glob_recurse(pattern: str, relative_to: Path) -> set[str]:
    """What CMake's ``file(GLOB_RECURSE)`` matches for the absolute ``pattern``.

    As CMake (kwsys Glob) does it: every component but the last matches
    exactly one folder level (there is no ``**``); the last component, the
    file name pattern, is matched in that folder and every folder below it.
    """
    parts = PurePosixPath(pattern).parts
    folders = [Path(parts[0])]
    for part in parts[1:-1]:
        folders = [child for folder in folders if folder.is_dir() for child in sorted(folder.iterdir())
                   if child.is_dir() and fnmatch.fnmatchcase(child.name, part)]
    return {_relative(p, relative_to) for folder in folders for p in folder.rglob("*")
            if p.is_file() and fnmatch.fnmatchcase(p.name, parts[-1])}


def _module_cmake_globs(root: Path = ROOT) -> dict[str, set[str]]:
    """The files DiffReg/CMakeLists.txt globs for the engine, with the checkout at ``root``."""
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    # the root is the module folder's parent, without ".." (file(GLOB RELATIVE) works on the strings)
    assert re.search(r"get_filename_component\(DIFFREG_SOURCE_ROOT \$\{CMAKE_CURRENT_SOURCE_DIR\} DIRECTORY\)", text)
    globs = _cmake_globs(text)
    assert set(globs) == {"DIFFREG_LOGIC_SCRIPTS", "DIFFREG_LOGIC_DATA"}
    matched = {}
    for variable, (base, patterns) in globs.items():
        assert base == "${DIFFREG_SOURCE_ROOT}", variable
        assert patterns and all(p.startswith("${DIFFREG_SOURCE_ROOT}/DiffRegLogic/") for p in patterns), variable
        matched[variable] = set().union(*(
            _cmake_glob_recurse(p.replace("${DIFFREG_SOURCE_ROOT}", root.as_posix()), root) for p in patterns))
    return matched


def test_module_cmake_globs_every_engine_file_and_nothing_else(tmp_path):
    scripts, data = _engine_files()
    matched = _module_cmake_globs()
    assert scripts and matched["DIFFREG_LOGIC_SCRIPTS"] == scripts
    assert data and matched["DIFFREG_LOGIC_DATA"] == data, "every file the engine ships besides its .py is a table"
    # the tables sit in the folder their reader looks in
    from DiffRegLogic.physics import tables

    assert {str(PurePosixPath(d).parent) for d in data} == {_relative(tables.DATA)}

    # the same patterns on a checkout with decoys next to the engine
    decoys = ["Testing/test_decoy.py", "Testing/mrml/data/decoy.json", "DiffReg/DiffReg.py", "bench/decoy.py",
              "DiffRegLogic/__pycache__/a.cpython-311.pyc", "DiffRegLogic/sub/__pycache__/b.cpython-312.pyc",
              "DiffRegLogic/sub/data/notes.txt", "DiffRegLogic/a.py~", "DiffRegLogic.py"]
    wanted = {"DIFFREG_LOGIC_SCRIPTS": ["DiffRegLogic/__init__.py", "DiffRegLogic/a.py", "DiffRegLogic/sub/b.py",
                                        "DiffRegLogic/sub/deeper/c.py"],
              "DIFFREG_LOGIC_DATA": ["DiffRegLogic/sub/data/t.json", "DiffRegLogic/other/data/u.json"]}
    for name in decoys + [n for names in wanted.values() for n in names]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert {k: sorted(v) for k, v in _module_cmake_globs(tmp_path).items()} == {k: sorted(v) for k, v in wanted.items()}


def test_module_cmake_copies_and_installs_the_engine():
    text = " ".join(re.sub(r"#[^\n]*", "", (MODULE_DIR / "CMakeLists.txt").read_text()).split())  # no comments
    for needle in (
        # each engine script into the build tree beside DiffReg.py, with its relative path, as a module script
        "foreach(script ${DIFFREG_LOGIC_SCRIPTS}) configure_file( ${DIFFREG_SOURCE_ROOT}/${script} "
        "${CMAKE_CURRENT_BINARY_DIR}/${script} COPYONLY ) "
        "list(APPEND MODULE_PYTHON_SCRIPTS ${CMAKE_CURRENT_BINARY_DIR}/${script}) endforeach()",
        # each table beside the scripts in the build tree and in the install tree, same relative path
        "foreach(data ${DIFFREG_LOGIC_DATA}) configure_file( ${DIFFREG_SOURCE_ROOT}/${data} "
        "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/${data} COPYONLY ) "
        "get_filename_component(data_dir ${data} DIRECTORY) install( FILES ${DIFFREG_SOURCE_ROOT}/${data} "
        "DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${data_dir} COMPONENT RuntimeLibraries ) endforeach()",
    ):
        assert needle in text, needle


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_itself_globs_copies_and_installs_the_engine(tmp_path):
    """DiffReg/CMakeLists.txt configured and installed by CMake, with a stand-in for Slicer's module macro."""
    project, build, prefix = tmp_path / "project", tmp_path / "build", tmp_path / "install"
    project.mkdir()
    (project / "CMakeLists.txt").write_text(f"""cmake_minimum_required(VERSION 3.16.3)
project(DiffRegPackagingCheck NONE)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/qt-scripted-modules)
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${{ARGN}})
  file(WRITE "${{CMAKE_BINARY_DIR}}/scripts.txt" "${{MY_SCRIPTS}}")
endmacro()
add_subdirectory("{MODULE_DIR.as_posix()}" DiffReg)
""")
    for command in (["cmake", "-S", str(project), "-B", str(build)],
                    ["cmake", "--install", str(build), "--prefix", str(prefix)]):
        subprocess.run(command, check=True, capture_output=True, text=True)
    scripts, data = _engine_files()
    listed = (build / "scripts.txt").read_text().split(";")
    assert listed[0] == "DiffReg.py"
    copies = {Path(p) for p in listed[1:]}
    assert {_relative(p, build / "DiffReg") for p in copies} == scripts
    assert all(p.read_bytes() == (ROOT / _relative(p, build / "DiffReg")).read_bytes() for p in copies)
    lib = "lib/qt-scripted-modules"
    assert {_relative(p, build / lib) for p in (build / lib).rglob("*") if p.is_file()} == data
    assert {_relative(p, prefix / lib) for p in prefix.rglob("*") if p.is_file()} == data


def test_module_cmake_lists_every_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert _cmake_list(text, "MODULE_PYTHON_SCRIPTS") == ["${MODULE_NAME}.py"]
    resources = [r.replace("${MODULE_NAME}", "DiffReg") for r in _cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    for resource in resources:
        assert (ROOT / "DiffReg" / resource).is_file(), resource
    on_disk_resources = sorted(str(p.relative_to(ROOT / "DiffReg")) for p in (ROOT / "DiffReg" / "Resources").rglob("*")
                               if p.is_file())
    assert sorted(resources) == on_disk_resources
    assert re.search(r"slicerMacroBuildScriptedModule\(.*NAME \$\{MODULE_NAME\}.*WITH_GENERIC_TESTS", text, re.S)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    # only the module file sits loose in the module folder (every .py there is taken for a Slicer module)
    assert sorted(p.name for p in (ROOT / "DiffReg").glob("*.py")) == ["DiffReg.py"]


def test_extension_cmake():
    text = (ROOT / "CMakeLists.txt").read_text()
    for needle in ("project(DiffReg)", 'set(EXTENSION_CATEGORY "Registration")', 'set(EXTENSION_DEPENDS "PyTorch")',
                   "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(DiffReg)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                   "include(${Slicer_EXTENSION_CPACK})"):
        assert needle in text, needle
    values = {}
    for variable in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        match = re.search(rf'set\(EXTENSION_{variable} "([^"]+)"\)', text)
        assert match, variable
        values[variable] = match.group(1)
    # the icon and screenshots are the extension-level assets of the top-level Resources/ folder, at the URLs
    # the catalog entry's repository and revision serve them from
    entry = json.loads((ROOT / "DiffReg.json").read_text())
    repository = entry["scm_url"].removesuffix(".git").replace("https://github.com/",
                                                               "https://raw.githubusercontent.com/")
    raw = f"{repository}/{entry['scm_revision']}/"
    urls = {"ICONURL": [values["ICONURL"]], "SCREENSHOTURLS": values["SCREENSHOTURLS"].split()}
    from PIL import Image

    for variable, links in urls.items():
        assert links, variable
        for url in links:
            assert url.startswith(raw), f"{variable}: {url} is not served from {raw}"
            path = ROOT / url.removeprefix(raw)
            assert path.is_file(), f"{variable}: {path} does not exist"
            assert path.relative_to(ROOT).parts[0] == "Resources", f"{variable}: not in the top-level Resources/"
            with Image.open(path) as image:
                assert image.format == "PNG", url
                if variable == "ICONURL":  # the catalog shows 128 x 128 icons
                    assert image.size == (128, 128), image.size


def test_pip_package_lists_every_subpackage():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = config["tool"]["setuptools"]
    find = setuptools["packages"]["find"]
    include, exclude = find.get("include", ["*"]), find.get("exclude", [])
    assert find.get("where", ["."]) == ["."]

    def packaged(name: str) -> bool:  # setuptools matches dotted names with fnmatchcase
        return (any(fnmatch.fnmatchcase(name, p) for p in include)
                and not any(fnmatch.fnmatchcase(name, p) for p in exclude))

    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")
               if "__pycache__" not in p.parts}
    assert "DiffRegLogic.mrml" in on_disk and "DiffRegLogic.physics" in on_disk
    assert all(packaged(name) for name in on_disk), sorted(n for n in on_disk if not packaged(n))
    # nothing else of the repository goes into the wheel: not the Slicer module, the tests, benchmarks or tools
    others = {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.rglob("*.py")
              if p.parts[len(ROOT.parts)] not in ("DiffRegLogic", ".git")}
    others |= {p.name for p in ROOT.iterdir() if p.is_dir()} - {"DiffRegLogic"}
    assert not [name for name in others if packaged(name)]
    # the package-data patterns cover every data file of the engine, and only those
    covered = set()
    for package, patterns in setuptools["package-data"].items():
        folder = ROOT.joinpath(*package.split("."))
        assert packaged(package) and (folder / "__init__.py").is_file(), package
        for pattern in patterns:
            covered |= {_relative(p) for p in folder.glob(pattern) if p.is_file()}
    scripts, data = _engine_files()
    assert data and covered == data


def test_catalog_entry():
    entry = json.loads((ROOT / "DiffReg.json").read_text())
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision",
               "scm_type", "scm_url", "tier", "dicom_support_rule"}
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["build_dependencies"] == ["PyTorch"] and entry["category"] == "Registration"
    assert 1 <= entry["tier"] <= 5


def test_requirements_match_pyproject():
    """requirements.txt = pyproject's dependencies minus those Slicer must not pip-install (NOT_IN_SLICER)."""
    path = MODULE_DIR / "Resources" / "requirements.txt"
    lines = dependencies.read_requirements(path)
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {canonicalize_name(dependencies.parse_requirement(d).name): d for d in config["project"]["dependencies"]}
    assert set(NOT_IN_SLICER) <= set(declared), "an exclusion that pyproject no longer declares"
    listed = {canonicalize_name(dependencies.parse_requirement(line).name): line for line in lines}
    assert len(listed) == len(lines), "a package listed twice"
    assert listed == {name: d for name, d in declared.items() if name not in NOT_IN_SLICER}
    for line in lines:  # ">=" ranges: recent enough, never pinned or capped against what Slicer bundles
        specifier = dependencies.parse_requirement(line).specifier
        assert specifier and all(s.operator == ">=" for s in specifier), line
    # the file says why each one is left out
    comments = " ".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    for name in NOT_IN_SLICER:
        assert re.search(rf"\b{name}\b is NOT listed", comments), name


def test_missing_requirements():
    installed = {"numpy": "1.26.4", "pydicom": "2.3.0", "pillow": "10.0.0rc1"}.get
    reqs = ["numpy>=1.24", "pydicom>=2.4", "pillow>=9.0", "SimpleITK>=2.2", "numpy==1.26.4"]
    assert dependencies.missing_requirements(reqs, installed) == ["pydicom>=2.4", "SimpleITK>=2.2"]
    assert dependencies.missing_requirements(["pytest"]) == []  # the real lookup
    # any PEP 440 specifier, an upper bound included
    assert dependencies.missing_requirements(["numpy<2", "numpy<1.26", "numpy>=1.24,<2", "numpy!=1.26.4"],
                                             installed) == ["numpy<1.26", "numpy!=1.26.4"]
    # an environment marker that does not apply skips the line; one that applies keeps it
    assert dependencies.missing_requirements(['SimpleITK>=2.2; sys_platform == "no-such-platform"',
                                              'pydicom>=2.4; python_version >= "3"'], installed) == [
        'pydicom>=2.4; python_version >= "3"']
    requirement = dependencies.parse_requirement("numpy<2")
    assert requirement.name == "numpy" and str(requirement.specifier) == "<2" and requirement.marker is None
    for bad in ("numpy >=>= 2", "numpy>=", ">=1.24"):
        with pytest.raises(ValueError, match="unsupported requirement"):
            dependencies.parse_requirement(bad)
        with pytest.raises(ValueError, match="unsupported requirement"):
            dependencies.missing_requirements([bad], installed)
