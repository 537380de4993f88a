"""Reading volume files, echo selection, input validation and the volume content hash."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.io import load_study, read_series, validate_image, volume_hash


@pytest.fixture(scope="module")
def knee(sample_knee):
    return sitk.ReadImage(str(sample_knee))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii"])
def test_formats_read_with_same_geometry(tmp_path, knee, suffix):
    path = tmp_path / f"knee{suffix}"
    sitk.WriteImage(knee, str(path))
    (series,) = read_series(path)
    assert series.info.plane == "sagittal"
    assert series.image.GetSize() == knee.GetSize()
    np.testing.assert_allclose(series.image.GetDirection(), knee.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(series.image.GetOrigin(), knee.GetOrigin(), atol=1e-3)
    assert volume_hash(series.image) == volume_hash(knee)


def test_four_d_needs_an_echo(tmp_path, knee):
    echoes = [sitk.Cast(knee, sitk.sitkFloat32) * float(k) for k in (1, 0.5, 0.25)]
    four_d = sitk.JoinSeries(echoes)
    path = tmp_path / "multi_echo.nii.gz"
    sitk.WriteImage(four_d, str(path))
    with pytest.raises(InputError, match="--echo"):
        load_study(path)
    study = load_study(path, echo=2)
    arr = sitk.GetArrayFromImage(study.image("sagittal"))
    np.testing.assert_allclose(arr, sitk.GetArrayFromImage(knee) * 0.5, rtol=1e-5)
    assert study.sagittal.info.echo == 2
    with pytest.raises(InputError, match="between 1 and 3"):
        load_study(path, echo=4)


def test_path_errors_are_one_line(tmp_path):
    garbage = tmp_path / "scan.nii.gz"
    garbage.write_bytes(b"not an image at all")
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, words in [(tmp_path / "missing.nii.gz", "no such file"), (garbage, "cannot read"),
                        (empty, "no usable images")]:
        with pytest.raises(InputError, match=words) as info:
            load_study(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_validation_rejects_bad_volumes(knee):
    single_slice = knee[:, :, 10:11]
    with pytest.raises(InputError, match="2D image"):
        validate_image(single_slice, "x.nii")
    arr = sitk.GetArrayFromImage(knee).astype(np.float32)
    arr[3, 10, 10] = np.nan
    nan_image = sitk.GetImageFromArray(arr)
    nan_image.CopyInformation(knee)
    with pytest.raises(InputError, match="NaN"):
        validate_image(nan_image, "x.nii")
    flat = sitk.Image(knee.GetSize(), sitk.sitkInt16)
    with pytest.raises(InputError, match="same value"):
        validate_image(flat, "x.nii")
    validate_image(knee, "x.nii")  # the real knee passes


def test_volume_hash_tracks_voxels_and_geometry(knee):
    same = sitk.Image(knee)
    assert volume_hash(same) == volume_hash(knee)
    moved = sitk.Image(knee)
    moved.SetOrigin(tuple(np.add(knee.GetOrigin(), (0.0, 0.0, 0.5))))
    assert volume_hash(moved) != volume_hash(knee)
    changed = sitk.Image(knee)
    changed[5, 5, 5] = int(changed[5, 5, 5]) + 1
    assert volume_hash(changed) != volume_hash(knee)
    assert len(volume_hash(knee)) == 64
