"""Published-container checks (precise rejections), our safetensors format, and conversion."""

import pickle

import pytest
import torch

from OrthoDiffusionLib.backbone import DiffusionUNet, UNetConfig
from OrthoDiffusionLib.backbone.checkpoints import convert, load_backbone, load_official, save_backbone
from OrthoDiffusionLib.errors import CheckpointError

TINY = UNetConfig(image_size=64, depth_size=4, num_channels=32, channel_mult=(1, 2), attention_resolutions=(32,))


@pytest.fixture()
def container(reference_dir):
    return torch.load(reference_dir / "official_tiny_checkpoint.pt", weights_only=True, map_location="cpu")


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_missing_key_rejected(container, tmp_path):
    del container["ema"]["denoise_fn.middle_block.1.qkv.weight"]
    p = _save(container, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: middle_block\.1\.qkv\.weight"):
        load_official(p, config=TINY)


def test_extra_key_rejected(container, tmp_path):
    container["ema"]["denoise_fn.middle_block.9.weight"] = torch.zeros(3)
    p = _save(container, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys: middle_block\.9\.weight"):
        load_official(p, config=TINY)


def test_wrong_shape_rejected(container, tmp_path):
    container["ema"]["denoise_fn.out.2.weight"] = torch.zeros(1, 32, 3, 3, 1)
    p = _save(container, tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: out\.2\.weight: checkpoint \(1, 32, 3, 3, 1\) vs model \(1, 32, 3, 3, 3\)"):
        load_official(p, config=TINY)


class _NotATensor:
    """A plain pickled object: weights_only loading must refuse to construct it."""

    def __init__(self):
        self.payload = [1, 2, 3]


def test_pickled_non_tensor_object_rejected(container, tmp_path):
    container["ema"]["denoise_fn.out.2.bias"] = _NotATensor()
    p = _save(container, tmp_path / "o.pt")
    with pytest.raises(CheckpointError, match="refused to load: the file contains pickled objects that are not plain tensors"):
        load_official(p, config=TINY)


def test_non_tensor_value_named(container, tmp_path):
    container["ema"]["denoise_fn.out.2.bias"] = "not a tensor"
    p = _save(container, tmp_path / "str.pt")
    with pytest.raises(CheckpointError, match=r"entries that are not tensors: denoise_fn\.out\.2\.bias \(str\)"):
        load_official(p, config=TINY)


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_malicious_pickle_refused_and_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"step": 0, "model": {}, "ema": {"x": _RunsCode()}, "opt": {}}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_backbone(p)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_ddp_prefix_accepted(container, tmp_path):
    container["ema"] = {k.replace("denoise_fn.", "denoise_fn.module.", 1): v for k, v in container["ema"].items()}
    model, info = load_official(_save(container, tmp_path / "ddp.pt"), config=TINY)
    assert info["which"] == "ema"


def test_missing_container_part(tmp_path):
    p = _save({"step": 1, "model": {}}, tmp_path / "noema.pt")
    with pytest.raises(CheckpointError, match=r"no 'ema' weights in the checkpoint"):
        load_official(p, config=TINY)


def test_convert_roundtrip_is_lossless(reference_dir, tmp_path):
    src = reference_dir / "official_tiny_checkpoint.pt"
    st = convert(src, tmp_path / "tiny.safetensors")
    assert (tmp_path / "tiny.json").is_file()
    back = convert(st, tmp_path / "tiny_back.pt")
    a, _ = load_official(src)
    b, _ = load_official(back)
    c, manifest = load_backbone(st)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]) and torch.equal(v, c.state_dict()[k]), k
    assert manifest["provenance"]["converted_from"] == src.name
    ck = torch.load(back, weights_only=True)
    assert set(ck) == {"step", "model", "ema", "opt"}
    assert all(k.startswith("denoise_fn.") or k in {"betas"} or not k.startswith("denoise") for k in ck["ema"])


def test_flipped_byte_in_safetensors_refused(tmp_path):
    torch.manual_seed(0)
    model = DiffusionUNet(TINY)
    path = save_backbone(model, tmp_path / "b.safetensors")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the manifest"):
        load_backbone(path)
