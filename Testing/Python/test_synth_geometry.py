"""Written NIfTI geometry (spacing, LPS direction cosines) and label/image edge agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from OrthoDiffusionLib.synth.generate import SynthConfig, generate_case, write_case

EXPECTED_NORMAL = {"sagittal": (1, 0, 0), "coronal": (0, 1, 0), "axial": (0, 0, 1)}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_geom")
    case = generate_case(4, SynthConfig(seed=9, base_maps=("b",), working_mm=1.0))
    row = write_case(case, out)
    return case, row, out


def test_plane_geometry_matches_declaration(written):
    case, row, out = written
    meta = json.loads((out / "cases" / case.study_id / "case.json").read_text())
    for plane in ("sagittal", "coronal", "axial"):
        img = sitk.ReadImage(str(out / row[plane]))
        lab = sitk.ReadImage(str(out / row[f"labels_{plane}"]))
        m = meta["stacks"][plane]
        sp = img.GetSpacing()
        assert sp[0] == pytest.approx(m["inplane_mm"], abs=1e-4)
        assert sp[1] == pytest.approx(m["inplane_mm"], abs=1e-4)
        assert sp[2] == pytest.approx(m["slice_thickness_mm"] + m["gap_mm"], abs=1e-4)
        assert 3.0 <= m["slice_thickness_mm"] <= 4.0 and 0.0 <= m["gap_mm"] <= 1.0
        assert 0.3 <= m["inplane_mm"] <= 0.7 and 140 <= m["inplane_mm"] * m["matrix"] <= 180
        d = np.array(img.GetDirection()).reshape(3, 3)
        assert np.allclose(d.T @ d, np.eye(3), atol=1e-6)          # orthonormal
        normal = d[:, 2]
        cosang = abs(float(normal @ np.array(EXPECTED_NORMAL[plane], float)))
        assert cosang >= np.cos(np.deg2rad(10.0)) - 1e-6, (plane, normal)
        assert cosang == pytest.approx(np.cos(np.deg2rad(m["obliquity_deg"])), abs=0.2)
        assert lab.GetSize() == img.GetSize()
        assert np.allclose(lab.GetDirection(), img.GetDirection())
        assert np.allclose(lab.GetOrigin(), img.GetOrigin())
        assert sitk.GetArrayFromImage(img).dtype == np.int16
    ref = sitk.ReadImage(str(out / row["labels_reference"]))
    assert np.allclose(ref.GetDirection(), np.eye(3).ravel())
    assert ref.GetSpacing() == pytest.approx((1.0, 1.0, 1.0))
    # map b: no annotated fibula, and none in any label map
    assert "fibula" not in row["annotated_classes"].split(";")
    assert not (sitk.GetArrayFromImage(ref) == 4).any()


def test_label_boundaries_are_image_edges(written):
    case = written[0]
    for plane in ("sagittal", "coronal"):
        st = case.stacks[plane]
        img = ndimage.gaussian_filter(st.image, sigma=(1.0, 1.0, 0))
        grad = np.hypot(ndimage.sobel(img, axis=0), ndimage.sobel(img, axis=1))
        lab = st.labels
        boundary = np.zeros(lab.shape, bool)
        for ax in (0, 1):
            d = np.diff(lab.astype(np.int16), axis=ax) != 0
            sl = [slice(None)] * 3
            sl[ax] = slice(0, -1)
            boundary[tuple(sl)] |= d
        interior = ndimage.binary_erosion(lab > 0, structure=np.ones((7, 7, 1), bool))
        interior &= ~ndimage.binary_dilation(boundary, structure=np.ones((7, 7, 1), bool))
        assert boundary.sum() > 1000 and interior.sum() > 1000
        ratio = grad[boundary].mean() / grad[interior].mean()
        assert ratio > 2.0, (plane, ratio)
