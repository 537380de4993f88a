"""`orthodiffusion sweep`: a tiny (t × block) grid on a toy cohort with a stand-in model: table, heatmap
layout, argmax, and --write-config into the user's copy (never the shipped catalogue)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.errors import UserError
from standins import make_standin_model, make_toy_cohort

TIMESTEPS = [50, 200]
BLOCKS = ["mid_0", "mid_2", "in_2"]
SWEPT = ["sagittal", "coronal"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    mp = pytest.MonkeyPatch()
    mp.setenv("ORTHODIFFUSION_HOME", str(root / "home"))
    manifest = make_toy_cohort(root / "data", n=8)
    # no split column: the probes are scored out-of-fold
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in rows[0] if c != "split"]
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    model = make_standin_model(root / "model")
    before = (model / "model.json").read_text()
    out = root / "out"
    rc = main(["sweep", "--manifest", str(manifest), "--model", str(model), "--timesteps", "50,200",
               "--blocks", ",".join(BLOCKS), "--planes", ",".join(SWEPT), "--folds", "2", "--device", "cpu",
               "--out", str(out), "--quiet", "--write-config"])
    assert rc == 0
    yield {"root": root, "model": model, "out": out, "before": json.loads(before)}
    mp.undo()


def _table(out):
    with open(out / "sweep.csv", newline="", encoding="utf-8") as f:
        assert f.readline().startswith("# Research use only")
        return list(csv.DictReader(f))


def test_table_has_one_row_per_cell_and_best_is_argmax(swept):
    rows = _table(swept["out"])
    cells = [(r["plane"], int(r["timestep"]), r["block"]) for r in rows]
    assert sorted(cells) == sorted((p, t, b) for p in SWEPT for t in TIMESTEPS for b in BLOCKS)
    res = json.loads((swept["out"] / "sweep.json").read_text())
    assert "Research use only" in res["disclaimer"] and res["protocol"]["sagittal"] == "2-fold out-of-fold"
    for plane in SWEPT:
        mine = [r for r in rows if r["plane"] == plane and np.isfinite(float(r["macro_auroc"]))]
        top = max(float(r["macro_auroc"]) for r in mine)
        first = next(r for r in mine if float(r["macro_auroc"]) == top)  # table order = t, then block order
        assert res["best"][plane]["timestep"] == int(first["timestep"]) and res["best"][plane]["block"] == first["block"]
        assert res["best"][plane]["macro_auroc"] == pytest.approx(top, abs=1e-5)
        for r in mine:  # macro = mean of the scored per-finding AUROCs
            per = [float(v) for k, v in r.items() if k.startswith("auroc_") and v != "nan"]
            assert len(per) == int(r["n_findings_scored"]) and float(r["macro_auroc"]) == pytest.approx(np.mean(per),
                                                                                                       abs=1e-5)


def test_heatmap_is_a_png_with_one_panel_per_plane(swept):
    path = swept["out"] / "sweep_heatmap.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and im.width > im.height
        layout = json.loads(im.text["Layout"])
        assert "Research use only" in im.text["Description"]
    assert layout == {"panels": SWEPT, "rows_timesteps": TIMESTEPS, "cols_blocks": BLOCKS}


def test_write_config_updates_the_user_folder_model_with_a_backup(swept):
    entry = json.loads((swept["model"] / "model.json").read_text())
    best = json.loads((swept["out"] / "sweep.json").read_text())["best"]
    for plane in SWEPT:
        assert (entry["planes"][plane]["timestep"], entry["planes"][plane]["block"]) == \
               (best[plane]["timestep"], best[plane]["block"])
    assert entry["planes"]["axial"] == swept["before"]["planes"]["axial"]  # not swept: unchanged
    backups = list(swept["model"].glob("model.before-sweep-*.json"))
    assert len(backups) == 1 and json.loads(backups[0].read_text()) == swept["before"]
    assert entry["sweeps"][-1]["previous"]["sagittal"] == {"timestep": 100, "block": "mid_2"}


def test_write_config_for_a_shipped_model_makes_a_user_copy(swept, repo_root):
    from OrthoDiffusionLib.models.catalogue import get_model, user_models_dir
    from OrthoDiffusionLib.models.loading import load_model
    from OrthoDiffusionLib.adapt.sweep import write_best_config

    catalogue = repo_root / "Resources" / "Models" / "catalogue.json"
    shipped_bytes = catalogue.read_bytes()
    target = write_best_config("knee-demo", {"sagittal": {"timestep": 50, "block": "mid_0"}},
                               swept["out"] / "sweep.json")
    assert catalogue.read_bytes() == shipped_bytes
    assert target == user_models_dir() / "knee-demo" / "model.json"
    spec = get_model("knee-demo")
    assert spec.source == "user" and spec.planes["sagittal"] == {
        "backbone": str(repo_root / "Resources" / "Models" / "knee-demo" / "sagittal.safetensors"),
        "timestep": 50, "block": "mid_0"}
    assert spec.entry["needs_heads"] is True and spec.backbone_path("coronal").is_file()
    with pytest.raises(UserError, match="no fitted heads"):
        load_model("knee-demo")
    # heads fitted on the old setting are refused, not silently used on other features
    shutil.copytree(repo_root / "Resources" / "Models" / "knee-demo" / "heads", spec.user_heads)
    with pytest.raises(UserError, match="t=100 mid_2, the model now uses t=50 mid_0; refit"):
        load_model("knee-demo")


def test_label_fraction_subsets_the_training_rows():
    from types import SimpleNamespace

    from OrthoDiffusionLib.adapt.sweep import evaluation_plan

    rng = np.random.default_rng(0)
    Y = (rng.random((40, 3)) < 0.4).astype(float)
    rows = [SimpleNamespace(split="", patient_id=f"P{i}") for i in range(40)]
    name, plan = evaluation_plan(rows, Y, 0.5, 4, seed=0)
    assert name == "4-fold out-of-fold" and len(plan) == 4
    held = np.concatenate([ev for _, ev in plan])
    assert sorted(held.tolist()) == list(range(40))
    for train, ev in plan:
        assert not set(train) & set(ev) and 0.35 * 30 <= len(train) <= 0.65 * 30
    rows = [SimpleNamespace(split="val" if i % 4 == 0 else "train", patient_id=f"P{i}") for i in range(40)]
    name, plan = evaluation_plan(rows, Y, 1.0, 4, seed=0)
    assert name == "train→val" and len(plan[0][1]) == 10 and len(plan[0][0]) == 30


def test_fit_does_not_carry_heads_across_a_feature_change(swept, one_thread):
    """After the (t, block) of a model changes, `fit --task diagnosis` must not keep the parent's
    segmentation head (it was fitted on other features)."""
    from OrthoDiffusionLib.heads import HeadStore
    from OrthoDiffusionLib.storage import atomic_write_json, read_json

    model = swept["root"] / "carry-model"
    make_standin_model(model, model_id="carry")
    manifest = swept["root"] / "data" / "manifest.csv"
    store = swept["root"] / "carry-heads"
    common = ["--manifest", str(manifest), "--model", str(model), "--folds", "2", "--max-epochs", "3",
              "--device", "cpu", "--out", str(store), "--cache", str(swept["root"] / "cache"), "--quiet"]
    assert main(["fit", "--task", "all", "--seg-epochs", "1", *common]) == 0
    first = HeadStore(store).manifest()
    assert first["segmentation_planes"] == ["sagittal"]
    entry = read_json(model / "model.json")
    entry["planes"]["sagittal"].update(timestep=50, block="mid_0")
    atomic_write_json(model / "model.json", entry)
    assert main(["fit", "--task", "diagnosis", *common]) == 0
    second = HeadStore(store).manifest()
    assert second["parent"] == first["version"]
    assert second["segmentation_planes"] == []
    assert "mpae" in second["heads"] and "seg_sagittal" not in second["heads"]
