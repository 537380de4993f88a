"""Load a whole result folder into the scene: segmentation, findings table, plane-weight chart."""

from __future__ import annotations

from dataclasses import dataclass

from ..results.folder import CaseResult, read_result_folder
from .findings import findings_table, plane_weight_chart
from .hierarchy import place_in_case_folder
from .segmentation import load_result_segmentation


@dataclass
class CaseNodes:
    result: CaseResult
    segmentation: object
    table: object
    chart: object
    folder_item: int = 0


def load_case(scene, result_dir, reference_volume, segmentations_logic, replace_existing: bool = False,
              selected_finding: str | None = None) -> CaseNodes:
    result = read_result_folder(result_dir)
    seg = load_result_segmentation(scene, result, reference_volume, segmentations_logic,
                                   replace_existing=replace_existing)
    table = findings_table(scene, result)
    key = selected_finding or (max(result.findings, key=lambda f: f.probability).key if result.findings else None)
    chart = plane_weight_chart(scene, result, key)[0] if key else None
    nodes = [n for n in (seg, table, chart) if n is not None]
    folder = place_in_case_folder(scene, nodes, reference_volume, result.case_id)
    return CaseNodes(result=result, segmentation=seg, table=table, chart=chart, folder_item=folder)
