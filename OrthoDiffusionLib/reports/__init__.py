"""HTML reports: one case (``case``) and a cohort (``cohort``). Research use only, not for clinical
decisions."""
