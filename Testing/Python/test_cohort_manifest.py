"""Cohort manifest: round trip, path resolution and clear validation errors."""

from __future__ import annotations

import pytest

from OrthoDiffusionLib.io.manifest import ManifestRow, read_manifest, write_manifest
from OrthoDiffusionLib.errors import InputError

HEADER = "study_id,patient_id,sagittal,coronal,axial"


@pytest.fixture()
def files(tmp_path):
    for name in ("s1_sag.nii.gz", "s1_cor.nii.gz", "s1_ax.nii.gz", "s1_lab.nii.gz", "s2_sag.nii.gz"):
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "img" / name).write_bytes(b"x")
    return tmp_path


def rows(root):
    return [
        {"study_id": "S1", "patient_id": "P1", "sagittal": root / "img/s1_sag.nii.gz",
         "coronal": root / "img/s1_cor.nii.gz", "axial": root / "img/s1_ax.nii.gz",
         "labels_sagittal": root / "img/s1_lab.nii.gz", "ACL": 1, "PCL": 0, "MM": None, "LM": 0,
         "MCL": 0, "LCL": 0, "PD": 0, "EFFU": 1, "age": 24.0, "sex": "F", "height_cm": 168.5,
         "weight_kg": 61.0, "patient_type": "emergency", "event": "sport", "center": "center_a",
         "field_strength": 3.0, "vendor": "vendor_s", "annotated_classes": "femur;tibia;acl",
         "split": "train", "side": "left", "note": "hello, world"},
        {"study_id": "S2", "patient_id": "P1", "sagittal": root / "img/s2_sag.nii.gz",
         "coronal": None, "axial": None, "ACL": None, "age": None, "sex": None, "split": "test"},
    ]


def test_round_trip(files):
    path = write_manifest(rows(files), files / "manifest.csv")
    text = path.read_text()
    assert "img/s1_sag.nii.gz" in text and str(files) not in text  # relative to the manifest
    m = read_manifest(path)
    assert len(m) == 2 and m.root == files.resolve()
    r1, r2 = m.rows
    assert r1.images["sagittal"] == (files / "img/s1_sag.nii.gz").resolve()
    assert r1.labels["labels_sagittal"] == (files / "img/s1_lab.nii.gz").resolve()
    assert r1.findings == {"ACL": 1, "PCL": 0, "MM": None, "LM": 0, "MCL": 0, "LCL": 0, "PD": 0, "EFFU": 1}
    assert r1.ehr == {"age": 24.0, "sex": "F", "height_cm": 168.5, "weight_kg": 61.0,
                      "patient_type": "emergency", "event": "sport"}
    assert r1.annotated_classes == ("femur", "tibia", "acl") and r1.side == "left"
    assert r1.extra == {"note": "hello, world"}
    assert r2.images["coronal"] is None and r2.findings["ACL"] is None and r2.ehr["age"] is None
    # write what we read -> identical rows again
    path2 = write_manifest(m.rows, files / "manifest2.csv")
    m2 = read_manifest(path2)
    assert [r.to_dict() for r in m2.rows] == [r.to_dict() for r in m.rows]
    assert m.by_split("test")[0].study_id == "S2"


def write(tmp, text):
    p = tmp / "m.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("study_id,patient_id,sagittal\nS1,P1,img/s1_sag.nii.gz\n", "missing required column(s): coronal, axial"),
    (HEADER + "\nS1,P1,img/s1_sag.nii.gz,,\nS1,P2,img/s2_sag.nii.gz,,\n", "duplicate study_id 'S1' on lines 2 and 3"),
    (HEADER + ",ACLX\nS1,P1,img/s1_sag.nii.gz,,,1\n", "unknown label column 'ACLX'"),
    (HEADER + ",labels_oblique\nS1,P1,img/s1_sag.nii.gz,,,\n", "unknown label column 'labels_oblique'"),
    (HEADER + ",ACL\nS1,P1,img/s1_sag.nii.gz,,,yes\n", "finding values must be 0, 1 or empty"),
    (HEADER + "\nS1,P1,img/missing.nii.gz,,\n", "file not found"),
    (HEADER + "\nS1,P1,,,\n", "has no image in any plane"),
    (HEADER + ",annotated_classes\nS1,P1,img/s1_sag.nii.gz,,,femur;bone\n", "unknown knee-11 key(s) bone"),
    (HEADER + ",split\nS1,P1,img/s1_sag.nii.gz,,,dev\n", "'dev' is not one of train, val, test"),
    (HEADER + "\n", "no rows"),
])
def test_validation_errors(files, text, message):
    with pytest.raises(InputError) as exc:
        read_manifest(write(files, text))
    assert message in str(exc.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")


def test_manifest_row_objects_round_trip(files):
    r = ManifestRow(study_id="A", patient_id="PA", images={"sagittal": files / "img/s1_sag.nii.gz"},
                    findings={"ACL": 0}, split="val")
    m = read_manifest(write_manifest([r], files / "x.csv"))
    assert m.rows[0].findings["ACL"] == 0 and m.rows[0].split == "val"
