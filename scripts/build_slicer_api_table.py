"""Rebuild Testing/Data/slicer_api_table.json from Slicer's source (run when OrthoDiffusion.py changes).

    python scripts/build_slicer_api_table.py <git dir of github.com/Slicer/Slicer>

For every slicer.* / qt.* / ctk.* / SampleData.* use of OrthoDiffusion.py (Testing/Python/slicer_api.py)
it reads the defining file at each tag (git show TAG:PATH) and records whether the symbol is there
and, for Python functions, the parameters it takes. Qt classes are not in Slicer's source: they are
recorded with the Qt version each tag requires (PythonQt wraps Qt's classes).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "Python"))
import slicer_api  # noqa: E402

TAGS = ("v5.8.0", "v5.10.0", "v5.12.3")
OUT = REPO / "Testing" / "Data" / "slicer_api_table.json"
PY_FILES = {"slicer.util": "Base/Python/slicer/util.py", "slicer.packaging": "Base/Python/slicer/packaging.py",
            "slicer.i18n": "Base/Python/slicer/i18n.py",
            "slicer.ScriptedLoadableModule": "Base/Python/slicer/ScriptedLoadableModule.py",
            "SampleData": "Modules/Scripted/SampleData/SampleData.py",
            "SampleData.SampleDataLogic": "Modules/Scripted/SampleData/SampleData.py"}
PY_PACKAGES = {"slicer.parameterNodeWrapper": "Base/Python/slicer/parameterNodeWrapper"}
HEADERS = {"slicer.app": ["Base/QTCore/qSlicerCoreApplication.h", "Base/QTGUI/qSlicerApplication.h"],
           "slicer.mrmlScene": ["Libs/MRML/Core/vtkMRMLScene.h"],
           "slicer.modules.segmentations.logic()": ["Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.h"],
           "slicer.modules.terminologies.logic()": ["Modules/Loadable/Terminologies/Logic/vtkSlicerTerminologiesModuleLogic.h"],
           "slicer.modules.plots.logic()": ["Modules/Loadable/Plots/Logic/vtkSlicerPlotsLogic.h"]}
# Members Qt provides (QObject / QCoreApplication): present wherever PythonQt is.
QT_MEMBERS = {"slicer.app.connect", "slicer.app.processEvents"}


def show(git: Path, tag: str, path: str) -> str | None:
    done = subprocess.run(["git", "-C", str(git), "show", f"{tag}:{path}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def ls(git: Path, tag: str, path: str) -> list:
    done = subprocess.run(["git", "-C", str(git), "ls-tree", "-r", "--name-only", tag, path], capture_output=True,
                          text=True)
    return done.stdout.split()


def py_lookup(text: str, dotted: list) -> dict | None:
    """Find ``a.b`` (class a, member b) or ``a`` in a Python file; parameters of a function."""
    scope = ast.parse(text).body
    node = None
    for name in dotted:
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name), None)
        if node is None:
            assigned = any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == name for t in n.targets)
                           for n in scope)
            return {"present": True} if assigned and name == dotted[-1] else None
        scope = node.body
    out = {"present": True}
    if isinstance(node, ast.FunctionDef):
        a = node.args
        out["params"] = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        out["var_keyword"] = a.kwarg is not None
    return out


def lookup(git: Path, tag: str, symbol: str) -> dict:
    if symbol in QT_MEMBERS:
        return {"present": True, "source": "Qt (QObject/QCoreApplication via PythonQt)"}
    if symbol.startswith("qt."):
        return {"present": True, "source": "Qt class via PythonQt"}
    if symbol.startswith("slicer.vtk"):
        name = symbol.split(".")[1]
        hits = [p for p in ls(git, tag, "Libs") if p.endswith(f"/{name}.h")]
        return {"present": bool(hits), "source": hits[0] if hits else None}
    if symbol.startswith("slicer.modules.orthodiffusion."):  # our own module object
        text = show(git, tag, "Base/QTCore/qSlicerAbstractCoreModule.h") or ""
        return {"present": "widgetRepresentation()" in text, "source": "Base/QTCore/qSlicerAbstractCoreModule.h"}
    for prefix, headers in HEADERS.items():
        if symbol == prefix.removesuffix("()") and symbol.startswith("slicer.modules."):
            module = symbol.split(".")[2]
            text = show(git, tag, headers[0])
            return {"present": text is not None, "source": headers[0], "module": module}
        if symbol.startswith(prefix + "."):
            member = symbol[len(prefix) + 1:]
            for h in headers:
                text = show(git, tag, h) or ""
                if re.search(rf"\b{re.escape(member)}\b", text):
                    return {"present": True, "source": h}
            return {"present": False, "source": headers[0]}
        if symbol == prefix:
            return {"present": True, "source": headers[0]}
    for prefix, path in sorted(PY_FILES.items(), key=lambda kv: -len(kv[0])):
        if symbol.startswith(prefix + "."):
            text = show(git, tag, path)
            rest = symbol[len(prefix) + 1:].split(".")
            if prefix == "SampleData.SampleDataLogic":
                rest = ["SampleDataLogic", *rest]
            found = py_lookup(text, rest) if text else None
            return {**(found or {"present": False}), "source": path}
    for prefix, folder in PY_PACKAGES.items():
        if symbol.startswith(prefix + "."):
            name = symbol[len(prefix) + 1:]
            for path in ls(git, tag, folder):
                text = show(git, tag, path) or ""
                if re.search(rf"^(def|class) {name}\b", text, re.M):
                    return {"present": True, "source": path}
            return {"present": False, "source": folder}
    raise SystemExit(f"no rule for {symbol}: add one to scripts/build_slicer_api_table.py")


def qt_required(git: Path, tag: str) -> str:
    text = show(git, tag, "CMakeLists.txt") or ""
    block = text[text.find("if(NOT DEFINED Slicer_REQUIRED_QT_VERSION)"):]
    found = re.findall(r'set\(_required_qt_version "([0-9.]+)"\)', block[:800])
    return " or ".join(dict.fromkeys(found))


def main(git: str) -> int:
    git = Path(git)
    uses = slicer_api.merged(slicer_api.collect((REPO / "OrthoDiffusion" / "OrthoDiffusion.py").read_text()))
    table = {"about": "Slicer API used by OrthoDiffusion/OrthoDiffusion.py, read from Slicer's source at each tag "
                      "(scripts/build_slicer_api_table.py); checked by Testing/Python/test_slicer_api_table.py",
             "source": "https://github.com/Slicer/Slicer", "tags": list(TAGS),
             "qt_required": {t: qt_required(git, t) for t in TAGS}, "symbols": {}}
    for symbol in sorted(uses):
        per_tag = {t: lookup(git, t, symbol) for t in TAGS}
        first = next((t for t in TAGS if per_tag[t]["present"]), None)
        table["symbols"][symbol] = {"first_release": first and first[1:], "tags": per_tag}
    OUT.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    missing = [s for s, e in table["symbols"].items() if e["first_release"] is None]
    print(f"wrote {OUT}: {len(table['symbols'])} symbols" + (f"; in no tag: {missing}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
