"""DICOM SEG export and pseudonymisation: the sample knee written as an MR DICOM series (with
patient data) → `orthodiffusion predict --dicom-seg --anonymize` on knee-demo → the SEG re-reads
with highdicom and matches the source series and labels.nrrd; no output carries the patient."""

import json
import re

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from test_io_dicom import STUDY_UID, write_dicom_series

from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.labelsets import load_label_set
from OrthoDiffusionLib.results.folder import read_result_folder

SERIES_UID = f"{STUDY_UID}.1"
FOR_UID = f"{STUDY_UID}.77"
PATIENT = {"0010|0010": "Quixotic^Zebulon", "0010|0020": "PID-778899", "0010|0030": "19611203",
           "0010|0040": "F", "0010|1010": "054Y", "0010|1030": "70", "0010|1000": "OTHER-ID-4455",
           "0010|4000": "Zebulon's left knee", "0008|0080": "Quixotic Clinic", "0008|1030": "Knee Quixotic",
           "0008|0050": "ACC-5566", "0020|0010": "ST-9911", "0020|0052": FOR_UID}
SECRETS = [b"quixotic", b"zebulon", b"pid-778899", b"other-id-4455", b"acc-5566", b"st-9911", b"19611203"]


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory, sample_knee):
    root = tmp_path_factory.mktemp("seg")
    folder = root / "Quixotic_Zebulon" / "knee"   # a folder named after the patient, as archives do
    write_dicom_series(sitk.ReadImage(str(sample_knee)), folder, SERIES_UID, "Sag T2 MESE", extra=PATIENT)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.glob("*.dcm"))]
    return root, folder, headers


@pytest.fixture(scope="module")
def anonymised(dicom_case, tmp_path_factory):
    root, folder, _ = dicom_case
    mp = pytest.MonkeyPatch()
    mp.setenv("ORTHODIFFUSION_HOME", str(root / "home"))
    mp.setenv("ORTHODIFFUSION_CACHE", str(root / "cache"))
    out = root / "out-Quixotic"
    rc = main(["predict", str(root / "Quixotic_Zebulon"), "--model", "knee-demo", "--out", str(out), "--draws", "1",
               "--device", "cpu", "--dicom-seg", "--anonymize"])
    mp.undo()
    assert rc == 0
    return out


def _source_by_position(headers):
    return {tuple(round(float(v), 3) for v in h.ImagePositionPatient): h.SOPInstanceUID for h in headers}


def test_seg_references_the_source_and_equals_the_label_map(anonymised, dicom_case):
    import highdicom as hd

    _, _, headers = dicom_case
    seg = hd.seg.segread(anonymised / "segmentation.dcm")
    labels = load_label_set("knee-11").labels
    # segments: the knee-11 set with its names and terminology
    assert len(seg.SegmentSequence) == 11
    for item, lab in zip(seg.SegmentSequence, labels):
        assert item.SegmentNumber == lab["value"] and item.SegmentLabel == lab["name"]
        assert item.TrackingID == lab["key"]
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == lab["terminology"]["type"]["CodeValue"]
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == lab["terminology"]["category"]["CodeValue"]
    assert seg.SegmentationType == "BINARY"
    # references: same study, frame of reference, series and every instance
    assert seg.StudyInstanceUID == STUDY_UID and seg.FrameOfReferenceUID == FOR_UID
    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == SERIES_UID
    source_uids = [h.SOPInstanceUID for h in headers]
    assert {i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence} == set(source_uids)
    # each frame sits at a source slice position and is derived from that very instance
    by_position = _source_by_position(headers)
    assert seg.NumberOfFrames > 0
    for frame in seg.PerFrameFunctionalGroupsSequence:
        pos = tuple(round(float(v), 3) for v in frame.PlanePositionSequence[0].ImagePositionPatient)
        assert pos in by_position
        derived = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert derived == by_position[pos]
    # pixel data: labels.nrrd voxel for voxel, slice k = the k-th instance along the series
    ref = sitk.ReadImage(str(anonymised / "labels.nrrd"))
    expected = sitk.GetArrayFromImage(ref)
    ordered = [by_position[tuple(round(v, 3) for v in ref.TransformIndexToPhysicalPoint((0, 0, k)))]
               for k in range(ref.GetSize()[2])]
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=ordered, combine_segments=True,
                                            skip_overlap_checks=True)
    assert len(np.unique(expected)) > 2
    np.testing.assert_array_equal(got, expected)
    assert read_result_folder(anonymised, verify=True).files["dicom_seg"]["path"] == "segmentation.dcm"


