"""The linear probe's command line (``orthodiffusion probe``) on a tiny labelled cohort: it scores the
given backbones and random weights with one protocol and writes the JSON it prints."""

from __future__ import annotations

import csv
import json

import numpy as np
import SimpleITK as sitk
import torch

from OrthoDiffusionLib.backbone import DiffusionUNet
from OrthoDiffusionLib.backbone.checkpoints import save_backbone
from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.planes import PLANES
from OrthoDiffusionLib.training import load_config


def _cohort(folder, n=10):
    """n cases, half with a faint 'effusion' blob in noise (hard enough that AUROCs are not all 1)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        effu = i % 2
        row = {"study_id": f"c{i}", "EFFU": str(effu)}
        for plane in PLANES:
            arr = rng.normal(100, 10, size=(12, 20, 20)).astype(np.float32)
            if effu:
                arr[4:8, 6:14, 6:14] += 4
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing((0.6, 0.6, 3.0))
            name = f"c{i}_{plane}.nii.gz"
            sitk.WriteImage(img, str(folder / name))
            row[plane] = name
        rows.append(row)
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder / "manifest.csv"


def test_probe_command_scores_backbones_and_random_weights(tmp_path, capsys, one_thread):
    (tmp_path / "cohort").mkdir()
    manifest = _cohort(tmp_path / "cohort")
    cfg, _ = load_config("tiny")
    for seed, plane in enumerate(PLANES):
        torch.manual_seed(seed + 1)
        m = DiffusionUNet(cfg)
        with torch.no_grad():  # not the random-init weights the probe compares against
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        save_backbone(m, tmp_path / "bb" / f"{plane}.safetensors")
    out = tmp_path / "probe.json"
    rc = main(["probe", "--manifest", str(manifest), "--backbones", str(tmp_path / "bb"), "--finding", "EFFU",
               "--out", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed == written
    assert written["n_cases"] == 10 and written["n_positive"] == 5 and "not for clinical" in written["disclaimer"]
    for arm in ("pretrained", "random_init"):
        assert set(written["auroc"][arm]) == {*PLANES, "all_planes"}
        mean, sd = written["auroc"][arm]["all_planes"]
        assert 0.0 <= mean <= 1.0 and sd >= 0.0
    # the two arms are different weights, so their per-plane scores are not all equal
    assert written["auroc"]["pretrained"] != written["auroc"]["random_init"]
