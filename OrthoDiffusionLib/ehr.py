"""The EHR fields the library understands and the one rule for their values, used by the manifest
reader, ``predict --ehr``, the EHR head and the Slicer module alike (torch-free: the Slicer GUI
process reads it).

Before, the manifest refused a code the ``--ehr`` path let through silently (``NaN``, ``true``, an
unknown patient type or event became "missing" or "unknown"). Here every value is either missing
(empty / None), a valid value, or a one-line ``InputError`` naming the field and what is allowed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from .errors import InputError

NUMERIC_FIELDS = ("age", "height_cm", "weight_kg")
# Plausible ranges; values outside are almost always unit or typing errors (e.g. height in m).
NUMERIC_RANGES = {"age": (0.0, 120.0), "height_cm": (30.0, 250.0), "weight_kg": (1.0, 400.0)}
CATEGORICAL_FIELDS = ("sex", "patient_type", "event")
EHR_FIELDS = NUMERIC_FIELDS + CATEGORICAL_FIELDS
# The EHR head's encoding of sex (records reaching it have passed check_sex, or come from the test bed).
SEX_VALUES = {"f": 1, "female": 1, "w": 1, "woman": 1, "m": 2, "male": 2, "man": 2}
SEX_UNKNOWN = {"u", "unknown", "o", "other", "x"}
SEXES = ("F", "M")
SEX_WORDS = {"f": "F", "female": "F", "m": "M", "male": "M"}
PATIENT_TYPES = ("outpatient", "inpatient", "emergency")
EVENTS = ("sport", "fall", "traffic", "twisting", "none", "unknown")
CHOICES = {"patient_type": PATIENT_TYPES, "event": EVENTS}
FIELDS = ("age", "sex", "height_cm", "weight_kg", "patient_type", "event")  # the order records are shown in


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def check_number(key: str, value: Any, where: str) -> float | None:
    """A finite number inside the field's plausible range, or None when missing."""
    if is_missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{where}: {key}={value!r} is not a number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise InputError(f"{where}: {key}={value!r} is not a number; expected a number") from None
    if not math.isfinite(number):  # 'NaN' / 'inf' parse as floats but are no measurement
        raise InputError(f"{where}: {key}={value!r} is not a number (leave it empty when unknown)")
    lo, hi = NUMERIC_RANGES[key]
    if not lo <= number <= hi:
        raise InputError(f"{where}: {key}={number:g} is outside the plausible range {lo:g}-{hi:g}")
    return number


def check_sex(value: Any, where: str) -> str | None:
    if is_missing(value):
        return None
    code = SEX_WORDS.get(str(value).strip().lower()) if isinstance(value, str) else None
    if code is None:
        raise InputError(f"{where}: {value!r} is not one of F, M (sex not understood; F/M/female/male, "
                         "or leave it empty when unknown)")
    return code


def check_choice(key: str, value: Any, where: str) -> str | None:
    if is_missing(value):
        return None
    choices = CHOICES[key]
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text not in choices:
        raise InputError(f"{where}: {value!r} is not one of {', '.join(choices)} ({key} not understood; "
                         "leave it empty when unknown)")
    return text


def check_value(key: str, value: Any, where: str):
    """The normalised value of one EHR field (None when missing)."""
    if key in NUMERIC_RANGES:
        return check_number(key, value, where)
    if key == "sex":
        return check_sex(value, where)
    return check_choice(key, value, where)


def check_record(record: Mapping, where: str) -> dict:
    """A whole EHR record: known fields only, each value checked; returns the normalised record."""
    if not isinstance(record, Mapping):
        raise InputError(f"{where}: expected a JSON object of EHR fields, got {type(record).__name__}")
    unknown = sorted(str(k) for k in record if k not in FIELDS)
    if unknown:
        raise InputError(f"{where}: unknown field(s) {unknown}; expected {list(FIELDS)}")
    return {k: check_value(k, v, where) for k, v in record.items()}


def parse_ehr(text: str | dict | None) -> dict | None:
    """'age=54,sex=F,...' or a JSON file path (or a dict) → EHR record (validated by the heads)."""
    if text is None or text == "":
        return None
    if isinstance(text, dict):
        return dict(text)
    p = Path(text).expanduser()
    if p.suffix.lower() == ".json" or p.is_file():
        if not p.is_file():
            raise InputError(f"--ehr {text}: file not found")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"--ehr {text}: invalid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(f"--ehr {text}: expected a JSON object of EHR fields")
        return data
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise InputError(f"--ehr: '{part}' is not KEY=VALUE (e.g. age=54,sex=F,height_cm=170,weight_kg=70)")
        k, v = (s.strip() for s in part.split("=", 1))
        try:
            out[k] = float(v) if k in ("age", "height_cm", "weight_kg") else v
        except ValueError:
            raise InputError(f"--ehr: {k}={v} is not a number") from None
    return out


def validate_ehr(record: dict | None) -> dict | None:
    """Check fields, ranges and codes now (as the EHR head would, after minutes of work)."""
    if record:
        return check_record(record, "--ehr")  # one rule with the manifest reader
    return record
