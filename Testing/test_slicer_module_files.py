"""Static checks of the Slicer extension files (the full Slicer app cannot run here).

They catch what a first start inside Slicer would: a widget the Widget code uses that the
.ui lacks, a parameter name that matches no parameter, a Python file missing from the
installed extension, an incomplete .s4ext / catalog entry, heavy imports at module load,
and misspelt Slicer API names.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LiverTumorAI"
MODULE_PY = MODULE_DIR / "LiverTumorAI.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LiverTumorAI.ui"
LIB_DIR = MODULE_DIR / "LiverTumorAILib"
CHECK_API = ROOT.parent / "shared" / "tools" / "check_slicer_api.py"


# ----------------------------------------------------------------------------- helpers
def _ui_widgets() -> dict:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _ui_used_names() -> set:
    tree = ast.parse(MODULE_PY.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            names.add(node.attr)
    return names


def _parameter_fields() -> dict:
    tree = ast.parse(MODULE_PY.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id: ast.unparse(s.annotation) for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    raise AssertionError("no @parameterNodeWrapper class in LiverTumorAI.py")


def _cmake_commands(text: str) -> str:
    return re.sub(r"#[^\n]*", "", text)


# A widget name's suffix tells what class it must be (and what the Widget code calls on it).
PLAUSIBLE = [
    ("Selector", {"qMRMLNodeComboBox"}),
    ("CollapsibleButton", {"ctkCollapsibleButton"}),
    ("DirectoryButton", {"ctkDirectoryButton"}),
    ("Button", {"QPushButton", "QToolButton"}),
    ("ComboBox", {"QComboBox", "ctkComboBox"}),
    ("CheckBox", {"QCheckBox"}),
    ("Slider", {"ctkSliderWidget", "QSlider"}),
    ("Label", {"QLabel"}),
    ("tableView", {"qMRMLTableView"}),
    ("progressBar", {"QProgressBar"}),
]


# ----------------------------------------------------------------------------- .ui
def test_ui_is_valid_designer_xml():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "LiverTumorAI"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in used if c.startswith(("ctk", "qMRML", "qSlicer"))}
    assert custom <= declared, f"custom widgets not declared: {custom - declared}"
    # every MRML widget gets the scene from the module widget
    scene_receivers = {c.findtext("receiver") for c in root.iter("connection")
                       if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml = {w.get("name") for w in root.iter("widget") if w.get("class", "").startswith("qMRML")
            and w.get("class") != "qMRMLWidget"}
    assert mrml <= scene_receivers, f"no setMRMLScene connection for {mrml - scene_receivers}"
    sections = [w.findtext("property/string") for w in root.iter("widget") if w.get("class") == "ctkCollapsibleButton"]
    assert {"Inputs", "Model", "Results", "Export"} <= set(sections)


def test_every_widget_the_code_uses_exists_with_a_plausible_class():
    widgets = _ui_widgets()
    used = _ui_used_names()
    assert len(used) >= 12, used  # the rest are bound by connectGui through SlicerParameterName
    missing = sorted(used - set(widgets))
    assert not missing, f"self.ui.<name> not in the .ui: {missing}"
    for name in sorted(used):
        cls = widgets[name].get("class")
        for suffix, classes in PLAUSIBLE:
            if name.endswith(suffix):
                assert cls in classes, f"{name} is a {cls}, expected one of {classes}"
                break
        else:
            raise AssertionError(f"{name}: no naming rule says which class it should be")


def test_required_controls_present():
    widgets = _ui_widgets()
    for name in ("ctSelector", "mriSelector", "modelComboBox", "classifyCheckBox", "heatmapCheckBox",
                 "heatmapOpacitySlider", "deviceComboBox", "deviceInfoLabel", "weightsLabel", "loadWeightsButton",
                 "applyButton", "progressBar", "statusLabel", "tableView", "editSegmentationButton",
                 "updateTableButton", "replacePreviousCheckBox", "coordinateSystemComboBox",
                 "outputDirectoryButton", "exportButton"):
        assert name in widgets, name
    replace = widgets["replacePreviousCheckBox"]
    checked = [p for p in replace.findall("property") if p.get("name") == "checked"]
    assert checked and checked[0].findtext("bool") == "false", "Replace previous result must default to off"


def test_parameter_names_match_the_parameter_node():
    fields = _parameter_fields()
    expected_type = {"qMRMLNodeComboBox": "vtkMRML", "QCheckBox": "bool", "ctkSliderWidget": "float",
                     "ctkDirectoryButton": "pathlib.Path"}
    connected = 0
    for widget in ET.parse(UI_FILE).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") != "SlicerParameterName":
                continue
            assert prop.get("stdset") == "0", "dynamic property must be stdset=0"
            param = prop.findtext("string")
            assert param in fields, f"{widget.get('name')}: parameter {param!r} not in the parameter node"
            want = expected_type.get(widget.get("class"))
            assert want and want in fields[param], f"{param}: {fields[param]} cannot connect to {widget.get('class')}"
            connected += 1
    assert connected >= 10


# ----------------------------------------------------------------------------- module file
ALLOWED_TOP_IMPORTS = {"__future__", "ctk", "qt", "slicer", "vtk", "os", "sys", "logging", "json", "typing",
                       "pathlib", "shutil", "time", "unittest", "enum", "dataclasses",
                       "LiverTumorAILib", "LiverTumorAILib.runner", "LiverTumorAILib.dependencies"}


def test_module_imports_nothing_heavy_at_top_level():
    tree = ast.parse(MODULE_PY.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = [node.module or ""]
            if node.module == "LiverTumorAILib":
                mods += [f"LiverTumorAILib.{a.name}" for a in node.names if a.name[0].islower()]
        else:
            continue
        for mod in mods:
            top = mod.split(".")[0]
            assert mod in ALLOWED_TOP_IMPORTS or (top in ALLOWED_TOP_IMPORTS and top not in ("LiverTumorAILib",)), \
                f"line {node.lineno}: top-level import of {mod!r} (import heavy things inside functions)"
    # engine modules imported at top level must themselves import only the standard library
    for name in ("runner", "dependencies"):
        sub = ast.parse((LIB_DIR / f"{name}.py").read_text(encoding="utf-8"))
        for node in sub.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = node.names[0].name if isinstance(node, ast.Import) else (node.module or "")
                assert mod.split(".")[0] in sys.stdlib_module_names | {"__future__"}, f"{name}.py imports {mod}"


def test_module_classes_follow_the_template():
    tree = ast.parse(MODULE_PY.read_text(encoding="utf-8"))
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes["LiverTumorAI"]
    assert "ScriptedLoadableModuleWidget" in classes["LiverTumorAIWidget"]
    assert "ScriptedLoadableModuleLogic" in classes["LiverTumorAILogic"]
    assert "ScriptedLoadableModuleTest" in classes["LiverTumorAITest"]
    text = MODULE_PY.read_text(encoding="utf-8")
    assert "connectGui(self.ui)" in text and "qt.QTimer()" in text
    assert "PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=" in text
    assert "slicer.util.pip_install(" in text


def test_no_widget_does_processing():
    """The Widget only wires: no subprocess, file reading or engine pipeline calls in it."""
    tree = ast.parse(MODULE_PY.read_text(encoding="utf-8"))
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LiverTumorAIWidget")
    src = ast.unparse(widget)
    for forbidden in ("subprocess", "SimpleITK", "sitk.", "numpy", "import torch", "ProcessRunner(", "open("):
        assert forbidden not in src, forbidden


@pytest.mark.skipif(not CHECK_API.is_file(), reason="../shared/tools/check_slicer_api.py not present")
def test_slicer_api_names_exist():
    proc = subprocess.run([sys.executable, str(CHECK_API), str(MODULE_PY), "--allow-modules",
                           "pytorchutils,livertumorai"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 unknown names" in proc.stdout


# ----------------------------------------------------------------------------- CMake
def _lib_py_files() -> list:
    return sorted(p.relative_to(MODULE_DIR).as_posix() for p in LIB_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def test_module_cmakelists_lists_scripts_and_resources():
    text = _cmake_commands((MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert "slicerMacroBuildScriptedModule(" in text
    assert "set(MODULE_NAME LiverTumorAI)" in text
    assert "${MODULE_NAME}.py" in text
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui"):
        assert resource in text, resource
    assert re.search(r"if\(BUILD_TESTING\)\s*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)
    # the glob must cover every .py file of the engine package
    globs = re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+\.py)", text)
    patterns = [g.replace("${MODULE_NAME}", "LiverTumorAI") for g in globs]
    assert patterns == ["LiverTumorAILib/*.py"], patterns  # GLOB_RECURSE: * spans sub-folders
    files = _lib_py_files()
    assert "LiverTumorAILib/__init__.py" in files and "LiverTumorAILib/runner.py" in files
    assert all(fnmatch.fnmatch(f, patterns[0]) for f in files)
    # the resources actually exist
    for resource in ("Resources/Icons/LiverTumorAI.png", "Resources/UI/LiverTumorAI.ui", "LiverTumorAILib/py.typed"):
        assert (MODULE_DIR / resource).is_file(), resource
    assert "Resources/Models" in text and "install(" in text


def test_top_level_cmakelists():
    text = _cmake_commands((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    for needle in ("cmake_minimum_required(", "project(LiverTumorAI)", "find_package(Slicer REQUIRED)",
                   "include(${Slicer_USE_FILE})", "add_subdirectory(LiverTumorAI)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needle in text, needle
    meta = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert meta.get(f"EXTENSION_{key}"), key
    assert meta["EXTENSION_HOMEPAGE"] == "https://github.com/livertumorai/SlicerLiverTumorAI"
    assert meta["EXTENSION_CATEGORY"] == "Segmentation" and meta["EXTENSION_DEPENDS"] == "PyTorch"
    assert "example.com" not in text and "TODO" not in text


FAKE_SLICER = """
set(Slicer_FOUND 1)
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(M "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(s ${M_SCRIPTS})
    message(STATUS "SCRIPT ${s}")
  endforeach()
  foreach(r ${M_RESOURCES})
    message(STATUS "RESOURCE ${r}")
  endforeach()
endfunction()
function(slicer_add_python_unittest)
  message(STATUS "UNITTEST ${ARGN}")
endfunction()
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_configures_with_a_stub_slicer(tmp_path):
    """Configure the real CMakeLists against stub Slicer macros and compare the lists with the tree."""
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(FAKE_SLICER)
    (stub / "empty.cmake").write_text("")
    build = tmp_path / "build"
    proc = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={stub}", "-DBUILD_TESTING=ON"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scripts = sorted(re.findall(r"-- SCRIPT (\S+)", proc.stdout))
    resources = sorted(re.findall(r"-- RESOURCE (\S+)", proc.stdout))
    assert scripts == sorted(["LiverTumorAI.py"] + _lib_py_files())
    assert resources == sorted(["Resources/Icons/LiverTumorAI.png", "Resources/UI/LiverTumorAI.ui",
                                "LiverTumorAILib/py.typed"])
    assert "UNITTEST SCRIPT;LiverTumorAI.py" in proc.stdout
    models = ROOT / "Resources" / "Models"
    for manifest in models.glob("*/manifest.json"):
        copied = build / "lib/Slicer-5.8/qt-scripted-modules/Resources/Models" / manifest.relative_to(models)
        assert copied.is_file(), copied


# ----------------------------------------------------------------------------- s4ext / catalog
S4EXT_FIELDS = ("scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors",
                "category", "iconurl", "status", "description", "screenshoturls", "enabled")


def _s4ext() -> dict:
    fields = {}
    for line in (ROOT / "LiverTumorAI.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            fields[key] = value.strip()
    return fields


def test_s4ext_has_every_field():
    fields = _s4ext()
    for key in S4EXT_FIELDS:
        assert fields.get(key), f"{key} missing or empty"
    assert fields["scm"] == "git" and fields["scmrevision"] == "main"
    assert fields["depends"] == "PyTorch" and fields["build_subdirectory"] == "."
    assert fields["enabled"] == "1" and fields["category"] == "Segmentation"
    assert fields["iconurl"].endswith(".png") and fields["scmurl"].startswith("https://github.com/livertumorai/")


# Required/allowed keys of slicer-extension-catalog-entry-schema-v1.0.1.json (Slicer/Schemas).
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_ALLOWED = CATALOG_REQUIRED | {"scm_revision", "scm_type", "build_dependencies", "build_subdirectory",
                                      "enabled", "tier"}


def test_catalog_entry_matches_schema_and_s4ext():
    entry = json.loads((ROOT / "LiverTumorAI.json").read_text(encoding="utf-8"))
    assert entry["$schema"] == ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                "slicer-extension-catalog-entry-schema-v1.0.1.json")
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_ALLOWED, set(entry) ^ CATALOG_ALLOWED
    assert entry["tier"] in (1, 3, 5)
    assert isinstance(entry["build_dependencies"], list) and all(isinstance(d, str) for d in entry["build_dependencies"])
    s4 = _s4ext()
    assert entry["build_dependencies"] == s4["depends"].split()
    assert entry["category"] == s4["category"] and entry["scm_url"] == s4["scmurl"]
    assert entry["scm_revision"] == s4["scmrevision"] and entry["build_subdirectory"] == s4["build_subdirectory"]


# ----------------------------------------------------------------------------- icons
@pytest.mark.parametrize("path", ["LiverTumorAI/Resources/Icons/LiverTumorAI.png", "Resources/Icons/LiverTumorAI.png"])
def test_icons_are_128_png(path):
    data = (ROOT / path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)
