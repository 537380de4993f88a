"""Findings table, plane-weight chart, slice-view cues (and their own text actor) and plane detection (slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from OrthoDiffusionLib.mrml.findings import TABLE_COLUMNS, findings_table, plane_weight_chart  # noqa: E402
from OrthoDiffusionLib.mrml.headless import headless_scene  # noqa: E402
from OrthoDiffusionLib.mrml.overlay import CUE_ACTOR_ATTRIBUTE, cue_actor, view_cue, view_cues, viridis  # noqa: E402
from OrthoDiffusionLib.mrml.planes import assign_planes, slice_view_plane, volume_plane  # noqa: E402
from OrthoDiffusionLib.mrml.volumes import ijk_to_ras, load_volume, same_geometry  # noqa: E402
from OrthoDiffusionLib.results.folder import read_result_folder  # noqa: E402


@pytest.fixture(scope="module")
def demo(small_result_folder):
    folder, ref = small_result_folder
    return read_result_folder(folder), ref


@pytest.fixture()
def scene():
    return headless_scene()[0]


def test_findings_table_values(scene, demo):
    result = demo[0]
    t = findings_table(scene, result)
    assert [t.GetColumnName(i) for i in range(t.GetNumberOfColumns())] == list(TABLE_COLUMNS)
    assert t.GetNumberOfRows() == 8
    assert t.GetCellText(0, 0) == "ACL" and t.GetCellText(0, 3) == "positive" and t.GetCellText(1, 3) == "negative"
    table = t.GetTable()
    for row, f in enumerate(result.findings):
        assert table.GetValueByName(row, "probability").ToDouble() == pytest.approx(f.probability)
        assert table.GetValueByName(row, "uncertainty").ToDouble() == pytest.approx(f.spread)
        for p in ("sagittal", "coronal", "axial"):
            assert table.GetValueByName(row, f"w_{p}").ToDouble() == pytest.approx(f.weight(p))
    assert findings_table(scene, result, t) is t and t.GetNumberOfColumns() == len(TABLE_COLUMNS)


def test_plane_weight_chart_reuses_nodes(scene, demo):
    result = demo[0]
    chart, series, table = plane_weight_chart(scene, result, "ACL")
    assert series.GetPlotType() == series.PlotTypeBar and chart.GetNthPlotSeriesNode(0) is series
    assert series.GetTableNode() is table and series.GetYColumnName() == "weight"
    w = [table.GetTable().GetValueByName(i, "weight").ToDouble() for i in range(3)]
    assert w == pytest.approx([0.62, 0.25, 0.13])
    n_before = scene.GetNumberOfNodes()
    chart2, series2, table2 = plane_weight_chart(scene, result, "MCL", chart)
    assert (chart2, series2, table2) == (chart, series, table) and scene.GetNumberOfNodes() == n_before
    assert table.GetTable().GetValueByName(1, "weight").ToDouble() == pytest.approx(0.70)
    assert chart.GetAttribute("OrthoDiffusion.Finding") == "MCL"


def _slice_nodes(scene):
    out = []
    for layout, orientation in [("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")]:
        sn = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        sn.SetLayoutName(layout)
        sn.SetOrientation(orientation)
        out.append(sn)
    return out


def test_view_cues_follow_slice_orientation(scene, demo):
    result = demo[0]
    red, yellow, green = _slice_nodes(scene)
    assert [slice_view_plane(s) for s in (red, yellow, green)] == ["axial", "sagittal", "coronal"]
    cue = view_cue(result, "ACL", yellow)
    assert cue.view == "Yellow" and cue.text == "ACL: sagittal weight 0.62" and cue.rgb == viridis(0.62)
    cues = {c.view: c for c in view_cues(result, "acl", [red, yellow, green])}
    assert cues["Red"].text == "ACL: axial weight 0.13 (no axial series)"
    # re-orient a view: the cue follows
    red.SetOrientation("Coronal")
    assert view_cue(result, "ACL", red).text.startswith("ACL: coronal weight 0.25")
    # perceptual map: monotone lightness proxy, endpoints of viridis
    assert viridis(0) == pytest.approx((0.267004, 0.004874, 0.329415)) and viridis(2.0) == viridis(1.0)
    lum = [0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b in (viridis(v) for v in np.linspace(0, 1, 11))]
    assert all(a < b for a, b in zip(lum, lum[1:]))


def test_cue_actor_is_a_separate_corner_annotation(scene, demo):
    """DataProbe rewrites the view's own corner annotation; the cue is an actor of its own."""
    result, _ = demo
    red = _slice_nodes(scene)[0]
    cue = view_cue(result, "ACL", red)
    actor = cue_actor(cue)
    assert isinstance(actor, vtk.vtkCornerAnnotation) and actor.GetObjectName() == CUE_ACTOR_ATTRIBUTE
    text = actor.GetText(vtk.vtkCornerAnnotation.LowerRight)
    assert text.startswith(cue.text) and "not for clinical decisions" in text
    assert actor.GetTextProperty().GetColor() == pytest.approx(cue.rgb)
    for corner in (0, 2, 3):  # DataProbe's corners stay untouched
        assert not actor.GetText(corner)
    assert cue_actor(view_cue(result, "PD", red), actor) is actor  # re-used, not piled up


def _volume(scene, spacing, direction_cols, dims=(4, 4, 4)):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    img = vtk.vtkImageData()
    img.SetDimensions(*dims)
    img.AllocateScalars(vtk.VTK_SHORT, 1)
    node.SetAndObserveImageData(img)
    node.SetSpacing(*spacing)
    m = vtk.vtkMatrix4x4()
    for c, col in enumerate(direction_cols):
        for r in range(3):
            m.SetElement(r, c, col[r])
    node.SetIJKToRASDirectionMatrix(m)
    return node


def test_plane_detection_from_ijk_to_ras(scene, demo):
    ref = load_volume(scene, demo[1], "sample")
    assert volume_plane(ref) == "sagittal"  # the real sample knee (oblique sagittal, 4 mm slices)
    cor = _volume(scene, (0.4, 0.4, 3.5), [(1, 0, 0), (0, 0, -1), (0, 1, 0)])
    ax = _volume(scene, (0.4, 0.4, 4.0), [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
    iso = _volume(scene, (0.7, 0.7, 0.7), [(0, 1, 0), (0, 0, -1), (-1, 0, 0)], dims=(48, 48, 48))  # a 3D series
    few = _volume(scene, (0.7, 0.7, 0.7), [(0, 1, 0), (0, 0, -1), (-1, 0, 0)])  # 4 slices: not 3D (the CLI's rule)
    thick_first = _volume(scene, (3.0, 0.5, 0.5), [(0, 0, 1), (0, 1, 0), (1, 0, 0)])  # axial, slices along I
    assert [volume_plane(v) for v in (cor, ax, iso, thick_first, few)] == ["coronal", "axial", "3d", "axial", "sagittal"]
    planes = assign_planes([ax, ref, cor, iso, None])
    assert planes["sagittal"] is ref and planes["coronal"] is cor and planes["axial"] is ax and planes["3d"] is iso
    assert np.allclose(ijk_to_ras(ax)[:3, :3], np.diag([0.4, 0.4, 4.0]))
