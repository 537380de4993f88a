"""EHR branch and late fusion with the MRI logits.

Records are plain dicts (as read from the CLI or a manifest) with keys ``age``, ``sex``,
``height_cm``, ``weight_kg``, ``patient_type``, ``event``; any key may be missing/None/"".

Encoding (width 3 + 3 + 3 + (P+1) + E):
- age, height, weight: standardised with the spec's stored mean/std, 0 when missing, plus one
  missing indicator each;
- sex: one-hot over (unknown, female, male);
- patient type: one-hot over (unknown, *spec vocabulary*); values not in the vocabulary -> unknown;
- event: learned embedding (dim E) over (unknown, *spec vocabulary*).
Branch: Linear(-> 64) - ReLU - LayerNorm - Dropout - Linear(64 -> K).
Fusion per label: z = α ⊙ z_MRI + (1 - α) ⊙ z_EHR with α_k = sigmoid(a_k) learned; a case with no
EHR field at all keeps z_MRI.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import UserError
from .registry import register_head

from ..ehr import (CATEGORICAL_FIELDS, EHR_FIELDS, NUMERIC_FIELDS, NUMERIC_RANGES,  # noqa: F401
                   SEX_UNKNOWN, SEX_VALUES)

DEFAULT_STATS = {"age": (45.0, 15.0), "height_cm": (170.0, 10.0), "weight_kg": (75.0, 15.0)}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


def _numeric(record: Mapping, key: str, index: int) -> float | None:
    value = record.get(key)
    if _missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"EHR record {index}: {key}={value!r} is not a number") from None
    lo, hi = NUMERIC_RANGES[key]
    if not lo <= number <= hi:
        raise UserError(f"EHR record {index}: {key}={number:g} is outside the plausible range [{lo:g}, {hi:g}]")
    return number


def _category(value: Any) -> str | None:
    return None if _missing(value) else str(value).strip().lower()


def _check_keys(records: Sequence[Mapping], strict: bool) -> None:
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise UserError(f"EHR record {i} must be a mapping, got {type(record).__name__}")
        extra = set(record) - set(EHR_FIELDS)
        if strict and extra:
            raise UserError(f"EHR record {i}: unknown field(s) {sorted(extra)}; expected {list(EHR_FIELDS)}")


def fit_ehr_spec(records: Sequence[Mapping], strict: bool = True) -> dict:
    """Training statistics and vocabularies, stored in the head config (JSON)."""
    _check_keys(records, strict)
    stats = {}
    for key in NUMERIC_FIELDS:
        values = [v for i, r in enumerate(records) if (v := _numeric(r, key, i)) is not None]
        if len(values) >= 2:
            t = torch.tensor(values, dtype=torch.float64)
            stats[key] = [float(t.mean()), max(float(t.std()), 1e-3)]
        else:
            stats[key] = list(DEFAULT_STATS[key])
    for i, r in enumerate(records):
        _sex_index(r.get("sex"), i)  # validate early
    vocab = {key: sorted({c for r in records if (c := _category(r.get(key))) is not None})
             for key in ("patient_type", "event")}
    return {"stats": stats, "patient_types": vocab["patient_type"], "events": vocab["event"]}


def _sex_index(value: Any, index: int) -> int:
    c = _category(value)
    if c is None or c in SEX_UNKNOWN:
        return 0
    if c not in SEX_VALUES:
        raise UserError(f"EHR record {index}: sex={value!r} not understood (use F/M/female/male or leave empty)")
    return SEX_VALUES[c]


def encode_ehr(records: Sequence[Mapping], spec: dict, strict: bool = True) -> dict[str, torch.Tensor]:
    """Records -> tensors: numeric [B,3], numeric_missing [B,3], sex/patient_type/event [B] (0 = unknown),
    present [B] (False when every field is missing)."""
    _check_keys(records, strict)
    pt_index = {v: i + 1 for i, v in enumerate(spec["patient_types"])}
    ev_index = {v: i + 1 for i, v in enumerate(spec["events"])}
    numeric, missing, sex, ptype, event, present = [], [], [], [], [], []
    for i, r in enumerate(records):
        row, miss = [], []
        for key in NUMERIC_FIELDS:
            v = _numeric(r, key, i)
            mean, std = spec["stats"][key]
            row.append(0.0 if v is None else (v - mean) / std)
            miss.append(1.0 if v is None else 0.0)
        numeric.append(row)
        missing.append(miss)
        sex.append(_sex_index(r.get("sex"), i))
        ptype.append(pt_index.get(_category(r.get("patient_type")), 0))
        event.append(ev_index.get(_category(r.get("event")), 0))
        present.append(any(not _missing(r.get(k)) for k in EHR_FIELDS))
    return {"numeric": torch.tensor(numeric, dtype=torch.float32).reshape(-1, len(NUMERIC_FIELDS)),
            "numeric_missing": torch.tensor(missing, dtype=torch.float32).reshape(-1, len(NUMERIC_FIELDS)),
            "sex": torch.tensor(sex, dtype=torch.long), "patient_type": torch.tensor(ptype, dtype=torch.long),
            "event": torch.tensor(event, dtype=torch.long), "present": torch.tensor(present, dtype=torch.bool)}


@register_head("ehr_fusion")
class EHRFusionHead(nn.Module):
    """EHR branch + per-label late-fusion weight α_k = sigmoid(a_k) (initialised at 0.5)."""

    def __init__(self, spec: dict, n_labels: int, hidden: int = 64, dropout: float = 0.1, event_dim: int = 4):
        super().__init__()
        self.spec = spec
        self.n_patient_types = len(spec["patient_types"]) + 1
        self.event_embedding = nn.Embedding(len(spec["events"]) + 1, event_dim)
        width = 2 * len(NUMERIC_FIELDS) + 3 + self.n_patient_types + event_dim
        self.branch = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.LayerNorm(hidden), nn.Dropout(dropout),
                                    nn.Linear(hidden, n_labels))
        self.alpha_logit = nn.Parameter(torch.zeros(n_labels))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha_logit)

    def encode(self, ehr: Sequence[Mapping] | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return ehr if isinstance(ehr, dict) else encode_ehr(ehr, self.spec)

    def ehr_logits(self, ehr) -> torch.Tensor:
        b = self.encode(ehr)
        x = torch.cat([b["numeric"], b["numeric_missing"], nn.functional.one_hot(b["sex"], 3).float(),
                       nn.functional.one_hot(b["patient_type"], self.n_patient_types).float(),
                       self.event_embedding(b["event"])], dim=1)
        return self.branch(x)

    def forward(self, mri_logits: torch.Tensor, ehr) -> torch.Tensor:
        b = self.encode(ehr)
        if b["numeric"].shape[0] != mri_logits.shape[0]:
            raise ValueError(f"{b['numeric'].shape[0]} EHR records for {mri_logits.shape[0]} cases")
        alpha = self.alpha
        fused = alpha * mri_logits + (1 - alpha) * self.ehr_logits(b)
        return torch.where(b["present"][:, None], fused, mri_logits)
