"""Evaluation of OrthoDiffusion heads: classification (per-label AUROC / AP / operating points /
calibration with bootstrap CIs, paired AUROC comparison), segmentation (Dice / HD95 via MONAI),
subgroup breakdowns, MPAE plane-weight summaries, label-efficiency tables, report writing, and the
evaluation of a predicted cohort against its manifest (``evaluate_cohort``).

See docs/evaluation.md. Research use only, not for clinical decisions.
"""

# Submodules load on first use (PEP 562): predict and fine-tune in Slicer need only the in-training
# metrics (label_dice), not scikit-learn, MONAI or matplotlib, which the module does not install.
_WHERE = {
    "breakdown_classification": "breakdown",
    "breakdown_rows": "breakdown",
    "expected_calibration_error": "calibration",
    "reliability_curve": "calibration",
    "choose_thresholds": "classification",
    "evaluate_classification": "classification",
    "label_metrics": "classification",
    "macro_auroc": "classification",
    "threshold_for_sensitivity": "classification",
    "threshold_youden": "classification",
    "evaluate_cohort": "cohort",
    "load_cohort_predictions": "cohort",
    "bootstrap_auroc_difference": "compare",
    "compare_auroc": "compare",
    "delong_test": "compare",
    "label_efficiency_table": "efficiency",
    "PLANES": "planes",
    "plane_weight_rows": "planes",
    "plane_weight_summary": "planes",
    "write_csv": "report",
    "write_evaluation": "report",
    "evaluate_segmentation": "segmentation",
    "segmentation_case_metrics": "segmentation",
    "summarize_segmentation": "segmentation",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PLANES", "bootstrap_auroc_difference", "breakdown_classification", "breakdown_rows", "choose_thresholds",
    "compare_auroc", "delong_test", "evaluate_classification", "evaluate_cohort", "evaluate_segmentation",
    "expected_calibration_error", "label_efficiency_table", "label_metrics", "load_cohort_predictions",
    "macro_auroc", "plane_weight_rows",
    "plane_weight_summary", "reliability_curve", "segmentation_case_metrics", "summarize_segmentation",
    "threshold_for_sensitivity", "threshold_youden", "write_csv", "write_evaluation",
]
