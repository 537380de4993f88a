"""Fitting heads on in-memory cached features (CPU, seconds). No file IO: callers persist the
results through ``store.save_head_set``.

Labels are float [N, K] with 1 positive, 0 negative and NaN unknown (unknown entries are left out
of the loss, so partially labelled cases still help).
"""

from __future__ import annotations

import copy
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .diagnosis import MPAEHead, PlaneExpert
from .ehr import EHRFusionHead, encode_ehr, fit_ehr_spec
from .planes import PLANES, plane_presence
from .segmentation import PartialLabelSegLoss, SegmentationDecoder
from .stratify import stratified_kfold, stratified_split


@dataclass
class FitConfig:
    lr: float = 3e-3
    weight_decay: float = 1e-2
    max_epochs: int = 200
    patience: int = 15  # epochs without validation improvement before stopping
    batch_size: int = 64
    val_fraction: float = 0.2
    seed: int = 0


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    known = ~torch.isnan(labels)
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], labels[known])


def validation_split(labels: np.ndarray, cfg, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices (``cfg.val_fraction``, ``cfg.seed``); none when there are too few examples."""
    n = len(labels)
    if n < 10 or cfg.val_fraction <= 0:
        return np.arange(n), np.arange(0)
    val, train = stratified_split(labels, cfg.val_fraction, cfg.seed, groups)
    return train, val


def train_module(module: nn.Module, loss_on: Callable[[np.ndarray], torch.Tensor], train_idx: np.ndarray,
                 val_idx: np.ndarray, cfg: FitConfig, parameters=None,
                 on_epoch: Callable[[int, float], None] | None = None) -> dict:
    """AdamW on minibatches of ``train_idx``; early stopping on the loss over ``val_idx`` (training
    loss when there is no validation set). Restores the best weights. Returns a history dict.
    ``on_epoch(epoch, monitored loss)`` is called after each epoch (progress bars)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    optimiser = torch.optim.AdamW(parameters if parameters is not None else module.parameters(),
                                  lr=cfg.lr, weight_decay=cfg.weight_decay)
    monitor = val_idx if len(val_idx) else train_idx
    best, best_state, best_epoch, epoch = float("inf"), copy.deepcopy(module.state_dict()), -1, -1
    for epoch in range(cfg.max_epochs):
        module.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator).numpy()]
        for start in range(0, len(order), cfg.batch_size):
            optimiser.zero_grad()
            loss_on(order[start:start + cfg.batch_size]).backward()
            optimiser.step()
        module.eval()
        with torch.no_grad():
            current = float(loss_on(monitor))
        if on_epoch is not None:
            on_epoch(epoch, current)
        if current < best - 1e-6:
            best, best_epoch, best_state = current, epoch, copy.deepcopy(module.state_dict())
        elif epoch - best_epoch >= cfg.patience:
            break
    module.load_state_dict(best_state)
    module.eval()
    return {"best_epoch": best_epoch, "best_loss": best, "epochs": epoch + 1}


def _labels_tensor(labels) -> torch.Tensor:
    return torch.as_tensor(np.asarray(labels, dtype=np.float32))


def fit_plane_expert(features: torch.Tensor, labels, cfg: FitConfig | None = None, num_heads: int | None = None,
                     groups=None) -> tuple[PlaneExpert, dict]:
    """One plane's expert (SAP -> Linear) on features [N, C, d, h, w] and labels [N, K]."""
    cfg = cfg or FitConfig()
    torch.manual_seed(cfg.seed)
    y = _labels_tensor(labels)
    expert = PlaneExpert(features.shape[1], y.shape[1], num_heads)
    train, val = validation_split(y.numpy(), cfg, groups)
    history = train_module(expert, lambda idx: masked_bce(expert(features[idx]), y[idx]), train, val, cfg)
    return expert, history


