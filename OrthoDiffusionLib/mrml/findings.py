"""Findings table node and a bar chart of one finding's plane weights (logic-safe; no layout code)."""

from __future__ import annotations

import vtk

from .. import DISCLAIMER
from ..results.folder import PLANES, CaseResult

TABLE_COLUMNS = ("finding", "probability", "uncertainty", "decision", "w_sagittal", "w_coronal", "w_axial")


def _column(cls, name: str, n: int):
    arr = cls()
    arr.SetName(name)
    arr.SetNumberOfValues(n)
    return arr


def findings_table(scene, result: CaseResult, table_node=None):
    """Fill (or create) a vtkMRMLTableNode: one row per finding, columns ``TABLE_COLUMNS``."""
    node = table_node or scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(
        f"{result.case_id} findings"))
    n = len(result.findings)
    cols = {"finding": _column(vtk.vtkStringArray, "finding", n),
            "decision": _column(vtk.vtkStringArray, "decision", n)}
    for name in ("probability", "uncertainty", "w_sagittal", "w_coronal", "w_axial"):
        cols[name] = _column(vtk.vtkDoubleArray, name, n)
    for row, f in enumerate(result.findings):
        cols["finding"].SetValue(row, f.key)
        cols["probability"].SetValue(row, float(f.probability))
        cols["uncertainty"].SetValue(row, float(f.spread))
        cols["decision"].SetValue(row, "positive" if f.decision else "negative")
        for p in PLANES:
            cols[f"w_{p}"].SetValue(row, f.weight(p))
    wasModified = node.StartModify()
    node.RemoveAllColumns()
    for name in TABLE_COLUMNS:
        node.AddColumn(cols[name])
    node.SetColumnDescription("uncertainty", "spread of the probability across samples")
    node.SetColumnDescription("decision", "probability >= threshold")
    node.SetAttribute("OrthoDiffusion.CaseId", result.case_id)
    node.SetAttribute("OrthoDiffusion.Disclaimer", DISCLAIMER)
    node.SetUseColumnTitleAsColumnHeader(True)
    node.EndModify(wasModified)
    return node


def plane_weight_chart(scene, result: CaseResult, finding_key: str, chart_node=None):
    """Bar chart of one finding's plane weights: returns ``(chart, series, table)`` nodes.

    Re-uses ``chart_node`` (and its first series and table) so switching findings does not pile up nodes.
    """
    f = result.finding(finding_key)
    series = chart_node.GetNthPlotSeriesNode(0) if chart_node and chart_node.GetNumberOfPlotSeriesNodes() else None
    table = series.GetTableNode() if series is not None else None
    table = table or scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(
        f"{result.case_id} plane weights"))
    idx, plane, weight = (_column(vtk.vtkIntArray, "index", 3), _column(vtk.vtkStringArray, "plane", 3),
                          _column(vtk.vtkDoubleArray, "weight", 3))
    for i, p in enumerate(PLANES):
        idx.SetValue(i, i)
        plane.SetValue(i, p)
        weight.SetValue(i, f.weight(p))
    wm = table.StartModify()
    table.RemoveAllColumns()
    for col in (idx, plane, weight):
        table.AddColumn(col)
    table.EndModify(wm)

    if series is None:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(
            f"{result.case_id} plane weights"))
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("index")
    series.SetYColumnName("weight")
    series.SetLabelColumnName("plane")
    series.SetPlotType(series.PlotTypeBar)
    series.SetColor(0.27, 0.51, 0.71)
    series.SetName(f"{f.key} plane weights")

    chart = chart_node or scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(
        f"{result.case_id} plane weights chart"))
    if not chart.HasPlotSeriesNodeID(series.GetID()):
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(f"{f.key}: which plane drove the call (research use, not for clinical decisions)")
    chart.SetXAxisTitle("plane (0 sagittal, 1 coronal, 2 axial)")
    chart.SetYAxisTitle("weight")
    chart.SetYAxisRangeAuto(False)
    chart.SetYAxisRange(0.0, 1.0)
    chart.SetLegendVisibility(False)
    chart.SetAttribute("OrthoDiffusion.Finding", f.key)
    return chart, series, table
