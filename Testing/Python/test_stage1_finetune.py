"""Stage-I fine-tuning of the backbone encoder (``fit --finetune-backbone``) on a stand-in model
(random tiny backbones) and a toy cohort, real files throughout: only the unfrozen blocks change;
the encoder file is part of the head version (sha256, round trip, rollback); cache keys name the
encoder that made the features; predict and the corrections fine-tune run on such a head set."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from OrthoDiffusionLib.adapt.fit import fit_heads
from OrthoDiffusionLib.jobs import FitJob, PredictJob
from OrthoDiffusionLib.planes import PLANES
from standins import make_standin_model, make_toy_cohort

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(model, manifest, **kw):
    job = FitJob(manifest=str(manifest), model=str(model), folds=2, max_epochs=4, seg_epochs=2, device="cpu",
                 replay=4, threads=1, **kw)
    return fit_heads(job, log=lambda m: None, progress=False)


def _predict(root, case_dir, out, **kw):
    from OrthoDiffusionLib.inference.predict import predict_study

    job = PredictJob(planes={p: str(case_dir / f"{p}.nii.gz") for p in PLANES}, out=str(out), model=str(root / "model"),
                     device="cpu", draws=1, reformat=False, case_id="T000", **kw)
    predict_study(job, log=lambda m: None)
    labels = (out / "labels.nrrd").read_bytes()
    findings = json.loads((out / "findings.json").read_text())
    return types.SimpleNamespace(labels=labels, findings=findings,
                                 probs=[(f["key"], f["probability"], f["decision"]) for f in findings["findings"]])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """v0001: frozen heads (task all); a prediction with them; v0002: Stage I for diagnosis."""
    root = tmp_path_factory.mktemp("stage1")
    mp = pytest.MonkeyPatch()
    mp.setenv("ORTHODIFFUSION_HOME", str(root / "home"))
    mp.setenv("ORTHODIFFUSION_CACHE", str(root / "cache"))
    model = make_standin_model(root / "model")
    manifest = make_toy_cohort(root / "cohort", n=8)
    frozen = _fit(model, manifest, task="all")
    before = _predict(root, root / "cohort" / "cases" / "T000", root / "pred_v1")
    tuned = _fit(model, manifest, task="diagnosis", finetune_backbone=True, unfreeze=2, finetune_epochs=3)
    yield types.SimpleNamespace(root=root, model=model, manifest=manifest, frozen=frozen, tuned=tuned, before=before,
                                case=root / "cohort" / "cases" / "T000")
    mp.undo()


def _store(fitted):
    from OrthoDiffusionLib.heads import HeadStore
    from OrthoDiffusionLib.models.catalogue import get_model

    return HeadStore(get_model(str(fitted.model)).heads_for_write())


def test_trainable_blocks_encoder_files_and_job_rules(tmp_path):
    from OrthoDiffusionLib.backbone import DiffusionUNet, UNetConfig
    from OrthoDiffusionLib.backbone.encoder import trainable_blocks
    from OrthoDiffusionLib.errors import UserError
    from OrthoDiffusionLib.training.presets import PRESETS

    net = DiffusionUNet(UNetConfig(**PRESETS["tiny"]["model"]))
    assert trainable_blocks(net, "mid_2", 1) == ["mid_2"]
    assert trainable_blocks(net, "mid_2", 4) == [f"in_{len(net.input_blocks) - 1}", "mid_0", "mid_1", "mid_2"]
    assert trainable_blocks(net, "in_2", 2) == ["in_1", "in_2"]
    with pytest.raises(ValueError, match="decoder"):
        trainable_blocks(net, "out_0", 1)
    with pytest.raises(ValueError, match="--unfreeze"):
        trainable_blocks(net, "in_1", 3)
    # an encoder file applies only to the backbone it was fine-tuned from, and names its blocks
    from OrthoDiffusionLib.backbone.encoder import apply_encoder, effective_sha256, save_encoder
    from OrthoDiffusionLib.errors import CheckpointError

    path = save_encoder(net, ["mid_1", "mid_2"], tmp_path / "encoder_sagittal.safetensors", "a" * 64)
    other = DiffusionUNet(UNetConfig(**PRESETS["tiny"]["model"]))
    with pytest.raises(CheckpointError, match="another backbone"):
        apply_encoder(other, path, "b" * 64)
    assert apply_encoder(other, path, "a" * 64) == ["mid_1", "mid_2"]
    assert torch.equal(other.middle_block[2].out_layers[3].weight, net.middle_block[2].out_layers[3].weight)
    assert not torch.equal(other.middle_block[0].in_layers[2].weight, net.middle_block[0].in_layers[2].weight)
    assert effective_sha256("a" * 64, "c" * 64) != effective_sha256("a" * 64, "d" * 64)
    with pytest.raises(UserError, match="--task diagnosis or --task segmentation"):
        FitJob(manifest="m.csv", task="all", finetune_backbone=True).validate()
    with pytest.raises(UserError, match="--unfreeze"):
        FitJob(manifest="m.csv", task="diagnosis", finetune_backbone=True, unfreeze=0).validate()


def test_finetuning_changes_only_the_unfrozen_blocks(fitted):
    from OrthoDiffusionLib.backbone.encoder import block_state, read_encoder
    from OrthoDiffusionLib.models.catalogue import get_model
    from OrthoDiffusionLib.models.loading import load_backbones, load_model

    spec = get_model(str(fitted.model))
    published = load_backbones(spec)
    tuned = load_model(str(fitted.model), "cpu")
    man = tuned.head_manifest
    assert man["version"] == fitted.tuned["version"] == "v0002" and man["fit_job"]["finetune_backbone"]
    for plane in PLANES:
        record = man["encoders"][plane]
        assert record["blocks"] == ["mid_1", "mid_2"] and record["trained_with"] == "diagnosis"
        base_model, base_sha = published[plane]
        model, sha = tuned.backbones[plane]
        assert record["base_sha256"] == base_sha == man["backbones"][plane] and sha != base_sha
        unfrozen = set(block_state(model, record["blocks"]))
        tensors, meta = read_encoder(_store(fitted).extra_file(record["file"]))
        assert set(tensors) == unfrozen and meta["base_sha256"] == base_sha  # the file holds those blocks only
        base_sd, sd = base_model.state_dict(), model.state_dict()
        changed = {k for k in sd if not torch.equal(sd[k], base_sd[k])}
        assert changed and changed <= unfrozen, sorted(changed - unfrozen)
        for prefix in ("middle_block.1.", "middle_block.2."):  # every unfrozen block moved
            assert any(k.startswith(prefix) for k in changed), prefix
        outside = [k for k in sd if k not in unfrozen]
        assert outside and all(torch.equal(sd[k], base_sd[k]) for k in outside)  # bit-identical


def test_finetuned_head_set_round_trips_and_predicts_identically(fitted):
    from OrthoDiffusionLib.backbone.encoder import effective_sha256
    from OrthoDiffusionLib.models.loading import load_model

    store = _store(fitted)
    man = store.verify("v0002")  # every file, the encoder files included, against its sha256
    for plane in PLANES:
        name = f"encoder_{plane}.safetensors"
        assert man["encoders"][plane]["file"] == name and len(man["files"][name]["sha256"]) == 64
    a, b = load_model(str(fitted.model), "cpu"), load_model(str(fitted.model), "cpu")
    for plane in PLANES:
        sha = effective_sha256(man["backbones"][plane], man["files"][f"encoder_{plane}.safetensors"]["sha256"])
        assert a.backbones[plane][1] == b.backbones[plane][1] == sha == man["encoders"][plane]["effective_sha256"]
        sa, sb = a.backbones[plane][0].state_dict(), b.backbones[plane][0].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the cache holds the features fit computed with the in-memory encoder; without the cache the
    # reloaded encoder recomputes them: the outputs are the same, byte for byte
    cached = _predict(fitted.root, fitted.case, fitted.root / "pred_v2_cached")
    fresh = _predict(fitted.root, fitted.case, fitted.root / "pred_v2_fresh", no_cache=True)
    again = _predict(fitted.root, fitted.case, fitted.root / "pred_v2_again", no_cache=True)
    assert cached.labels == fresh.labels == again.labels and cached.probs == fresh.probs == again.probs
    assert cached.probs != fitted.before.probs  # the fine-tuned encoder's features differ from the frozen ones
    model_prov = fresh.findings["provenance"]["model"]
    assert model_prov["heads"]["version"] == "v0002"
    assert model_prov["backbones"] == {p: a.backbones[p][1] for p in PLANES}
    assert model_prov["encoders"]["sagittal"]["blocks"] == ["mid_1", "mid_2"]


def _cache_entries(root) -> list[dict]:
    from safetensors import safe_open

    out = []
    for path in sorted((root / "cache").rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            out.append(json.loads(f.metadata()["key"]))
    return out


def test_features_are_never_served_across_encoders(fitted):
    from OrthoDiffusionLib.features import FeatureCache
    from OrthoDiffusionLib.features.cohort import read_plane_image
    from OrthoDiffusionLib.features.extract import cache_key
    from OrthoDiffusionLib.features.plane import plane_features, prepare_plane
    from OrthoDiffusionLib.models.loading import load_model

    # the fine-tuned fit ran after the frozen one on the same cache: not one entry was served to it
    n_cases = 8
    assert fitted.frozen["manifest"]["feature_cache"] == {"hits": 0, "misses": n_cases * 3}
    assert fitted.tuned["manifest"]["feature_cache"] == {"hits": 0, "misses": n_cases * 3}
    frozen, tuned = load_model(str(fitted.model), "cpu", "v0001"), load_model(str(fitted.model), "cpu", "v0002")
    entries = _cache_entries(fitted.root)
    for plane in PLANES:
        shas = [e["backbone"] for e in entries if e["plane"] == plane]
        assert shas.count(frozen.backbones[plane][1]) == n_cases and shas.count(tuned.backbones[plane][1]) == n_cases
    assert {frozen.backbones[p][1] for p in PLANES}.isdisjoint({tuned.backbones[p][1] for p in PLANES})

    spec = tuned.spec.feature_spec("sagittal", n_draws=1, seed=0)
    ready = prepare_plane(read_plane_image(fitted.case / "sagittal.nii.gz", "sagittal"), "sagittal",
                          tuned.backbones["sagittal"][0].config, tuned.spec.preprocessing)
    got = {}
    for name, loaded in (("frozen", frozen), ("tuned", tuned)):
        cache = FeatureCache()  # the per-user cache ($ORTHODIFFUSION_CACHE) that fit and predict used
        got[name] = plane_features(loaded.backbones["sagittal"], ready, spec, cache)[(100, "mid_2")]
        assert (cache.hits, cache.misses) == (1, 0)  # each from its own encoder's entry
        assert torch.equal(got[name], plane_features(loaded.backbones["sagittal"], ready, spec, None)[(100, "mid_2")])
        key = cache_key(ready.content_hash, "sagittal", loaded.backbones["sagittal"][1], spec, 100, "mid_2", 0)
        assert FeatureCache().path_for(key).is_file()
    assert not torch.equal(got["frozen"], got["tuned"])


def test_corrections_finetune_and_predict_on_a_finetuned_head_set(fitted):
    from OrthoDiffusionLib.adapt.finetune import finetune
    from OrthoDiffusionLib.jobs import FinetuneJob
    from OrthoDiffusionLib.results.corrections import CorrectionsStore, prediction_record

    out = fitted.root / "pred_for_correction"
    pred = _predict(fitted.root, fitted.case, out)
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    arr = sitk.GetArrayFromImage(labels)
    arr[:, : arr.shape[1] // 2] = 0  # the annotator erases half of the label map
    edited = sitk.GetImageFromArray(arr)
    edited.CopyInformation(labels)
    acl = next(f for f in pred.findings["findings"] if f["key"] == "ACL")
    CorrectionsStore().save("T000", edited, {"ACL": {"decision": not acl["decision"], "action": "flipped"}},
                            source={"result_dir": str(out), "prediction": prediction_record(out)})
    logs = []
    # an empty cache: the corrected case's features must be recomputed with the fine-tuned encoders
    summary = finetune(FinetuneJob(model=str(fitted.model), epochs=40, cache=str(fitted.root / "empty-cache"),
                                   accept_worse=True), log=logs.append, progress=False)
    assert any("not in the cache; running the backbone" in line for line in logs)
    case = summary["cases"]["T000"]
    for f in pred.findings["findings"]:  # "before" = what predict reported: the same encoder ran
        assert case["probabilities_before"][f["key"]] == pytest.approx(f["probability"], abs=1e-5)
    # it trained on them: the classifier's loss fell, and ACL moved towards the annotator's decision
    # (Dice is no measure here: the stand-in's random decoder labels scattered voxels)
    seg = summary["history"]["segmentation"]
    assert seg["loss_last"] < seg["loss_first"]
    towards = 1 if not acl["decision"] else -1
    assert towards * (case["probabilities_after"]["ACL"] - case["probabilities_before"]["ACL"]) > 0.05
    store = _store(fitted)
    new, parent = store.manifest(summary["version"]), store.manifest("v0002")
    assert new["parent"] == "v0002" and new["encoders"] == parent["encoders"]
    for plane in PLANES:  # the encoder files are carried on unchanged, so cache keys stay valid
        name = f"encoder_{plane}.safetensors"
        assert new["files"][name]["sha256"] == parent["files"][name]["sha256"]
    after = _predict(fitted.root, fitted.case, fitted.root / "pred_v3")
    assert after.findings["provenance"]["model"]["heads"]["version"] == summary["version"]
    assert after.findings["provenance"]["model"]["backbones"] == pred.findings["provenance"]["model"]["backbones"]
    assert after.labels != pred.labels  # the corrected decoder changed the label map


def test_rollback_after_a_finetuned_fit_restores_outputs_exactly(fitted, capsys):
    from OrthoDiffusionLib.cli.main import main

    assert main(["finetune", "--model", str(fitted.model), "--list", "--json"]) == 0
    rows = {r["version"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["versions"]}
    assert rows["v0001"]["encoders"] == [] and rows["v0002"]["encoders"] == sorted(PLANES)
    assert rows["v0001"]["replay"] and rows["v0002"]["replay"]
    assert main(["finetune", "--model", str(fitted.model), "--rollback", "v0001", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["version"] == "v0001"
    back = _predict(fitted.root, fitted.case, fitted.root / "pred_rollback")
    fresh = _predict(fitted.root, fitted.case, fitted.root / "pred_rollback_fresh", no_cache=True)
    assert back.labels == fresh.labels == fitted.before.labels and back.probs == fresh.probs == fitted.before.probs
    assert back.findings["provenance"]["model"]["backbones"] == fitted.before.findings["provenance"]["model"]["backbones"]
    assert "encoders" not in back.findings["provenance"]["model"]


def test_segmentation_stage1_from_the_cli(tmp_path, monkeypatch, capsys):
    from OrthoDiffusionLib.cli.main import main
    from OrthoDiffusionLib.heads import HeadStore
    from OrthoDiffusionLib.models.catalogue import get_model
    from OrthoDiffusionLib.models.loading import load_backbones, load_model

    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ORTHODIFFUSION_CACHE", str(tmp_path / "cache"))
    model = make_standin_model(tmp_path / "model", model_id="standin-seg")
    manifest = make_toy_cohort(tmp_path / "cohort", n=8)
    _fit(model, manifest, task="all")
    assert main(["fit", "--manifest", str(manifest), "--model", str(model), "--task", "segmentation",
                 "--finetune-backbone", "--unfreeze", "1", "--finetune-epochs", "3", "--folds", "2",
                 "--max-epochs", "4", "--threads", "1", "--device", "cpu", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "[stage I] sagittal: blocks mid_2 trained with the segmentation head" in text
    assert "diagnosis heads are refitted" in text  # MPAE reads the sagittal features too
    store = HeadStore(get_model(str(model)).heads_for_write())
    man = store.manifest("v0002")
    assert sorted(man["encoders"]) == ["sagittal"] and {"mpae", "seg_sagittal"} <= set(man["heads"])
    assert man["metrics"]["segmentation_sagittal_history"] == man["encoders"]["sagittal"]["history"]
    published = load_backbones(get_model(str(model)))
    loaded = load_model(str(model), "cpu")
    for plane in ("coronal", "axial"):  # untouched planes keep the published backbone and its sha256
        assert loaded.backbones[plane][1] == published[plane][1]
    base_sd, sd = published["sagittal"][0].state_dict(), loaded.backbones["sagittal"][0].state_dict()
    changed = {k for k in sd if not torch.equal(sd[k], base_sd[k])}
    assert changed and all(k.startswith("middle_block.2.") for k in changed)
    assert main(["predict", str(tmp_path / "cohort" / "cases" / "T001" / "sagittal.nii.gz"), "--model", str(model),
                 "--device", "cpu", "--draws", "1", "--out", str(tmp_path / "pred")]) == 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / "labels.nrrd")))
    assert labels.shape[0] > 0 and np.isin(np.unique(labels), np.arange(12)).all()
