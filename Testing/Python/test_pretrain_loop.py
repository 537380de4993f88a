"""Pretraining loop: the loss goes down, --resume reproduces an uninterrupted run bitwise, EMA rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from OrthoDiffusionLib.training import EMA, TrainConfig, load_config, run_pretraining


def _volumes(n=2, shape=(8, 16, 16), seed=0):
    """Smooth, structured volumes in [-1, 1] (blobs), easy to overfit."""
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    out = []
    for _ in range(n):
        v = np.zeros(shape)
        for _ in range(3):
            c = rng.uniform(-0.6, 0.6, 3)
            v += np.exp(-((d - c[0]) ** 2 + (h - c[1]) ** 2 + (w - c[2]) ** 2) / 0.08)
        out.append((2 * v / v.max() - 1).astype(np.float32))
    return out


def _cfg(tmp_path, **kw):
    base = dict(plane="sagittal", out=str(tmp_path), steps=6, batch_size=2, lr=2e-3, warmup_steps=0,
                ema_decay=0.9, ema_start=2, seed=3, device="cpu", ckpt_every=0, eval_every=0, n_samples=0,
                progress=False, augment=True, heldout=0, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_decreases_when_overfitting(tmp_path):
    model_cfg, _ = load_config("tiny")
    s = run_pretraining(_cfg(tmp_path, steps=30, lr=5e-3, augment=False, eval_every=30), model_cfg, volumes=_volumes())
    losses = s["losses"]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:5]), losses
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,lr") and len(rows) == 31
    assert rows[-1].split(",")[4]  # held-out (here: train-split) loss at the last step
    manifest = json.loads((tmp_path / "backbone" / "sagittal.json").read_text())
    assert manifest["provenance"]["steps"] == 30 and manifest["provenance"]["seed"] == 3


def test_resume_reproduces_uninterrupted_run_bitwise(tmp_path):
    model_cfg, _ = load_config("tiny")
    vols = _volumes(3)
    full = run_pretraining(_cfg(tmp_path / "full", ckpt_every=3, keep_checkpoints=0), model_cfg, volumes=vols)
    ck = tmp_path / "full" / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step_000006"
    assert (ck / "step_000003" / "state.json").is_file()
    assert not list(ck.glob(".tmp_*"))  # written atomically, nothing half-done left over

    # "interrupted" run: 3 steps, then resume to 6
    part = run_pretraining(_cfg(tmp_path / "part", steps=3, ckpt_every=3), model_cfg, volumes=vols)
    assert part["losses"] == full["losses"][:3]
    resumed = run_pretraining(_cfg(tmp_path / "part", steps=6, ckpt_every=3, resume="auto"), model_cfg, volumes=vols)
    assert resumed["start_step"] == 3
    assert resumed["losses"] == full["losses"][3:]  # exact float equality
    from safetensors.torch import load_file

    a = load_file(str(ck / "step_000006" / "ema.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoints" / "step_000006" / "ema.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_steps = [int(r.split(",")[0]) for r in (tmp_path / "part" / "log.csv").read_text().splitlines()[1:]]
    assert log_steps == [1, 2, 3, 4, 5, 6]


def test_same_seed_same_run_other_seed_differs(tmp_path):
    model_cfg, _ = load_config("tiny")
    vols = _volumes()
    a = run_pretraining(_cfg(tmp_path / "a", steps=3), model_cfg, volumes=vols)["losses"]
    b = run_pretraining(_cfg(tmp_path / "b", steps=3), model_cfg, volumes=vols)["losses"]
    c = run_pretraining(_cfg(tmp_path / "c", steps=3, seed=4), model_cfg, volumes=vols)["losses"]
    assert a == b and a != c


def test_ema_rule_including_start_step():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, decay=0.9, start_step=2)
    history = []
    for step in range(1, 6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        history.append({k: v.clone() for k, v in net.state_dict().items()})
        ema.update(net, step)
    # steps 1-2 copy, steps 3..5: e = 0.9 e + 0.1 w
    for k in history[0]:
        expected = history[1][k].clone()
        for w in history[2:]:
            expected = 0.9 * expected + 0.1 * w[k]
        torch.testing.assert_close(ema.state_dict()[k], expected, rtol=0, atol=1e-6)
    assert all(not p.requires_grad for p in ema.model.parameters())
    with pytest.raises(ValueError):
        EMA(net, decay=1.0)


def test_amp_is_ignored_on_cpu_with_a_message(tmp_path, capsys):
    model_cfg, _ = load_config("tiny")
    s = run_pretraining(_cfg(tmp_path, steps=1, amp="bf16"), model_cfg, volumes=_volumes())
    assert len(s["losses"]) == 1
    assert "ignored on the CPU" in capsys.readouterr().err


def test_cli_pretrain_with_resume_auto_and_no_checkpoint_yet(tmp_path, capsys):
    import SimpleITK as sitk

    from OrthoDiffusionLib.cli.main import main

    (tmp_path / "vols").mkdir()
    for i, v in enumerate(_volumes(2, shape=(16, 16, 6))):  # (z, y, x) with x the thick L-R axis
        img = sitk.GetImageFromArray(v)
        img.SetSpacing((3.5, 0.6, 0.6))
        sitk.WriteImage(img, str(tmp_path / "vols" / f"v{i}.nii.gz"))
    args = ["pretrain", "--plane", "sagittal", "--data", str(tmp_path / "vols"), "--config", "tiny",
            "--out", str(tmp_path / "run"), "--steps", "2", "--ckpt-every", "1", "--eval-every", "0",
            "--n-samples", "0", "--device", "cpu", "--threads", "1", "--no-progress", "--resume"]
    assert main(args) == 0
    assert "starting from step 0" in capsys.readouterr().err
    assert main(args[:args.index("--steps") + 1] + ["3"] + args[args.index("--steps") + 2:]) == 0
    assert "resumed from" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert main(["pretrain", "--plane", "sagittal", "--data", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "x"), "--config", "tiny"]) == 2


def test_gradient_checkpointing_gives_the_same_training(tmp_path):
    model_cfg, _ = load_config("tiny")
    vols = _volumes()
    a = run_pretraining(_cfg(tmp_path / "a", steps=3), model_cfg, volumes=vols)["losses"]
    b = run_pretraining(_cfg(tmp_path / "b", steps=3, grad_checkpointing=True), model_cfg, volumes=vols)["losses"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=0)
