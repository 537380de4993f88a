"""Features are reproducible (seeded noise), cached by content, and the early exit is exact."""

import multiprocessing as mp

import numpy as np
import pytest
import torch

from OrthoDiffusionLib.backbone import DiffusionUNet, UNetConfig
from OrthoDiffusionLib.features import FeatureCache, FeatureExtractor, FeatureSpec, noise_seed

CFG = UNetConfig(image_size=32, depth_size=8, num_channels=16, channel_mult=(1, 2, 2), attention_resolutions=(8,),
                 norm_groups=8)


def _model(seed=0):
    torch.manual_seed(seed)
    m = DiffusionUNet(CFG)
    for p in m.parameters():  # fresh U-Nets output zeros; random weights make every path matter
        torch.nn.init.normal_(p, 0, 0.05)
    return m.eval()


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    return (rng.random((8, 32, 32), dtype=np.float32) * 2 - 1)


SPEC = FeatureSpec(timesteps=(50, 100, 200), blocks=("mid_0", "mid_2", "in_4"), seed=0)


def test_identical_across_runs_and_models(volume):
    a = FeatureExtractor(_model()).extract(volume, "case-a", "sagittal", SPEC)
    b = FeatureExtractor(_model()).extract(volume, "case-a", "sagittal", SPEC)
    assert a.keys() == b.keys() and len(a) == 9
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert a[(100, "mid_2")].shape == (1, 32, 2, 8, 8)


def test_seed_case_and_plane_change_noise(volume):
    fe = FeatureExtractor(_model())
    base = fe.extract(volume, "case-a", "sagittal", SPEC)[(100, "mid_2")]
    for kwargs in ({"case_hash": "case-b", "plane": "sagittal", "spec": SPEC},
                   {"case_hash": "case-a", "plane": "coronal", "spec": SPEC},
                   {"case_hash": "case-a", "plane": "sagittal", "spec": FeatureSpec(SPEC.timesteps, SPEC.blocks, seed=1)}):
        other = fe.extract(volume, **kwargs)[(100, "mid_2")]
        assert not torch.allclose(base, other)
    assert noise_seed("a", "sagittal", 0, 0) != noise_seed("a", "sagittal", 0, 1)


def test_cache_hit_equals_miss(volume, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    fe = FeatureExtractor(_model(), cache=cache, backbone_sha256="sha-x")
    miss = fe.extract(volume, "case-a", "axial", SPEC)
    assert cache.misses > 0 and cache.hits == 0
    n_files = len(list((tmp_path / "cache").rglob("*.safetensors")))
    assert n_files == 9
    fresh_model_extractor = FeatureExtractor(_model(seed=123), cache=cache, backbone_sha256="sha-x")
    hit = fresh_model_extractor.extract(volume, "case-a", "axial", SPEC)  # served from the cache only
    assert cache.hits == 9
    for k in miss:
        assert torch.equal(miss[k], hit[k])
    # another backbone checksum is another key: recomputed, not served stale
    other = FeatureExtractor(_model(seed=123), cache=cache, backbone_sha256="sha-y").extract(volume, "case-a", "axial", SPEC)
    assert not torch.equal(other[(100, "mid_2")], miss[(100, "mid_2")])


def test_damaged_cache_entry_is_recomputed(volume, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    fe = FeatureExtractor(_model(), cache=cache)
    spec = FeatureSpec((100,), ("mid_2",))
    first = fe.extract(volume, "c", "sagittal", spec)
    (entry,) = list((tmp_path / "cache").rglob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:20])
    again = fe.extract(volume, "c", "sagittal", spec)
    assert torch.equal(first[(100, "mid_2")], again[(100, "mid_2")])


def test_k_draws_give_spread(volume):
    fe = FeatureExtractor(_model())
    out = fe.extract(volume, "case-a", "sagittal", FeatureSpec((100,), ("mid_2",), n_draws=3))
    f = out[(100, "mid_2")]
    assert f.shape[0] == 3 and f.std(0).mean() > 0
    single = fe.extract(volume, "case-a", "sagittal", FeatureSpec((100,), ("mid_2",), n_draws=1))
    torch.testing.assert_close(f[0], single[(100, "mid_2")][0], atol=1e-5, rtol=0)  # draw 0 = the single draw


def test_unknown_block_and_bad_shape(volume):
    fe = FeatureExtractor(_model())
    with pytest.raises(ValueError, match="unknown block 'mid_5'"):
        fe.extract(volume, "c", "sagittal", FeatureSpec((100,), ("mid_5",)))
    with pytest.raises(ValueError, match="divisible by 4"):
        fe.extract(volume[:, :30, :30], "c", "sagittal", FeatureSpec((100,), ("mid_2",)))


def _worker(args):
    root, volume = args
    torch.set_num_threads(1)
    fe = FeatureExtractor(_model(), cache=FeatureCache(root), backbone_sha256="s")
    out = fe.extract(volume, "shared-case", "sagittal", SPEC)
    return {f"{t}/{b}": v.numpy() for (t, b), v in out.items()}


def test_two_processes_write_same_cache(volume, tmp_path):
    root = tmp_path / "cache"
    with mp.get_context("spawn").Pool(2) as pool:
        a, b = pool.map(_worker, [(root, volume), (root, volume)])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    reread = FeatureExtractor(_model(seed=5), cache=FeatureCache(root), backbone_sha256="s").extract(
        volume, "shared-case", "sagittal", SPEC)
    for (t, blk), v in reread.items():
        np.testing.assert_array_equal(v.numpy(), a[f"{t}/{blk}"])
    assert not list(root.rglob("*.tmp*"))


def test_partially_cached_request_equals_uncached(volume, tmp_path):
    """Another process cached part of a request: the values must not change (batch-invariance)."""
    cache = FeatureCache(tmp_path / "cache")
    FeatureExtractor(_model(), cache=cache, backbone_sha256="s").extract(
        volume, "case-p", "sagittal", FeatureSpec((50,), SPEC.blocks))
    partial = FeatureExtractor(_model(), cache=cache, backbone_sha256="s").extract(volume, "case-p", "sagittal", SPEC)
    uncached = FeatureExtractor(_model()).extract(volume, "case-p", "sagittal", SPEC)
    for k in uncached:
        assert torch.equal(partial[k], uncached[k]), k
