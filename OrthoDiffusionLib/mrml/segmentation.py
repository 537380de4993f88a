"""Result label map <-> segmentation node, with fixed knee-11 values, names, colours and terminology."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import slicer
import vtk

from ..errors import InputError
from ..results.folder import STRUCTURES_LABEL_SET, CaseResult, structure_labels, terminology_string
from .volumes import array_view, load_volume, new_labelmap_like

COLOR_TABLE_NAME = "OrthoDiffusion knee-11"
KEY_TAG = "OrthoDiffusion.Key"  # segment tag: survives renaming, so export keeps the right value
ATTR_CASE = "OrthoDiffusion.CaseId"
ATTR_RESULT_DIR = "OrthoDiffusion.ResultDir"
ATTR_LABELS_SHA = "OrthoDiffusion.LabelsArraySha256"
ATTR_LABEL_SET = "OrthoDiffusion.LabelSet"


def knee_color_table(scene, labels: list[dict] | None = None):
    """The scene's knee-11 colour table (created once): index = label value, name = segment name."""
    labels = labels if labels is not None else structure_labels()
    for node in _nodes(scene, "vtkMRMLColorTableNode"):
        if node.GetAttribute(ATTR_LABEL_SET) == STRUCTURES_LABEL_SET:
            return node
    ct = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_TABLE_NAME)
    ct.SetAttribute(ATTR_LABEL_SET, STRUCTURES_LABEL_SET)
    ct.SetTypeToUser()
    ct.SetNumberOfColors(max(int(lab["value"]) for lab in labels) + 1)
    ct.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    for lab in labels:
        r, g, b = (c / 255.0 for c in lab["color"])
        ct.SetColor(int(lab["value"]), lab["name"], r, g, b, 1.0)
        if hasattr(ct, "SetTerminologyFromString"):  # Slicer >= 5.7 carries terminology in colour tables
            ct.SetTerminologyFromString(int(lab["value"]), terminology_string(lab))
    return ct


def _nodes(scene, cls: str):
    return [scene.GetNthNodeByClass(i, cls) for i in range(scene.GetNumberOfNodesByClass(cls))]


def find_case_segmentation(scene, case_id: str):
    """The most recent segmentation node loaded for this case, or None."""
    found = [n for n in _nodes(scene, "vtkMRMLSegmentationNode") if n.GetAttribute(ATTR_CASE) == case_id]
    return found[-1] if found else None


def labels_by_value() -> dict[int, dict]:
    return {int(lab["value"]): lab for lab in structure_labels()}


def _label_for_segment(segment, labels: list[dict]) -> dict | None:
    """knee-11 label of a segment: by tag first (renaming is harmless), then by name or key."""
    tag = vtk.reference("")
    key = str(tag) if segment.GetTag(KEY_TAG, tag) else None
    name = (segment.GetName() or "").strip().lower()
    for lab in labels:
        if key and lab["key"] == key:
            return lab
    for lab in labels:
        if name in (lab["name"].lower(), lab["key"].lower(), lab["key"].replace("_", " ").lower()):
            return lab
    return None


def style_segments(seg_node, labels: list[dict] | None = None, add_missing: bool = True) -> None:
    """Give every knee-11 segment its colour, terminology and key tag; add empty ones for absent labels."""
    labels = labels if labels is not None else structure_labels()
    seg = seg_node.GetSegmentation()
    matched = set()
    for i in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(i)
        lab = _label_for_segment(segment, labels)
        if lab is None or lab["key"] in matched:
            continue
        matched.add(lab["key"])
        segment.SetName(lab["name"])
        segment.SetColor(*(c / 255.0 for c in lab["color"]))
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminology_string(lab))
        segment.SetTag(KEY_TAG, lab["key"])
    if add_missing:
        for lab in labels:
            if lab["key"] not in matched:
                sid = seg.AddEmptySegment(lab["key"], lab["name"], [c / 255.0 for c in lab["color"]])
                segment = seg.GetSegment(sid)
                segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminology_string(lab))
                segment.SetTag(KEY_TAG, lab["key"])


def labelmap_sha256(labelmap_node) -> str:
    return hashlib.sha256(array_view(labelmap_node).tobytes()).hexdigest()


