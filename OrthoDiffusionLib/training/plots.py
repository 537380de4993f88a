"""Pictures of a pretraining run: the loss curve (``loss.png``) and DDIM samples from the EMA model
next to a real training volume (``samples/step_XXXXXX.png``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..backbone.schedule import CosineSchedule
from .rng import rank_seed
from .runlog import read_log


def save_samples_png(path: Path, model, schedule: CosineSchedule, shape, n: int, steps: int, seed: int,
                     device, real: np.ndarray | None, title: str) -> Path:
    """``n`` DDIM samples from a fixed start noise (comparable across steps), central slice."""
    from ..figures import new_figure, save_figure

    g = torch.Generator(device="cpu").manual_seed(rank_seed(seed, 0, 77))
    noise = torch.randn((n, 1, *shape), generator=g)

    x = schedule.ddim_sample(model, steps=steps, device=device, noise=noise).cpu().numpy()
    cols = n + (1 if real is not None else 0)
    fig = new_figure((2.4 * cols, 3.1))
    axes = [fig.add_subplot(1, cols, i + 1) for i in range(cols)]
    mid = shape[0] // 2
    for i in range(n):
        axes[i].imshow(x[i, 0, mid], cmap="gray", vmin=-1, vmax=1)
        axes[i].set_title(f"sample {i + 1}", fontsize=8)
    if real is not None:
        axes[-1].imshow(real[real.shape[0] // 2], cmap="gray", vmin=-1, vmax=1)
        axes[-1].set_title("training volume", fontsize=8)
    for a in axes:
        a.axis("off")
    save_figure(fig, path, title, dpi=90)
    return path


def plot_loss(log_csv: Path, png: Path, title: str = "") -> Path:
    """Training loss (per step and a running mean) and the held-out loss, log scale."""
    from ..figures import new_figure, save_figure

    rows = read_log(log_csv)
    steps = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    ev = [(int(r["step"]), float(r["heldout_loss"])) for r in rows if r.get("heldout_loss")]
    fig = new_figure((5.5, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    if len(loss):
        ax.plot(steps, loss, color="0.75", lw=0.8, label="train loss (per step)")
        k = max(1, min(25, len(loss) // 10))
        if k > 1:
            sm = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], sm, color="C0", lw=1.5, label=f"train loss ({k}-step mean)")
    if ev:
        split = rows[-1].get("heldout_split") or "held-out"
        ax.plot(*zip(*ev), "o-", color="C3", ms=3, label=f"{split} loss (EMA, fixed t and noise)")
    ax.set_xlabel("step")
    ax.set_ylabel("ε-MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, png, title or "pretraining loss", dpi=100)
    return png
