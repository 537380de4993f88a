"""Plane-weight cues for the slice views: which plane drove a finding, as text in each view.

The text/colour functions are pure (result + slice node in, strings/RGB out). :func:`cue_actor`
builds the view's own text actor: DataProbe rewrites the slice views' corner annotation on every
slice event, so the cue must not live there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..results.folder import CaseResult
from .planes import slice_view_plane

# Viridis control points (matplotlib's perceptually uniform map, sampled at 0, 0.125, ..., 1)
_VIRIDIS = np.array([
    [0.267004, 0.004874, 0.329415], [0.282623, 0.140926, 0.457517], [0.253935, 0.265254, 0.529983],
    [0.206756, 0.371758, 0.553117], [0.163625, 0.471133, 0.558148], [0.127568, 0.566949, 0.550556],
    [0.134692, 0.658636, 0.517649], [0.266941, 0.748751, 0.440573], [0.477504, 0.821444, 0.318195],
    [0.741388, 0.873449, 0.149561], [0.993248, 0.906157, 0.143936]])
_STOPS = np.linspace(0.0, 1.0, len(_VIRIDIS))


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


CUE_ACTOR_ATTRIBUTE = "OrthoDiffusionPlaneWeightCue"  # lets the module find and remove its actors


def cue_actor(cue: ViewCue, actor=None):
    """A ``vtkCornerAnnotation`` of our own (lower-right corner, which DataProbe leaves empty) showing
    the cue in its viridis colour plus the research-use note; re-used when ``actor`` is given."""
    import vtk

    from .. import DISCLAIMER

    actor = actor or vtk.vtkCornerAnnotation()
    actor.SetText(vtk.vtkCornerAnnotation.LowerRight, f"{cue.text}\n{DISCLAIMER}")
    actor.GetTextProperty().SetColor(*cue.rgb)
    actor.GetTextProperty().SetShadow(True)
    actor.SetMaximumFontSize(14)
    actor.SetObjectName(CUE_ACTOR_ATTRIBUTE)
    return actor
