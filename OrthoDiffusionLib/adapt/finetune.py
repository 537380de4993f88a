"""Fine-tune the current heads on the user's corrections (+ the head version's replay sample) and
save a NEW head version in the per-user store; list versions; roll back.

Per corrected case (latest correction entry of each case):
- features come from the feature cache under the content hashes the prediction recorded (the
  backbone is re-run only when they are missing, from the predict job's inputs);
- the corrected label map (reference grid) is pushed onto the segmentation plane's network grid
  with the same preprocessing transform predict uses;
- confirmed / flipped findings become labels (other findings unknown: left out of the loss).
Starting from the current weights, the output layers train for ``epochs`` AdamW steps, each on
the corrections and replay cases together (replay target: the heads' own outputs before
fine-tuning, i.e. distillation, so earlier behaviour is kept): the segmentation decoder's
1×1×1 classifier on its cached penultimate activations (a random sample of voxels per step), and,
when findings were corrected, the MPAE experts' linear layers and gate on the cached SAP vectors.
The shipped head store is never written: the first fine-tune copies the current shipped version
into the user store (identical weights) so a rollback can return to it.
Research use only, not for clinical decisions.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import DISCLAIMER, __version__
from ..errors import InputError, UserError
from ..evaluation.segmentation import label_dice
from ..jobs import FinetuneJob

from ..planes import PLANES
FINETUNE_LOCK = "finetune"  # <user heads>/finetune.lock: one fine-tune per store at a time


@dataclass
class CorrectedCase:
    entry: object                       # corrections.CorrectionEntry
    prediction: dict                    # corrections.prediction_record of the predicted result
    features: dict                      # plane -> float32 [K, C, d, h, w]
    seg_target: torch.Tensor | None     # long [D, H, W] on the seg plane's network grid
    finding_labels: np.ndarray          # float32 [K_findings], NaN = not corrected
    ehr: dict | None = None
    metrics: dict = field(default_factory=dict)

    @property
    def case_id(self) -> str:
        return self.entry.case_id


# ----------------------------------------------------------------------------- selecting input

def latest_corrections(store, cases=None) -> list:
    """Latest entry per case (all cases, or the given ids), oldest case first."""
    entries = store.entries()
    if cases:
        wanted = set(cases)
        unknown = wanted - {e.case_id for e in entries}
        if unknown:
            raise UserError(f"no correction for case(s) {', '.join(sorted(unknown))} in {store.root}")
        entries = [e for e in entries if e.case_id in wanted]
    latest = {}
    for e in entries:  # sorted oldest first: the last one wins
        latest[e.case_id] = e
    return sorted(latest.values(), key=lambda e: (e.created, e.entry_id))


def _prediction_of(entry) -> dict:
    from ..results.corrections import prediction_record
    from ..storage import read_json

    source = read_json(entry.directory / "record.json").get("source") or {}
    pred = source.get("prediction") or {}
    if not pred.get("inputs") and source.get("result_dir"):
        pred = prediction_record(source["result_dir"])
    if not pred.get("inputs"):
        raise UserError(f"correction {entry.directory} does not say which prediction it corrects (no result "
                        f"folder recorded); save it again from a predicted case")
    return pred


# ----------------------------------------------------------------------------- features, targets

def _feature_spec(fs: dict):
    from ..features import FeatureSpec

    return FeatureSpec(timesteps=(int(fs["timestep"]),), blocks=(fs["block"],), seed=int(fs.get("seed", 0)),
                       n_draws=int(fs.get("draws", 1)), preprocessing=fs.get("preprocessing", "released"))


def _cached_features(pred: dict, plane: str, cache, backbone_sha: str):
    from ..features.extract import cache_key

    fspec = _feature_spec(pred["feature_spec"][plane])
    h = pred["inputs"][plane]["content_hash"]
    t, b = fspec.timesteps[0], fspec.blocks[0]
    draws = [cache.get(cache_key(h, plane, backbone_sha, fspec, t, b, d)) for d in range(fspec.n_draws)]
    return None if any(x is None for x in draws) else torch.stack(draws).float()


def _reload_study(pred: dict, case_id: str):
    from ..io import load_study

    job = pred.get("job") or {}
    inputs = [str(p) for p in job.get("inputs") or []]
    planes = {k: str(v) for k, v in (job.get("planes") or {}).items()}
    gone = [p for p in [*planes.values(), *inputs] if not Path(p).exists()]
    if not (inputs or planes) or gone:
        raise UserError(f"case {case_id}: its features are not in the feature cache and its input "
                        f"{(gone or ['(none recorded)'])[0]} is gone; run `orthodiffusion predict` on it again, "
                        f"then fine-tune")
    return load_study(inputs, echo=job.get("echo"), reformat=job.get("reformat"), planes=planes)


def _recompute_features(pred: dict, planes: list, spec, cache, backbone_shas: dict, device, case_id: str, log):
    """Re-run only the backbones of ``planes`` (to the needed block) and fill the cache."""
    from ..features.plane import plane_features, prepare_plane, single_features
    from ..models.loading import load_backbones

    log(f"[features] {case_id}: {', '.join(planes)} not in the cache; running the backbone")
    study = _reload_study(pred, case_id)
    backbones = load_backbones(spec, planes=planes, device=device)
    out = {}
    for plane in planes:
        model, sha = backbones[plane]
        if sha != backbone_shas[plane]:
            raise UserError(f"case {case_id}: the {plane} backbone changed since the prediction; predict it again")
        series = study.planes.get(plane)
        ready = prepare_plane(series.image, plane, model.config, spec.preprocessing) if series else None
        if ready is None or ready.content_hash != pred["inputs"][plane]["content_hash"]:
            raise UserError(f"case {case_id}: the {plane} input changed since the prediction; predict it again")
        fspec = _feature_spec(pred["feature_spec"][plane])
        out[plane] = single_features(plane_features(backbones[plane], ready, fspec, cache, device))
    return out, study


def network_target(labels_img, plane_img, plane: str, preprocessing: str, out_shape) -> torch.Tensor:
    """Knee-11 label map on any grid -> long [D, H, W] on ``plane_img``'s network grid, through the
    same preprocessing transform predict uses (nearest neighbour)."""
    import SimpleITK as sitk

    from ..io import preprocess

    d, h, w = (int(v) for v in out_shape)
    _, transform = preprocess(sitk.Cast(plane_img, sitk.sitkFloat32), mode=preprocessing, plane=plane, depth=d,
                              size=(h, w))
    return torch.as_tensor(transform.to_network(labels_img, is_label=True).astype(np.int64))


def _finding_labels(findings: dict, keys) -> np.ndarray:
    return np.array([float(findings[k]["decision"]) if k in findings else np.nan for k in keys], np.float32)


def _ehr_of(pred: dict):
    from ..ehr import parse_ehr

    if not pred.get("ehr_used"):
        return None
    try:
        return parse_ehr((pred.get("job") or {}).get("ehr"))
    except UserError:
        return None


def load_corrected_case(entry, corrections, spec, head_manifest, seg_plane, out_shape, finding_keys, cache_dir,
                        device, log) -> CorrectedCase:
    from ..features import FeatureCache

    pred = _prediction_of(entry)
    backbone_shas = (pred.get("model") or {}).get("backbones") or {}
    want = head_manifest.get("backbones") or {}
    for plane, sha in want.items():
        if plane in backbone_shas and backbone_shas[plane] != sha:
            raise UserError(f"case {entry.case_id} was predicted with another {plane} backbone than the current "
                            f"heads use; predict it again with model {spec.id}, save the correction, then fine-tune")
    planes = [p for p in PLANES if p in pred["inputs"] and p in spec.planes and p in backbone_shas]
    cache = FeatureCache(cache_dir or (pred.get("job") or {}).get("cache"))
    feats, missing = {}, []
    for plane in planes:
        x = _cached_features(pred, plane, cache, backbone_shas[plane])
        if x is None:
            missing.append(plane)
        else:
            feats[plane] = x
    study = None
    if missing:
        more, study = _recompute_features(pred, missing, spec, cache, backbone_shas, device, entry.case_id, log)
        feats.update(more)
    labels_img, findings = corrections.load(entry)
    target = None
    if seg_plane is not None and seg_plane in feats:
        if pred.get("reference_plane") == seg_plane:
            plane_img = labels_img  # the reference grid is the seg plane's own series grid
        else:
            study = study or _reload_study(pred, entry.case_id)
            plane_img = study.planes[seg_plane].image
        target = network_target(labels_img, plane_img, seg_plane, spec.preprocessing, out_shape)
    return CorrectedCase(entry, pred, feats, target, _finding_labels(findings, finding_keys), _ehr_of(pred))


# ----------------------------------------------------------------------------- metrics

# The segmentation decoder is fine-tuned at its output layer (1×1×1 classifier) on its cached
# penultimate activations: one decoder pass per sample, then hundreds of cheap steps. Measured on
# knee-demo (2 shared CPU cores): a few AdamW steps on the whole decoder cost seconds each and
# lowered the agreement with an unchanged target (thin structures on a 64×64 grid flip easily).

@torch.no_grad()
def decoder_activations(decoder, x: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """Input of the decoder's classifier for features ``x`` [B, C, d, h, w]."""
    decoder.eval()
    got = []
    hook = decoder.classifier.register_forward_hook(lambda module, inputs, output: got.append(inputs[0].detach()))
    try:
        for i in range(0, len(x), batch):
            decoder(x[i:i + batch])
    finally:
        hook.remove()
    return torch.cat(got)


