"""Save an edited segmentation + finding decisions as an immutable correction entry."""

from __future__ import annotations

from ..results.corrections import CorrectionsStore, prediction_record
from .segmentation import ATTR_CASE, ATTR_RESULT_DIR, ExportReport, _remove_volume, export_knee_labelmap
from .volumes import volume_to_sitk


def save_correction(scene, seg_node, reference_volume, findings: dict, store: CorrectionsStore | None = None,
                    case_id: str | None = None, user: str | None = None):
    """Export ``seg_node`` with fixed knee-11 values on the reference grid and store it.

    ``findings``: ``{KEY: {"decision": bool, "action": "confirmed"|"flipped"}}``.
    Returns ``(CorrectionEntry, ExportReport)``.
    """
    store = store or CorrectionsStore()
    report = ExportReport()
    labelmap = export_knee_labelmap(scene, seg_node, reference_volume, report=report)
    try:
        image = volume_to_sitk(labelmap)
    finally:
        _remove_volume(scene, labelmap)
    case = case_id or seg_node.GetAttribute(ATTR_CASE) or seg_node.GetName()
    result_dir = seg_node.GetAttribute(ATTR_RESULT_DIR)
    source = {"segmentation_node": seg_node.GetName(), "result_dir": result_dir,
              "skipped_segments": report.skipped,
              "prediction": prediction_record(result_dir) if result_dir else {}}
    return store.save(case, image, findings, user=user, source=source), report
