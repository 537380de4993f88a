"""Result-folder contract: write/read, schemas, checksums, .seg.nrrd header (no Slicer needed)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib import DISCLAIMER
from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.results.folder import (DEMO_REMAP, PLANES, CaseResult, Finding, demo_result_folder,
                                       read_result_folder, terminology_string, write_result_folder)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_result_folder(tmp_path_factory.mktemp("res") / "case")


def test_folder_has_every_file_and_validates(demo):
    r = read_result_folder(demo, verify=True)
    assert r.case_id == "demo-knee" and r.reference_plane == "sagittal"
    assert {"labels", "segmentation", "uncertainty", "findings_json", "findings_csv"} == set(r.files)
    assert not list(demo.glob("evidence_*"))  # evidence maps are not part of the format (predict makes none)
    assert [f.key for f in r.findings] == ["ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU"]
    acl = r.finding("acl")
    assert acl.decision and acl.weight("sagittal") == pytest.approx(0.62) and acl.dominant_plane() == "sagittal"
    index = json.loads((demo / "result.json").read_text(encoding="utf-8"))
    assert index["disclaimer"] == DISCLAIMER and index["label_sets"] == {"structures": "knee-11", "findings": "knee-8"}
    fj = json.loads((demo / "findings.json").read_text(encoding="utf-8"))
    assert fj["plane_order"] == list(PLANES) and fj["label_set"] == "knee-8"
    assert set(fj["findings"][0]["plane_weights"]) == set(PLANES)


def test_images_share_the_reference_grid_and_types(demo):
    lab = sitk.ReadImage(str(demo / "labels.nrrd"))
    unc = sitk.ReadImage(str(demo / "uncertainty.nrrd"))
    assert lab.GetPixelID() == sitk.sitkUInt8 and unc.GetPixelID() == sitk.sitkFloat32
    assert unc.GetSize() == lab.GetSize()
    assert np.allclose(unc.GetDirection(), lab.GetDirection()) and np.allclose(unc.GetOrigin(), lab.GetOrigin())
    values = set(np.unique(sitk.GetArrayViewFromImage(lab)).tolist())
    assert values == {0, *DEMO_REMAP.values()}  # real anatomy survived the shrink
    assert lab.GetMetaData("OrthoDiffusion_Disclaimer") == DISCLAIMER


def test_csv_mirrors_json(demo):
    lines = (demo / "findings.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#") and "not for clinical decisions" in lines[0]
    rows = list(csv.DictReader(lines[1:]))
    assert rows[0]["key"] == "ACL" and float(rows[0]["w_sagittal"]) == pytest.approx(0.62)
    assert rows[0]["decision"] == "1" and rows[1]["decision"] == "0"


def test_seg_nrrd_header_is_slicer_style(demo):
    img = sitk.ReadImage(str(demo / "segmentation.seg.nrrd"))
    assert img.GetMetaData("Segmentation_ReferenceImageExtentOffset") == "0 0 0"
    names = [img.GetMetaData(f"Segment{i}_Name") for i in range(11)]
    assert names[0] == "Femur" and names[10] == "Posterior cruciate ligament"
    assert [int(img.GetMetaData(f"Segment{i}_LabelValue")) for i in range(11)] == list(range(1, 12))
    assert img.GetMetaData("Segment10_Extent") == "0 -1 0 -1 0 -1"  # PCL absent: empty but present
    assert "SCT^71341001^Femur" in img.GetMetaData("Segment0_Tags")
    arr = sitk.GetArrayViewFromImage(img)
    assert np.array_equal(arr, sitk.GetArrayFromImage(sitk.ReadImage(str(demo / "labels.nrrd"))))


def test_tampering_is_detected(demo, tmp_path):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(demo, copy)
    (copy / "findings.csv").chmod(0o644)
    (copy / "findings.csv").write_text("tampered\n")
    read_result_folder(copy)  # structure still fine
    with pytest.raises(InputError, match="sha256"):
        read_result_folder(copy, verify=True)
    (copy / "result.json").unlink()
    with pytest.raises(InputError, match="result.json"):
        read_result_folder(copy)


def _tiny(values, size=(6, 5, 4)):
    arr = np.zeros(size[::-1], np.uint8)
    arr.flat[: len(values)] = values
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 3.0))
    return img


def _result(**kw):
    f = Finding("ACL", "ACL tear", 0.7, 0.1, True, 0.5, {"sagittal": 0.7, "coronal": 0.2, "axial": 0.1})
    return CaseResult(case_id="t", reference_plane="sagittal", planes_present=["sagittal"], findings=[f], **kw)


def test_rejects_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="outside knee-11"):
        write_result_folder(_result(), _tiny([1, 2, 42]), tmp_path / "a")
    other = _tiny([1])
    other.SetSpacing((2.0, 1.0, 3.0))
    with pytest.raises(InputError, match="grid"):
        write_result_folder(_result(), _tiny([1]), tmp_path / "b", uncertainty=sitk.Cast(other, sitk.sitkFloat32))
    bad = _result()
    bad.findings[0].probability = 1.5
    with pytest.raises(InputError, match="findings.schema.json"):
        write_result_folder(bad, _tiny([1]), tmp_path / "c")
    assert not (tmp_path / "c" / "result.json").exists()


def test_minimal_folder_defaults_uncertainty(tmp_path):
    out = write_result_folder(_result(), _tiny([1, 5, 11]), tmp_path / "m")
    unc = sitk.ReadImage(str(out / "uncertainty.nrrd"))
    assert sitk.GetArrayViewFromImage(unc).max() == 0.0
    assert read_result_folder(out, verify=True).findings[0].key == "ACL"


def test_terminology_string_format():
    s = terminology_string({"terminology": {"category": {"CodingSchemeDesignator": "SCT", "CodeValue": "1",
                                                         "CodeMeaning": "A"},
                                            "type": {"CodingSchemeDesignator": "99ORTHOD", "CodeValue": "X",
                                                     "CodeMeaning": "B"}}})
    assert s.split("~")[1:4] == ["SCT^1^A", "99ORTHOD^X^B", "^^"] and len(s.split("~")) == 7