@torch.no_grad()
def _predict(module: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    module.eval()
    return torch.cat([module(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else x.new_zeros(0)


# Expert fits of one fit_mpae call, handed to forked workers through this module global (fork
# shares the parent's tensors copy-on-write; nothing large is pickled). Empty outside fit_mpae.
_EXPERT_DATA: dict = {}


def _one_thread():
    torch.set_num_threads(1)


def _fit_expert_task(task) -> tuple[dict, dict, torch.Tensor | None]:
    """(plane, train indices, indices to predict or None) -> (state dict, history, logits)."""
    plane, train, predict_on = task
    d = _EXPERT_DATA
    x = d["features"][plane]
    sub_groups = None if d["groups"] is None else d["groups"][train]
    expert, hist = fit_plane_expert(x[train], d["y"][train], d["cfg"], d["num_heads"], sub_groups)
    return expert.state_dict(), hist, (_predict(expert, x[predict_on]) if predict_on is not None else None)


def _fit_experts(tasks: list, features, y, cfg, num_heads, groups, workers: int) -> list:
    """Run independent expert fits, in ``workers`` forked single-thread processes when > 1 (the
    SAP experts are too small to use two threads well, but two processes fit two experts at once)."""
    global _EXPERT_DATA
    _EXPERT_DATA = {"features": features, "y": y, "cfg": cfg, "num_heads": num_heads,
                    "groups": None if groups is None else np.asarray(groups)}
    try:
        if workers > 1 and len(tasks) > 1 and "fork" in mp.get_all_start_methods():
            with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=mp.get_context("fork"),
                                     initializer=_one_thread) as pool:
                return list(pool.map(_fit_expert_task, tasks))
        return [_fit_expert_task(t) for t in tasks]
    finally:
        _EXPERT_DATA = {}


def fit_mpae(features: Mapping[str, torch.Tensor | None], labels, present: torch.Tensor | None = None,
             cfg: FitConfig | None = None, gate_cfg: FitConfig | None = None, n_folds: int = 5,
             gate_mode: str = "shared", stacking: bool = False, num_heads: int | None = None,
             groups: Sequence | None = None, workers: int = 1) -> tuple[MPAEHead, dict]:
    """MPAE as published: (1) per fold, fit each plane's expert on the other folds and collect its
    out-of-fold logits; (2) fit the gate (and the stacking MLP if on) on those OOF logits;
    (3) refit each expert on all training cases that have the plane. ``groups`` (patient ids) keeps
    a patient's cases in one fold. The expert fits of (1) and (3) are independent and run in
    ``workers`` processes (same results as one: each fit seeds itself). Returns (head, report with
    oof_expert_logits [N, K, 3], oof_logits [N, K] (gate applied to OOF experts), folds, histories)."""
    cfg = cfg or FitConfig()
    gate_cfg = gate_cfg or FitConfig(lr=1e-2, weight_decay=1e-4, max_epochs=300, patience=30, batch_size=512,
                                     seed=cfg.seed)
    y = _labels_tensor(labels)
    mask = plane_presence(features, present)
    n, k = y.shape
    folds = stratified_kfold(y.numpy(), n_folds, cfg.seed, groups)
    channels = {p: x.shape[1] for p, x in features.items() if x is not None}
    tasks, slots = [], []  # slots: ("fold", fold, plane index, test indices) or ("refit", plane)
    for f in range(n_folds):
        held_out = folds == f
        for i, plane in enumerate(PLANES):
            if features.get(plane) is None:
                continue
            has = mask[:, i].numpy()
            train, test = np.flatnonzero(~held_out & has), np.flatnonzero(held_out & has)
            if len(train) and len(test):
                tasks.append((plane, train, test))
                slots.append(("fold", f, i, test))
    for i, plane in enumerate(PLANES):
        if features.get(plane) is not None:
            tasks.append((plane, np.flatnonzero(mask[:, i].numpy()), None))
            slots.append(("refit", plane))
    results = _fit_experts(tasks, features, y, cfg, num_heads, groups, workers)

    oof = torch.zeros(n, k, len(PLANES))
    histories: dict = {"folds": [], "experts": {}}
    refits = {}
    for slot, (state, hist, logits) in zip(slots, results):
        if slot[0] == "fold":
            _, f, i, test = slot
            oof[test, :, i] = logits
            histories["folds"].append({"fold": f, "plane": PLANES[i], **hist})
        else:
            refits[slot[1]] = state
            histories["experts"][slot[1]] = hist

    torch.manual_seed(gate_cfg.seed)  # the gate's initialisation must not depend on where the experts ran
    default_c = next(iter(channels.values()))
    head = MPAEHead([channels.get(p, default_c) for p in PLANES], k, num_heads=num_heads, gate_mode=gate_mode,
                    stacking=stacking)
    fusion_params = list(head.gate.parameters()) + (list(head.stacking.parameters()) if head.stacking else [])
    g_train, g_val = validation_split(y.numpy(), gate_cfg, groups)
    histories["gate"] = train_module(head, lambda idx: masked_bce(head.fuse(oof[idx], mask[idx]).logits, y[idx]),
                                     g_train, g_val, gate_cfg, parameters=fusion_params)
    with torch.no_grad():
        oof_fused = head.fuse(oof, mask).logits
    for plane, state in refits.items():
        head.experts[plane].load_state_dict(state)
    head.eval()
    return head, {"oof_expert_logits": oof, "oof_logits": oof_fused, "folds": folds, "present": mask,
                  "histories": histories}


def fit_ehr_fusion(mri_logits: torch.Tensor, records: Sequence[Mapping], labels, cfg: FitConfig | None = None,
                   spec: dict | None = None, hidden: int = 64, dropout: float = 0.1,
                   alpha_lr_scale: float = 5.0) -> tuple[EHRFusionHead, dict]:
    """EHR branch + per-label α on fixed MRI logits [N, K]. Pass out-of-fold MRI logits (e.g.
    ``fit_mpae(...)[1]["oof_logits"]``): in-sample logits look too good and α would ignore EHR."""
    cfg = cfg or FitConfig(lr=1e-2)
    torch.manual_seed(cfg.seed)
    y = _labels_tensor(labels)
    spec = spec or fit_ehr_spec(records)
    head = EHRFusionHead(spec, y.shape[1], hidden=hidden, dropout=dropout)
    batch = encode_ehr(records, spec)
    z = mri_logits.detach().float()
    train, val = validation_split(y.numpy(), cfg)

    def loss_on(idx):
        return masked_bce(head(z[idx], {key: v[idx] for key, v in batch.items()}), y[idx])

    # α is a per-label mixing weight, not a feature weight: no decay toward 0.5, and a faster rate
    # because its gradient is one scalar per label against a whole branch on the other side.
    branch = [p for name, p in head.named_parameters() if name != "alpha_logit"]
    groups = [{"params": branch}, {"params": [head.alpha_logit], "weight_decay": 0.0, "lr": cfg.lr * alpha_lr_scale}]
    history = train_module(head, loss_on, train, val, cfg, parameters=groups)
    history["alpha"] = head.alpha.detach().tolist()
    return head, history


def fit_segmentation(features: torch.Tensor, targets: torch.Tensor, n_classes: int, annotated: torch.Tensor | None = None,
                     taps: Mapping[str, torch.Tensor] | None = None, cfg: FitConfig | None = None,
                     min_channels: int = 16, ce_weight: float = 0.2,
                     ignore_index: int = -1) -> tuple[SegmentationDecoder, dict]:
    """Decoder from one plane's features [N, C, d, h, w] to label maps [N, D, H, W] with the
    partial-label loss (``annotated`` bool [N, n_classes]; None = everything annotated).
    ``taps`` (name -> [N, C_t, ...]) builds the multi-scale variant."""
    cfg = cfg or FitConfig(lr=3e-3, batch_size=4, max_epochs=100, patience=15)
    torch.manual_seed(cfg.seed)
    targets = torch.as_tensor(targets).long()
    n = len(features)
    if annotated is None:
        annotated = torch.ones(n, n_classes, dtype=torch.bool)
    tap_specs = {name: {"channels": t.shape[1], "shape": list(t.shape[2:])} for name, t in (taps or {}).items()}
    decoder = SegmentationDecoder(features.shape[1], n_classes, list(features.shape[2:]), list(targets.shape[1:]),
                                  min_channels=min_channels, taps=tap_specs or None)
    loss = PartialLabelSegLoss(ce_weight, ignore_index)
    presence = annotated[:, 1:].float().numpy()  # stratify on which structures are annotated/present
    train, val = validation_split(presence, cfg)

    def loss_on(idx):
        sub_taps = {name: t[idx] for name, t in (taps or {}).items()}
        return loss(decoder(features[idx], sub_taps), targets[idx], annotated[idx])

    return decoder, train_module(decoder, loss_on, train, val, cfg)
