"""Supervised baselines (MONAI ResNet per plane + late fusion; MONAI UNet with the partial-label loss).
Tiny inputs and 2 epochs: these check wiring, shapes and the loss semantics, not accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from OrthoDiffusionLib.training.baselines import (
    BaselineConfig,
    baseline_seg_loss,
    build_seg_unet,
    fit_baseline_diagnosis,
    fit_baseline_segmentation,
)

PLANES = ("sagittal", "coronal", "axial")


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny 3D convs: one thread is far faster than two on a shared, loaded CPU
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cases(n: int, k: int = 8, shape=(8, 32, 32), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, k, generator=g) < 0.4).float()
    y[0, 1] = float("nan")  # an unknown label must not break the masked BCE
    inputs = {p: torch.randn(n, 1, *shape, generator=g) for p in PLANES}
    # plant a weak signal so the loss has something to follow
    inputs["sagittal"][:, 0, :2] += 2 * y[:, :1, None, None].nan_to_num()
    return inputs, y.numpy()


def test_baseline_diagnosis_fit_two_epochs_on_six_tiny_cases():
    inputs, y = _cases(6)
    present = torch.ones(6, 3, dtype=torch.bool)
    cfg = BaselineConfig(widths=(8, 8, 8, 8), max_epochs=2, batch_size=4)
    model, rep = fit_baseline_diagnosis(inputs, y, present, cfg)
    out = model(inputs, present)
    assert out.logits.shape == (6, 8)
    assert out.expert_logits.shape == (6, 8, 3)
    assert torch.isfinite(out.logits).all()
    assert rep["fusion"] == "mean"  # 6 cases: no internal validation split, so no gate fit
    assert all(h["epochs"] == 2 for h in rep["histories"].values())
    assert torch.allclose(out.logits, out.expert_logits.mean(-1), atol=1e-6)


def test_baseline_gate_fitted_on_internal_validation_and_missing_plane_renormalised():
    inputs, y = _cases(26, seed=1)
    present = torch.ones(26, 3, dtype=torch.bool)
    present[::7, 2] = False  # axial missing in some cases
    cfg = BaselineConfig(widths=(8, 8, 8, 8), max_epochs=2, batch_size=8, val_fraction=0.4)
    model, rep = fit_baseline_diagnosis(inputs, y, present, cfg)
    assert rep["fusion"] == "gate" and rep["n_val"] >= 10
    out = model(inputs, present)
    assert torch.isfinite(out.logits).all()
    w = out.plane_weights
    assert torch.allclose(w.sum(-1), torch.ones(26, 8), atol=1e-5)
    assert (w[::7, :, 2] == 0).all()


def test_seg_baseline_loss_ignores_unannotated_classes():
    n_classes = 4
    target = torch.zeros(1, 4, 6, 6, dtype=torch.long)
    target[0, :, :3, :3] = 1  # class 1 present; class 3 never delineated
    base = torch.zeros(1, n_classes, 4, 6, 6)
    base[:, 1] = 3.0 * (target == 1).float()
    moved = base.clone()
    bg = target[0] == 0
    # move probability from background to class 3 on "background" voxels, keeping p_bg + p_3 and
    # every other class's probability unchanged (logits 0, 0 -> log 0.2, log 1.8)
    moved[0, 0][bg] = float(np.log(0.2))
    moved[0, 3][bg] = float(np.log(1.8))
    loss = baseline_seg_loss()
    unannotated = torch.tensor([[True, True, True, False]])
    annotated = torch.ones(1, n_classes, dtype=torch.bool)
    a, b = float(loss(base, target, unannotated)), float(loss(moved, target, unannotated))
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    # the same move is penalised when class 3 is annotated (it would be counted)
    assert float(loss(moved, target, annotated)) > float(loss(base, target, annotated)) + 1e-3


def test_seg_baseline_fit_shapes_and_finite():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 1, 8, 16, 16, generator=g)
    targets = (images[:, 0] > 0.5).long()
    targets[0, 0] = -1  # unlabelled voxels are ignored
    annotated = torch.ones(6, 3, dtype=torch.bool)
    annotated[3:, 2] = False
    unet, hist = fit_baseline_segmentation(images, targets, 3, annotated, BaselineConfig(max_epochs=2, batch_size=3))
    assert hist["epochs"] == 2 and np.isfinite(hist["best_loss"])
    with torch.no_grad():
        logits = unet(images)
    assert logits.shape == (6, 3, 8, 16, 16) and torch.isfinite(logits).all()
    assert build_seg_unet(3)(images[:1]).shape == (1, 3, 8, 16, 16)
