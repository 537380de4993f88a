"""Cohort → fitted, versioned head set: diagnosis (MPAE, + EHR late fusion when the manifest has
EHR columns) and segmentation (one plane's decoder on that plane's network grid, partial labels
from ``annotated_classes``). Metrics on the manifest's ``val`` split go into the head manifest.
The version also keeps a small replay sample of the training cases (``heads.replay``) for
``orthodiffusion finetune``.

With ``finetune_backbone`` (Stage I, ``adapt.stage1``) the encoders are trained with the task's
head first; their files (only the unfrozen blocks' tensors) go into the version next to the
weights (``encoders`` in the manifest, sha256 in ``files``), and every head is fitted on the
features of those encoders (cache keys name the effective encoder).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..evaluation.classification import auroc_per_label
from ..evaluation.segmentation import label_dice

from .. import DISCLAIMER, __version__
from ..errors import UserError
from ..jobs import FitJob



def _labels(rows, keys) -> np.ndarray:
    return np.array([[np.nan if r.findings.get(k) is None else float(r.findings[k]) for k in keys] for r in rows],
                    dtype=np.float32).reshape(len(rows), len(keys))


def _feature_settings(planes) -> dict:
    return {p: (int(v["timestep"]), v["block"]) for p, v in (planes or {}).items()}


def annotated_mask(rows, structure_keys) -> torch.Tensor:
    """bool [N, 1 + n_structures]; background always annotated; no column = everything annotated."""
    m = torch.ones(len(rows), 1 + len(structure_keys), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r.annotated_classes is not None:
            have = set(r.annotated_classes)
            m[i, 1:] = torch.tensor([k in have for k in structure_keys])
    return m


def fit_heads(job: FitJob, log=print, progress: bool = True) -> dict:
    """Run a fit job; returns {"version", "store", "manifest", "seconds"}."""
    from ..runtime import cpu_cores

    job.validate()
    threads_before = torch.get_num_threads()
    # The CPU budget, all cores by default: the segmentation decoder uses them as torch threads,
    # the diagnosis experts as single-thread worker processes (fit_mpae). On a machine busy with
    # other jobs, --threads 1 avoids oversubscription.
    torch.set_num_threads(job.threads or cpu_cores())
    try:
        with tempfile.TemporaryDirectory(prefix="orthodiffusion-fit-") as work:  # Stage-I encoder files
            return _fit_heads(job, log, progress, Path(work))
    finally:
        torch.set_num_threads(threads_before)


def _changed_planes(backbones: dict, parent_manifest: dict, published: dict) -> list:
    """Planes whose features (the encoder that makes them) differ from the parent head set's."""
    from ..models.loading import effective_backbone_shas

    before = effective_backbone_shas(parent_manifest) if parent_manifest else {}
    return [p for p, (_, sha) in backbones.items() if sha != before.get(p, published[p])]


def _dependent_refits(job, modules: dict, changed: list, do_diag: bool, do_seg: bool, train_rows, log):
    """Carried-over heads that read a plane whose encoder this job changed: diagnosis heads (they
    read every plane) are refitted, a segmentation head is refitted when the manifest has its
    label maps, else dropped. Returns (modules, do_diag, do_seg)."""
    if not changed or not modules:
        return modules, do_diag, do_seg
    if not do_diag and ("mpae" in modules or "ehr" in modules):
        log(f"note: the {', '.join(changed)} encoder changed; the diagnosis heads are refitted on its features")
        do_diag = True
    for name in [k for k in modules if k.startswith("seg_") and k[4:] in changed]:
        plane = name[4:]
        if plane == job.seg_plane and (do_seg or any(r.labels.get(f"labels_{plane}") for r in train_rows)):
            if not do_seg:
                log(f"note: the {plane} encoder changed; {name} is refitted on its features")
            do_seg = True
        else:
            log(f"note: {name} dropped: it was fitted on the {plane} features of another encoder")
            modules = {k: v for k, v in modules.items() if k != name}
    return modules, do_diag, do_seg


