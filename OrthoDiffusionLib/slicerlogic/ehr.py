"""Clinical-information inputs of the module -> an EHR record the CLI accepts.

Fields, ranges and vocabularies come from :mod:`OrthoDiffusionLib.ehr` (the list the EHR
head validates against). "not given" (combo boxes) and the spin boxes' minimum, one below the
plausible range, mean the field is left out: a spin box cannot skip values, so its range is exactly
the valid numbers plus that one.
"""

from __future__ import annotations

from ..ehr import EHR_FIELDS, EVENTS, NUMERIC_RANGES, PATIENT_TYPES

NOT_GIVEN = "not given"
SEX_CHOICES = (NOT_GIVEN, "female", "male")
PATIENT_TYPE_CHOICES = (NOT_GIVEN,) + PATIENT_TYPES
EVENT_CHOICES = (NOT_GIVEN,) + EVENTS
CHOICES = {"sex": SEX_CHOICES, "patient_type": PATIENT_TYPE_CHOICES, "event": EVENT_CHOICES}


def spin_box_range(field: str) -> tuple:
    """Integer spin-box range of a numeric field: (lower bound - 1 = "not given", upper bound)."""
    lo, hi = NUMERIC_RANGES[field]
    return int(lo) - 1, int(hi)


def ehr_record(values: dict) -> dict | None:
    """``{field: value}`` from the GUI -> record with only the given fields (None when empty).

    Unknown keys, out-of-range numbers and values outside the choices raise ValueError here, in the
    GUI process, instead of a CLI exit 2 after the input volumes were written.
    """
    unknown = sorted(set(values) - set(EHR_FIELDS))
    if unknown:
        raise ValueError(f"unknown EHR field(s) {unknown}; the CLI accepts {list(EHR_FIELDS)}")
    record = {}
    for key, value in values.items():
        if value in (None, "", NOT_GIVEN):
            continue
        if key in NUMERIC_RANGES:
            if value == spin_box_range(key)[0]:
                continue
            lo, hi = NUMERIC_RANGES[key]
            if not lo <= float(value) <= hi:
                raise ValueError(f"{key}={value} is outside [{lo:g}, {hi:g}]")
            record[key] = int(value) if float(value).is_integer() else float(value)
        else:
            if value not in CHOICES[key]:
                raise ValueError(f"{key}={value!r} is not one of {[c for c in CHOICES[key] if c != NOT_GIVEN]}")
            record[key] = value
    return record or None
