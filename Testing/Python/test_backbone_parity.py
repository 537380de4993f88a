"""The backbone reproduces the reference implementation block by block, from the published
container format, with the architecture taken from the fixture's JSON (not from constants)."""

import json

import numpy as np
import pytest
import torch

from OrthoDiffusionLib.backbone import CosineSchedule, UNetConfig
from OrthoDiffusionLib.backbone.checkpoints import load_official
from OrthoDiffusionLib.backbone.official import diffusion_buffers, load_official_state_dict


@pytest.fixture(scope="module")
def fixture(reference_dir):
    meta = json.loads((reference_dir / "official_tiny_parity.json").read_text())
    io = np.load(reference_dir / "official_tiny_parity_io.npz")
    shape = meta["input_shape"]
    config = UNetConfig.from_dict({**meta["config"], "depth_size": shape[2], "in_channels": shape[1]})
    model, info = load_official(reference_dir / "official_tiny_checkpoint.pt", config=config)
    return meta, io, model, info


def test_every_block_matches_reference(fixture):
    meta, io, model, _ = fixture
    assert sorted(meta["blocks"]) == sorted(b for b in model.block_names if b in meta["blocks"])
    schedule = CosineSchedule()
    x0, noise = torch.from_numpy(io["x_start"]), torch.from_numpy(io["noise"])
    checked = 0
    for t in meta["timesteps_probed"]:
        tt = torch.tensor([t])
        x_noisy = schedule.q_sample(x0, tt, noise)
        ref_noisy = torch.from_numpy(io[f"t{t}/x_noisy"])
        assert (x_noisy - ref_noisy).abs().max().item() <= 1e-4
        with torch.no_grad():
            final, blocks = model(x_noisy, tt, taps=meta["blocks"])
        for name in meta["blocks"]:
            ref = torch.from_numpy(io[f"t{t}/{name}"])
            assert blocks[name].shape == ref.shape, name
            err = (blocks[name] - ref).abs().max().item()
            assert err <= 1e-4, f"t={t} {name}: max abs error {err}"
            checked += 1
        assert torch.equal(final, blocks["final"])
    assert checked == len(meta["timesteps_probed"]) * len(meta["blocks"])


def test_inferred_config_matches_fixture(fixture, reference_dir):
    meta, _, _, _ = fixture
    from OrthoDiffusionLib.backbone.official import infer_config

    unet, _, _ = load_official_state_dict(reference_dir / "official_tiny_checkpoint.pt")
    cfg = infer_config(unet, image_size=meta["config"]["image_size"])
    assert cfg.num_channels == meta["config"]["num_channels"]
    assert ",".join(map(str, cfg.channel_mult)) == meta["config"]["channel_mult"]
    assert cfg.attention_resolutions == (int(meta["config"]["attention_resolutions"]),)


def test_early_exit_equals_full_pass(fixture):
    _, io, model, _ = fixture
    x, t = torch.from_numpy(io["t100/x_noisy"]), torch.tensor([100])
    with torch.no_grad():
        _, full = model(x, t, taps=["mid_2"], stop_after="final")
        none, early = model(x, t, taps=["mid_2"])
    assert none is None  # stopped before the decoder
    assert torch.equal(full["mid_2"], early["mid_2"])


def test_diffusion_buffers_match_checkpoint(reference_dir):
    ck = torch.load(reference_dir / "official_tiny_checkpoint.pt", weights_only=True, map_location="cpu")
    ours = diffusion_buffers()
    for key, value in ours.items():
        ref = ck["ema"][key]
        rel = ((value - ref).abs() / ref.abs().clamp_min(1e-6)).max().item()
        assert rel < 1e-4, key