def tail_logits(decoder, act: torch.Tensor) -> torch.Tensor:
    """The decoder's output from its classifier input (same resize as ``SegmentationDecoder.forward``)."""
    from torch.nn import functional as F

    logits = decoder.classifier(act)
    if list(logits.shape[2:]) != list(decoder.out_shape):
        logits = F.interpolate(logits, size=decoder.out_shape, mode="trilinear", align_corners=False)
    return logits


@torch.no_grad()
def _labels_from(decoder, act: torch.Tensor) -> torch.Tensor:
    """argmax of the mean softmax over noise draws, as predict does: [K, ...] -> [D, H, W]."""
    return torch.cat([torch.softmax(tail_logits(decoder, act[i:i + 4]), 1) for i in range(0, len(act), 4)]
                     ).mean(0).argmax(0)


@torch.no_grad()
def replay_dice(decoder, acts, targets, structures) -> float | None:
    """Mean Dice of the decoder on the replay cases against their stored label maps (the one
    in-training rule, ``evaluation.segmentation.label_dice``: unlabelled voxels left out, a structure
    scored where the stored map has it)."""
    if acts is None or not len(acts):
        return None
    preds = torch.cat([tail_logits(decoder, acts[i:i + 1]).argmax(1) for i in range(len(acts))])
    return label_dice(preds, targets, structures.values, structures.keys, count="target")["mean_dice"]


