"""The pretraining objective's options: the learning-rate schedule (warm-up, constant or cosine) and
min-SNR-γ loss weighting (Hang et al. 2023), checked against the formulas written out here, and in
a real training run (weighted loss ≤ uniform loss on the same batch; held-out loss unweighted)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from OrthoDiffusionLib.backbone.schedule import CosineSchedule, cosine_betas
from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.training import TrainConfig, load_config, run_pretraining
from OrthoDiffusionLib.training.objective import diffusion_loss, lr_at, min_snr_weights


def _cfg(out, **kw):
    base = dict(plane="sagittal", out=str(out), steps=4, batch_size=8, lr=2e-3, warmup_steps=0, ema_decay=0.9,
                ema_start=0, seed=3, device="cpu", ckpt_every=0, eval_every=0, n_samples=0, progress=False,
                heldout=0, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _vols(n=4, shape=(8, 16, 16), seed=0):
    rng = np.random.default_rng(seed)
    return [np.tanh(rng.normal(0, 1, shape)).astype(np.float32) for _ in range(n)]


def test_learning_rate_warmup_constant_and_cosine():
    const = TrainConfig(plane="axial", lr=1e-3, warmup_steps=10, steps=110)
    assert lr_at(const, 5) == pytest.approx(5e-4) and lr_at(const, 10) == pytest.approx(1e-3)
    assert lr_at(const, 60) == lr_at(const, 110) == 1e-3
    cos = TrainConfig(plane="axial", lr=1e-3, warmup_steps=10, steps=110, lr_schedule="cosine", lr_min_ratio=0.1)
    assert lr_at(cos, 5) == pytest.approx(5e-4)  # the warm-up is the same
    assert lr_at(cos, 10) == pytest.approx(1e-3)
    assert lr_at(cos, 60) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half way: cos(π/2) = 0
    assert lr_at(cos, 110) == pytest.approx(1e-4)
    assert lr_at(cos, 500) == pytest.approx(1e-4)  # past --steps (a longer resume): stays at the floor
    lrs = [lr_at(cos, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_min_snr_weights_match_the_formula():
    sched = CosineSchedule(1000)
    abar = np.cumprod(1.0 - cosine_betas(1000))  # independent of the schedule's float32 buffers
    t = torch.arange(1000)
    w = min_snr_weights(sched, t, gamma=5.0).numpy()
    snr = abar / (1 - abar)
    expected = np.minimum(snr, 5.0) / snr
    np.testing.assert_allclose(w, expected, rtol=1e-5)
    assert w[999] == pytest.approx(1.0) and w[0] < 1e-3  # noise-free end down-weighted, noisy end kept
    assert np.all(np.diff(w) >= -1e-7) and np.all((w > 0) & (w <= 1))
    # the boundary: weight 1 exactly where SNR <= γ
    assert np.all(w[snr <= 5.0] == pytest.approx(1.0))
    assert 0.15 < np.mean(snr > 5.0) < 0.35  # about a quarter of the uniform t are down-weighted


def test_weighted_loss_is_the_weighted_per_sample_mse():
    sched = CosineSchedule(1000)
    g = torch.Generator().manual_seed(0)
    eps, noise = torch.randn(3, 1, 2, 4, 4, generator=g), torch.randn(3, 1, 2, 4, 4, generator=g)
    t = torch.tensor([0, 300, 999])
    per = ((eps - noise) ** 2).mean(dim=(1, 2, 3, 4))
    abar = np.cumprod(1.0 - cosine_betas(1000))[t.numpy()]
    w = torch.tensor([min(s, 5.0) / s for s in abar / (1 - abar)], dtype=torch.float32)
    got = diffusion_loss(eps, noise, t, sched, "min-snr", 5.0)
    assert float(got) == pytest.approx(float((w * per).mean()), rel=1e-5)
    assert torch.equal(diffusion_loss(eps, noise, t, sched, "uniform"), torch.nn.functional.mse_loss(eps, noise))


def test_min_snr_and_cosine_in_a_training_run(tmp_path):
    model_cfg, _ = load_config("tiny")
    vols = _vols()
    uniform = run_pretraining(_cfg(tmp_path / "u", eval_every=4), model_cfg, volumes=vols)
    weighted = run_pretraining(_cfg(tmp_path / "w", loss_weighting="min-snr", eval_every=4), model_cfg, volumes=vols)
    # same seed: the same first batch (x0, t, ε) and the same initial weights, so only the weights differ
    assert weighted["losses"][0] < uniform["losses"][0]
    assert all(math.isfinite(v) for v in weighted["losses"])
    cos = run_pretraining(_cfg(tmp_path / "c", lr_schedule="cosine", lr_min_ratio=0.0), model_cfg, volumes=vols)
    lrs = [float(r.split(",")[2]) for r in (tmp_path / "c" / "log.csv").read_text().splitlines()[1:]]
    # no warm-up: step s of 4 sits at progress s/4 of the half cosine, the last one at the floor (0 here)
    assert lrs == pytest.approx([2e-3 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in (1, 2, 3, 4)], rel=1e-5)
    assert cos["losses"][0] == uniform["losses"][0]  # step 1's loss comes before its update


def test_bad_objective_options_are_one_line_errors(tmp_path):
    model_cfg, _ = load_config("tiny")
    for kw, msg in ((dict(loss_weighting="snr"), "--loss-weighting"), (dict(lr_schedule="linear"), "--lr-schedule"),
                    (dict(loss_weighting="min-snr", min_snr_gamma=0), "--min-snr-gamma"),
                    (dict(max_wall_s=0), "--max-wall-s"), (dict(lr_min_ratio=2), "--lr-min-ratio")):
        with pytest.raises(InputError, match=msg):
            run_pretraining(_cfg(tmp_path / "x", **kw), model_cfg, volumes=_vols())
    assert not (tmp_path / "x").exists()  # refused before the output folder is claimed
