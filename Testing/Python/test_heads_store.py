"""Versioned head-set store: round trip, rebuild from manifest, rollback, checksum, concurrency."""

import json
import multiprocessing as mp

import pytest
import torch

from OrthoDiffusionLib.errors import CheckpointError, UserError
from OrthoDiffusionLib.heads import PLANES, EHRFusionHead, HeadStore, MPAEHead, SegmentationDecoder, fit_ehr_spec
from OrthoDiffusionLib.heads import load_head_set, save_head_set


pytestmark = pytest.mark.usefixtures("one_thread")

FEATURE_SPEC = {p: {"timestep": 100, "block": "mid_2", "channels": 16, "shape": [1, 4, 4]} for p in PLANES}


def _manifest(**extra):
    return {"label_set": "knee-8", "task": "diagnosis", "feature_spec": FEATURE_SPEC,
            "data_summary": {"cases": 10}, "metrics": {"macro_auroc": 0.5}, **extra}


def _heads(seed):
    torch.manual_seed(seed)
    spec = fit_ehr_spec([{"age": 20, "event": "sport"}, {"age": 60, "event": "fall"}])
    return {"mpae": MPAEHead(16, 8, num_heads=4, gate_mode="label").eval(),
            "ehr": EHRFusionHead(spec, 8).eval(),
            "seg": SegmentationDecoder(16, 3, [1, 4, 4], [2, 8, 8], min_channels=4).eval()}


def _outputs(heads):
    g = torch.Generator().manual_seed(123)
    feats = {p: torch.randn(2, 16, 1, 4, 4, generator=g) for p in PLANES}
    with torch.no_grad():
        mpae = heads["mpae"](feats)
        ehr = heads["ehr"](mpae.logits, [{"age": 33, "sex": "M", "event": "fall"}, {}])
        seg = heads["seg"](feats["sagittal"])
    return [mpae.logits, mpae.plane_weights, ehr, seg]


def _assert_same(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_round_trip_rebuilds_from_manifest_with_identical_outputs(tmp_path):
    heads = _heads(0)
    version = save_head_set(tmp_path, heads, _manifest())
    loaded, manifest = load_head_set(tmp_path)
    assert version == manifest["version"] == "v0001"
    assert manifest["label_set"] == "knee-8" and manifest["feature_spec"] == FEATURE_SPEC
    assert manifest["heads"]["mpae"]["type"] == "mpae" and manifest["parent"] is None
    assert len(manifest["weights_sha256"]) == 64 and manifest["created"]
    _assert_same(_outputs(loaded), _outputs(heads))
    states, _ = load_head_set(tmp_path, build=False)
    assert set(states) == {"mpae", "ehr", "seg"} and "alpha_logit" in states["ehr"]


def test_versions_are_immutable_and_rollback_restores_outputs(tmp_path):
    store = HeadStore(tmp_path)
    first, second = _heads(0), _heads(1)
    v1 = store.save(first, _manifest())
    before = (tmp_path / "versions" / v1 / "weights.safetensors").read_bytes()
    v2 = store.save(second, _manifest(), parent=v1)
    assert store.list_versions() == [v1, v2] and store.current() == v2
    assert store.manifest(v2)["parent"] == v1
    assert (tmp_path / "versions" / v1 / "weights.safetensors").read_bytes() == before
    _assert_same(_outputs(store.load()[0]), _outputs(second))
    store.rollback(v1)
    assert store.current() == v1 and store.list_versions() == [v1, v2]
    _assert_same(_outputs(store.load()[0]), _outputs(first))
    _assert_same(_outputs(store.load(v2)[0]), _outputs(second))
    with pytest.raises(UserError):
        store.rollback("v0009")


def test_sha256_mismatch_is_refused(tmp_path):
    version = save_head_set(tmp_path, _heads(0), _manifest())
    weights = tmp_path / "versions" / version / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_head_set(tmp_path)
    with pytest.raises(CheckpointError):
        HeadStore(tmp_path).rollback(version)


def test_manifest_is_validated(tmp_path):
    with pytest.raises(UserError, match="label_set"):
        save_head_set(tmp_path, _heads(0), {"task": "diagnosis"})
    with pytest.raises(UserError, match="label set"):
        save_head_set(tmp_path, _heads(0), _manifest(label_set="elbow-3"))
    with pytest.raises(UserError, match="parent"):
        save_head_set(tmp_path, _heads(0), _manifest(), parent="v0042")
    with pytest.raises(UserError, match="no current version"):
        load_head_set(tmp_path)
    assert HeadStore(tmp_path).list_versions() == []


def _small_heads(seed):
    torch.manual_seed(seed)
    return {"mpae": MPAEHead(16, 8, num_heads=4).eval()}


def _save_in_child(store_dir, seed, barrier, queue):
    heads = _small_heads(seed)
    barrier.wait(timeout=60)  # both writers reach the store at the same moment
    queue.put(save_head_set(store_dir, heads, _manifest(metrics={"seed": seed})))


def test_concurrent_writers_get_distinct_valid_versions(tmp_path):
    ctx = mp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_save_in_child, args=(str(tmp_path), seed, barrier, queue)) for seed in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    versions = sorted(queue.get(timeout=5) for _ in procs)
    store = HeadStore(tmp_path)
    assert versions == store.list_versions() == ["v0001", "v0002"]
    seeds = set()
    for v in versions:
        heads, manifest = store.load(v)
        seeds.add(manifest["metrics"]["seed"])
        expected = _small_heads(manifest["metrics"]["seed"])["mpae"]
        feats = {p: torch.randn(2, 16, 1, 4, 4, generator=torch.Generator().manual_seed(5)) for p in PLANES}
        with torch.no_grad():
            torch.testing.assert_close(heads["mpae"](feats).logits, expected(feats).logits, rtol=0, atol=0)
    assert seeds == {0, 1}
    assert json.loads((tmp_path / "current.json").read_text())["version"] in versions
    assert not [p for p in (tmp_path / "versions").iterdir() if p.name.startswith(".")]