def _voxels(acts: torch.Tensor, targets: torch.Tensor):
    """[B, C, D, H, W] activations + [B, D, H, W] targets -> per-voxel rows x [N, C], y [N]
    (unlabelled voxels dropped)."""
    x = acts.movedim(1, -1).reshape(-1, acts.shape[1])
    y = targets.reshape(-1)
    keep = y >= 0
    return x[keep], y[keep]


def _soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the class probabilities of ``target_logits`` (distillation)."""
    return -(torch.softmax(target_logits, -1) * torch.log_softmax(logits, -1)).sum(-1).mean()


def _finetune_segmentation(decoder, case_acts, case_targets, rep_acts, job, progress,
                           voxels_per_step: int = 32768) -> dict:
    """AdamW on the 1×1×1 classifier. It acts voxel by voxel, so each step trains on a random sample
    of voxels: ``voxels_per_step`` from the corrected cases (all noise draws; a corrected label map
    counts as complete; cross-entropy) and as many from the replay cases, whose target is what the
    heads predicted there before fine-tuning (distillation: keeps the earlier behaviour, even where
    the heads never fitted their training labels well)."""
    from torch.nn import functional as F
    from tqdm import tqdm

    if list(case_acts[0].shape[2:]) != list(decoder.out_shape):
        raise UserError("this segmentation head resizes its output; fine-tuning supports decoders whose last "
                        "stage reaches the target grid exactly")
    g = torch.Generator().manual_seed(job.seed)
    x, y = _voxels(torch.cat(case_acts), torch.cat([t[None].expand(len(a), *t.shape)
                                                    for a, t in zip(case_acts, case_targets)]))
    rep_x = rep_acts.movedim(1, -1).reshape(-1, rep_acts.shape[1]) if rep_acts is not None and len(rep_acts) \
        else None
    classifier = decoder.classifier
    weight0, bias0 = classifier.weight.detach().flatten(1).clone(), classifier.bias.detach().clone()

    def logits(rows):  # the 1×1×1 classifier on a batch of voxels, as a linear layer (same weights)
        return F.linear(rows, classifier.weight.flatten(1), classifier.bias)

    optimiser = torch.optim.AdamW(classifier.parameters(), lr=job.lr, weight_decay=0.0)
    losses = []
    decoder.train()
    for _ in tqdm(range(job.epochs), desc="finetune segmentation", unit="step", disable=not progress):
        optimiser.zero_grad()
        i = torch.randint(len(x), (min(voxels_per_step, len(x)),), generator=g)
        loss = F.cross_entropy(logits(x[i]), y[i])
        if rep_x is not None:
            rows = rep_x[torch.randint(len(rep_x), (min(voxels_per_step, len(rep_x)),), generator=g)]
            loss = loss + job.replay_weight * _soft_cross_entropy(logits(rows), F.linear(rows, weight0, bias0))
        loss.backward()
        optimiser.step()
        losses.append(round(float(loss.detach()), 5))
    decoder.eval()
    return {"trained": "classifier", "steps": job.epochs, "voxels_per_step": voxels_per_step,
            "replay_target": "predictions before fine-tuning", "loss_first": losses[0], "loss_last": losses[-1]}


@torch.no_grad()
def _pooled(mpae, features: dict) -> dict:
    """Each present plane's SAP vector (the experts' frozen part): plane -> [B, 2C]."""
    mpae.eval()
    return {p: mpae.experts[p].pool(x) for p, x in features.items() if x is not None}


def _fused_logits(mpae, pooled: dict, present: torch.Tensor) -> torch.Tensor:
    """``MPAEHead.forward`` from pooled vectors (the experts' linear layers, then the gate)."""
    return mpae.fuse(mpae.logits_from_pooled(pooled, present), present).logits


def _finetune_diagnosis(mpae, cases, replay, job, progress) -> dict:
    """AdamW on the experts' linear layers and the gate (SAP pooling frozen, pooled once); each step:
    every draw of the corrected cases (uncorrected findings unknown) + 8 random replay cases, whose
    target is the heads' probabilities before fine-tuning (distillation, as for segmentation)."""
    from tqdm import tqdm

    from ..heads.fit import masked_bce

    parts = []
    for c in cases:
        k = next(iter(c.features.values())).shape[0]
        present = torch.tensor([[p in c.features for p in PLANES]] * k)
        parts.append((_pooled(mpae, c.features), present, torch.as_tensor(c.finding_labels)[None].expand(k, -1)))
    rep = None
    if replay is not None and job.replay > 0:  # target: the probabilities before fine-tuning
        n = min(job.replay, len(replay))
        present = replay.present[:n]
        pooled = _pooled(mpae, {p: (x[:n] if x is not None else None) for p, x in replay.features.items()})
        with torch.no_grad():
            rep = (pooled, present, torch.sigmoid(_fused_logits(mpae, pooled, present)))
    params = [q for p in PLANES for q in mpae.experts[p].classifier.parameters()] + list(mpae.gate.parameters())
    optimiser = torch.optim.AdamW(params, lr=job.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(job.seed + 1)
    losses = []
    mpae.train()
    for _ in tqdm(range(job.epochs), desc="finetune diagnosis", unit="step", disable=not progress):
        optimiser.zero_grad()
        loss = sum(masked_bce(_fused_logits(mpae, pooled, present), y) for pooled, present, y in parts)
        if rep is not None:
            i = torch.randperm(len(rep[1]), generator=g)[:8]
            loss = loss + job.replay_weight * masked_bce(_fused_logits(mpae, {p: v[i] for p, v in rep[0].items()},
                                                                       rep[1][i]), rep[2][i])
        loss.backward()
        optimiser.step()
        losses.append(round(float(loss.detach()), 5))
    mpae.eval()
    return {"trained": "expert linears + gate", "steps": job.epochs, "loss_first": losses[0],
            "loss_last": losses[-1]}


def _probabilities(heads: dict, mpae, case: CorrectedCase) -> np.ndarray:
    """Mean over noise draws of the finding probabilities, as predict computes them (``mpae``: the
    heads' own or the fine-tuned copy)."""
    from ..heads.inference import diagnose

    return diagnose({**heads, "mpae": mpae}, case.features, case.ehr).probabilities


# ----------------------------------------------------------------------------- the job

def _base_manifest(manifest: dict) -> dict:
    drop = {"format", "heads", "parent", "created", "weights_sha256", "version", "files", "finetune",
            "imported_from"}
    return {k: v for k, v in manifest.items() if k not in drop}


def _ensure_user_base(user_store, base_store, base_heads, base_manifest, replay_path, log) -> str:
    """The version to record as parent in the user store; on the first fine-tune, a copy of the
    current shipped version (identical weights) so that rollback can return to it."""
    if user_store.current():
        return user_store.current()
    files = {replay_path.name: replay_path} if replay_path is not None else None
    manifest = {**_base_manifest(base_manifest),
                "imported_from": {"store": str(base_store), "version": base_manifest.get("version"),
                                  "weights_sha256": base_manifest.get("weights_sha256")}}
    version = user_store.save(base_heads, manifest, parent=None, files=files)
    log(f"[writing] copied {base_store} {base_manifest.get('version')} into the user store as {version} "
        f"(rollback target)")
    return version


def finetune(job: FinetuneJob, log=print, progress: bool = True) -> dict:
    """Run a fine-tune job; returns the summary also recorded as ``manifest["finetune"]``.
    Runs torch on one thread, as ``fit`` does: these small heads train faster without thread
    synchronisation on a shared CPU (measured on the 2-core VM at load 3.7: 9.1 s in-process with
    one thread against 21.3 s with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _finetune(job, log, progress)
    finally:
        torch.set_num_threads(threads)


def _finetune(job: FinetuneJob, log, progress: bool) -> dict:
    from ..results.corrections import CorrectionsStore
    from ..device import resolve_device
    from ..heads import HeadStore
    from ..heads.replay import REPLAY_FILE, load_replay
    from ..labelsets import load_label_set
    from ..storage import file_lock
    from ..models.catalogue import get_model
    from ..runtime import StageTimer

    job.validate()
    t_start = time.perf_counter()
    timer = StageTimer(log)
    timer.start("loading", f"model {job.model}, corrections {job.corrections or 'per-user store'}")
    spec = get_model(job.model)
    corrections = CorrectionsStore(job.corrections)
    entries = latest_corrections(corrections, job.cases)
    if not entries:
        raise UserError(f"no corrections in {corrections.root}; save one first (Slicer: Save correction), then "
                        f"fine-tune")
    device = resolve_device(job.device)
    user_store = HeadStore(spec.heads_for_write())
    warnings: list[str] = []
    with file_lock(user_store.root / FINETUNE_LOCK):
        base_dir = Path(spec.heads_for_read())
        base = HeadStore(base_dir)
        if not base.current():
            raise UserError(f"model '{spec.id}' has no fitted heads in {base_dir}; fit them first")
        heads, manifest = base.load()
        structures = load_label_set(manifest.get("structures_label_set") or spec.label_sets.get("structures",
                                                                                                "knee-11"))
        finding_keys = load_label_set(manifest.get("label_set", "knee-8")).keys
        seg_planes = [k[4:] for k in heads if k.startswith("seg_")]
        seg_plane = seg_planes[0] if seg_planes else None
        out_shape = manifest["heads"][f"seg_{seg_plane}"]["config"]["out_shape"] if seg_plane else None
        replay_path = base.extra_file(REPLAY_FILE)
        replay = load_replay(replay_path, (manifest.get("replay") or {}).get("seg_plane")) if replay_path else None
        if replay is None:
            warnings.append(f"head version {manifest['version']} has no replay sample: fine-tuning on the "
                            f"corrections alone (earlier skill may drift); refit with `orthodiffusion fit` to add one")
        elif job.replay == 0:
            warnings.append("--replay 0: fine-tuning on the corrections alone")

        timer.start("features", f"{len(entries)} corrected case(s) (feature cache)")
        cases = []
        for e in entries:
            if not corrections.verify(e):
                raise InputError(f"correction {e.directory} does not match its recorded sha256; it was changed")
            cases.append(load_corrected_case(e, corrections, spec, manifest, seg_plane, out_shape, finding_keys,
                                             job.cache, device, log))
            log(f"  {e.case_id}: planes {', '.join(cases[-1].features)}")

        timer.start("finetune", f"from {base_dir} {manifest['version']}, {job.epochs} step(s)")
        torch.manual_seed(job.seed)
        new_heads = dict(heads)
        history = {}
        seg_cases = [c for c in cases if c.seg_target is not None]
        pool = np.arange(0)
        if replay is not None and replay.seg_plane == seg_plane and job.replay > 0:
            pool = replay.seg_index[:job.replay]
        if seg_cases:
            old = heads[f"seg_{seg_plane}"]
            decoder = copy.deepcopy(old)
            acts = [decoder_activations(old, c.features[seg_plane]) for c in seg_cases]
            targets = [c.seg_target for c in seg_cases]
            rep_acts = decoder_activations(old, replay.features[seg_plane][pool]) if len(pool) else None
            rep_t = replay.seg_targets[pool] if len(pool) else None
            for c, a in zip(seg_cases, acts):
                c.metrics["dice_before"] = label_dice(_labels_from(old, a), c.seg_target, structures.values,
                                                      structures.keys, count="either")
            replay_before = replay_dice(old, rep_acts, rep_t, structures)
            history["segmentation"] = _finetune_segmentation(decoder, acts, targets, rep_acts, job, progress)
            for c, a in zip(seg_cases, acts):
                c.metrics["dice_after"] = label_dice(_labels_from(decoder, a), c.seg_target, structures.values,
                                                     structures.keys, count="either")
            history["segmentation"]["replay_mean_dice_before"] = replay_before
            history["segmentation"]["replay_mean_dice_after"] = replay_dice(decoder, rep_acts, rep_t, structures)
            new_heads[f"seg_{seg_plane}"] = decoder
        else:
            warnings.append("no corrected label map maps onto a segmentation plane: segmentation head unchanged")
        diag_cases = [c for c in cases if not np.isnan(c.finding_labels).all()]
        if "mpae" not in heads:
            raise UserError(f"head set {manifest['version']} has no MPAE diagnosis head; refit the heads")
        for c in cases:
            c.metrics["probabilities_before"] = _probabilities(heads, heads["mpae"], c)
        mpae = heads["mpae"]
        if diag_cases:
            mpae = copy.deepcopy(heads["mpae"])
            history["diagnosis"] = _finetune_diagnosis(mpae, diag_cases, replay, job, progress)
            new_heads["mpae"] = mpae
        for c in cases:
            c.metrics["probabilities_after"] = _probabilities(heads, mpae, c)

        timer.start("writing", str(user_store.root))
        parent = _ensure_user_base(user_store, base_dir, heads, manifest, replay_path, log)
        summary = {
            "disclaimer": DISCLAIMER,
            "model": {"id": spec.id, "version": spec.version},
            "base": {"store": str(base_dir), "version": manifest["version"]},
            "corrections": [{"entry_id": c.entry.entry_id, "case_id": c.case_id, "created": c.entry.created,
                             "labels_sha256": c.entry.labels_sha256, "findings_sha256": c.entry.findings_sha256,
                             "corrected_findings": {k: bool(v) for k, v in zip(finding_keys, c.finding_labels)
                                                    if not np.isnan(v)}}
                            for c in cases],
            "replay": {"available": replay is not None, "used": int(len(pool)) if seg_cases else 0,
                       "diagnosis_used": int(min(job.replay, len(replay))) if replay is not None and diag_cases else 0,
                       "file_sha256": (manifest.get("files") or {}).get(REPLAY_FILE, {}).get("sha256")},
            "job": job.to_dict(),
            "segmentation_plane": seg_plane,
            "dice_grid": f"{seg_plane} network grid {out_shape}" if seg_plane else None,
            "trained": sorted(k for k in new_heads if new_heads[k] is not heads.get(k)),
            "history": history,
            "cases": {c.case_id: _case_metrics(c, finding_keys) for c in cases},
            "warnings": warnings,
            "software": {"orthodiffusion": __version__, "torch": torch.__version__},
        }
        summary["guard"] = guard = compare_with_parent(summary["cases"], history, finding_keys, cases)
        guard["made_current"] = bool(job.accept_worse or not guard["worse"])
        if guard["worse"]:
            warnings.append("the new version is worse than its parent (" + "; ".join(guard["worse"]) + "): "
                            + ("made current anyway (--accept-worse)" if job.accept_worse else
                               "saved, but the parent stays current (--accept-worse, or a rollback to it, uses it)"))
        new_manifest = {**_base_manifest(manifest), "finetune": summary}
        files = {REPLAY_FILE: replay_path} if replay_path is not None else None
        version = user_store.save(new_heads, new_manifest, parent=parent, files=files,
                                  make_current=guard["made_current"])
    stages = timer.finish()
    summary.update(version=version, parent=parent, store=str(user_store.root),
                   seconds=round(time.perf_counter() - t_start, 2),
                   stages={k: v["seconds"] for k, v in stages.items()})
    return summary


# A fine-tune is "worse" when a score drops by more than this (Dice points, or binary cross-entropy
# of the corrected findings): smaller moves are noise of a 40-step fine-tune on a few cases.
WORSE_TOLERANCE = 0.005


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def compare_with_parent(case_metrics: dict, history: dict, finding_keys, cases) -> dict:
    """Scores of the new version against its parent: mean Dice on the corrected cases and on the
    replay sample, and the cross-entropy of the corrected findings; ``worse`` lists what dropped."""
    seg = (history.get("segmentation") or {})
    dice = [_mean(m.get("mean_dice_before") for m in case_metrics.values()),
            _mean(m.get("mean_dice_after") for m in case_metrics.values())]
    replay = [seg.get("replay_mean_dice_before"), seg.get("replay_mean_dice_after")]
    bce = [None, None]
    pairs = [(c.finding_labels, c.metrics) for c in cases if not np.isnan(c.finding_labels).all()]
    if pairs:
        def ce(which):
            eps = 1e-6
            vals = []
            for y, m in pairs:
                p = np.clip(m[which], eps, 1 - eps)
                known = ~np.isnan(y)
                vals += list(-(y[known] * np.log(p[known]) + (1 - y[known]) * np.log(1 - p[known])))
            return float(np.mean(vals))
        bce = [ce("probabilities_before"), ce("probabilities_after")]
    worse = []
    if None not in dice and dice[1] < dice[0] - WORSE_TOLERANCE:
        worse.append(f"corrected cases' mean Dice {dice[0]:.3f} → {dice[1]:.3f}")
    if None not in replay and replay[1] < replay[0] - WORSE_TOLERANCE:
        worse.append(f"replay sample mean Dice {replay[0]:.3f} → {replay[1]:.3f}")
    if None not in bce and bce[1] > bce[0] + WORSE_TOLERANCE:
        worse.append(f"corrected findings' cross-entropy {bce[0]:.3f} → {bce[1]:.3f}")
    return {"corrected_mean_dice": dice, "replay_mean_dice": replay, "corrected_findings_bce": bce,
            "tolerance": WORSE_TOLERANCE, "worse": worse}


def _case_metrics(c: CorrectedCase, keys) -> dict:
    m = c.metrics
    out = {"entry_id": c.entry.entry_id}
    if "dice_before" in m:
        out.update(mean_dice_before=m["dice_before"]["mean_dice"], mean_dice_after=m["dice_after"]["mean_dice"],
                   dice_before=m["dice_before"]["dice"], dice_after=m["dice_after"]["dice"])
    out["probabilities_before"] = {k: round(float(v), 6) for k, v in zip(keys, m["probabilities_before"])}
    out["probabilities_after"] = {k: round(float(v), 6) for k, v in zip(keys, m["probabilities_after"])}
    return out


# ----------------------------------------------------------------------------- rollback (list: models.versions)

def rollback(model: str, version: str) -> dict:
    """Make ``version`` of the user's head store current again (nothing is deleted)."""
    from ..heads import HeadStore
    from ..storage import file_lock
    from ..models.catalogue import get_model

    spec = get_model(model)
    user = HeadStore(spec.heads_for_write())
    if not user.list_versions():
        shipped = HeadStore(spec.shipped_heads)
        if version == shipped.current():
            return {"version": version, "store": str(shipped.root), "changed": False}
        raise UserError(f"cannot roll back to {version}: model '{spec.id}' has no fine-tuned head versions yet")
    with file_lock(user.root / FINETUNE_LOCK):
        before = user.current()
        user.rollback(version)
    return {"version": version, "previous": before, "store": str(user.root), "changed": before != version}
