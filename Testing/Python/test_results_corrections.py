"""Corrections store: immutable entries, checksums, never overwritten; plus the MRML export helper."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.results.corrections import CorrectionsStore, normalise_findings
from OrthoDiffusionLib.errors import InputError


def _labels(v=1):
    arr = np.zeros((3, 4, 5), np.uint8)
    arr[1, 1:3, 1:4] = v
    return sitk.GetImageFromArray(arr)


def test_each_save_is_a_new_immutable_entry(tmp_path):
    store = CorrectionsStore(tmp_path / "c")
    f = {"ACL": {"decision": False, "action": "flipped"}, "MM": {"decision": True, "action": "confirmed"}}
    e1 = store.save("case/1", _labels(1), f, user="ann")
    e2 = store.save("case/1", _labels(2), f, user="ann")
    assert e1.directory != e2.directory and e1.directory.parent == e2.directory.parent
    assert [e.entry_id for e in store.entries("case/1")] == [e1.entry_id, e2.entry_id]
    img, findings = store.load(e1)
    assert sitk.GetArrayViewFromImage(img).max() == 1 and findings["ACL"]["action"] == "flipped"
    rec = json.loads((e1.directory / "record.json").read_text())
    assert rec["case_id"] == "case/1" and "not for clinical decisions" in rec["disclaimer"]
    assert rec["files"]["labels"]["sha256"] == e1.labels_sha256 and rec["user"] == "ann"
    assert not os.access(e1.labels_path, os.W_OK) or os.geteuid() == 0  # read-only (root ignores modes)
    assert oct(e1.labels_path.stat().st_mode & 0o777) == "0o444"
    # a staging leftover (crash mid-save) is ignored; a tampered entry fails verification
    (e1.directory.parent / ".staging-x").mkdir()
    assert len(store.entries()) == 2
    e1.findings_path.chmod(0o644)
    e1.findings_path.write_text("{}")
    assert not store.verify(e1)
    with pytest.raises(InputError, match="sha256"):
        store.load(e1)
    assert store.verify(e2)


def test_bad_findings_are_rejected(tmp_path):
    with pytest.raises(InputError):
        normalise_findings({"ACL": {"decision": "yes", "action": "flipped"}})
    with pytest.raises(InputError):
        CorrectionsStore(tmp_path).save("c", _labels(), {"ACL": {"decision": True, "action": "maybe"}})
    assert CorrectionsStore(tmp_path / "none").entries() == []


def test_save_correction_from_segmentation_node(tmp_path):
    pytest.importorskip("slicer")
    from OrthoDiffusionLib.mrml.corrections import save_correction
    from OrthoDiffusionLib.mrml.headless import headless_scene
    from OrthoDiffusionLib.mrml.segmentation import load_result_segmentation
    from OrthoDiffusionLib.mrml.volumes import load_volume
    from OrthoDiffusionLib.resources import sample_knee_path
    from OrthoDiffusionLib.results.folder import demo_result_folder, read_result_folder

    sitk.WriteImage(sitk.BinShrink(sitk.ReadImage(str(sample_knee_path())), [4, 4, 1]), str(tmp_path / "r.nrrd"))
    result = read_result_folder(demo_result_folder(tmp_path / "case"))
    scene, logics = headless_scene()
    ref = load_volume(scene, tmp_path / "r.nrrd", "ref")
    seg = load_result_segmentation(scene, result, ref, logics["Segmentations"])
    seg.GetSegmentation().RemoveSegment(seg.GetSegmentation().GetSegmentIdBySegmentName("Fibula"))
    store = CorrectionsStore(tmp_path / "store")
    entry, report = save_correction(scene, seg, ref, {"ACL": {"decision": False, "action": "flipped"}}, store)
    assert entry.case_id == "demo-knee" and not report.skipped
    img, _ = store.load(entry)
    got = sitk.GetArrayFromImage(img)
    want = sitk.GetArrayFromImage(sitk.ReadImage(str(result.path("labels"))))
    want[want == 4] = 0  # fibula deleted, everything else unchanged
    assert np.array_equal(got, want)
    ref_img = sitk.ReadImage(str(tmp_path / "r.nrrd"))
    assert np.allclose(img.GetOrigin(), ref_img.GetOrigin(), atol=1e-4)
    assert np.allclose(img.GetDirection(), ref_img.GetDirection(), atol=1e-6)
    assert np.allclose(img.GetSpacing(), ref_img.GetSpacing(), atol=1e-6)
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0
