"""The demo's golden outputs: how they are produced and what of them is compared (shared by
``test_golden_demo.py`` and ``scripts/update_golden.py``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "Data" / "golden"


def golden_dir(spec) -> Path:
    return GOLDEN / f"{spec.id}-{spec.version}"


def run_demo_isolated(tmp: Path):
    """``orthodiffusion demo`` (knee-demo, CPU, its default draws) with an empty per-user folder and
    feature cache, on 2 torch threads; returns (result folder, model spec)."""
    import torch

    from OrthoDiffusionLib.cli.demo import run_demo
    from OrthoDiffusionLib.models.catalogue import get_model

    saved = {k: os.environ.get(k) for k in ("ORTHODIFFUSION_HOME", "ORTHODIFFUSION_CACHE")}
    os.environ["ORTHODIFFUSION_HOME"], os.environ["ORTHODIFFUSION_CACHE"] = str(tmp / "home"), str(tmp / "cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pred, _, _ = run_demo(str(tmp / "demo"), device="cpu", log=lambda m: None)
        return Path(pred.out_dir), get_model("knee-demo")
    finally:
        torch.set_num_threads(threads)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def canonical_findings(path: Path) -> dict:
    """findings.json without what differs from run to run or machine to machine (paths, timings,
    memory): the findings, planes, structure volumes, feature spec, model and head version."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    prov = data.get("provenance", {})
    keep = {k: data[k] for k in data if k not in ("provenance", "timings")}
    keep["provenance"] = {
        "model": {k: v for k, v in prov.get("model", {}).items() if k != "heads"},
        "heads": {k: v for k, v in prov.get("model", {}).get("heads", {}).items() if k != "store"},
        "feature_spec": prov.get("feature_spec"),
        "inputs": {p: {k: v for k, v in i.items() if k != "source"} for p, i in prov.get("inputs", {}).items()},
        "structure_volumes_ml": prov.get("structure_volumes_ml"),
        "segmentation_planes": prov.get("segmentation_planes"),
        "planes_used": prov.get("planes_used"), "warnings": prov.get("warnings"),
    }
    return keep
