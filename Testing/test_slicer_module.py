"""Static checks of the Slicer extension: .ui, parameter node, module file, CMake lists, catalog entry, requirements.

The Slicer application (Qt, ScriptedLoadableModule, parameterNodeWrapper)
cannot run here, so `DiffReg/DiffReg.py` is read with `ast`, the `.ui` with
an XML parser, and each is checked against the other and against the
Qt-free engine (`DiffRegLogic.settings`, `DiffRegLogic.mrml`).
"""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from DiffRegLogic import dependencies, mrml, settings

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "DiffReg" / "DiffReg.py"
UI = ROOT / "DiffReg" / "Resources" / "UI" / "DiffReg.ui"
PACKAGE = ROOT / "DiffRegLogic"

# connectGui matches widgets by exact class: field kind -> the classes that can bind it
BINDABLE = {
    "node": {"qMRMLNodeComboBox"},
    "choice": {"QComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "int": {"QSpinBox", "QSlider"},
    "bool": {"QCheckBox", "QPushButton"},
    "str": {"QLineEdit", "QTextEdit"},
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
    """A field default: a literal or an attribute of DiffRegLogic.settings."""
    if isinstance(expr, ast.Attribute) and ast.unparse(expr.value) == "settings":
        return getattr(settings, expr.attr)
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
            choice = next(c for c in ast.walk(ann) if isinstance(c, ast.Call) and ast.unparse(c.func) == "Choice")
            assert ast.unparse(choice.args[0]) == f"list(settings.{_choices_name(name)})", name
            assert getattr(defaults, name) in settings.CHOICES[name]


def _choices_name(field: str) -> str:
    return next(k for k, v in vars(settings).items() if k.isupper() and v is settings.CHOICES[field])


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
    assert {n for n in top_imports if n.startswith("DiffRegLogic")} == {"DiffRegLogic.settings"}


def test_engine_never_imports_qt_or_the_slicer_gui():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("qt", "ctk", "PythonQt", "slicer"), f"{path} imports {name}"


def test_settings_import_without_torch():
    code = "import sys; import DiffRegLogic.settings, DiffRegLogic.dependencies; assert 'torch' not in sys.modules"
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_choices_are_engine_names():
    from DiffRegLogic.drr import RENDERERS
    from DiffRegLogic.registration import OPTIMIZERS
    from DiffRegLogic.similarity import SIMILARITIES
    from DiffRegLogic.xray import INTENSITY_CONVENTIONS

    assert settings.INTENSITIES == INTENSITY_CONVENTIONS
    assert set(settings.SIMILARITIES) <= set(SIMILARITIES)
    assert set(settings.OPTIMIZERS) == set(OPTIMIZERS)
    assert set(settings.RENDERERS) <= set(RENDERERS)


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


def test_module_cmake_lists_every_engine_file_and_resource():
    text = (ROOT / "DiffReg" / "CMakeLists.txt").read_text()
    listed = _cmake_list(text, "DIFFREG_LOGIC_SCRIPTS")
    on_disk = sorted(str(p.relative_to(ROOT)).replace("\\", "/") for p in PACKAGE.rglob("*.py"))
    assert sorted(listed) == on_disk
    data = sorted(str(p.relative_to(ROOT)).replace("\\", "/") for p in (PACKAGE / "data").rglob("*") if p.is_file())
    assert data and sorted(_cmake_list(text, "DIFFREG_LOGIC_DATA")) == data
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
    for variable in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{variable} "[^"]+"\)', text), variable


def test_pip_package_lists_every_subpackage():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(config["tool"]["setuptools"]["packages"])
    on_disk = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in PACKAGE.rglob("__init__.py")}
    assert packages == on_disk
    # every data file of the engine is matched by a package-data pattern
    patterns = config["tool"]["setuptools"]["package-data"]["DiffRegLogic"]
    data = [p for p in (PACKAGE / "data").rglob("*") if p.is_file()]
    assert data and all(any(p.relative_to(PACKAGE).match(pattern) for pattern in patterns) for p in data)


def test_catalog_entry():
    entry = json.loads((ROOT / "DiffReg.json").read_text())
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision",
               "scm_type", "scm_url", "tier", "dicom_support_rule"}
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["build_dependencies"] == ["PyTorch"] and entry["category"] == "Registration"
    assert 1 <= entry["tier"] <= 5


def test_requirements_match_pyproject():
    lines = dependencies.read_requirements(ROOT / "DiffReg" / "Resources" / "requirements.txt")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {dependencies.parse_requirement(d)[0].lower(): d for d in config["project"]["dependencies"]}
    assert "torch" in declared
    del declared["torch"]  # from the PyTorch extension, never pip inside Slicer
    assert {dependencies.parse_requirement(line)[0].lower(): line for line in lines} == declared


def test_missing_requirements():
    installed = {"numpy": "1.26.4", "pydicom": "2.3.0", "pillow": "10.0.0rc1"}.get
    reqs = ["numpy>=1.24", "pydicom>=2.4", "pillow>=9.0", "SimpleITK>=2.2", "numpy==1.26.4"]
    assert dependencies.missing_requirements(reqs, installed) == ["pydicom>=2.4", "SimpleITK>=2.2"]
    assert dependencies.missing_requirements(["pytest"]) == []  # the real lookup
    with pytest.raises(ValueError, match="unsupported requirement"):
        dependencies.parse_requirement("numpy<2")
