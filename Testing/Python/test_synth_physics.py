"""Contrast and noise physics of the synthetic test bed, measured on generated images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from OrthoDiffusionLib.synth import tissues as T
from OrthoDiffusionLib.synth.acquisition import render_labels
from OrthoDiffusionLib.synth.contrast import CENTERS, SNR_3T_FACTOR, Sequence, signal_lut
from OrthoDiffusionLib.synth.generate import SynthConfig, generate_case

NO_FINDINGS = {k: 0 for k in ("ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD")}


def pure_tissue_masks(case, plane):
    """Per-tissue masks of voxels whose whole slice profile lies in one tissue (no partial volume)."""
    st = case.stacks[plane]
    g = st.geometry
    centre = render_labels(case.tissue, case.grid, g)
    same = np.ones(centre.shape, bool)
    for off in (-0.5, 0.5):
        from dataclasses import replace

        shifted = replace(g, origin=g.origin + g.direction[:, 2] * off * g.thickness)
        same &= render_labels(case.tissue, case.grid, shifted) == centre
    masks = {}
    for tid in (T.FLUID, T.CARTILAGE, T.MUSCLE, T.FAT, T.MARROW):
        m = (centre == tid) & same
        m = ndimage.binary_erosion(m, structure=np.ones((3, 3, 1), bool))
        masks[tid] = m
    return masks


@pytest.fixture(scope="module")
def pdfs_case():
    # EFFU at difficulty 0.5 (the pre-calibration size): the measurement needs a large fluid pool
    cfg = SynthConfig(seed=5, centers=("center_a",), base_maps=("a",), motion=False, finding_difficulty={"EFFU": 0.5})
    return generate_case(0, cfg, force_findings={**NO_FINDINGS, "EFFU": 1})


@pytest.fixture(scope="module")
def t1_case():
    # EFFU at difficulty 0.5 (the pre-calibration size): the measurement needs a large fluid pool
    cfg = SynthConfig(seed=6, centers=("center_b",), base_maps=("a",), motion=False, finding_difficulty={"EFFU": 0.5})
    return generate_case(0, cfg, force_findings={**NO_FINDINGS, "EFFU": 1})


def test_lut_ordering_all_centres_and_fields():
    for field_t in (1.5, 3.0):
        table = T.tissue_table(field_t)
        for c in CENTERS.values():
            pdfs = signal_lut(table, Sequence("PD-FS", 3000, 30 + c.te_shift_ms, 90, True, c.fs_residual), c.gamma)
            assert pdfs[T.FLUID] > pdfs[T.CARTILAGE] > pdfs[T.MUSCLE] > pdfs[T.FAT]
            assert pdfs[T.MARROW_OEDEMA] > 2 * pdfs[T.MARROW]          # bone bruise bright on FS
            t1 = signal_lut(table, Sequence("T1", 550, 12, 90, False), c.gamma)
            assert t1[T.FAT] > t1[T.MUSCLE] > t1[T.FLUID]
            t2 = signal_lut(table, Sequence("T2-FS", 4000, 65, 90, True, c.fs_residual), c.gamma)
            assert t2[T.FLUID] > 2 * t2[T.CARTILAGE]
            pd = signal_lut(table, Sequence("PD", 3000, 30, 90, False), c.gamma)
            assert pd[T.FAT] > 5 * pdfs[T.FAT]                           # fat suppression works
            for dark in (T.LIGAMENT, T.TENDON, T.CORTEX):
                assert pdfs[dark] < pdfs[T.MUSCLE]


def test_pdfs_ordering_measured(pdfs_case):
    st = pdfs_case.stacks["sagittal"]
    assert st.sequence.name == "PD-FS"
    masks = pure_tissue_masks(pdfs_case, "sagittal")
    mean = {t: float(st.image[m].mean()) for t, m in masks.items()}
    for t, m in masks.items():
        assert m.sum() > 30, T.TISSUE_NAMES[t]
    assert mean[T.FLUID] > mean[T.CARTILAGE] > mean[T.MUSCLE] > mean[T.FAT], mean


def test_t1_ordering_measured(t1_case):
    st = t1_case.stacks["coronal"]
    assert st.sequence.name == "T1"
    masks = pure_tissue_masks(t1_case, "coronal")
    mean = {t: float(st.image[m].mean()) for t, m in masks.items() if m.sum() > 30}
    assert mean[T.FAT] > mean[T.MUSCLE] > mean[T.FLUID], mean
    assert mean[T.MARROW] > mean[T.MUSCLE]  # fatty marrow bright on T1


def test_measured_snr_matches_request():
    cfg = SynthConfig(seed=7, centers=("center_c",), base_maps=("a",), motion=False)
    a = generate_case(1, cfg, force_findings={}, noise_seed=101)
    b = generate_case(1, cfg, force_findings={}, noise_seed=202)
    for plane in ("sagittal", "axial"):
        sa, sb = a.stacks[plane], b.stacks[plane]
        muscle = pure_tissue_masks(a, plane)[T.MUSCLE]
        assert muscle.sum() > 500
        sigma = float(np.std((sa.image - sb.image)[muscle]) / np.sqrt(2))
        signal = float((0.5 * (sa.image + sb.image))[muscle].mean())
        measured = signal / sigma
        assert abs(measured / sa.snr - 1) < 0.2, (plane, measured, sa.snr)


def test_snr_field_strength_ratio():
    assert 1.6 <= SNR_3T_FACTOR <= 2.0
    cfg = SynthConfig(seed=0)
    for c in CENTERS.values():
        assert c.snr_1p5 * SNR_3T_FACTOR * cfg.snr_factor > c.snr_1p5 * cfg.snr_factor * 1.59
