"""Supervised from-scratch baselines on the backbones' own inputs (the preprocessed 2D stacks,
[N, 1, depth, H, W] in [-1, 1]), for label-efficiency comparisons against heads on frozen
backbone features. Networks, norms and Dice come from MONAI; the training loop, early stopping and
splits are the heads' (``heads.fit``), so both arms see the same labelled cases.

- Diagnosis: one MONAI ``ResNet`` per plane (basic blocks, layers [1, 1, 1, 1] = the ResNet-10
  layout, narrowed widths so it trains on a CPU), masked BCE (unknown labels left out), early
  stopping on a stratified internal validation split of the labelled cases. Late fusion over
  planes as for our heads: the MPAE gate (``heads.MPAEGate``) fitted on the CNNs' logits of that
  internal validation split, or the mean of the present planes' logits (``fusion="mean"``).
- Segmentation: a small MONAI ``UNet``; loss = the heads' partial-label loss (marginal CE + MONAI
  masked Dice over annotated classes only), so an unannotated structure (e.g. the fibula of the
  second template) is never pushed to background. MONAI ``DiceCELoss`` itself cannot skip a class
  per case, which is why it is not used directly.

Research use only, not for clinical decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..heads.diagnosis import DiagnosisOutput, MPAEGate
from ..heads.fit import FitConfig, masked_bce, train_module, validation_split
from ..heads.planes import PLANES
from ..heads.segmentation import PartialLabelSegLoss


@dataclass
class BaselineConfig:
    widths: tuple = (16, 32, 64, 128)        # ResNet block_inplanes (ResNet-10 layout)
    unet_channels: tuple = (8, 16, 32, 64)   # UNet encoder channels (strides 2)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_epochs: int = 20
    patience: int = 5
    batch_size: int = 8
    val_fraction: float = 0.2
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def fit_config(self) -> FitConfig:
        return FitConfig(lr=self.lr, weight_decay=self.weight_decay, max_epochs=self.max_epochs,
                         patience=self.patience, batch_size=self.batch_size, val_fraction=self.val_fraction,
                         seed=self.seed)


def build_plane_cnn(n_labels: int, widths=(16, 32, 64, 128)) -> nn.Module:
    """MONAI 3D ResNet (basic blocks, [1, 1, 1, 1]) for 1-channel [depth, H, W] stacks. The stem keeps
    the few slices (kernel 3 × 7 × 7, stride 1 × 2 × 2) because a 2D stack has ~16 slices."""
    from monai.networks.nets import ResNet

    return ResNet("basic", [1, 1, 1, 1], list(widths), spatial_dims=3, n_input_channels=1,
                  conv1_t_size=(3, 7, 7), conv1_t_stride=(1, 2, 2), num_classes=int(n_labels))


def build_seg_unet(n_classes: int, channels=(8, 16, 32, 64)) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=int(n_classes), channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=0, norm="INSTANCE")


@torch.no_grad()
def predict_batched(model: nn.Module, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


class BaselineDiagnosis(nn.Module):
    """Per-plane CNNs + late fusion (MPAE gate or mean over present planes)."""

    def __init__(self, n_labels: int, widths=(16, 32, 64, 128), fusion: str = "gate"):
        super().__init__()
        if fusion not in ("gate", "mean"):
            raise ValueError(f"fusion must be 'gate' or 'mean', got '{fusion}'")
        self.fusion = fusion
        self.cnns = nn.ModuleDict({p: build_plane_cnn(n_labels, widths) for p in PLANES})
        self.gate = MPAEGate(n_labels)
        self.n_labels = int(n_labels)

    @torch.no_grad()
    def expert_logits(self, inputs: Mapping[str, torch.Tensor | None], present: torch.Tensor) -> torch.Tensor:
        n = present.shape[0]
        cols = []
        for i, p in enumerate(PLANES):
            x = inputs.get(p)
            z = torch.zeros(n, self.n_labels) if x is None else predict_batched(self.cnns[p], x)
            cols.append(z * present[:, i:i + 1])
        return torch.stack(cols, dim=-1)

    def fuse(self, expert_logits: torch.Tensor, present: torch.Tensor, fusion: str | None = None) -> DiagnosisOutput:
        if (fusion or self.fusion) == "gate":
            fused, weights = self.gate(expert_logits, present)
        else:
            weights = present[:, None, :].float().expand_as(expert_logits)
            weights = weights / weights.sum(-1, keepdim=True).clamp_min(1)
            fused = (weights * expert_logits).sum(-1)
        return DiagnosisOutput(fused, expert_logits, weights)

    def forward(self, inputs, present, fusion: str | None = None) -> DiagnosisOutput:
        self.eval()
        with torch.no_grad():
            return self.fuse(self.expert_logits(inputs, present), present, fusion)


def fit_baseline_diagnosis(inputs: Mapping[str, torch.Tensor | None], labels, present: torch.Tensor,
                           cfg: BaselineConfig | None = None, groups=None, log=None) -> tuple[BaselineDiagnosis, dict]:
    """Train one CNN per plane on ``inputs[plane]`` [N, 1, D, H, W] (cases where the plane is present),
    labels [N, K] (NaN = unknown), early stopping on a stratified internal validation split; then fit
    the MPAE gate on that split's CNN logits (too few validation cases → gate left at its init and
    ``fusion="mean"``)."""
    cfg = cfg or BaselineConfig()
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    n, k = y.shape
    train, val = validation_split(y.numpy(), cfg, groups)
    torch.manual_seed(cfg.seed)
    model = BaselineDiagnosis(k, cfg.widths)
    report: dict = {"n_train": int(len(train)), "n_val": int(len(val)), "histories": {}}
    fcfg = cfg.fit_config()
    for i, plane in enumerate(PLANES):
        x = inputs.get(plane)
        if x is None:
            continue
        has = present[:, i].numpy()
        tr, va = train[has[train]], val[has[val]]
        cnn = model.cnns[plane]
        torch.manual_seed(cfg.seed + i)
        hist = train_module(cnn, lambda idx, cnn=cnn, x=x: masked_bce(cnn(x[idx]), y[idx]), tr, va, fcfg)
        report["histories"][plane] = hist
        if log:
            log(f"[baseline] {plane} CNN: {hist['epochs']} epochs, best {hist['best_epoch']}, val loss {hist['best_loss']:.4f}")
    if len(val) >= 10:
        z_val = model.expert_logits({p: (x[val] if x is not None else None) for p, x in inputs.items()}, present[val])
        gcfg = FitConfig(lr=1e-2, weight_decay=1e-4, max_epochs=300, patience=30, batch_size=512, seed=cfg.seed)
        idx = np.arange(len(val))
        torch.manual_seed(cfg.seed)
        report["gate"] = train_module(model.gate, lambda j: masked_bce(model.gate(z_val[j], present[val][j])[0], y[val][j]),
                                      idx, np.arange(0), gcfg)
        model.fusion = "gate"
    else:
        model.fusion = "mean"
    report["fusion"] = model.fusion
    model.eval()
    return model, report


def baseline_seg_loss(ce_weight: float = 0.2, ignore_index: int = -1) -> nn.Module:
    """Same partial-label loss as the segmentation head (unannotated classes ignored per case)."""
    return PartialLabelSegLoss(ce_weight, ignore_index)


def fit_baseline_segmentation(images: torch.Tensor, targets: torch.Tensor, n_classes: int,
                              annotated: torch.Tensor | None = None, cfg: BaselineConfig | None = None,
                              ce_weight: float = 0.2) -> tuple[nn.Module, dict]:
    """Small MONAI UNet from images [N, 1, D, H, W] to label maps [N, D, H, W] (-1 = unlabelled),
    ``annotated`` bool [N, n_classes]; early stopping on an internal split stratified on annotation."""
    cfg = cfg or BaselineConfig()
    targets = torch.as_tensor(targets).long()
    n = len(images)
    if annotated is None:
        annotated = torch.ones(n, n_classes, dtype=torch.bool)
    torch.manual_seed(cfg.seed)
    unet = build_seg_unet(n_classes, cfg.unet_channels)
    loss = baseline_seg_loss(ce_weight)
    train, val = validation_split(annotated[:, 1:].float().numpy(), cfg)
    hist = train_module(unet, lambda idx: loss(unet(images[idx]), targets[idx], annotated[idx]), train, val,
                        cfg.fit_config())
    return unet, hist
