"""Crop training: random crops of the training volumes (and of volumes preprocessed larger than the
model input), the held-out loss still on the whole input, exact resume with every new option on,
the wall-time budget, channels-last, and the command-line options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.training import TrainConfig, load_config, run_pretraining
from OrthoDiffusionLib.training.data import RandomCrop


def _vols(n=4, shape=(8, 16, 16), seed=0):
    rng = np.random.default_rng(seed)
    return [np.tanh(rng.normal(0, 1, shape)).astype(np.float32) for _ in range(n)]


def _cfg(out, **kw):
    base = dict(plane="sagittal", out=str(out), steps=4, batch_size=4, lr=2e-3, warmup_steps=0, ema_decay=0.9,
                ema_start=0, seed=3, device="cpu", ckpt_every=0, eval_every=0, n_samples=0, progress=False,
                heldout=1, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_random_crop_is_a_window_of_the_volume_with_fixed_draws():
    x = torch.arange(8 * 16 * 16, dtype=torch.float32).reshape(8, 16, 16)
    crop = RandomCrop((4, 8, 8))
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(40):
        before = g.get_state()
        c = crop(x, g)
        assert c.shape == (4, 8, 8)
        d, h, w = (int(v) for v in np.unravel_index(int(c[0, 0, 0]), x.shape))
        assert torch.equal(c, x[d:d + 4, h:h + 8, w:w + 8])  # a contiguous window, nothing resampled
        starts.add((d, h, w))
        replay = torch.Generator()
        replay.set_state(before)
        torch.rand(3, generator=replay, dtype=torch.float64)
        assert torch.equal(replay.get_state(), g.get_state())  # exactly three draws per crop
    assert len(starts) > 20 and max(s[0] for s in starts) == 4 and max(s[2] for s in starts) == 8
    full = RandomCrop((8, 16, 16))(x, g)
    assert torch.equal(full, x)  # a crop the size of the volume is the volume


def test_crop_training_heldout_on_the_whole_input(tmp_path):
    model_cfg, _ = load_config("tiny")  # input 8x16x16, downsampling by 2
    s = run_pretraining(_cfg(tmp_path / "a", crop=(8, 8, 8), eval_every=2, batch_size=8), model_cfg, volumes=_vols())
    assert len(s["losses"]) == 4 and all(np.isfinite(s["losses"]))
    plain = run_pretraining(_cfg(tmp_path / "b", eval_every=2, batch_size=8), model_cfg, volumes=_vols())
    assert s["losses"] != plain["losses"]
    manifest = json.loads((tmp_path / "a" / "backbone" / "sagittal.json").read_text())
    assert manifest["provenance"]["train_config"]["crop"] == [8, 8, 8]
    heldout = [r.split(",")[4] for r in (tmp_path / "a" / "log.csv").read_text().splitlines()[1:]]
    assert heldout[1] and heldout[3] and not heldout[0]
    # lr 0 keeps the weights, so the held-out losses can only agree if both runs measure them on the
    # same whole (uncropped) volumes at the same t and noise
    frozen = [run_pretraining(_cfg(tmp_path / name, lr=0.0, eval_every=2, **kw), model_cfg, volumes=_vols())
              for name, kw in (("c", {"crop": (8, 8, 8)}), ("d", {}))]
    logs = [(tmp_path / n / "log.csv").read_text().splitlines()[2].split(",")[4] for n in ("c", "d")]
    assert logs[0] == logs[1] and frozen[0]["losses"] != frozen[1]["losses"]


def test_crops_of_larger_volumes(tmp_path):
    model_cfg, _ = load_config("tiny")
    big = _vols(shape=(8, 32, 32))
    s = run_pretraining(_cfg(tmp_path / "a", crop=(8, 16, 16), volume_size=(8, 32, 32), eval_every=4),
                        model_cfg, volumes=big)
    assert np.isfinite(s["losses"]).all() and (tmp_path / "a" / "backbone" / "sagittal.safetensors").is_file()
    with pytest.raises(InputError, match="volumes must have shape"):
        run_pretraining(_cfg(tmp_path / "b", crop=(8, 16, 16), volume_size=(8, 32, 32)), model_cfg, volumes=_vols())
    bad = ((dict(crop=(8, 7, 8)), "divisible"), (dict(crop=(8, 32, 32)), "larger than the volumes"),
           (dict(volume_size=(8, 32, 32)), "give --crop too"), (dict(crop=(8, 8)), "three positive"))
    for kw, msg in bad:
        with pytest.raises(InputError, match=msg):
            run_pretraining(_cfg(tmp_path / "c", **kw), model_cfg, volumes=_vols())


def test_resume_is_exact_with_crops_min_snr_and_cosine(tmp_path):
    model_cfg, _ = load_config("tiny")
    vols = _vols(5)
    opts = dict(crop=(8, 8, 8), loss_weighting="min-snr", lr_schedule="cosine", warmup_steps=2, steps=6,
                ckpt_every=3, keep_checkpoints=0)
    full = run_pretraining(_cfg(tmp_path / "full", **opts), model_cfg, volumes=vols)
    resumed = run_pretraining(_cfg(tmp_path / "part", resume=str(tmp_path / "full" / "checkpoints" / "step_000003"),
                                   **opts), model_cfg, volumes=vols)
    assert resumed["start_step"] == 3 and resumed["losses"] == full["losses"][3:]  # exact float equality
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "checkpoints" / "step_000006" / "ema.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoints" / "step_000006" / "ema.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_wall_time_budget_stops_with_checkpoint_and_export(tmp_path):
    model_cfg, _ = load_config("tiny")
    s = run_pretraining(_cfg(tmp_path, steps=500, max_wall_s=1e-6, ckpt_every=100, eval_every=100), model_cfg,
                        volumes=_vols())
    assert s["end_step"] == 1 and s["stopped_by"] == "max_wall_s" and len(s["losses"]) == 1
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000001"
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[4]  # the held-out loss at the step it stopped
    assert json.loads((tmp_path / "backbone" / "sagittal.json").read_text())["provenance"]["steps"] == 1
    again = run_pretraining(_cfg(tmp_path, steps=3, resume="auto"), model_cfg, volumes=_vols())
    assert again["start_step"] == 1 and again["end_step"] == 3 and again["stopped_by"] == "steps"


def test_channels_last_trains_the_same_model(tmp_path):
    model_cfg, _ = load_config("tiny")
    a = run_pretraining(_cfg(tmp_path / "a", steps=3), model_cfg, volumes=_vols())["losses"]
    b = run_pretraining(_cfg(tmp_path / "b", steps=3, channels_last=True), model_cfg, volumes=_vols())["losses"]
    np.testing.assert_allclose(a, b, rtol=1e-4)  # another memory layout, the same arithmetic up to rounding


def test_cli_crop_options(tmp_path, capsys):
    (tmp_path / "vols").mkdir()
    for i, v in enumerate(_vols(3, shape=(16, 16, 6))):  # (z, y, x) with x the thick L-R axis
        img = sitk.GetImageFromArray(v)
        img.SetSpacing((3.5, 0.6, 0.6))
        sitk.WriteImage(img, str(tmp_path / "vols" / f"v{i}.nii.gz"))
    base = ["pretrain", "--plane", "sagittal", "--data", str(tmp_path / "vols"), "--config", "tiny", "--out",
            str(tmp_path / "run"), "--steps", "2", "--eval-every", "0", "--n-samples", "0", "--device", "cpu",
            "--threads", "1", "--no-progress"]
    assert main(base + ["--crop", "8x8x8", "--volume-size", "8,16,16", "--loss-weighting", "min-snr",
                        "--min-snr-gamma", "4", "--lr-schedule", "cosine", "--max-wall-s", "600"]) == 0
    out = capsys.readouterr()
    assert "random crops (8, 8, 8)" in out.err and "steps 0→2 in" in out.out
    tc = json.loads((tmp_path / "run" / "backbone" / "sagittal.json").read_text())["provenance"]["train_config"]
    assert (tc["crop"], tc["volume_size"], tc["loss_weighting"], tc["min_snr_gamma"], tc["lr_schedule"]) == \
        ([8, 8, 8], [8, 16, 16], "min-snr", 4.0, "cosine")
    with pytest.raises(SystemExit):
        main(base + ["--crop", "8,8"])
    assert "D,H,W" in capsys.readouterr().err


def test_knee_demo_crops_preset_is_knee_demo_with_crops():
    from OrthoDiffusionLib.training import train_config_from

    crops_model, crops_train = load_config("knee-demo-crops")
    demo_model, _ = load_config("knee-demo")
    assert crops_model.to_dict() == demo_model.to_dict()  # so --init from the knee-demo backbones works
    cfg = train_config_from(crops_train, plane="axial", batch_size=None)
    assert cfg.crop == (16, 32, 32) and cfg.batch_size == 8 and cfg.loss_weighting == "uniform"
    assert train_config_from({"crop": [16, 32, 32]}, plane="axial").crop == (16, 32, 32)  # JSON lists → tuples
