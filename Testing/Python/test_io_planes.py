"""Plane detection from direction cosines, 3D reformat geometry, plane assignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.io import (Geometry, assign_planes, canonical_direction, detect_plane, is_near_isotropic_3d,
                                  load_study, make_series, reformat_to_planes, resample_to)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _smooth_volume(direction: np.ndarray, size=(64, 64, 64), spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    """A smooth synthetic volume (sines + a blob in physical coordinates) on an arbitrary grid."""
    img = sitk.Image(list(size), sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetDirection(tuple(direction.ravel()))
    half = (np.asarray(size) - 1) / 2 * np.asarray(spacing)
    img.SetOrigin(tuple(-direction @ half))  # centred on the scanner origin
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    pts = (idx * spacing) @ direction.T + np.asarray(img.GetOrigin())
    x, y, z = pts.T
    values = 100 + 40 * np.sin(x / 9.0) + 30 * np.cos(y / 11.0 + z / 13.0) + 80 * np.exp(-(x**2 + y**2 + z**2) / 300)
    arr = values.reshape(size).transpose(2, 1, 0).astype(np.float32)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def test_sample_knee_is_sagittal_slightly_oblique(sample_knee):
    plane, obliquity = detect_plane(sitk.ReadImage(str(sample_knee)))
    assert plane == "sagittal"
    assert 2.0 < obliquity < 15.0  # the sample is tilted ~8 deg


@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
@pytest.mark.parametrize("tilt", [0.0, 20.0])
def test_detect_plane_by_dominant_axis(plane, tilt):
    direction = _rotation(0 if plane != "sagittal" else 2, tilt) @ canonical_direction(plane)
    img = sitk.Image([20, 20, 20], sitk.sitkUInt8)
    img.SetDirection(tuple(direction.ravel()))
    found, obliquity = detect_plane(img)
    assert found == plane
    assert obliquity == pytest.approx(tilt, abs=1e-6)


def test_strong_obliquity_warns_but_assigns(sample_knee):
    img = _smooth_volume(_rotation(2, 35.0) @ canonical_direction("sagittal"), size=(32, 32, 20))
    study = assign_planes([make_series(img, "oblique")])
    assert study.sagittal is not None
    assert any("35 deg oblique" in w for w in study.warnings)


def test_isotropic_volume_reformats_and_round_trips():
    source = _smooth_volume(_rotation(2, 12.0) @ canonical_direction("sagittal"))
    assert is_near_isotropic_3d(source)
    views = reformat_to_planes(source, keep_native=False)
    src_geom = Geometry.of(source)
    src = sitk.GetArrayFromImage(source)[3:-3, 3:-3, 3:-3]  # ignore the outermost voxels
    for plane, view in views.items():
        assert detect_plane(view) == (plane, 0.0)
        np.testing.assert_allclose(np.asarray(view.GetDirection()).reshape(3, 3), canonical_direction(plane))
        assert view.GetSpacing() == pytest.approx((1.0, 1.0, 1.0))
        # the view's box covers the source's box
        m = canonical_direction(plane)
        src_box = src_geom.physical_corners() @ m
        view_box = Geometry.of(view).physical_corners() @ m
        assert np.all(view_box.min(0) <= src_box.min(0) + 1e-6) and np.all(view_box.max(0) >= src_box.max(0) - 1e-6)
        back = sitk.GetArrayFromImage(resample_to(view, src_geom, is_label=False))[3:-3, 3:-3, 3:-3]
        assert np.corrcoef(back.ravel(), src.ravel())[0, 1] > 0.99
        assert np.mean(np.abs(back - src)) < 0.02 * np.ptp(src)


def test_lone_3d_series_becomes_three_planes():
    source = _smooth_volume(canonical_direction("coronal"), size=(48, 48, 48))
    study = assign_planes([make_series(source, "dess.nii.gz")])
    assert list(study.planes) == ["sagittal", "coronal", "axial"]
    assert not study.coronal.info.reformatted
    assert study.sagittal.info.reformatted and study.axial.info.reformatted
    assert study.axial.info.plane == "axial"
    # a 2D-like series (few thick slices) is not reformatted unless asked
    thick = _smooth_volume(canonical_direction("coronal"), size=(48, 48, 12), spacing=(0.5, 0.5, 4.0))
    assert list(assign_planes([make_series(thick, "t2")]).planes) == ["coronal"]
    assert list(assign_planes([make_series(thick, "t2")], reformat=True).planes) == ["sagittal", "coronal", "axial"]


def test_two_series_in_one_plane_keep_the_larger(sample_knee):
    knee = sitk.ReadImage(str(sample_knee))
    short = make_series(knee[:, :, 4:20], "short")
    full = make_series(knee, "full")
    study = assign_planes([short, full])
    assert study.sagittal.info.source == "full"
    assert len(study.warnings) == 1 and "ignored short" in study.warnings[0]


def test_real_dess_reformats_to_three_planes(shared_data):
    study = load_study(shared_data / "knee_dess_3d_echo1.nii.gz")
    assert list(study.planes) == ["sagittal", "coronal", "axial"]
    assert study.sagittal.info.is_3d and not study.sagittal.info.reformatted
    assert study.coronal.info.spacing == pytest.approx((0.625, 0.625, 1.5), abs=1e-4)


def test_slice_axis_found_from_spacing_when_stored_first(sample_knee):
    knee = sitk.ReadImage(str(sample_knee))
    stored = sitk.PermuteAxes(knee, [2, 0, 1])  # the 4 mm slice axis is now axis 0
    assert detect_plane(stored) == pytest.approx(detect_plane(knee))


def test_one_plane_rule_given_planes_win_over_detection(sample_knee, tmp_path):
    """A plane given by the user (manifest column, --sagittal, the module's selector) is used as
    given, with a note when the slices say otherwise; detected series fill the other slots."""
    import shutil

    from OrthoDiffusionLib.errors import UserError
    from OrthoDiffusionLib.io import load_study

    study = load_study(planes={"coronal": str(sample_knee)})
    assert list(study.planes) == ["coronal"] and study.coronal.info.assigned
    assert any("given as coronal, but its slices are sagittal" in w for w in study.warnings)
    copy = tmp_path / "copy.nii.gz"
    shutil.copy(sample_knee, copy)
    both = load_study([str(copy)], planes={"sagittal": str(sample_knee)})
    assert both.sagittal.info.source == str(sample_knee) and both.sagittal.info.assigned
    assert any("two sagittal series" in w and "ignored" in w and str(copy) in w for w in both.warnings)
    detected = load_study([str(sample_knee)])
    assert list(detected.planes) == ["sagittal"] and not detected.sagittal.info.assigned
    with pytest.raises(UserError, match="did you mean 'axial'"):
        load_study(planes={"axail": str(sample_knee)})
