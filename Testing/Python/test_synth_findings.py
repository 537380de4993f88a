"""Each injected finding changes the image only near its lesion and edits labels where it should."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from OrthoDiffusionLib.synth.acquisition import render_labels
from OrthoDiffusionLib.synth.findings import FINDING_KEYS
from OrthoDiffusionLib.synth.generate import SynthConfig, generate_case
from OrthoDiffusionLib.synth.template import ACL, LAT_MEN, MED_MEN, PATELLA

CFG = SynthConfig(seed=11, centers=("center_a",), base_maps=("a",), working_mm=1.0, motion=False)
NONE = {k: 0 for k in FINDING_KEYS}
KEYS = ("ACL", "PCL", "MCL", "LCL", "MM", "LM", "PD", "EFFU")


@pytest.fixture(scope="module")
def baseline():
    return generate_case(0, CFG, force_findings=NONE)


def near_lesion(case, plane, margin_mm=2.5):
    """Lesion mask (case grid), dilated, seen anywhere across each slice's thickness."""
    grown = ndimage.binary_dilation(case.lesion, iterations=int(np.ceil(margin_mm / case.grid.spacing)))
    grown = grown.astype(np.uint8)
    g = case.stacks[plane].geometry
    out = np.zeros(g.shape, bool)
    for off in np.linspace(-0.6, 0.6, 7):
        shifted = replace(g, origin=g.origin + g.direction[:, 2] * off * g.thickness)
        out |= render_labels(grown, case.grid, shifted) > 0
    return out


@pytest.mark.parametrize("key", KEYS)
def test_finding_is_local(baseline, key):
    case = generate_case(0, CFG, force_findings={**NONE, key: 1})
    assert case.lesion.sum() > 20, key
    changed_somewhere = False
    for plane in ("sagittal", "coronal", "axial"):
        a, b = case.stacks[plane].image, baseline.stacks[plane].image
        diff = np.abs(a - b)
        near = near_lesion(case, plane)
        assert diff[~near].max() < 1e-3, (key, plane, float(diff[~near].max()))
        if near.any() and diff[near].max() > 3 * case.stacks[plane].sigma:
            changed_somewhere = True
    assert changed_somewhere, key
    if key == "ACL":
        assert (case.struct == ACL).sum() < (baseline.struct == ACL).sum()
        assert case.meta["finding_details"]["ACL"]["removed_voxels"] > 0
    if key in ("MM", "LM"):
        lab = MED_MEN if key == "MM" else LAT_MEN
        assert (case.struct == lab).sum() < (baseline.struct == lab).sum()
    if key == "PD":
        xs = np.nonzero(case.struct == PATELLA)[0].mean()
        x0 = np.nonzero(baseline.struct == PATELLA)[0].mean()
        lateral = -1.0 if case.meta["side"] == "right" else 1.0  # lateral of a right knee is -x (LPS)
        assert (xs - x0) * lateral > 1.5
