"""Replay sample inside a head version: written by ``fit_heads``, recorded with its sha256 in the
manifest, checked by ``HeadStore.verify``; extra files in the store are never optional once listed."""

import numpy as np
import pytest
import torch

from OrthoDiffusionLib.errors import CheckpointError
from OrthoDiffusionLib.heads import HeadStore, SegmentationDecoder
from OrthoDiffusionLib.heads.replay import REPLAY_FILE, choose_replay_cases, load_replay

pytestmark = pytest.mark.usefixtures("one_thread")


def test_store_extra_files_are_verified(tmp_path):
    store = HeadStore(tmp_path / "store")
    seg = SegmentationDecoder(4, 3, [1, 2, 2], [2, 4, 4], min_channels=4)
    v1 = store.save({"seg_sagittal": seg}, {"label_set": "knee-8", "task": "segmentation"},
                    files={"extra.safetensors": {"x": torch.arange(6.0)}})
    path = store.extra_file("extra.safetensors")
    assert path.parent.name == v1 and store.manifest()["files"]["extra.safetensors"]["bytes"] == path.stat().st_size
    v2 = store.save({"seg_sagittal": seg}, {"label_set": "knee-8", "task": "segmentation"}, parent=v1)
    assert store.extra_file("extra.safetensors", v2) is None and "files" not in store.manifest(v2)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b" ")
    with pytest.raises(CheckpointError, match="sha256"):
        store.load(v1)
    path.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        store.verify(v1)


def test_choose_replay_cases_is_deterministic_and_capped():
    rng = np.random.default_rng(0)
    y = (rng.random((100, 8)) < 0.3).astype(np.float32)
    has = rng.random(100) < 0.5
    a = choose_replay_cases(y, has, 48, seed=3)
    assert len(a) == 48 and len(set(a)) == 48 and np.array_equal(a, choose_replay_cases(y, has, 48, seed=3))
    assert not np.array_equal(a, choose_replay_cases(y, has, 48, seed=4))
    assert np.array_equal(choose_replay_cases(y[:10], has[:10], 48, seed=0), np.arange(10))


def test_fit_heads_writes_replay_sample(tmp_path, monkeypatch):
    from OrthoDiffusionLib.io.manifest import read_manifest
    from OrthoDiffusionLib.features import FeatureCache
    from OrthoDiffusionLib.models.catalogue import get_model
    from OrthoDiffusionLib.features.cohort import extract_cohort
    from OrthoDiffusionLib.models.loading import load_backbones
    from OrthoDiffusionLib.jobs import FitJob
    from OrthoDiffusionLib.adapt.fit import fit_heads
    from standins import make_standin_model, make_toy_cohort

    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(tmp_path / "home"))
    model = make_standin_model(tmp_path / "model")
    manifest = make_toy_cohort(tmp_path / "cohort", n=8)
    job = FitJob(manifest=str(manifest), model=str(model), task="all", folds=2, max_epochs=2, seg_epochs=1,
                 device="cpu", out=str(model / "heads"), cache=str(tmp_path / "cache"), replay=4)
    res = fit_heads(job, log=lambda m: None, progress=False)
    store = HeadStore(model / "heads")
    man = store.verify(res["version"])
    assert man["replay"] == {"file": REPLAY_FILE, "cases": 4, "seed": 0, "seg_plane": "sagittal"}
    assert len(man["files"][REPLAY_FILE]["sha256"]) == 64
    replay = load_replay(store.extra_file(REPLAY_FILE), "sagittal")
    assert len(replay) == 4 and replay.present.shape == (4, 3) and replay.labels.shape == (4, 8)

    # the stored features and targets are the training cases' own (fp16 features)
    rows = [r for r in read_manifest(manifest).rows if r.split in (None, "train")]
    spec = get_model(str(model))
    tr = extract_cohort(rows, spec, load_backbones(spec), "cpu", FeatureCache(tmp_path / "cache"), "sagittal", 0, False)
    hits = [i for i in range(len(rows)) if any(torch.equal(tr.features["sagittal"][i].half().float(), f)
                                               for f in replay.features["sagittal"])]
    assert len(hits) == 4
    assert torch.equal(replay.seg_targets, tr.seg_targets[hits])
    assert replay.seg_targets.shape[1:] == tr.seg_targets.shape[1:] and int(replay.seg_targets.max()) == 3
    assert replay.annotated.shape == (4, 12) and bool(replay.annotated[:, 0].all())
    # no replay asked: no file, no record
    res0 = fit_heads(FitJob(**{**job.to_dict(), "replay": 0}), log=lambda m: None, progress=False)
    assert "files" not in store.manifest(res0["version"]) and "replay" not in store.manifest(res0["version"])


def test_marginal_cross_entropy_matches_the_partial_label_loss():
    from torch.nn import functional as F

    from OrthoDiffusionLib.heads import PartialLabelSegLoss
    from OrthoDiffusionLib.heads.segmentation import marginal_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, 6, 6, generator=g)
    target = torch.randint(0, 5, (3, 4, 6, 6), generator=g)
    target[0, 0] = -1
    annotated = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1], [1, 0, 0, 1, 1]], dtype=torch.bool)
    want = PartialLabelSegLoss().components(logits, target, annotated)["ce"]
    torch.testing.assert_close(marginal_cross_entropy(logits, target, annotated), want)
    full = torch.ones_like(annotated)
    torch.testing.assert_close(marginal_cross_entropy(logits, target, full),
                               PartialLabelSegLoss().components(logits, target, full)["ce"])
    torch.testing.assert_close(marginal_cross_entropy(logits, target), F.cross_entropy(logits, target, ignore_index=-1))
    # per-voxel rows (what fine-tuning feeds the 1×1×1 classifier) give the same value
    rows = logits.movedim(1, -1).reshape(-1, 5)
    ann_rows = annotated[:, None, :].expand(-1, 4 * 6 * 6, -1).reshape(-1, 5)
    torch.testing.assert_close(marginal_cross_entropy(rows, target.reshape(-1), ann_rows), want)


def test_replay_dice_follows_the_one_dice_rule():
    """The replay Dice is evaluation's label_dice (the fit's rule): checked against a direct count
    (unlabelled voxels left out, a structure scored only in the cases whose map has it)."""
    import numpy as np
    from torch import nn

    from OrthoDiffusionLib.adapt.output_layers import replay_dice
    from OrthoDiffusionLib.evaluation.segmentation import label_dice
    from OrthoDiffusionLib.labelsets import load_label_set

    structures = load_label_set("knee-11")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 12, 4, 8, 8, generator=g) * 3
    targets = torch.randint(-1, 12, (5, 4, 8, 8), generator=g)
    targets[2][targets[2] == 7] = 0  # structure 7 missing from one case: that case does not score it
    head = nn.Module()
    head.classifier, head.out_shape = nn.Identity(), [4, 8, 8]  # logits in, logits out
    pred, t = logits.argmax(1).numpy(), targets.numpy()
    per = []
    for v in structures.values:
        scores = [2 * ((p == v) & (y == v)).sum() / (((p == v) & (y >= 0)).sum() + (y == v).sum())
                  for p, y in zip(pred, t) if (y == v).any()]
        if scores:
            per.append(np.mean(scores))
    assert replay_dice(head, logits, targets, structures) == pytest.approx(float(np.mean(per)), abs=1e-12)
    either = label_dice(pred[2], t[2], [7], ["s7"], count="either")
    assert either["dice"]["s7"] == 0.0  # predicted, absent from the map: scores 0 under "either"
    assert label_dice(pred[2], t[2], [7], ["s7"])["dice"]["s7"] is None  # ... and is not scored under "target"
