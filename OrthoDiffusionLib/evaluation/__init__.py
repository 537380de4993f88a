"""Evaluation of OrthoDiffusion heads: classification (per-label AUROC / AP / operating points /
calibration with bootstrap CIs, paired AUROC comparison), segmentation (Dice / HD95 via MONAI),
subgroup breakdowns, MPAE plane-weight summaries, label-efficiency tables, report writing, and the
evaluation of a predicted cohort against its manifest (``evaluate_cohort``).

See docs/evaluation.md. Research use only, not for clinical decisions.
"""

from .breakdown import breakdown_classification, breakdown_rows
from .calibration import expected_calibration_error, reliability_curve
from .classification import (
    choose_thresholds,
    evaluate_classification,
    label_metrics,
    macro_auroc,
    threshold_for_sensitivity,
    threshold_youden,
)
from .cohort import evaluate_cohort, load_cohort_predictions
from .compare import bootstrap_auroc_difference, compare_auroc, delong_test
from .efficiency import label_efficiency_table
from .planes import PLANES, plane_weight_rows, plane_weight_summary
from .report import write_csv, write_evaluation
from .segmentation import evaluate_segmentation, segmentation_case_metrics, summarize_segmentation

__all__ = [
    "PLANES", "bootstrap_auroc_difference", "breakdown_classification", "breakdown_rows", "choose_thresholds",
    "compare_auroc", "delong_test", "evaluate_classification", "evaluate_cohort", "evaluate_segmentation",
    "expected_calibration_error", "label_efficiency_table", "label_metrics", "load_cohort_predictions",
    "macro_auroc", "plane_weight_rows",
    "plane_weight_summary", "reliability_curve", "segmentation_case_metrics", "summarize_segmentation",
    "threshold_for_sensitivity", "threshold_youden", "write_csv", "write_evaluation",
]
