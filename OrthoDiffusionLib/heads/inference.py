"""Heads over the noise draws, in one place: ``diagnose`` (MPAE, EHR fusion, mean / spread over
draws, plane weights, per-plane expert probabilities) and ``segment`` (one plane's decoder, mean
softmax over draws). Used by predict, rank (through the cohort's uncertainty summary), fine-tune
and evaluate, so they all compute the same numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from .planes import PLANES


@dataclass
class Diagnosis:
    draw_probabilities: np.ndarray     # [draws, labels]
    probabilities: np.ndarray          # [labels] mean over draws
    spread: np.ndarray                 # [labels] std over draws
    plane_weights: np.ndarray          # [labels, 3] mean MPAE weights (sagittal, coronal, axial)
    expert_probabilities: np.ndarray   # [labels, 3] each plane expert's mean probability (NaN: plane absent)
    ehr_used: bool = False


@torch.no_grad()
def diagnose(heads: Mapping, features: Mapping[str, torch.Tensor | None], ehr: dict | None = None) -> Diagnosis:
    """``features``: plane -> [draws, C, d, h, w] (or None / missing when the plane is absent); every
    present plane has the same number of draws. EHR fusion applies when ``ehr`` is given and the head
    set has an ``ehr`` head."""
    mpae = heads["mpae"].eval()
    present_planes = [p for p in PLANES if features.get(p) is not None]
    k = int(features[present_planes[0]].shape[0])
    feats = {p: features.get(p) for p in PLANES}
    present = torch.tensor([[p in present_planes for p in PLANES]] * k)
    out = mpae(feats, present)
    logits = out.logits
    ehr_used = bool(ehr) and "ehr" in heads
    if ehr_used:
        logits = heads["ehr"].eval()(logits, [ehr] * k)
    draw_p = torch.sigmoid(logits).numpy()
    experts = torch.sigmoid(out.expert_logits).mean(0).numpy()
    experts[:, ~present[0].numpy()] = np.nan
    return Diagnosis(draw_p, draw_p.mean(0), draw_p.std(0), out.plane_weights.mean(0).numpy(), experts, ehr_used)


@torch.no_grad()
def segment(heads: Mapping, plane: str, features: torch.Tensor) -> np.ndarray:
    """Class probabilities [C, D, H, W] on ``plane``'s network grid: the mean softmax over draws."""
    logits = heads[f"seg_{plane}"].eval()(features)
    return torch.softmax(logits, 1).mean(0).numpy().astype(np.float32)


def segmentation_planes(heads: Mapping, planes) -> list[str]:
    """The given planes that have a segmentation head, in plane order."""
    return [p for p in PLANES if p in planes and f"seg_{p}" in heads]
