"""Fitting on cached features: MPAE with OOF gate, segmentation with partial labels,
iterative stratification, label fractions, patient aggregation."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from OrthoDiffusionLib.heads import (PLANES, aggregate_by_patient, iterative_stratification, label_fraction_subset,
                                     stratified_kfold)
from OrthoDiffusionLib.heads.fit import FitConfig, fit_mpae, fit_segmentation


pytestmark = pytest.mark.usefixtures("one_thread")


def _planted(n, seed):
    """Label 0 is visible only in sagittal features, label 1 only in axial ones."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, 2, generator=g) < 0.4).float()
    feats = {p: torch.randn(n, 16, 1, 3, 3, generator=g) for p in PLANES}
    feats["sagittal"][:, :4] += 1.2 * y[:, 0, None, None, None, None]
    feats["axial"][:, 4:8] += 1.2 * y[:, 1, None, None, None, None]
    return feats, y


@pytest.mark.parametrize("gate_mode", ["shared", "label"])
def test_mpae_learns_planted_signal_and_weights_the_informative_plane(gate_mode):
    feats, y = _planted(200, 0)
    test_feats, y_test = _planted(200, 1)
    cfg = FitConfig(lr=1e-2, max_epochs=40, patience=6, batch_size=64)
    head, report = fit_mpae(feats, y, cfg=cfg, n_folds=5, gate_mode=gate_mode, num_heads=4)
    assert report["oof_expert_logits"].shape == (200, 2, 3)
    assert sorted(set(report["folds"].tolist())) == [0, 1, 2, 3, 4]
    with torch.no_grad():
        out = head(test_feats)
    for k in range(2):
        assert roc_auc_score(y_test[:, k], out.logits[:, k]) > 0.8
    mean_w = out.plane_weights.mean(0)  # [K, 3]
    assert mean_w[0].argmax() == PLANES.index("sagittal") and mean_w[0, 0] > 0.5
    assert mean_w[1].argmax() == PLANES.index("axial") and mean_w[1, 2] > 0.5

    # a case without the informative plane still gets a valid (renormalised) answer
    present = torch.tensor([[False, True, True]]).repeat(200, 1)
    with torch.no_grad():
        partial = head(test_feats, present)
    assert torch.all(partial.plane_weights[:, :, 0] == 0)
    torch.testing.assert_close(partial.plane_weights.sum(-1), torch.ones(200, 2))


