""".seg.nrrd interoperability: results.py (SimpleITK) -> Slicer storage node, and Slicer -> SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from OrthoDiffusionLib.mrml.headless import headless_scene  # noqa: E402
from OrthoDiffusionLib.mrml.segmentation import export_knee_labelmap, load_result_segmentation  # noqa: E402
from OrthoDiffusionLib.mrml.volumes import array_view, ijk_to_ras, load_volume  # noqa: E402
from OrthoDiffusionLib.results.folder import ijk_to_ras as sitk_ijk_to_ras  # noqa: E402
from OrthoDiffusionLib.results.folder import read_result_folder, structure_labels  # noqa: E402


@pytest.fixture(scope="module")
def demo(small_result_folder):
    return small_result_folder


def test_slicer_reads_our_seg_nrrd(demo):
    out, ref_path = demo
    scene, _ = headless_scene()
    ref = load_volume(scene, ref_path, "ref")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    st = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    st.SetFileName(str(out / "segmentation.seg.nrrd"))
    seg.SetAndObserveStorageNodeID(st.GetID())
    assert st.ReadData(seg)
    s = seg.GetSegmentation()
    labels = structure_labels()
    assert s.GetNumberOfSegments() == 11
    for i, lab in enumerate(labels):
        segment = s.GetSegment(lab["key"])  # our IDs are the knee-11 keys
        assert segment is not None and segment.GetName() == lab["name"]
        assert segment.GetLabelValue() == lab["value"]
        assert np.allclose(segment.GetColor(), np.array(lab["color"]) / 255.0, atol=1e-5)
        term = vtk.reference("")
        assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), term)
        assert lab["terminology"]["type"]["CodeValue"] in str(term)
    # Reference geometry parameter came through, and the voxels export back exactly
    g = [float(v) for v in s.GetConversionParameter("Reference image geometry").split(";")[:16]]
    assert np.allclose(np.reshape(g, (4, 4)), ijk_to_ras(ref), atol=1e-4)
    lm = export_knee_labelmap(scene, seg, ref)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nrrd")))
    assert np.array_equal(array_view(lm), expected)


def test_simpleitk_reads_slicer_written_seg_nrrd(demo, tmp_path):
    out, ref_path = demo
    scene, logics = headless_scene()
    ref = load_volume(scene, ref_path, "ref")
    seg = load_result_segmentation(scene, read_result_folder(out), ref, logics["Segmentations"])
    seg.AddDefaultStorageNode()
    st = seg.GetStorageNode()
    st.SetFileName(str(tmp_path / "mrml.seg.nrrd"))
    assert st.WriteData(seg)
    img = sitk.ReadImage(str(tmp_path / "mrml.seg.nrrd"))
    n = 0
    while img.HasMetaDataKey(f"Segment{n}_ID"):
        n += 1
    assert n == 11
    by_name = {img.GetMetaData(f"Segment{i}_Name"): i for i in range(n)}
    assert set(by_name) == {lab["name"] for lab in structure_labels()}
    # voxels: rebuild knee-11 values from layer/label value of each segment, on the file's (cropped) grid
    arr = sitk.GetArrayFromImage(img)
    arr = arr[..., None] if arr.ndim == 3 else arr  # one layer -> 3D image, several -> vector image
    femur_i = by_name["Femur"]
    layer = int(img.GetMetaData(f"Segment{femur_i}_Layer"))
    value = int(img.GetMetaData(f"Segment{femur_i}_LabelValue"))
    femur_mm3 = (arr[..., layer] == value).sum() * np.prod(img.GetSpacing())
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    expected_mm3 = (sitk.GetArrayViewFromImage(labels) == 1).sum() * np.prod(labels.GetSpacing())
    assert femur_mm3 == pytest.approx(expected_mm3)
    # the file's geometry sits on the reference grid (same axes and spacing)
    assert np.allclose(sitk_ijk_to_ras(img)[:3, :3], ijk_to_ras(ref)[:3, :3], atol=1e-4)