def test_anonymised_outputs_carry_no_patient_data(anonymised, dicom_case):
    _, _, headers = dicom_case
    seg = pydicom.dcmread(anonymised / "segmentation.dcm")
    result = json.loads((anonymised / "result.json").read_text())
    pseudonym = result["case_id"]
    assert re.fullmatch(r"anon-[0-9a-f]{12}", pseudonym)
    assert str(seg.PatientName).rstrip("^") == pseudonym and seg.PatientID == pseudonym
    assert seg.PatientName != headers[0].PatientName and seg.PatientID != headers[0].PatientID
    assert seg.PatientBirthDate == "" and seg.AccessionNumber == "" and seg.StudyID == ""
    assert json.loads((anonymised / "findings.json").read_text())["case_id"] == pseudonym
    assert result["provenance"]["exports"]["pseudonymised"] is True
    files = sorted(p for p in anonymised.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"segmentation.dcm", "result.json", "findings.json", "findings.csv",
                                       "labels.nrrd", "segmentation.seg.nrrd", "uncertainty.nrrd"}
    for p in files:
        data = p.read_bytes().lower()
        for secret in SECRETS:
            assert secret not in data, f"{p.name} contains {secret!r}"


def test_seg_copies_only_the_patient_and_study_attributes_it_needs(anonymised, dicom_case, tmp_path):
    from OrthoDiffusionLib.io.dicom_seg import SEG_PATIENT_STUDY, find_source_series, write_dicom_seg

    _, folder, headers = dicom_case
    labels = sitk.ReadImage(str(anonymised / "labels.nrrd"))
    source = find_source_series(f"{folder} [Sag T2 MESE]", labels)
    assert source is not None and source.series_uid == SERIES_UID
    seg = pydicom.dcmread(write_dicom_seg(labels, source, tmp_path / "seg.dcm"))
    assert seg.PatientName == headers[0].PatientName and seg.PatientID == "PID-778899"  # not pseudonymised
    patient_study = {el.keyword for el in seg if el.tag.group == 0x0010} | {
        el.keyword for el in seg if el.keyword in ("StudyDescription", "InstitutionName", "AccessionNumber",
                                                   "StudyID", "ReferringPhysicianName", "StudyDate", "StudyTime")}
    assert patient_study <= set(SEG_PATIENT_STUDY)
    for absent in ("PatientAge", "PatientWeight", "OtherPatientIDs", "PatientComments", "InstitutionName",
                   "StudyDescription"):
        assert absent not in seg, absent
    assert b"quixotic clinic" not in (tmp_path / "seg.dcm").read_bytes().lower()


def test_non_dicom_input_seg_ignored_with_a_warning_and_paths_pseudonymised(sample_knee, tmp_path, monkeypatch,
                                                                           capsys):
    import shutil

    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ORTHODIFFUSION_CACHE", str(tmp_path / "cache"))
    named = tmp_path / "Quixotic_Zebulon" / "Quixotic_knee.nii.gz"
    named.parent.mkdir()
    shutil.copy(sample_knee, named)
    rc = main(["predict", str(named), "--model", "knee-demo", "--out", str(tmp_path / "out"), "--draws", "1",
               "--device", "cpu", "--dicom-seg", "--pseudonym", "STUDY-042"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "warning: --dicom-seg ignored: the sagittal reference volume was not read from a DICOM series" in out
    assert not (tmp_path / "out" / "segmentation.dcm").exists()
    result = read_result_folder(tmp_path / "out", verify=True)
    assert "dicom_seg" not in result.files and "skipped" in result.provenance["exports"]["dicom_seg"]
    assert result.case_id == "STUDY-042" and result.provenance["inputs"]["sagittal"]["source"] == "<input 1>"
    for p in (tmp_path / "out").rglob("*"):
        assert b"quixotic" not in p.read_bytes().lower(), p.name
