"""Stage I of the published method (``finetune_classifier.py --finetune_diffusion``): train one
plane's encoder together with a task head, before the heads of the head set are fitted on the
fine-tuned encoder's features.

Only the last ``unfreeze`` blocks up to and including the feature block train
(``backbone.encoder.trainable_blocks``); everything before them, the time embedding and the
decoder stay bit-identical. The input is the feature path's own: the clean volume noised to the
feature timestep with the seeded noise of (case, plane, seed, draw 0), so the fine-tuned encoder
is trained on exactly what predict feeds it. Because that input and the frozen prefix are fixed,
the prefix runs once per case and only the unfrozen blocks run per step (CPU-feasible).
Encoder blocks learn at ``ENCODER_LR_SCALE`` × the head's rate, as the published fine-tune does.
Research use only, not for clinical decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError

ENCODER_LR_SCALE = 0.05          # encoder blocks at 0.05x the head's learning rate (the paper's fine-tune)
PREFIX_BUDGET_BYTES = 4 << 30    # frozen-prefix activations kept in memory for one plane


@dataclass
class EncoderFit:
    plane: str
    blocks: list                 # the blocks that trained (backbone names)
    path: Path                   # encoder file: those blocks' tensors (a delta on the published backbone)
    file_sha256: str
    effective_sha256: str        # id of published backbone + this file (feature-cache keys, provenance)
    history: dict
    decoder: nn.Module | None = None   # segmentation: the decoder trained with the encoder
    rows: list = field(default_factory=list)   # indices of the rows it trained on


class _TailWithHead(nn.Module):
    """The unfrozen blocks (the backbone's own modules, trained in place) followed by a head."""

    def __init__(self, backbone, blocks, emb: torch.Tensor, head: nn.Module):
        from ..backbone.encoder import block_module

        super().__init__()
        self.blocks = nn.ModuleList(block_module(backbone, b) for b in blocks)
        self.head = head
        self.emb = emb  # a plain attribute: the frozen time embedding of the feature timestep

    def features(self, h: torch.Tensor) -> torch.Tensor:
        emb = self.emb.expand(len(h), -1)
        for block in self.blocks:
            h = block(h, emb)
        return h

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(h.to(self.emb.device)))


def _prefix_activations(rows, plane, backbone, fspec, first_block, preprocessing, with_labels, progress):
    """Frozen-prefix activations [N, C, d, h, w] of the rows that have ``plane`` (and, with
    ``with_labels``, a label map of it), their row indices and targets."""
    from tqdm import tqdm

    from ..backbone import CosineSchedule
    from ..backbone.encoder import blocks_before, run_blocks, time_embedding
    from ..features.cohort import network_labels, plane_inputs
    from ..features.extract import noised_input

    schedule = CosineSchedule(backbone.config.timesteps)
    t = fspec.timesteps[0]
    prefix = blocks_before(backbone, first_block)
    acts, index, targets = [], [], []
    with torch.no_grad():
        emb = time_embedding(backbone, t)
        for i, ready in tqdm(plane_inputs(rows, plane, backbone.config, preprocessing), total=len(rows),
                             desc=f"stage I inputs {plane}", unit="case", disable=not progress):
            target = network_labels(rows[i], plane, ready.transform) if with_labels else None
            if with_labels and target is None:
                continue
            x_t = noised_input(ready.array, ready.content_hash, plane, fspec.seed, t, schedule).to(emb.device)
            acts.append(run_blocks(backbone, x_t, emb, prefix)[0].cpu().clone())  # kept on the CPU
            index.append(i)
            targets.append(target)
            if len(acts) == 1 and acts[0].numel() * 4 * len(rows) > PREFIX_BUDGET_BYTES:
                raise UserError(f"Stage I on {plane}: the inputs of the unfrozen blocks need "
                                f"{acts[0].numel() * 4 * len(rows) / 2**30:.1f} GiB for {len(rows)} cases; "
                                f"lower --unfreeze (fewer, deeper blocks)")
    if not acts:
        return None, [], [], emb
    return torch.stack(acts), index, targets, emb


