"""Export to the published {step, model, ema, opt} container and import back: lossless, weights_only."""

from __future__ import annotations

import json

import torch

from OrthoDiffusionLib.backbone import DiffusionUNet
from OrthoDiffusionLib.backbone.checkpoints import load_official, save_backbone
from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.training import load_config


def _model(seed=0):
    cfg, _ = load_config("tiny")
    torch.manual_seed(seed)
    m = DiffusionUNet(cfg)
    with torch.no_grad():  # the zero-initialised convs would make the round trip trivially "lossless"
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return m


def test_export_import_lossless(tmp_path, capsys):
    m = _model()
    src = save_backbone(m, tmp_path / "sagittal.safetensors", provenance={"steps": 42})
    out = tmp_path / "sagittal.pt"
    assert main(["export", "--backbone", str(src), "--out", str(out)]) == 0
    obj = torch.load(out, map_location="cpu", weights_only=True)
    assert set(obj) == {"step", "model", "ema", "opt"} and obj["step"] == 42
    keys = [k for k in obj["ema"] if k.startswith("denoise_fn.")]
    assert len(keys) == len(m.state_dict()) and "betas" in obj["ema"]
    # the container carries no config and GroupNorm groups cannot be read from weight shapes, so a
    # non-published architecture (norm_groups 4 here) is passed explicitly
    back, info = load_official(out, config=m.config, which="ema")
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in back.state_dict().items())
    assert back.config.num_channels == m.config.num_channels and back.config.channel_mult == m.config.channel_mult
    x, t = torch.randn(1, 1, 8, 16, 16), torch.tensor([100])
    with torch.no_grad():
        assert torch.equal(m.eval()(x, t), back(x, t))


def test_export_from_training_checkpoint(tmp_path):
    from OrthoDiffusionLib.training import TrainConfig, run_pretraining

    cfg, _ = load_config("tiny")
    vols = [torch.rand(8, 16, 16).mul(2).sub(1).numpy() for _ in range(2)]
    run_pretraining(TrainConfig(plane="axial", out=str(tmp_path / "run"), steps=2, ckpt_every=2, eval_every=0,
                                n_samples=0, progress=False, device="cpu", threads=1), cfg, volumes=vols)
    ck = tmp_path / "run" / "checkpoints" / "step_000002"
    out = tmp_path / "axial.pt"
    assert main(["export", "--checkpoint", str(ck), "--out", str(out)]) == 0
    from safetensors.torch import load_file

    ema_sd, raw_sd = load_file(str(ck / "ema.safetensors")), load_file(str(ck / "model.safetensors"))
    back_ema, info = load_official(out, config=cfg, which="ema")
    back_raw, _ = load_official(out, config=cfg, which="model")
    assert info["step"] == 2
    assert all(torch.equal(ema_sd[k], v) for k, v in back_ema.state_dict().items())
    assert all(torch.equal(raw_sd[k], v) for k, v in back_raw.state_dict().items())
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == 2 and "files" in state


def test_knee_demo_export_sidecar_round_trip(tmp_path, capsys):
    """The shipped knee-demo backbone (norm_groups 8, 16x64x64) → .pt + .pt.json → back, losslessly;
    without the sidecar the error names it; a stale sidecar is refused."""
    import shutil

    import pytest

    from OrthoDiffusionLib.backbone.checkpoints import load_backbone
    from OrthoDiffusionLib.backbone.official import sidecar_path
    from OrthoDiffusionLib.errors import CheckpointError
    from OrthoDiffusionLib.resources import resource_path

    src = resource_path("Models", "knee-demo", "sagittal.safetensors")
    m, _ = load_backbone(src)
    assert m.config.norm_groups == 8
    out = tmp_path / "sagittal.pt"
    assert main(["export", "--backbone", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sagittal.pt.json" in printed and "norm_groups=8" in printed
    side = json.loads(sidecar_path(out).read_text())
    assert side["config"] == m.config.to_dict() and side["runs_in_reference_code"] is False

    back, info = load_backbone(out)  # no config passed: read from the sidecar
    assert info["config_source"] == "sidecar" and back.config == m.config
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in back.state_dict().items())
    x, t = torch.randn(1, 1, 16, 64, 64), torch.tensor([100])
    with torch.no_grad():
        assert torch.equal(m.eval()(x, t), back(x, t))

    bare = tmp_path / "bare" / "sagittal.pt"
    bare.parent.mkdir()
    shutil.copy(out, bare)
    with pytest.raises(CheckpointError, match=r"config sidecar sagittal\.pt\.json"):
        load_backbone(bare)
    # a sidecar left over from another export does not describe this file
    shutil.copy(sidecar_path(out), sidecar_path(bare))
    torch.save({**torch.load(bare, weights_only=True), "step": 7}, bare)
    with pytest.raises(CheckpointError, match="stale sidecar"):
        load_backbone(bare)
