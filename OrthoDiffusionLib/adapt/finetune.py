"""Fine-tune the current heads on the user's corrections (+ the head version's replay sample) and
save a NEW head version in the per-user store (input: ``corrected``; training: ``output_layers``;
listing and rollback: ``models.versions``).

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
from pathlib import Path

import numpy as np
import torch

from .. import DISCLAIMER, __version__
from ..errors import InputError, UserError
from ..evaluation.segmentation import label_dice
from ..jobs import FinetuneJob

from ..models.versions import FINETUNE_LOCK
from .corrected import CorrectedCase, latest_corrections, load_corrected_case
from .output_layers import (train_diagnosis_linears, train_segmentation_classifier, labels_from_activations, finding_probabilities,
                            decoder_activations, replay_dice)


def _base_manifest(manifest: dict) -> dict:
    drop = {"format", "heads", "parent", "created", "weights_sha256", "version", "files", "finetune",
            "imported_from"}
    return {k: v for k, v in manifest.items() if k not in drop}


def _extra_files(store, manifest: dict) -> dict | None:
    """Every extra file of a version (replay sample, Stage-I encoders), verified, to carry into the
    next version unchanged: the heads stay paired with the encoders their features come from."""
    names = sorted(manifest.get("files") or {})
    return {name: store.extra_file(name, manifest["version"]) for name in names} or None


def _ensure_user_base(user_store, base_store, base_heads, base_manifest, files, log) -> str:
    """The version to record as parent in the user store; on the first fine-tune, a copy of the
    current shipped version (identical weights and extra files) so that rollback can return to it."""
    if user_store.current():
        return user_store.current()
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
    synchronisation on a shared CPU (bench/finetune.md)."""
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
                                             job.cache, device, log, head_store=base_dir))
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
                c.metrics["dice_before"] = label_dice(labels_from_activations(old, a), c.seg_target, structures.values,
                                                      structures.keys, count="either")
            replay_before = replay_dice(old, rep_acts, rep_t, structures)
            history["segmentation"] = train_segmentation_classifier(decoder, acts, targets, rep_acts, job, progress)
            for c, a in zip(seg_cases, acts):
                c.metrics["dice_after"] = label_dice(labels_from_activations(decoder, a), c.seg_target, structures.values,
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
            c.metrics["probabilities_before"] = finding_probabilities(heads, heads["mpae"], c)
        mpae = heads["mpae"]
        if diag_cases:
            mpae = copy.deepcopy(heads["mpae"])
            history["diagnosis"] = train_diagnosis_linears(mpae, diag_cases, replay, job, progress)
            new_heads["mpae"] = mpae
        for c in cases:
            c.metrics["probabilities_after"] = finding_probabilities(heads, mpae, c)

        timer.start("writing", str(user_store.root))
        carried_files = _extra_files(base, manifest)
        parent = _ensure_user_base(user_store, base_dir, heads, manifest, carried_files, log)
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
        version = user_store.save(new_heads, new_manifest, parent=parent, files=carried_files,
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