def test_segmentation_fits_with_partial_labels():
    g = torch.Generator().manual_seed(0)
    n = 12
    targets = torch.zeros(n, 2, 8, 8, dtype=torch.long)
    feats = torch.randn(n, 8, 1, 2, 2, generator=g) * 0.1
    for i in range(n):
        q = i % 4  # the structure occupies one quadrant, announced by one feature channel
        targets[i, :, (q // 2) * 4:(q // 2) * 4 + 4, (q % 2) * 4:(q % 2) * 4 + 4] = 1
        feats[i, q, 0, q // 2, q % 2] += 2.0
        targets[i, :, 0, 0] = 2 if q != 0 else 1  # a small second structure
    annotated = torch.ones(n, 3, dtype=torch.bool)
    annotated[::2, 2] = False  # half the cases never delineated structure 2
    decoder, history = fit_segmentation(feats, targets, 3, annotated,
                                        cfg=FitConfig(lr=1e-2, batch_size=4, max_epochs=40, patience=40),
                                        min_channels=4)
    with torch.no_grad():
        pred = decoder(feats).argmax(1)
    fg = targets == 1
    dice = 2 * ((pred == 1) & fg).sum() / ((pred == 1).sum() + fg.sum())
    assert dice > 0.8, float(dice)
    assert history["epochs"] >= 1

    # multi-scale variant: encoder taps are wired in by name and shape
    taps = {"in_0": torch.randn(n, 2, 2, 8, 8, generator=g)}
    multi, _ = fit_segmentation(feats, targets, 3, annotated, taps=taps, min_channels=4,
                                cfg=FitConfig(lr=1e-2, batch_size=4, max_epochs=2, patience=2))
    assert multi.tap_level == {"in_0": 2}
    assert multi(feats[:2], {"in_0": taps["in_0"][:2]}).shape == (2, 3, 2, 8, 8)


def test_iterative_stratification_keeps_label_proportions():
    rng = np.random.default_rng(0)
    prevalence = np.array([0.5, 0.2, 0.05, 0.3])
    y = (rng.random((1000, 4)) < prevalence).astype(float)
    folds = stratified_kfold(y, 5, seed=3)
    assert np.bincount(folds).tolist() == [200] * 5
    for f in range(5):
        np.testing.assert_allclose(y[folds == f].mean(0), y.mean(0), atol=0.02)
    # rare label spread evenly: each fold holds a fifth of its positives (±1)
    rare = y[:, 2].sum()
    assert all(abs(y[folds == f, 2].sum() - rare / 5) <= 1 for f in range(5))
    # unequal proportions
    split = iterative_stratification(y, [0.1, 0.9], seed=0)
    assert abs((split == 0).sum() - 100) <= 1


def test_unknown_labels_count_as_not_positive():
    """The package casts labels to bool (NaN would be True): an unknown must give the very folds
    a negative gives, and not those a positive gives."""
    rng = np.random.default_rng(4)
    y = (rng.random((300, 8)) < [0.05, 0.08, 0.4, 0.25, 0.12, 0.06, 0.3, 0.35]).astype(float)
    unknown = rng.random(y.shape) < 0.15
    partial = np.where(unknown, np.nan, y)
    folds = stratified_kfold(partial, 5, seed=2)
    assert np.array_equal(folds, stratified_kfold(np.where(unknown, 0.0, y), 5, seed=2))
    assert not np.array_equal(folds, stratified_kfold(np.where(unknown, 1.0, y), 5, seed=2))
    known_pos = np.nan_to_num(partial) == 1
    for f in range(5):  # each fold a fifth of every finding's known positives (±2 for the rarest ties)
        assert np.all(np.abs(known_pos[folds == f].sum(0) - known_pos.sum(0) / 5) <= 2)


def test_single_label_column_and_no_positives():
    y = np.zeros((40, 1))
    y[:10] = 1
    folds = stratified_kfold(y, 2, seed=0)  # e.g. one annotated structure: the package's classes refuse it
    assert [int(y[folds == f].sum()) for f in range(2)] == [5, 5]
    assert np.bincount(stratified_kfold(np.zeros((10, 3)), 5, seed=0)).tolist() == [2] * 5


def test_label_fraction_subset_is_deterministic_and_stratified():
    rng = np.random.default_rng(1)
    y = (rng.random((500, 3)) < [0.4, 0.15, 0.6]).astype(float)
    y[rng.random((500, 3)) < 0.05] = np.nan  # unknown labels must not break it
    a = label_fraction_subset(y, 0.1, seed=7)
    assert np.array_equal(a, label_fraction_subset(y, 0.1, seed=7))
    assert not np.array_equal(a, label_fraction_subset(y, 0.1, seed=8))
    assert abs(len(a) - 50) <= 1
    pos = np.nan_to_num(y) == 1
    np.testing.assert_allclose(pos[a].mean(0), pos.mean(0), atol=0.04)
    assert len(label_fraction_subset(y, 1.0)) == 500


def test_patient_grouping_and_aggregation():
    y = np.array([[1, 0], [0, 0], [0, 1], [1, 1], [0, 0], [1, 0]] * 5, dtype=float)
    patients = [f"p{i // 2}" for i in range(len(y))]
    folds = stratified_kfold(y, 3, seed=0, groups=patients)
    for pid in set(patients):
        assert len({folds[i] for i, p in enumerate(patients) if p == pid}) == 1
    ids, p_max = aggregate_by_patient([[0.1, 0.9], [0.5, 0.2], [0.3, 0.3]], ["a", "b", "a"], how="max")
    assert ids == ["a", "b"]
    np.testing.assert_allclose(p_max, [[0.3, 0.9], [0.5, 0.2]])
    _, p_mean = aggregate_by_patient([[0.1, 0.9], [0.5, 0.2], [0.3, 0.3]], ["a", "b", "a"], how="mean")
    np.testing.assert_allclose(p_mean, [[0.2, 0.6], [0.5, 0.2]])
    with pytest.raises(ValueError):
        aggregate_by_patient([[0.1]], ["a"], how="median")


def test_mpae_experts_in_two_worker_processes_match_one_process():
    feats, y = _planted(80, 3)
    cfg = FitConfig(lr=1e-2, max_epochs=6, patience=3, batch_size=32)
    one, rep1 = fit_mpae(feats, y, cfg=cfg, n_folds=3, num_heads=4, workers=1)
    two, rep2 = fit_mpae(feats, y, cfg=cfg, n_folds=3, num_heads=4, workers=2)
    torch.testing.assert_close(rep2["oof_expert_logits"], rep1["oof_expert_logits"], rtol=1e-4, atol=1e-5)
    for key, value in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert [h["best_epoch"] for h in rep2["histories"]["folds"]] == [h["best_epoch"] for h in rep1["histories"]["folds"]]
