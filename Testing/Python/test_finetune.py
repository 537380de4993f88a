"""Fine-tune loop end to end on real files: knee-demo predict on the sample knee → edit one segment
in a real MRML scene (slicer-core) → save_correction → `orthodiffusion finetune` → a new head
version whose Dice on the corrected case is higher → rollback → predict outputs identical to the
first ones. The shipped head store is never written; the per-user folder is a temp HOME."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.jobs import PredictJob
from OrthoDiffusionLib.resources import resource_path, sample_knee_path
from OrthoDiffusionLib.storage import sha256_file

SHIPPED_HEADS = resource_path("Models", "knee-demo", "heads")


def _tree_sha(root):
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()
            and not p.name.endswith(".lock")}


def _predict(out, **kw):
    from OrthoDiffusionLib.inference.predict import predict_study

    job = PredictJob(inputs=[str(sample_knee_path())], out=str(out), model="knee-demo", device="cpu", draws=2,
                     reformat=False, case_id="knee1", **kw)
    predict_study(job, log=lambda m: None)
    findings = json.loads((out / "findings.json").read_text())
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nrrd")))
    return findings, labels


def _edit_and_save(result_dir, store):
    """Real MRML: load the result as a segmentation, empty the patella segment, flip one finding."""
    slicer = pytest.importorskip("slicer")
    from OrthoDiffusionLib.mrml.corrections import save_correction
    from OrthoDiffusionLib.mrml.headless import headless_scene
    from slicer_util_globals import util_globals
    from OrthoDiffusionLib.mrml.segmentation import load_result_segmentation
    from OrthoDiffusionLib.mrml.volumes import load_volume
    from OrthoDiffusionLib.results.folder import read_result_folder

    scene, logics = headless_scene()
    ref = load_volume(scene, sample_knee_path(), "knee")
    result = read_result_folder(result_dir)
    seg = load_result_segmentation(scene, result, ref, logics["Segmentations"])
    with util_globals(scene, logics):  # slicer.util segment helpers read the app globals
        patella = seg.GetSegmentation().GetSegmentIdBySegmentName("Patella")
        arr = slicer.util.arrayFromSegmentBinaryLabelmap(seg, patella, ref)
        assert arr.sum() > 100  # the heads did predict a patella
        arr[:] = 0
        slicer.util.updateSegmentBinaryLabelmapFromArray(arr, seg, patella, ref)
    acl = result.finding("ACL")
    entry, _ = save_correction(scene, seg, ref, {"ACL": {"decision": not acl.decision, "action": "flipped"}}, store)
    return entry, acl


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    from OrthoDiffusionLib.results.corrections import CorrectionsStore

    root = tmp_path_factory.mktemp("finetune")
    mp = pytest.MonkeyPatch()
    mp.setenv("ORTHODIFFUSION_HOME", str(root / "home"))
    mp.setenv("ORTHODIFFUSION_CACHE", str(root / "cache"))
    shipped_before = _tree_sha(SHIPPED_HEADS)
    findings0, labels0 = _predict(root / "pred0")
    entry, acl = _edit_and_save(root / "pred0", CorrectionsStore())
    yield types.SimpleNamespace(root=root, findings0=findings0, labels0=labels0, entry=entry, acl=acl,
                                shipped_before=shipped_before)
    mp.undo()


def _run_json(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out.strip().splitlines()[-1]), out


def test_finetune_rollback_loop(loop, capsys):
    from OrthoDiffusionLib.heads import HeadStore
    from OrthoDiffusionLib.models.catalogue import get_model

    # the correction carries what fine-tuning needs even if the result folder goes away
    record = json.loads((loop.entry.directory / "record.json").read_text())
    pred = record["source"]["prediction"]
    shipped = HeadStore(SHIPPED_HEADS).current()
    assert pred["inputs"]["sagittal"]["content_hash"] and pred["head_version"] == shipped

    s, text = _run_json(capsys, ["finetune", "--model", "knee-demo", "--json", "--quiet"])
    for tag in ("[loading]", "[features]", "[finetune]", "[writing]", "not for clinical decisions"):
        assert tag in text
    user = HeadStore(get_model("knee-demo").heads_for_write())
    assert s["version"] == "v0002" and s["parent"] == "v0001" and user.current() == "v0002"
    assert user.manifest("v0001")["imported_from"]["version"] == shipped  # copy of the shipped version
    assert user.manifest("v0002")["parent"] == "v0001"
    ft = user.manifest("v0002")["finetune"]
    assert ft["corrections"][0]["entry_id"] == loop.entry.entry_id
    assert ft["corrections"][0]["labels_sha256"] == loop.entry.labels_sha256
    case = ft["cases"]["knee1"]
    assert case["dice_before"]["patella"] == 0.0  # predicted, deleted by the annotator
    assert case["mean_dice_after"] > case["mean_dice_before"]
    # before = what predict reported for that case (same heads, same cached features)
    for f in loop.findings0["findings"]:
        assert case["probabilities_before"][f["key"]] == pytest.approx(f["probability"], abs=1e-5)
    towards = 1 if not loop.acl.decision else -1
    assert towards * (case["probabilities_after"]["ACL"] - case["probabilities_before"]["ACL"]) > 0.05
    if not s["replay"]["available"]:
        assert any("no replay sample" in w for w in s["warnings"])
    assert _tree_sha(SHIPPED_HEADS) == loop.shipped_before

    # predict with the fine-tuned heads: the label map changes (features come from the cache)
    _, labels1 = _predict(loop.root / "pred1")
    assert not np.array_equal(labels1, loop.labels0)
    assert (labels1 == 3).sum() < (loop.labels0 == 3).sum()  # less patella where it was erased

    # versions list, then rollback: outputs identical to the first prediction, exactly
    info, _ = _run_json(capsys, ["finetune", "--model", "knee-demo", "--list", "--json"])
    assert [v["version"] for v in info["versions"]] == ["v0001", "v0002"] and info["current"] == "v0002"
    assert info["versions"][1]["kind"] == "finetune" and info["versions"][1]["parent"] == "v0001"
    res, _ = _run_json(capsys, ["finetune", "--model", "knee-demo", "--rollback", "v0001", "--json"])
    assert res["changed"] and user.current() == "v0001" and user.list_versions() == ["v0001", "v0002"]
    findings2, labels2 = _predict(loop.root / "pred2")
    assert np.array_equal(labels2, loop.labels0)
    assert [(f["key"], f["probability"], f["spread"], f["decision"]) for f in findings2["findings"]] == \
        [(f["key"], f["probability"], f["spread"], f["decision"]) for f in loop.findings0["findings"]]
    assert _tree_sha(SHIPPED_HEADS) == loop.shipped_before


def test_finetune_errors_are_one_line(loop, capsys, tmp_path):
    rc = main(["finetune", "--model", "knee-demo", "--corrections", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no corrections" in err[0] and "Traceback" not in err[0]
    rc = main(["finetune", "--model", "knee-demo", "--case", "nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no correction for case(s) nope" in err[0]
    rc = main(["finetune", "--model", "knee-demo", "--rollback", "v0099"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "v0099" in err[0]


def test_finetune_mixes_in_and_carries_the_replay_sample(loop, capsys):
    """A head version holding a replay file (published format; here two 'training cases' made from
    the sample knee's cached features and the heads' own label maps) is replayed and carried on."""
    import torch

    from OrthoDiffusionLib.results.corrections import CorrectionsStore
    from OrthoDiffusionLib.heads import HeadStore
    from OrthoDiffusionLib.heads.replay import REPLAY_FILE, build_replay, load_replay, replay_metadata
    from OrthoDiffusionLib.labelsets import load_label_set
    from OrthoDiffusionLib.adapt import corrected, output_layers
    from OrthoDiffusionLib.models.catalogue import get_model

    spec = get_model("knee-demo")
    user = HeadStore(spec.heads_for_write())
    if not user.current():  # run alone: let a first fine-tune create the user store
        _run_json(capsys, ["finetune", "--model", "knee-demo", "--json", "--quiet"])
    heads, manifest = user.load()
    store = CorrectionsStore()
    case = corrected.load_corrected_case(store.entries()[-1], store, spec, manifest, "sagittal",
                                  manifest["heads"]["seg_sagittal"]["config"]["out_shape"], ["ACL"], None, "cpu",
                                  lambda m: None)
    x = case.features["sagittal"]
    with torch.no_grad():
        own = heads["seg_sagittal"](x).argmax(1)
    tensors = build_replay({"sagittal": x}, torch.tensor([[True, False, False]] * len(x)),
                           np.full((len(x), 8), np.nan, np.float32), np.arange(len(x)), "sagittal", own,
                           torch.ones(len(x), 12, dtype=torch.bool))
    keep = {k: v for k, v in manifest.items() if k not in ("format", "heads", "parent", "created", "weights_sha256",
                                                            "version", "files", "finetune", "imported_from")}
    base = user.save(heads, {**keep, "replay": replay_metadata("sagittal", len(x), 0)}, parent=user.current(),
                     files={REPLAY_FILE: tensors})

    # without replay, then (from the same base) with it: replay keeps more of the replayed behaviour
    alone, _ = _run_json(capsys, ["finetune", "--model", "knee-demo", "--json", "--quiet", "--replay", "0"])
    assert alone["parent"] == base and alone["replay"]["used"] == 0
    assert any("--replay 0" in w for w in alone["warnings"])
    replay = load_replay(user.extra_file(REPLAY_FILE, base), "sagittal")
    decoder = user.load(alone["version"])[0]["seg_sagittal"]
    no_replay_dice = output_layers.replay_dice(decoder, output_layers.decoder_activations(decoder, replay.features["sagittal"]),
                                    replay.seg_targets, load_label_set("knee-11"))
    _run_json(capsys, ["finetune", "--model", "knee-demo", "--rollback", base, "--json"])

    s, _ = _run_json(capsys, ["finetune", "--model", "knee-demo", "--json", "--quiet", "--replay", "2"])
    assert s["parent"] == base and s["replay"]["available"] and s["replay"]["used"] == len(x)
    assert not any("no replay sample" in w for w in s["warnings"])
    hist = s["history"]["segmentation"]
    assert hist["replay_mean_dice_before"] > 0.99  # the heads' own label maps (features stored in fp16)
    # this replay sample is the same knee with its uncorrected label maps: it pulls against the
    # correction, so with it the replayed behaviour is kept better than without it
    assert hist["replay_mean_dice_after"] > no_replay_dice
    files = user.manifest(s["version"])["files"]
    assert files[REPLAY_FILE]["sha256"] == user.manifest(base)["files"][REPLAY_FILE]["sha256"]
    assert _tree_sha(SHIPPED_HEADS) == loop.shipped_before

    # the fine-tune guard: this version lowers the replay Dice (the replay pulls against the
    # correction), so it is saved but its parent stays current; --accept-worse makes it current
    guard = s["guard"]
    assert guard["replay_mean_dice"] == [hist["replay_mean_dice_before"], hist["replay_mean_dice_after"]]
    assert any("replay sample mean Dice" in w for w in guard["worse"]) and guard["made_current"] is False
    assert user.current() == base and s["version"] in user.list_versions()
    from OrthoDiffusionLib.models.versions import finetune_summary_lines, latest_finetune

    record = latest_finetune("knee-demo")
    assert record["version"] == s["version"] and record["current"] is False
    assert any(line.startswith("NOT made current") for line in finetune_summary_lines(record))
    forced, text = _run_json(capsys, ["finetune", "--model", "knee-demo", "--json", "--quiet", "--replay", "2",
                                      "--accept-worse"])
    assert forced["guard"]["worse"] and forced["guard"]["made_current"] and user.current() == forced["version"]
    assert "made current anyway (--accept-worse)" in " ".join(forced["warnings"])
    _run_json(capsys, ["finetune", "--model", "knee-demo", "--rollback", base, "--json"])
