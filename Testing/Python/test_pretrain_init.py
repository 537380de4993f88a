"""Continued pretraining (`pretrain --init BACKBONE`): training starts from the given weights, the
provenance records them, and another architecture is refused with one clear message."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from OrthoDiffusionLib.backbone import DiffusionUNet
from OrthoDiffusionLib.backbone.checkpoints import load_backbone
from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.storage import sha256_file
from OrthoDiffusionLib.training import TrainConfig, load_config, run_pretraining


def _vols(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (8, 16, 16)).astype(np.float32) for _ in range(n)]


def _cfg(out, **kw):
    base = dict(plane="coronal", out=str(out), steps=3, batch_size=2, lr=1e-3, warmup_steps=0, ema_decay=0.9,
                ema_start=0, seed=5, device="cpu", ckpt_every=0, eval_every=0, n_samples=0, progress=False,
                heldout=0, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_init_continues_from_the_given_backbone(tmp_path):
    model_cfg, _ = load_config("tiny")
    vols = _vols()
    stage1 = run_pretraining(_cfg(tmp_path / "s1", steps=4), model_cfg, volumes=vols)
    init = tmp_path / "s1" / "backbone" / "coronal.safetensors"
    # lr 0: the weights cannot move, so the continued model must stay exactly the initial one
    frozen = run_pretraining(_cfg(tmp_path / "s2", lr=0.0, init=str(init)), model_cfg, volumes=vols)
    a, _ = load_backbone(init)
    b, info = load_backbone(frozen["backbone"])
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    rec = info["provenance"]["init"]
    assert rec["sha256"] == sha256_file(init) and rec["steps"] == stage1["end_step"] == 4
    assert info["provenance"]["steps"] == 3  # steps of this stage, counted from the initial weights
    # same data stream and seed, random init vs the stage-1 weights: the first losses differ
    scratch = run_pretraining(_cfg(tmp_path / "s3"), model_cfg, volumes=vols)["losses"]
    cont = run_pretraining(_cfg(tmp_path / "s4", init=str(init)), model_cfg, volumes=vols)["losses"]
    assert cont[0] != scratch[0]


def test_init_refuses_another_architecture_and_missing_file(tmp_path, capsys):
    from OrthoDiffusionLib.backbone.checkpoints import save_backbone

    tiny, _ = load_config("tiny")
    other = DiffusionUNet(load_config("knee-demo")[0])
    path = save_backbone(other, tmp_path / "other.safetensors")
    with pytest.raises(InputError, match="another architecture"):
        run_pretraining(_cfg(tmp_path / "x", init=str(path)), tiny, volumes=_vols())
    rc = main(["pretrain", "--plane", "sagittal", "--data", str(tmp_path), "--config", "tiny", "--out",
               str(tmp_path / "y"), "--init", str(tmp_path / "nope.safetensors"), "--steps", "1"])
    assert rc != 0 and "--init: backbone not found" in capsys.readouterr().err
    assert not (tmp_path / "y" / "backbone").exists()
