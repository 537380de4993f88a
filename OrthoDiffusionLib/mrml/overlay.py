"""Plane-weight cues for the slice views and the evidence heatmap volume.

The text/colour functions are pure (result + slice node in, strings/RGB out), so the widget only
copies them into the views' corner annotations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..results import CaseResult
from .planes import slice_view_plane
from .volumes import load_volume, same_geometry

# Viridis control points (matplotlib's perceptually uniform map, sampled at 0, 0.125, ..., 1)
_VIRIDIS = np.array([
    [0.267004, 0.004874, 0.329415], [0.282623, 0.140926, 0.457517], [0.253935, 0.265254, 0.529983],
    [0.206756, 0.371758, 0.553117], [0.163625, 0.471133, 0.558148], [0.127568, 0.566949, 0.550556],
    [0.134692, 0.658636, 0.517649], [0.266941, 0.748751, 0.440573], [0.477504, 0.821444, 0.318195],
    [0.741388, 0.873449, 0.149561], [0.993248, 0.906157, 0.143936]])
_STOPS = np.linspace(0.0, 1.0, len(_VIRIDIS))
EVIDENCE_COLOR_TABLE = "OrthoDiffusion Viridis"


def viridis(value: float) -> tuple[float, float, float]:
    """RGB in [0, 1] for a value in [0, 1] (clipped), interpolated along viridis."""
    v = float(np.clip(value, 0.0, 1.0))
    return tuple(float(np.interp(v, _STOPS, _VIRIDIS[:, c])) for c in range(3))


@dataclass(frozen=True)
class ViewCue:
    view: str  # slice node layout name: Red / Yellow / Green
    plane: str
    weight: float
    text: str
    rgb: tuple


def view_cue(result: CaseResult, finding_key: str, slice_node) -> ViewCue:
    """What a slice view should show for a finding: 'ACL: sagittal weight 0.62' + a viridis colour."""
    f = result.finding(finding_key)
    plane = slice_view_plane(slice_node)
    w = f.weight(plane)
    present = plane in result.planes_present or "3d" in result.planes_present
    text = f"{f.key}: {plane} weight {w:.2f}" + ("" if present else f" (no {plane} series)")
    return ViewCue(view=slice_node.GetLayoutName() or slice_node.GetName(), plane=plane, weight=w, text=text,
                   rgb=viridis(w))


def view_cues(result: CaseResult, finding_key: str, slice_nodes) -> list[ViewCue]:
    return [view_cue(result, finding_key, sn) for sn in slice_nodes]


def evidence_color_table(scene):
    """A 256-entry viridis colour table node (shared per scene) for evidence heatmaps."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
        if node.GetName() == EVIDENCE_COLOR_TABLE:
            return node
    ct = scene.AddNewNodeByClass("vtkMRMLColorTableNode", EVIDENCE_COLOR_TABLE)
    ct.SetTypeToUser()
    ct.SetNumberOfColors(256)
    for i in range(256):
        ct.SetColor(i, *viridis(i / 255.0), 1.0)
    return ct


def load_evidence_volume(scene, result: CaseResult, finding_key: str, reference_volume=None):
    """Scalar volume of ``evidence_<KEY>.nrrd`` with the viridis table and a 0..max window.

    Show it as foreground in Slicer (``slicer.util.setSliceViewerLayers(foreground=node,
    foregroundOpacity=0.4)``). Raises if the file's grid differs from ``reference_volume``.
    """
    key = result.finding(finding_key).key
    node = load_volume(scene, result.path(f"evidence_{key}"), name=f"{result.case_id} {key} evidence")
    if reference_volume is not None and not same_geometry(node, reference_volume):
        raise ValueError(f"evidence_{key}.nrrd is not on the reference volume's grid")
    disp = node.GetDisplayNode()
    disp.SetAndObserveColorNodeID(evidence_color_table(scene).GetID())
    lo, hi = node.GetImageData().GetScalarRange()
    disp.SetAutoWindowLevel(False)
    disp.SetWindowLevelMinMax(lo, hi if hi > lo else lo + 1.0)
    node.SetAttribute("OrthoDiffusion.Finding", key)
    node.SetAttribute("OrthoDiffusion.CaseId", result.case_id)
    return node