def _train(tail: _TailWithHead, loss_on, train_idx, val_idx, cfg, plane: str, progress: bool) -> dict:
    """AdamW: encoder blocks at ENCODER_LR_SCALE x the head's rate, no weight decay on them
    (pretrained weights are not pulled towards 0). Early stopping and best weights as every head fit."""
    from tqdm import tqdm

    from ..heads.fit import train_module

    groups = [{"params": list(tail.blocks.parameters()), "lr": cfg.lr * ENCODER_LR_SCALE, "weight_decay": 0.0},
              {"params": list(tail.head.parameters())}]
    with tqdm(total=cfg.max_epochs, desc=f"stage I {plane}", unit="epoch", disable=not progress) as bar:
        def on_epoch(epoch, loss):
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

        return train_module(tail, loss_on, np.asarray(train_idx), np.asarray(val_idx), cfg, parameters=groups,
                            on_epoch=on_epoch)


def _frozen_except(backbone, blocks):
    """Only ``blocks`` get gradients; returns a function restoring the previous flags."""
    from ..backbone.encoder import block_module

    before = {n: p.requires_grad for n, p in backbone.named_parameters()}
    backbone.requires_grad_(False)
    for b in blocks:
        block_module(backbone, b).requires_grad_(True)

    def restore():
        for n, p in backbone.named_parameters():
            p.requires_grad_(before[n])
    return restore


def _finish(backbone, base_sha, plane, blocks, tail, history, work_dir, rows) -> EncoderFit:
    from ..backbone.encoder import effective_sha256, save_encoder
    from ..storage import sha256_file

    backbone.eval()
    path = save_encoder(backbone, blocks, Path(work_dir) / f"encoder_{plane}.safetensors", base_sha)
    file_sha = sha256_file(path)
    return EncoderFit(plane, list(blocks), path, file_sha, effective_sha256(base_sha, file_sha), history, rows=rows)


def finetune_diagnosis_encoder(rows, labels, groups, plane, backbone, base_sha, fspec, preprocessing, unfreeze,
                               cfg, work_dir, progress=True) -> EncoderFit | None:
    """Train ``plane``'s encoder with that plane's expert (SAP → Linear) on the rows that have it.
    ``labels`` float [N, K] (NaN unknown); None when no row has the plane."""
    from ..heads.diagnosis import PlaneExpert
    from ..heads.fit import masked_bce, validation_split

    blocks = _blocks(backbone, fspec, unfreeze)
    acts, index, _, emb = _prefix_activations(rows, plane, backbone, fspec, blocks[0], preprocessing, False, progress)
    if acts is None:
        return None
    y = torch.as_tensor(np.asarray(labels, np.float32)[index])
    restore = _frozen_except(backbone, blocks)
    try:
        torch.manual_seed(cfg.seed)
        with torch.no_grad():
            channels = _TailWithHead(backbone, blocks, emb, nn.Identity())(acts[:1]).shape[1]
        tail = _TailWithHead(backbone, blocks, emb, PlaneExpert(channels, y.shape[1]).to(emb.device))
        sub_groups = None if groups is None else [groups[i] for i in index]
        train, val = validation_split(y.numpy(), cfg, sub_groups)
        history = _train(tail, lambda idx: masked_bce(tail(acts[idx]), y[idx].to(emb.device)), train, val, cfg,
                         plane, progress)
    finally:
        restore()
    return _finish(backbone, base_sha, plane, blocks, tail, history, work_dir, index)


