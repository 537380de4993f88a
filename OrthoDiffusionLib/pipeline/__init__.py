"""Study → result pipeline: model catalogue, cohort feature extraction, head fitting, case
prediction and the HTML report. Research use only, not for clinical decisions."""

from .catalogue import ModelSpec, get_model, list_models, verify_model
from .config import FitJob, PredictJob

__all__ = ["ModelSpec", "get_model", "list_models", "verify_model", "FitJob", "PredictJob"]
