"""Static checks of the Slicer module: UI names, CMake lists, import boundaries, module shape."""

from __future__ import annotations

import ast
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "OrthoDiffusion" / "OrthoDiffusion.py"
UI = REPO / "Resources" / "UI" / "OrthoDiffusion.ui"
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import update_cmake_lists  # noqa: E402  (a maintainer script)

GUI_MODULES = {"qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.i18n",
               "slicer.packaging", "slicer.testing", "sitkUtils", "PythonQt"}
# slicer.util helpers that need the running app (dialogs, layout, globals)
GUI_UTIL = {"loadUI", "childWidgetVariables", "errorDisplay", "infoDisplay", "warningDisplay", "confirmOkCancelDisplay",
            "confirmYesNoDisplay", "tryWithErrorDisplay", "delayDisplay", "setSliceViewerLayers", "mainWindow",
            "loadVolume", "saveNode", "getNode", "tempDirectory", "pip_install", "launchConsoleProcess", "plot"}


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_module_parses_and_has_the_four_classes():
    tree = _tree(MODULE)
    classes = {n.name: [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in n.bases]
               for n in tree.body if isinstance(n, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes["OrthoDiffusion"]
    assert "ScriptedLoadableModuleWidget" in classes["OrthoDiffusionWidget"]
    assert "ScriptedLoadableModuleLogic" in classes["OrthoDiffusionLogic"]
    assert "ScriptedLoadableModuleTest" in classes["OrthoDiffusionTest"]
    text = MODULE.read_text(encoding="utf-8")
    assert "Segmentation" in text and "DISCLAIMER" in text and "tryWithErrorDisplay" in text
    # torch only through PyTorchUtils; no psutil (Slicer lacks it); exportNode, never saveNode (re-points the volume)
    assert "pip_install(\"torch" not in text and "psutil" not in text and "saveNode" not in text
    assert "exportNode" in text and "indication" not in text


def _ui_names() -> dict[str, str]:
    root = ET.parse(UI).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget") if w.get("name")}


def test_every_ui_widget_used_exists_in_the_ui_file():
    names = _ui_names()
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text(encoding="utf-8"))) | set(
        re.findall(r"widget\.ui\.(\w+)", MODULE.read_text(encoding="utf-8")))
    assert used, "no self.ui.* found"
    assert not used - set(names), f"missing in {UI.name}: {sorted(used - set(names))}"
    assert names["OrthoDiffusion"] == "qMRMLWidget"
    for sel in ("sagittalVolumeSelector", "coronalVolumeSelector", "axialVolumeSelector", "volume3DSelector"):
        assert names[sel] == "qMRMLNodeComboBox"
    assert names["progressBar"] == "QProgressBar" and names["logTextEdit"] == "QPlainTextEdit"


def test_parameter_names_in_ui_match_the_wrapper():
    root = ET.parse(UI).getroot()
    bound = {p.findtext("string") for p in root.iter("property") if p.get("name") == "SlicerParameterName"}
    tree = _tree(MODULE)
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "OrthoDiffusionParameterNode")
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    assert bound and bound <= fields, f"UI binds unknown parameters: {sorted(bound - fields)}"


def test_cmake_lists_every_script_and_resource():
    want, have = update_cmake_lists.expected(), update_cmake_lists.listed()
    missing = {k: sorted(set(want[k]) - set(have[k])) for k in want}
    extra = {k: sorted(set(have[k]) - set(want[k])) for k in want}
    assert not any(missing.values()) and not any(extra.values()), (
        f"OrthoDiffusion/CMakeLists.txt is stale (run scripts/update_cmake_lists.py): "
        f"missing {missing}, no longer present {extra}")
    cm = (REPO / "OrthoDiffusion" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "WITH_GENERIC_TESTS" in cm and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cm
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY \"Segmentation\"", "EXTENSION_CONTRIBUTORS",
                "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                "EXTENSION_DEPENDS \"PyTorch\"", "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                "add_subdirectory(OrthoDiffusion)", "Slicer_EXTENSION_CPACK"):
        assert key in top


def test_update_script_renders_idempotently():
    text = (REPO / "OrthoDiffusion" / "CMakeLists.txt").read_text(encoding="utf-8")
    lists = update_cmake_lists.listed(text)
    assert update_cmake_lists.render(text, lists) == text


def _imports(path: Path):
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                yield node.module, a.name


def _lib_files():
    return sorted(p for p in (REPO / "OrthoDiffusionLib").rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _lib_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_library_import_boundaries(path):
    in_mrml = "mrml" in path.relative_to(REPO / "OrthoDiffusionLib").parts[:1]
    for module, name in _imports(path):
        full = f"{module}.{name}" if name else module
        assert not any(full == g or full.startswith(g + ".") or module == g for g in GUI_MODULES), \
            f"{path.name} imports GUI module {full}"
        if module == "slicer.util" or (module == "slicer" and name == "util"):
            assert in_mrml, f"{path.name}: only OrthoDiffusionLib/mrml may use slicer.util"
        if module == "slicer" or module.startswith("slicer."):
            assert in_mrml, f"{path.name} imports slicer outside OrthoDiffusionLib/mrml"
    for node in ast.walk(_tree(path)):  # code only: docstrings may mention the app helpers
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
            assert node.attr not in ("mrmlScene", "app", "modules"), \
                f"{path.name} uses slicer.{node.attr}: pass the scene/logic in"
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "slicer"
                and node.value.attr == "util"):
            assert node.attr not in GUI_UTIL, f"{path.name} calls GUI helper slicer.util.{node.attr}"


def test_icon_terminology_and_schemas():
    from PIL import Image

    with Image.open(REPO / "Resources" / "Icons" / "OrthoDiffusion.png") as im:
        assert im.size == (128, 128)
    labels = json.loads((REPO / "Resources" / "LabelSets" / "knee-11.json").read_text(encoding="utf-8"))["labels"]
    term = json.loads((REPO / "Resources" / "Terminology" / "knee-11.term.json").read_text(encoding="utf-8"))
    types = {(t["CodingSchemeDesignator"], t["CodeValue"]) for c in term["SegmentationCodes"]["Category"]
             for t in c["Type"]}
    for lab in labels:
        t = lab["terminology"]
        assert (t["type"]["CodingSchemeDesignator"], t["type"]["CodeValue"]) in types
        for part in t.values():
            assert part["CodingSchemeDesignator"] in ("SCT", "99ORTHOD")
    import jsonschema

    for name in ("findings.schema.json", "result.schema.json"):
        jsonschema.Draft202012Validator.check_schema(json.loads((REPO / "Resources" / "Schemas" / name).read_text(encoding="utf-8")))
