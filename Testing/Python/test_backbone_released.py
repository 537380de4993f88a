"""The released configuration builds with exactly the published keys, shapes and dtypes."""

import json

import torch

from OrthoDiffusionLib.backbone import DiffusionUNet, UNetConfig
from OrthoDiffusionLib.backbone.official import BUFFER_KEYS, diffusion_buffers


def test_released_config_matches_schema(reference_dir):
    schema = json.loads((reference_dir / "official_checkpoint_schema.json").read_text())
    cfg = UNetConfig.from_dict(schema["config"])
    assert cfg == UNetConfig.released()
    with torch.device("meta"):
        model = DiffusionUNet(cfg)
    ours = {f"denoise_fn.{k}": v for k, v in model.state_dict().items()}
    ours.update({k: v for k, v in diffusion_buffers(cfg.timesteps).items()})
    expected = {e["key"]: e for e in schema["state_dict"]}
    assert set(ours) == set(expected)
    for key, entry in expected.items():
        assert list(ours[key].shape) == entry["shape"], key
        assert str(ours[key].dtype).replace("torch.", "") == entry["dtype"], key
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == schema["n_parameters_unet"] == 34_524_545
    assert set(BUFFER_KEYS) <= set(expected)
    assert cfg.input_shape == (1, 16, 256, 256)


def test_released_block_names_and_mid_shape():
    cfg = UNetConfig.released()
    with torch.device("meta"):
        model = DiffusionUNet(cfg)
        _, got = model(torch.zeros(1, 1, 16, 256, 256), torch.tensor([100]), taps=["mid_0", "mid_2", "in_9"])
    assert got["mid_2"].shape == (1, 256, 1, 16, 16)
    assert model.block_names[:2] == ["in_0", "in_1"] and model.block_names[-1] == "final"
    # 5 levels x 1 ResBlock + 4 downsamples + input conv = in_0..in_9; decoder out_0..out_9
    assert "in_9" in model.block_names and "in_10" not in model.block_names
    assert "out_9" in model.block_names and "out_10" not in model.block_names
    assert got["in_9"].shape == (1, 256, 1, 16, 16)
    import pytest

    with pytest.raises(ValueError, match="in_0..in_9, mid_0..mid_2, out_0..out_9"):
        model.block_index("in_14")


def test_inference_conv_takes_onednn_with_stock_values_and_training_keeps_gradients():
    from torch.nn import functional as F

    from OrthoDiffusionLib.backbone.unet import Conv3d

    torch.manual_seed(0)
    # batch 1, N·C·D·H small: the shape for which the stock path is the slow im2col one
    conv = Conv3d(16, 32, 3, padding=1)
    x = torch.randn(1, 16, 8, 32, 32)
    stock = F.conv3d(x, conv.weight, conv.bias, padding=1)
    called = []
    original = torch.mkldnn_convolution
    try:
        torch.mkldnn_convolution = lambda *a: called.append(1) or original(*a)
        with torch.no_grad():
            fast = conv(x)
        assert called, "inference on the CPU should dispatch to oneDNN"
        called.clear()
        # grad enabled: the stock path, and the gradient flows
        out = conv(x.requires_grad_())
        out.sum().backward()
        assert not called and x.grad is not None and conv.weight.grad is not None
    finally:
        torch.mkldnn_convolution = original
    torch.testing.assert_close(fast, stock, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.detach(), stock, rtol=1e-4, atol=1e-5)
    # a single input channel keeps the stock path (oneDNN is slower there)
    one = Conv3d(1, 8, 3, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(one(x[:, :1]), F.conv3d(x[:, :1], one.weight, one.bias, padding=1))
