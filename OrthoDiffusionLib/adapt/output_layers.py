"""What a fine-tune trains: the output layers of the current heads on cached activations — the
segmentation decoder's 1×1×1 classifier (a random sample of voxels per step) and the MPAE experts'
linear layers and gate (on SAP vectors pooled once) — each step with the corrections and replay
cases together, the replay target being the heads' own outputs before fine-tuning (distillation).
Research use only, not for clinical decisions."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..evaluation.segmentation import label_dice
from ..planes import PLANES
from .corrected import CorrectedCase

# The segmentation decoder is fine-tuned at its output layer (1×1×1 classifier) on its cached
# penultimate activations: one decoder pass per sample, then hundreds of cheap steps. Whole-decoder
# steps were slower and lowered the agreement with an unchanged target (thin structures on a coarse
# grid flip easily); the numbers are in bench/finetune.md.

@torch.no_grad()
def decoder_activations(decoder, x: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """Input of the decoder's classifier for features ``x`` [B, C, d, h, w]."""
    decoder.eval()
    got = []
    hook = decoder.classifier.register_forward_hook(lambda module, inputs, output: got.append(inputs[0].detach()))
    try:
        for i in range(0, len(x), batch):
            decoder(x[i:i + batch])
    finally:
        hook.remove()
    return torch.cat(got)


def tail_logits(decoder, act: torch.Tensor) -> torch.Tensor:
    """The decoder's output from its classifier input (same resize as ``SegmentationDecoder.forward``)."""
    from torch.nn import functional as F

    logits = decoder.classifier(act)
    if list(logits.shape[2:]) != list(decoder.out_shape):
        logits = F.interpolate(logits, size=decoder.out_shape, mode="trilinear", align_corners=False)
    return logits


@torch.no_grad()
def labels_from_activations(decoder, act: torch.Tensor) -> torch.Tensor:
    """argmax of the mean softmax over noise draws, as predict does: [K, ...] -> [D, H, W]."""
    return torch.cat([torch.softmax(tail_logits(decoder, act[i:i + 4]), 1) for i in range(0, len(act), 4)]
                     ).mean(0).argmax(0)


@torch.no_grad()
def replay_dice(decoder, acts, targets, structures) -> float | None:
    """Mean Dice of the decoder on the replay cases against their stored label maps (the one
    in-training rule, ``evaluation.segmentation.label_dice``: unlabelled voxels left out, a structure
    scored where the stored map has it)."""
    if acts is None or not len(acts):
        return None
    preds = torch.cat([tail_logits(decoder, acts[i:i + 1]).argmax(1) for i in range(len(acts))])
    return label_dice(preds, targets, structures.values, structures.keys, count="target")["mean_dice"]


def _voxels(acts: torch.Tensor, targets: torch.Tensor):
    """[B, C, D, H, W] activations + [B, D, H, W] targets -> per-voxel rows x [N, C], y [N]
    (unlabelled voxels dropped)."""
    x = acts.movedim(1, -1).reshape(-1, acts.shape[1])
    y = targets.reshape(-1)
    keep = y >= 0
    return x[keep], y[keep]


