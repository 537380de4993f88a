"""Synthetic knee MRI test bed (anatomy from real label maps, MR physics, knee-8 findings, EHR).

A TEST BED for pipelines and robustness checks, not clinical evidence. Knee only for now; the
ankle-4 and shoulder-8 label sets exist as data but have no generator yet.

Entry points: :func:`synthesize_cohort` (writes NIfTI + manifest.csv) and :func:`generate_case`
(one case in memory). See docs/testbed.md.
"""

from .generate import Case, SynthConfig, generate_case, synthesize_cohort, write_case

__all__ = ["Case", "SynthConfig", "generate_case", "synthesize_cohort", "write_case"]
