"""Adapting a model to data: ``fit`` (heads on a cohort's cached features), ``finetune`` (saved
corrections → a new head version), ``sweep`` (timestep × block probes). Research use only, not
for clinical decisions."""