def _soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the class probabilities of ``target_logits`` (distillation)."""
    return -(torch.softmax(target_logits, -1) * torch.log_softmax(logits, -1)).sum(-1).mean()


def train_segmentation_classifier(decoder, case_acts, case_targets, rep_acts, job, progress,
                           voxels_per_step: int = 32768) -> dict:
    """AdamW on the 1×1×1 classifier. It acts voxel by voxel, so each step trains on a random sample
    of voxels: ``voxels_per_step`` from the corrected cases (all noise draws; a corrected label map
    counts as complete; cross-entropy) and as many from the replay cases, whose target is what the
    heads predicted there before fine-tuning (distillation: keeps the earlier behaviour, even where
    the heads never fitted their training labels well)."""
    from torch.nn import functional as F
    from tqdm import tqdm

    if list(case_acts[0].shape[2:]) != list(decoder.out_shape):
        raise UserError("this segmentation head resizes its output; fine-tuning supports decoders whose last "
                        "stage reaches the target grid exactly")
    g = torch.Generator().manual_seed(job.seed)
    x, y = _voxels(torch.cat(case_acts), torch.cat([t[None].expand(len(a), *t.shape)
                                                    for a, t in zip(case_acts, case_targets)]))
    rep_x = rep_acts.movedim(1, -1).reshape(-1, rep_acts.shape[1]) if rep_acts is not None and len(rep_acts) \
        else None
    classifier = decoder.classifier
    weight0, bias0 = classifier.weight.detach().flatten(1).clone(), classifier.bias.detach().clone()

    def logits(rows):  # the 1×1×1 classifier on a batch of voxels, as a linear layer (same weights)
        return F.linear(rows, classifier.weight.flatten(1), classifier.bias)

    optimiser = torch.optim.AdamW(classifier.parameters(), lr=job.lr, weight_decay=0.0)
    losses = []
    decoder.train()
    for _ in tqdm(range(job.epochs), desc="finetune segmentation", unit="step", disable=not progress):
        optimiser.zero_grad()
        i = torch.randint(len(x), (min(voxels_per_step, len(x)),), generator=g)
        loss = F.cross_entropy(logits(x[i]), y[i])
        if rep_x is not None:
            rows = rep_x[torch.randint(len(rep_x), (min(voxels_per_step, len(rep_x)),), generator=g)]
            loss = loss + job.replay_weight * _soft_cross_entropy(logits(rows), F.linear(rows, weight0, bias0))
        loss.backward()
        optimiser.step()
        losses.append(round(float(loss.detach()), 5))
    decoder.eval()
    return {"trained": "classifier", "steps": job.epochs, "voxels_per_step": voxels_per_step,
            "replay_target": "predictions before fine-tuning", "loss_first": losses[0], "loss_last": losses[-1]}


@torch.no_grad()
def _pooled(mpae, features: dict) -> dict:
    """Each present plane's SAP vector (the experts' frozen part): plane -> [B, 2C]."""
    mpae.eval()
    return {p: mpae.experts[p].pool(x) for p, x in features.items() if x is not None}


def _fused_logits(mpae, pooled: dict, present: torch.Tensor) -> torch.Tensor:
    """``MPAEHead.forward`` from pooled vectors (the experts' linear layers, then the gate)."""
    return mpae.fuse(mpae.logits_from_pooled(pooled, present), present).logits


def train_diagnosis_linears(mpae, cases, replay, job, progress) -> dict:
    """AdamW on the experts' linear layers and the gate (SAP pooling frozen, pooled once); each step:
    every draw of the corrected cases (uncorrected findings unknown) + 8 random replay cases, whose
    target is the heads' probabilities before fine-tuning (distillation, as for segmentation)."""
    from tqdm import tqdm

    from ..heads.fit import masked_bce

    parts = []
    for c in cases:
        k = next(iter(c.features.values())).shape[0]
        present = torch.tensor([[p in c.features for p in PLANES]] * k)
        parts.append((_pooled(mpae, c.features), present, torch.as_tensor(c.finding_labels)[None].expand(k, -1)))
    rep = None
    if replay is not None and job.replay > 0:  # target: the probabilities before fine-tuning
        n = min(job.replay, len(replay))
        present = replay.present[:n]
        pooled = _pooled(mpae, {p: (x[:n] if x is not None else None) for p, x in replay.features.items()})
        with torch.no_grad():
            rep = (pooled, present, torch.sigmoid(_fused_logits(mpae, pooled, present)))
    params = [q for p in PLANES for q in mpae.experts[p].classifier.parameters()] + list(mpae.gate.parameters())
    optimiser = torch.optim.AdamW(params, lr=job.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(job.seed + 1)
    losses = []
    mpae.train()
    for _ in tqdm(range(job.epochs), desc="finetune diagnosis", unit="step", disable=not progress):
        optimiser.zero_grad()
        loss = sum(masked_bce(_fused_logits(mpae, pooled, present), y) for pooled, present, y in parts)
        if rep is not None:
            i = torch.randperm(len(rep[1]), generator=g)[:8]
            loss = loss + job.replay_weight * masked_bce(_fused_logits(mpae, {p: v[i] for p, v in rep[0].items()},
                                                                       rep[1][i]), rep[2][i])
        loss.backward()
        optimiser.step()
        losses.append(round(float(loss.detach()), 5))
    mpae.eval()
    return {"trained": "expert linears + gate", "steps": job.epochs, "loss_first": losses[0],
            "loss_last": losses[-1]}


def finding_probabilities(heads: dict, mpae, case: CorrectedCase) -> np.ndarray:
    """Mean over noise draws of the finding probabilities, as predict computes them (``mpae``: the
    heads' own or the fine-tuned copy)."""
    from ..heads.inference import diagnose

    return diagnose({**heads, "mpae": mpae}, case.features, case.ehr).probabilities