def finetune_segmentation_encoder(rows, annotated, plane, backbone, base_sha, fspec, preprocessing, unfreeze,
                                  n_classes, cfg, work_dir, progress=True) -> EncoderFit:
    """Train ``plane``'s encoder + bottleneck blocks with a new segmentation decoder (partial-label
    loss; ``annotated`` bool [N, n_classes]) on the rows that have a label map of ``plane``."""
    from ..heads.fit import validation_split
    from ..heads.segmentation import PartialLabelSegLoss, SegmentationDecoder

    blocks = _blocks(backbone, fspec, unfreeze)
    acts, index, targets, emb = _prefix_activations(rows, plane, backbone, fspec, blocks[0], preprocessing, True,
                                                    progress)
    if acts is None:
        raise UserError(f"no labels_{plane} label maps among the training rows (Stage I segmentation)")
    targets = torch.stack(targets)
    mask = annotated[index]
    restore = _frozen_except(backbone, blocks)
    try:
        torch.manual_seed(cfg.seed)
        with torch.no_grad():
            shape = _TailWithHead(backbone, blocks, emb, nn.Identity())(acts[:1]).shape
        decoder = SegmentationDecoder(shape[1], n_classes, list(shape[2:]), list(targets.shape[1:]), min_channels=16)
        tail = _TailWithHead(backbone, blocks, emb, decoder.to(emb.device))
        loss = PartialLabelSegLoss(0.2, -1)
        train, val = validation_split(mask[:, 1:].float().numpy(), cfg)
        dev = emb.device
        history = _train(tail, lambda idx: loss(tail(acts[idx]), targets[idx].to(dev), mask[idx].to(dev)), train, val,
                         cfg, plane, progress)
    finally:
        restore()
    fit = _finish(backbone, base_sha, plane, blocks, tail, history, work_dir, index)
    fit.decoder = decoder.cpu().eval()  # heads run on the CPU (cached features)
    return fit


def _blocks(backbone, fspec, unfreeze: int) -> list:
    from ..backbone.encoder import trainable_blocks

    try:
        return trainable_blocks(backbone, fspec.blocks[0], unfreeze)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def run_stage1(job, spec, rows, labels, annotated, n_classes, backbones, published, work_dir, log,
               progress=True) -> list:
    """Stage I for a fit job: every plane's encoder with its expert (``--task diagnosis``) or the
    segmentation plane's encoder with the decoder (``--task segmentation``). ``backbones``: plane
    -> (model, sha256), trained in place; ``published``: plane -> the published backbone's sha256."""
    from ..heads.fit import FitConfig

    planes = list(backbones) if job.task == "diagnosis" else [job.seg_plane]
    fits = []
    for plane in planes:
        if plane not in backbones:
            raise UserError(f"model '{spec.id}' has no {plane} backbone to fine-tune")
        model = backbones[plane][0]
        if published[plane] != backbones[plane][1]:
            raise ValueError(f"Stage I starts from the published {plane} backbone, not a fine-tuned one")
        fspec = spec.feature_spec(plane, n_draws=1, seed=job.seed)
        if job.task == "diagnosis":
            cfg = FitConfig(lr=3e-3, batch_size=8, max_epochs=job.finetune_epochs, patience=5, seed=job.seed)
            groups = [r.patient_id for r in rows]
            fit = finetune_diagnosis_encoder(rows, labels, groups, plane, model, published[plane], fspec,
                                             spec.preprocessing, job.unfreeze, cfg, work_dir, progress)
        else:
            cfg = FitConfig(lr=3e-3, batch_size=4, max_epochs=job.finetune_epochs, patience=10, seed=job.seed)
            fit = finetune_segmentation_encoder(rows, annotated, plane, model, published[plane], fspec,
                                                spec.preprocessing, job.unfreeze, n_classes, cfg, work_dir, progress)
        if fit is None:
            log(f"[stage I] {plane}: no training case has this plane; its encoder stays the published one")
            continue
        log(f"[stage I] {plane}: blocks {', '.join(fit.blocks)} trained with the {job.task} head on "
            f"{len(fit.rows)} cases, {fit.history['epochs']} epoch(s) (best {fit.history['best_epoch']})")
        fits.append(fit)
    return fits


def encoder_record(fit: EncoderFit, job, base_sha: str) -> dict:
    """The head manifest's ``encoders[plane]`` entry (the file itself goes into ``files``)."""
    return {"file": fit.path.name, "base_sha256": base_sha, "blocks": fit.blocks, "unfreeze": job.unfreeze,
            "trained_with": job.task, "effective_sha256": fit.effective_sha256, "n_cases": len(fit.rows),
            "encoder_lr_scale": ENCODER_LR_SCALE, "history": fit.history}
