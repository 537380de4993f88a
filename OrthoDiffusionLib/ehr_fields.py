"""The EHR fields the library understands (torch-free, so the Slicer GUI process can read them).

``heads.ehr`` validates and encodes records with these names and ranges; the Slicer module builds
its clinical-information inputs from them, so the two cannot drift apart.
"""

from __future__ import annotations

NUMERIC_FIELDS = ("age", "height_cm", "weight_kg")
# Plausible ranges; values outside are almost always unit or typing errors (e.g. height in m).
NUMERIC_RANGES = {"age": (0.0, 120.0), "height_cm": (30.0, 250.0), "weight_kg": (1.0, 400.0)}
CATEGORICAL_FIELDS = ("sex", "patient_type", "event")
EHR_FIELDS = NUMERIC_FIELDS + CATEGORICAL_FIELDS
SEX_VALUES = {"f": 1, "female": 1, "w": 1, "woman": 1, "m": 2, "male": 2, "man": 2}
SEX_UNKNOWN = {"u", "unknown", "o", "other", "x"}
# Vocabulary the shipped heads were fitted on; other values are accepted and encoded as unknown.
PATIENT_TYPES = ("outpatient", "inpatient", "emergency")
EVENTS = ("sport", "fall", "traffic", "twisting", "none", "unknown")