def load_result_segmentation(scene, result: CaseResult, reference_volume, segmentations_logic,
                             replace_existing: bool = False, name: str | None = None):
    """Segmentation node from a result folder's ``labels.nrrd`` through the knee-11 colour table.

    A new node is created unless ``replace_existing`` is set and a node for this case exists (the
    user may have edited it: overwrite only when asked). Reference geometry = ``reference_volume``.
    """
    ct = knee_color_table(scene)
    label_node = load_volume(scene, result.path("labels"), name="OrthoDiffusion tmp labels", labelmap=True)
    try:
        label_node.GetDisplayNode().SetAndObserveColorNodeID(ct.GetID())
        existing = find_case_segmentation(scene, result.case_id)
        if existing is not None and replace_existing:
            seg_node = existing
            seg_node.GetSegmentation().RemoveAllSegments()
        else:
            seg_node = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(name or f"{result.case_id} knee structures"))
        seg_node.CreateDefaultDisplayNodes()
        set_reference_geometry(seg_node, reference_volume)
        if not segmentations_logic.ImportLabelmapToSegmentationNode(label_node, seg_node):
            raise InputError(f"could not import {result.path('labels')} into a segmentation")
        style_segments(seg_node)
        seg_node.SetAttribute(ATTR_CASE, result.case_id)
        seg_node.SetAttribute(ATTR_LABEL_SET, STRUCTURES_LABEL_SET)
        if result.directory is not None:
            seg_node.SetAttribute(ATTR_RESULT_DIR, str(result.directory))
        exported = export_knee_labelmap(scene, seg_node, reference_volume)
        seg_node.SetAttribute(ATTR_LABELS_SHA, labelmap_sha256(exported))
        _remove_volume(scene, exported)
    finally:
        _remove_volume(scene, label_node)
    return seg_node


def set_reference_geometry(seg_node, reference_volume) -> None:
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    seg_node.SetNodeReferenceID(seg_node.GetReferenceImageGeometryReferenceRole(), reference_volume.GetID())


def _remove_volume(scene, node) -> None:
    for n in (node.GetStorageNode(), node.GetDisplayNode(), node):
        if n is not None:
            scene.RemoveNode(n)


@dataclass
class ExportReport:
    exported: dict = field(default_factory=dict)  # segment id -> label value
    skipped: list = field(default_factory=list)  # segment names not in knee-11 (or duplicates)


def export_knee_labelmap(scene, seg_node, reference_volume, labelmap_node=None, report: ExportReport | None = None):
    """Labelmap node on the reference grid with FIXED knee-11 values, whatever the segment order,
    names or deletions. Segments are matched by tag, then name; others are skipped (see report)."""
    labels = structure_labels()
    report = report if report is not None else ExportReport()
    seg = seg_node.GetSegmentation()
    ct = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName("OrthoDiffusion tmp export"))
    ct.SetTypeToUser()
    ct.SetNumberOfColors(max(int(lab["value"]) for lab in labels) + 1)
    for v in range(ct.GetNumberOfColors()):  # unnamed placeholders never match a segment
        ct.SetColor(v, f"__unused_{v}", 0, 0, 0, 0)
    ids = vtk.vtkStringArray()
    used = set()
    for i in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(i)
        segment = seg.GetSegment(sid)
        lab = _label_for_segment(segment, labels)
        if lab is None or int(lab["value"]) in used:
            report.skipped.append(segment.GetName())
            continue
        used.add(int(lab["value"]))
        ct.SetColor(int(lab["value"]), segment.GetName(), *(c / 255.0 for c in lab["color"]), 1.0)
        ids.InsertNextValue(sid)
        report.exported[sid] = int(lab["value"])
    if labelmap_node is None:
        labelmap_node = new_labelmap_like(scene, reference_volume, scene.GenerateUniqueName(
            f"{seg_node.GetName()} knee-11 labels"))
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            seg_node, ids, labelmap_node, reference_volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, ct)
    finally:
        scene.RemoveNode(ct)
    img = labelmap_node.GetImageData()
    if not ok or img is None or img.GetPointData().GetScalars() is None:
        _fill_empty(labelmap_node, reference_volume)  # all segments empty: Slicer exports no scalars
    if labelmap_node.GetDisplayNode() is None:
        labelmap_node.CreateDefaultDisplayNodes()
    labelmap_node.GetDisplayNode().SetAndObserveColorNodeID(knee_color_table(scene).GetID())
    return labelmap_node


def _fill_empty(labelmap_node, reference_volume) -> None:
    img = vtk.vtkImageData()
    img.SetDimensions(reference_volume.GetImageData().GetDimensions())
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    img.GetPointData().GetScalars().Fill(0)
    m = vtk.vtkMatrix4x4()
    reference_volume.GetIJKToRASMatrix(m)
    labelmap_node.SetIJKToRASMatrix(m)
    labelmap_node.SetAndObserveImageData(img)


def segmentation_edited(scene, seg_node, reference_volume) -> bool:
    """True when the knee-11 export differs from what was loaded (the user edited it)."""
    loaded = seg_node.GetAttribute(ATTR_LABELS_SHA)
    exported = export_knee_labelmap(scene, seg_node, reference_volume)
    try:
        return loaded is None or labelmap_sha256(exported) != loaded
    finally:
        _remove_volume(scene, exported)
