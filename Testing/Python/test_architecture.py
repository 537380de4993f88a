"""The layout rules of docs/architecture.md, read from the code (every import, the lazy ones inside
functions too): imports point down the data flow, each concept lives once, the library has no Qt,
no argparse outside cli/, no metrics outside evaluation/, no test fixtures, no file over 450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

LIB = REPO / "OrthoDiffusionLib"
# Low to high: a unit may import its own layer and the layers below, never one above.
LAYERS = [
    {"__init__", "errors", "planes", "storage", "ownership", "resources", "labelsets", "device", "runtime", "ehr",
     "csvsafe", "diskspace", "figures"},
    {"io", "backbone"},
    {"synth", "jobs", "features"},
    {"heads"},
    {"models", "results", "training"},
    {"evaluation", "inference"},
    {"adapt"},
    {"reports"},
    {"mrml"},
    {"slicerlogic"},
    {"cli", "__main__"},
]
LEVEL = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _modules():
    for path in sorted(LIB.rglob("*.py")):
        rel = path.relative_to(LIB)
        unit = rel.parts[0][:-3] if len(rel.parts) == 1 else rel.parts[0]
        yield path, rel, unit, ast.parse(path.read_text(encoding="utf-8"))


def _imported_units(path: Path, rel: Path, tree) -> list[tuple[str, int]]:
    package = list(rel.parts[:-1])  # the importing module's package, relative to the library
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            elif (node.module or "").startswith("OrthoDiffusionLib"):
                target = node.module.split(".")[1:]
            else:
                continue
            if target:
                out.append((target[0], node.lineno))
            else:  # from OrthoDiffusionLib import X / from .. import X: X is a unit or a root name
                out += [(a.name if a.name in LEVEL else "__init__", node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".")[1], node.lineno) for a in node.names if a.name.startswith("OrthoDiffusionLib.")]
    return out


def test_every_unit_has_a_layer():
    units = {unit for _, _, unit, _ in _modules()}
    assert units <= set(LEVEL), f"add to LAYERS (and docs/architecture.md): {sorted(units - set(LEVEL))}"


def test_imports_point_down_the_data_flow():
    upward = [f"{rel}:{line}: {unit} (layer {LEVEL[unit]}) imports {target} (layer {LEVEL[target]})"
              for path, rel, unit, tree in _modules() for target, line in _imported_units(path, rel, tree)
              if target in LEVEL and LEVEL[target] > LEVEL[unit]]
    assert not upward, "\n".join(upward)


def _names_assigned(tree, name: str) -> list[int]:
    return [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign))
            and any(isinstance(t, ast.Name) and t.id == name for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))]


def test_planes_defined_once():
    found = [f"{rel}:{line}" for _, rel, _, tree in _modules() for line in _names_assigned(tree, "PLANES")]
    assert found == ["planes.py:" + str(_names_assigned(ast.parse((LIB / "planes.py").read_text()), "PLANES")[0])], found


def _imports_of(tree) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def test_argparse_only_under_cli_and_no_gui_toolkits():
    bad = [f"{rel}: {name}" for _, rel, unit, tree in _modules() for name in _imports_of(tree)
           if (name == "argparse" and unit != "cli")
           or name.split(".")[0] in ("qt", "ctk", "PythonQt") or "ScriptedLoadableModule" in name]
    assert not bad, bad


METRIC_IMPLEMENTATIONS = ("sklearn.metrics.roc_auc_score", "monai.metrics.compute_dice", "monai.metrics",
                          "sklearn.metrics.average_precision_score")


def test_dice_and_auroc_only_in_evaluation():
    """No metric library outside evaluation/, and a function outside it named for Dice or AUROC must
    delegate to evaluation's (label_dice, auroc, auroc_per_label)."""
    bad = []
    for _, rel, unit, tree in _modules():
        if unit == "evaluation":
            continue
        bad += [f"{rel}: imports {m}" for m in _imports_of(tree) if m in METRIC_IMPLEMENTATIONS]
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            if any(k in fn.name.lower() for k in ("dice", "auroc", "auc")):
                called = {c.func.id if isinstance(c.func, ast.Name) else getattr(c.func, "attr", "")
                          for c in ast.walk(fn) if isinstance(c, ast.Call)}
                if not called & {"label_dice", "auroc", "auroc_per_label", "macro_auroc", "label_metrics"}:
                    bad.append(f"{rel}:{fn.lineno}: {fn.name} computes a metric itself")
    assert not bad, bad


def test_no_library_file_over_450_lines():
    long = {str(rel): n for path, rel, _, _ in _modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 450}
    assert not long, long


def test_no_test_fixtures_in_the_library():
    bad = [str(rel) for _, rel, _, tree in _modules() if "pytest" in _imports_of(tree)]
    bad += [f"{rel}:{n.lineno}: {n.name}" for _, rel, _, tree in _modules() for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.name.startswith(("make_standin", "make_toy"))]
    assert not bad, bad


@pytest.mark.parametrize("doc", ["docs/architecture.md"])
def test_architecture_doc_names_every_unit(doc):
    text = (REPO / doc).read_text(encoding="utf-8")
    missing = [u for u in LEVEL if u not in ("__init__", "__main__") and f"`{u}" not in text]
    assert not missing, f"{doc} does not describe {missing}"