def _fit_heads(job: FitJob, log, progress: bool, work: Path) -> dict:
    from ..io.manifest import read_manifest
    from ..device import resolve_device
    from ..evaluation.classification import choose_thresholds
    from ..features import FeatureCache
    from ..heads import HeadStore, label_fraction_subset, load_head_set, save_head_set
    from ..heads.fit import FitConfig, fit_ehr_fusion, fit_mpae, fit_segmentation
    from ..labelsets import load_label_set
    from ..models.catalogue import get_model
    from ..features.cohort import extract_cohort
    from ..models.loading import apply_head_encoders, load_backbones
    from .stage1 import encoder_record, run_stage1

    t_start = time.perf_counter()
    spec = get_model(job.model)
    finding_set = spec.label_sets.get("findings", "knee-8")
    structure_set = load_label_set(spec.label_sets.get("structures", "knee-11"))
    manifest = read_manifest(job.manifest, label_set=finding_set)
    keys = load_label_set(finding_set).keys
    train_rows = [r for r in manifest.rows if r.split in (None, "train")]
    val_rows = [r for r in manifest.rows if r.split == "val"]
    if len(train_rows) < 4:
        raise UserError(f"{job.manifest}: {len(train_rows)} training rows; fitting needs at least 4")
    do_diag = job.task in ("diagnosis", "all")
    do_seg = job.task in ("segmentation", "all")

    y_all = _labels(train_rows, keys)
    groups = [r.patient_id for r in train_rows]
    if job.label_fraction < 1:
        keep = np.sort(label_fraction_subset(y_all, job.label_fraction, job.seed, groups))
        train_rows = [train_rows[i] for i in keep]
        log(f"label fraction {job.label_fraction}: {len(train_rows)} training cases")

    device = resolve_device(job.device)
    cache = FeatureCache(job.cache)
    backbones = load_backbones(spec, device=device)
    published = {p: sha for p, (_, sha) in backbones.items()}

    store_dir = job.out or str(spec.heads_for_write())
    store = HeadStore(store_dir)
    parent = job.parent or store.current()
    # heads not refitted by this job come from the parent (or the model's current heads)
    base_dir, base_version = (store_dir, parent) if parent else (str(spec.heads_for_read()), None)
    modules, base_manifest = {}, {}
    if HeadStore(base_dir).current():
        modules, base_manifest = load_head_set(base_dir, base_version)
        fitted_on = base_manifest.get("feature_spec")
        if fitted_on and _feature_settings(fitted_on) != _feature_settings(spec.planes):
            # e.g. after `sweep --write-config`: heads of other (t, block) features must not be carried over
            log("note: the parent heads were fitted on other features (t, block); only what this job fits is kept")
            modules, base_manifest = {}, {}
        elif any((base_manifest.get("backbones") or {}).get(p, sha) != sha for p, sha in published.items()):
            # their features (and any fine-tuned encoder) came from other published backbones
            log("note: the parent heads were fitted on other backbones; only what this job fits is kept")
            modules, base_manifest = {}, {}
    # Encoders: heads carried over keep the encoders their features came from (a partial fit on a
    # Stage-I head set); this job's Stage I replaces those of the planes it trains.
    timings, files, encoders, stage1_decoder = {}, {}, {}, None
    trains = (list(backbones) if job.task == "diagnosis" else [job.seg_plane]) if job.finetune_backbone else []
    if modules and job.task != "all":
        encoders = {p: r for p, r in (base_manifest.get("encoders") or {}).items() if p not in trains}
        backbones = apply_head_encoders(backbones, base_dir, {**base_manifest, "encoders": encoders})
        files = {r["file"]: HeadStore(base_dir).extra_file(r["file"], base_manifest["version"])
                 for r in encoders.values()}
    if job.finetune_backbone:
        t0 = time.perf_counter()
        log(f"[stage I] fine-tuning the last {job.unfreeze} block(s) up to the feature block of "
            f"{', '.join(trains)} with the {job.task} head (at most {job.finetune_epochs} epochs)")
        fits = run_stage1(job, spec, train_rows, _labels(train_rows, keys), annotated_mask(train_rows, structure_set.keys),
                          1 + len(structure_set.keys), backbones, published, work, log, progress)
        for fit in fits:
            backbones[fit.plane] = (backbones[fit.plane][0], fit.effective_sha256)
            encoders[fit.plane] = encoder_record(fit, job, published[fit.plane])
            files[fit.path.name] = fit.path
            if fit.decoder is not None:
                stage1_decoder = fit.decoder
        timings["stage1_s"] = round(time.perf_counter() - t0, 2)
    modules, do_diag, do_seg = _dependent_refits(job, modules, _changed_planes(backbones, base_manifest, published),
                                                 do_diag, do_seg, train_rows, log)

    seg_plane = job.seg_plane if do_seg else None
    t0 = time.perf_counter()
    log(f"[features] {len(train_rows)} train + {len(val_rows)} val cases, planes {', '.join(backbones)}"
        + (f" (fine-tuned encoders: {', '.join(encoders)})" if encoders else ""))
    with torch.no_grad():
        tr = extract_cohort(train_rows, spec, backbones, device, cache, seg_plane, job.seed, progress)
        va = extract_cohort(val_rows, spec, backbones, device, cache, seg_plane, job.seed, progress) if val_rows else None
    timings["features_s"] = round(time.perf_counter() - t0, 2)
    feature_cache = {"hits": cache.hits, "misses": cache.misses}

    metrics = dict(base_manifest.get("metrics", {}))
    thresholds = dict(base_manifest.get("thresholds", {}))
    data_summary = {"manifest": str(manifest.path), "n_train": len(train_rows), "n_val": len(val_rows),
                    "label_fraction": job.label_fraction,
                    "centers": sorted({r.center for r in train_rows if r.center}),
                    "positives_train": {k: int(np.nansum(_labels(train_rows, keys)[:, i])) for i, k in enumerate(keys)},
                    "synthetic": any(str(r.study_id).startswith("SYN") for r in train_rows)}

    if do_diag:
        t0 = time.perf_counter()
        y = _labels(train_rows, keys)
        cfg = FitConfig(seed=job.seed, max_epochs=job.max_epochs)
        log(f"[diagnosis] MPAE: {job.folds}-fold out-of-fold experts, gate, refit ({len(keys)} labels)")
        head, rep = fit_mpae(tr.features, y, tr.present, cfg=cfg, n_folds=job.folds,
                             groups=[r.patient_id for r in train_rows], workers=torch.get_num_threads())
        modules = {k: v for k, v in modules.items() if k not in ("mpae", "ehr")}
        modules["mpae"] = head
        oof_logits = rep["oof_logits"]
        has_ehr = any(any(v not in (None, "") for v in r.ehr.values()) for r in train_rows)
        ehr_head = None
        if has_ehr:
            log("[diagnosis] EHR late fusion on out-of-fold MRI logits")
            records = [dict(r.ehr) for r in train_rows]
            ehr_head, ehr_hist = fit_ehr_fusion(oof_logits, records, y, cfg=FitConfig(lr=1e-2, seed=job.seed))
            modules["ehr"] = ehr_head
            with torch.no_grad():
                oof_logits = ehr_head(oof_logits, records)
            metrics["ehr_alpha"] = dict(zip(keys, ehr_hist["alpha"]))
        oof_p = torch.sigmoid(oof_logits).numpy()
        th = choose_thresholds(y, oof_p, "youden", labels=keys)
        thresholds = {k: (0.5 if (v is None or math.isnan(v)) else min(max(float(v), 0.0), 1.0)) for k, v in th.items()}
        metrics["diagnosis_oof"] = auroc_per_label(y, oof_p, keys)
        if va is not None:
            with torch.no_grad():
                logits = head(va.features, va.present).logits
                if ehr_head is not None:
                    logits = ehr_head(logits, [dict(r.ehr) for r in val_rows])
            metrics["diagnosis_val"] = auroc_per_label(_labels(val_rows, keys), torch.sigmoid(logits).numpy(), keys)
        timings["diagnosis_s"] = round(time.perf_counter() - t0, 2)
        m = metrics.get("diagnosis_val") or metrics["diagnosis_oof"]
        log(f"[diagnosis] done in {timings['diagnosis_s']} s; macro AUROC "
            f"({'val' if 'diagnosis_val' in metrics else 'oof'}) {m['macro_auroc']}")

    if do_seg:
        t0 = time.perf_counter()
        if tr.seg_targets is None or tr.features.get(seg_plane) is None:
            raise UserError(f"{job.manifest}: no labels_{seg_plane} label maps among the training rows")
        idx = np.flatnonzero(tr.seg_has_labels)
        feats = tr.features[seg_plane][idx]
        targets = tr.seg_targets[idx]
        annotated = annotated_mask([train_rows[i] for i in idx], structure_set.keys)
        n_classes = 1 + len(structure_set.keys)
        log(f"[segment] {seg_plane} decoder on {len(idx)} label maps {tuple(targets.shape[1:])}, {n_classes} classes")
        if stage1_decoder is not None:  # trained with the encoder (Stage I)
            decoder, hist = stage1_decoder, encoders[seg_plane]["history"]
        else:
            decoder, hist = fit_segmentation(feats, targets, n_classes, annotated,
                                             cfg=FitConfig(lr=3e-3, batch_size=4, max_epochs=job.seg_epochs,
                                                           patience=10, seed=job.seed))
        modules[f"seg_{seg_plane}"] = decoder
        metrics[f"segmentation_{seg_plane}_history"] = hist
        if va is not None and va.seg_targets is not None:
            vi = np.flatnonzero(va.seg_has_labels)
            with torch.no_grad():
                pred = decoder(va.features[seg_plane][vi]).argmax(1)
            metrics[f"segmentation_{seg_plane}_val"] = label_dice(pred, va.seg_targets[vi], structure_set.values,
                                                             structure_set.keys)
        timings["segmentation_s"] = round(time.perf_counter() - t0, 2)
        md = (metrics.get(f"segmentation_{seg_plane}_val") or {}).get("mean_dice")
        log(f"[segment] done in {timings['segmentation_s']} s; val mean Dice {md}")

    head_manifest = {
        "label_set": finding_set,
        "structures_label_set": structure_set.id if hasattr(structure_set, "id") else spec.label_sets.get("structures"),
        "task": job.task,
        "model": {"id": spec.id, "version": spec.version},
        "feature_spec": {p: {"timestep": int(v["timestep"]), "block": v["block"], "seed": job.seed,
                             "preprocessing": spec.preprocessing} for p, v in spec.planes.items()},
        "backbones": published,
        **({"encoders": encoders} if encoders else {}),
        "segmentation_planes": sorted(k[4:] for k in modules if k.startswith("seg_")),
        "thresholds": thresholds,
        "data_summary": data_summary,
        "metrics": metrics,
        "fit_job": job.to_dict(),
        "timings": timings,
        "feature_cache": feature_cache,
        "derived_from": None if parent else ({"store": base_dir, "version": base_manifest.get("version")}
                                             if base_manifest else None),
        "software": {"orthodiffusion": __version__, "torch": torch.__version__},
        "disclaimer": DISCLAIMER,
    }
    if job.replay > 0:
        from ..heads.replay import REPLAY_FILE, build_replay, choose_replay_cases, replay_metadata

        y_train = _labels(train_rows, keys)
        seg_targets = tr.seg_targets if do_seg else None
        has_seg = tr.seg_has_labels if seg_targets is not None else np.zeros(len(train_rows), bool)
        pick = choose_replay_cases(y_train, has_seg, job.replay, job.seed)
        files[REPLAY_FILE] = build_replay(tr.features, tr.present, y_train, pick,
                                          seg_plane if seg_targets is not None else None, seg_targets,
                                          annotated_mask(train_rows, structure_set.keys))
        head_manifest["replay"] = replay_metadata(seg_plane if seg_targets is not None else None, len(pick), job.seed)
        log(f"[writing] replay sample: {len(pick)} training cases")
    version = save_head_set(store_dir, modules, head_manifest, parent=parent, files=files)
    seconds = round(time.perf_counter() - t_start, 2)
    log(f"[writing] head set {version} (parent {parent}) in {store_dir}; {seconds} s")
    return {"version": version, "store": str(store_dir), "manifest": head_manifest, "seconds": seconds}
