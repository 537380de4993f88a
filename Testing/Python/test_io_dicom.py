"""DICOM series: write the real knee as MR slices, read it back, split a multi-series folder."""

from __future__ import annotations

import locale

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.io import Geometry, load_study, resample_to
from OrthoDiffusionLib.io.planes import cardinal_grid

STUDY_UID = "1.2.826.0.1.3680043.8.498.1000"


def write_dicom_series(image: sitk.Image, folder, series_uid: str, description: str, echo: int = 1,
                       image_type: str = "ORIGINAL\\PRIMARY\\M\\ND", prefix: str = "",
                       extra: dict | None = None) -> None:
    """One MR DICOM file per slice with explicit position/orientation tags (as a scanner writes);
    ``extra``: more tags ("gggg|eeee" -> value), e.g. patient attributes."""
    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer resets LC_CTYPE to "C" (ASCII text I/O)
    try:
        _write_slices(image, folder, series_uid, description, echo, image_type, prefix, extra)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)


def _write_slices(image, folder, series_uid, description, echo, image_type, prefix, extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    iop = "\\".join(f"{v:.10g}" for v in (*direction[:, 0], *direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetSize()[2]):
        ipp = "\\".join(f"{v:.10g}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        tags = {
            "0008|0008": image_type, "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{series_uid}.{echo}.{k + 1}", "0008|0060": "MR", "0008|0070": "GE MEDICAL SYSTEMS",
            "0008|103e": description, "0018|0050": f"{image.GetSpacing()[2]:.4f}", "0018|0086": str(echo),
            "0018|0087": "3", "0020|000d": STUDY_UID, "0020|000e": series_uid, "0020|0011": series_uid[-1],
            "0020|0013": str(k + 1), "0020|0032": ipp, "0020|0037": iop, **(extra or {}),
        }
        slice_2d = image[:, :, k]
        for key, value in tags.items():
            slice_2d.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}{series_uid[-1]}_e{echo}_{k:03d}.dcm"))
        writer.Execute(slice_2d)


@pytest.fixture(scope="module")
def knee(sample_knee):
    return sitk.ReadImage(str(sample_knee))


def _axial_from(knee: sitk.Image) -> sitk.Image:
    grid = cardinal_grid(Geometry.of(knee), "axial", 1.0, 4.0)
    return resample_to(knee, grid, is_label=False, pixel_type=sitk.sitkInt16)


def test_dicom_series_round_trips_geometry_and_tags(tmp_path, knee):
    write_dicom_series(knee, tmp_path / "dicom", f"{STUDY_UID}.1", "Sag T2 MESE")
    study = load_study(tmp_path / "dicom")
    assert list(study.planes) == ["sagittal"]
    image, info = study.sagittal.image, study.sagittal.info
    assert image.GetSize() == knee.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), knee.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(image.GetOrigin(), knee.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), knee.GetDirection(), atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(knee))
    assert info.field_strength_t == 3.0 and info.manufacturer == "GE MEDICAL SYSTEMS"
    assert info.series_description == "Sag T2 MESE" and info.modality == "MR"
    assert 2.0 < info.obliquity_deg < 15.0
    # one file of the series stands for the whole series
    (single,) = load_study(next((tmp_path / "dicom").glob("*.dcm"))).planes.values()
    assert single.image.GetSize() == knee.GetSize()


def test_folder_with_two_series_and_a_localizer(tmp_path, knee):
    folder = tmp_path / "study"
    write_dicom_series(knee, folder, f"{STUDY_UID}.1", "Sag T2")
    write_dicom_series(_axial_from(knee), folder / "sub", f"{STUDY_UID}.2", "Ax PD")
    localizer = knee[96:160, 96:160, 10:13]
    write_dicom_series(localizer, folder, f"{STUDY_UID}.3", "Localizer", image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    study = load_study(folder)
    assert list(study.planes) == ["sagittal", "axial"]
    assert study.axial.info.series_description == "Ax PD"
    assert study.axial.info.obliquity_deg == pytest.approx(0.0, abs=1e-3)
    assert any("localizer" in w for w in study.warnings)


def test_multi_echo_series_needs_an_echo(tmp_path, knee):
    folder = tmp_path / "mese"
    write_dicom_series(knee, folder, f"{STUDY_UID}.4", "MESE", echo=1)
    write_dicom_series(sitk.Cast(knee // 2, sitk.sitkInt16), folder, f"{STUDY_UID}.4", "MESE", echo=2)
    with pytest.raises(InputError, match="--echo"):
        load_study(folder)
    study = load_study(folder, echo=2)
    assert study.sagittal.image.GetSize() == knee.GetSize()
    assert study.sagittal.info.echo == 2
    np.testing.assert_array_equal(sitk.GetArrayFromImage(study.sagittal.image), sitk.GetArrayFromImage(knee) // 2)
