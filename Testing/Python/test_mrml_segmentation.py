"""Result folder -> segmentation node -> knee-11 label map, on real MRML (slicer-core)."""

from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from OrthoDiffusionLib.mrml.headless import headless_scene  # noqa: E402
from OrthoDiffusionLib.mrml.hierarchy import case_folder  # noqa: E402
from OrthoDiffusionLib.mrml.segmentation import (ATTR_CASE, KEY_TAG, export_knee_labelmap,  # noqa: E402
                                                 load_result_segmentation, segmentation_edited)
from OrthoDiffusionLib.mrml.volumes import array_view, ijk_to_ras, load_volume, same_geometry  # noqa: E402
from OrthoDiffusionLib.resources import sample_knee_path  # noqa: E402
from OrthoDiffusionLib.results.folder import demo_result_folder, read_result_folder, structure_labels  # noqa: E402


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("mrml")
    out = demo_result_folder(d / "case")
    # the reference volume the user would have loaded: the same shrunk sample knee, as a file
    ref = sitk.BinShrink(sitk.ReadImage(str(sample_knee_path())), [4, 4, 1])
    sitk.WriteImage(ref, str(d / "reference.nrrd"))
    return out, d / "reference.nrrd"


@pytest.fixture()
def env(demo):
    scene, logics = headless_scene()
    ref = load_volume(scene, demo[1], "knee")
    return scene, logics, ref, read_result_folder(demo[0])


@pytest.fixture()
def util_shims(env):
    """slicer.util segment helpers read the app globals; point them at this scene for the test."""
    from slicer_util_globals import util_globals

    with util_globals(env[0], env[1]):
        yield


def _segments(seg_node):
    s = seg_node.GetSegmentation()
    return [s.GetNthSegment(i) for i in range(s.GetNumberOfSegments())]


def _tag(segment, name):
    ref = vtk.reference("")
    return str(ref) if segment.GetTag(name, ref) else None


def test_segmentation_has_names_colours_terminology_and_geometry(env):
    scene, logics, ref, result = env
    seg = load_result_segmentation(scene, result, ref, logics["Segmentations"])
    labels = structure_labels()
    segs = _segments(seg)
    assert [s.GetName() for s in segs] == [lab["name"] for lab in labels]
    for s, lab in zip(segs, labels):
        assert np.allclose(s.GetColor(), np.array(lab["color"]) / 255.0, atol=1e-6)
        term = _tag(s, slicer.vtkSegment.GetTerminologyEntryTagName())
        t = lab["terminology"]["type"]
        assert f"{t['CodingSchemeDesignator']}^{t['CodeValue']}^{t['CodeMeaning']}" in term
        assert _tag(s, KEY_TAG) == lab["key"]
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()).GetID() == ref.GetID()
    assert seg.GetAttribute(ATTR_CASE) == "demo-knee"
    # geometry string = the reference volume's IJK->RAS and extent
    g = [float(v) for v in seg.GetSegmentation().GetConversionParameter("Reference image geometry").split(";")[:16]]
    assert np.allclose(np.reshape(g, (4, 4)), ijk_to_ras(ref), atol=1e-4)


def test_voxel_exact_round_trip(env):
    scene, logics, ref, result = env
    seg = load_result_segmentation(scene, result, ref, logics["Segmentations"])
    lm = export_knee_labelmap(scene, seg, ref)
    assert same_geometry(lm, ref)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(result.path("labels"))))
    assert np.array_equal(array_view(lm), expected)
    assert not segmentation_edited(scene, seg, ref)


def test_edit_delete_reorder_keeps_fixed_values(env, util_shims):
    scene, logics, ref, result = env
    seg_node = load_result_segmentation(scene, result, ref, logics["Segmentations"])
    seg = seg_node.GetSegmentation()
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(result.path("labels"))))
    ids = {s.GetName(): seg.GetNthSegmentID(i) for i, s in enumerate(_segments(seg_node))}

    # 1. edit: add a block to the tibia segment (through the segment's binary labelmap)
    tib = slicer.util.arrayFromSegmentBinaryLabelmap(seg_node, ids["Tibia"], ref)
    assert tib.sum() == (before == 2).sum()
    block = (slice(10, 12), slice(5, 9), slice(5, 9))
    tib[block] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(tib, seg_node, ids["Tibia"], ref)
    # 2. delete the patella, 3. move femoral cartilage to the front, 4. rename the femur
    seg.RemoveSegment(ids["Patella"])
    seg.SetSegmentIndex(ids["Femoral cartilage"], 0)
    seg.GetSegment(ids["Femur"]).SetName("my femur")
    # 5. an extra user segment that is not knee-11 is skipped, not given a random value
    seg.AddEmptySegment("scribble", "scribble", [1, 0, 0])
    assert segmentation_edited(scene, seg_node, ref)

    from OrthoDiffusionLib.mrml.segmentation import ExportReport

    report = ExportReport()
    after = array_view(export_knee_labelmap(scene, seg_node, ref, report=report))
    assert "scribble" in report.skipped
    assert (after[block] == 2).all()
    assert not (after == 3).any()  # patella gone
    untouched = (before != 3) & ~np.isin(np.indices(before.shape)[0], [10, 11])
    assert np.array_equal(after[untouched], before[untouched])
    for v in (1, 4, 5, 6, 7, 8, 9):  # every other structure keeps its value
        assert ((after == v) == (before == v))[untouched].all()


def test_replace_existing_only_when_asked(env):
    scene, logics, ref, result = env
    first = load_result_segmentation(scene, result, ref, logics["Segmentations"])
    second = load_result_segmentation(scene, result, ref, logics["Segmentations"])
    assert second.GetID() != first.GetID()
    third = load_result_segmentation(scene, result, ref, logics["Segmentations"], replace_existing=True)
    assert third.GetID() == second.GetID() and third.GetSegmentation().GetNumberOfSegments() == 11
    # only the temporary labelmap was removed: the reference volume stays
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0
    assert scene.GetNodeByID(ref.GetID()) is not None


def test_case_folder_is_next_to_input(env):
    from OrthoDiffusionLib.mrml.case import load_case

    scene, logics, ref, result = env
    nodes = load_case(scene, result.directory, ref, logics["Segmentations"])
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = nodes.folder_item
    assert sh.GetItemName(folder) == "OrthoDiffusion demo-knee"
    assert sh.GetItemParent(folder) == sh.GetItemParent(sh.GetItemByDataNode(ref))
    for node in (nodes.segmentation, nodes.table, nodes.chart):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == folder
    assert case_folder(scene, ref, "demo-knee") == folder  # found again, not duplicated
