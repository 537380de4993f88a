"""One study → CaseResult + arrays: per plane preprocess, K-draw features, MPAE diagnosis (mean
and spread over draws, plane weights), per-plane segmentation fused on the reference grid.

Stage tags printed for the Slicer module: [loading] [preprocess] [features] [segment] [diagnose]
[writing]. Research use only, not for clinical decisions.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import DISCLAIMER, __version__
from ..errors import InputError, UserError
from ..jobs import PredictJob

from ..planes import PLANES


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (1024 * 1024) if sys.platform == "darwin" else r / 1024, 1)


class StageTimer:
    """Per-stage wall time and peak resident memory (the process's high-water mark after the stage)."""

    def __init__(self, log=print):
        self.log, self.stages, self._t = log, {}, None

    def start(self, name: str, message: str = "") -> None:
        self._stop()
        self.log(f"[{name}] {message}".rstrip())
        self._t = (name, time.perf_counter())

    def _stop(self) -> None:
        if self._t:
            name, t0 = self._t
            prev = self.stages.get(name, {"seconds": 0.0})
            self.stages[name] = {"seconds": round(prev["seconds"] + time.perf_counter() - t0, 3),
                                 "peak_rss_mb": peak_rss_mb()}
            self._t = None

    def finish(self) -> dict:
        self._stop()
        return self.stages


def parse_ehr(text: str | dict | None) -> dict | None:
    """'age=54,sex=F,...' or a JSON file path (or a dict) → EHR record (validated by the heads)."""
    if text is None or text == "":
        return None
    if isinstance(text, dict):
        return dict(text)
    p = Path(text).expanduser()
    if p.suffix.lower() == ".json" or p.is_file():
        if not p.is_file():
            raise InputError(f"--ehr {text}: file not found")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"--ehr {text}: invalid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(f"--ehr {text}: expected a JSON object of EHR fields")
        return data
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise InputError(f"--ehr: '{part}' is not KEY=VALUE (e.g. age=54,sex=F,height_cm=170,weight_kg=70)")
        k, v = (s.strip() for s in part.split("=", 1))
        try:
            out[k] = float(v) if k in ("age", "height_cm", "weight_kg") else v
        except ValueError:
            raise InputError(f"--ehr: {k}={v} is not a number") from None
    return out


def validate_ehr(record: dict | None) -> dict | None:
    """Check fields, ranges and codes now (as the EHR head would, after minutes of work)."""
    if record:
        from ..ehr import check_record

        return check_record(record, "--ehr")  # one rule with the manifest reader
    return record


@dataclass
class LoadedModel:
    spec: object
    backbones: dict            # plane -> (model, sha256)
    heads: dict
    head_manifest: dict
    head_store: Path
    device: object


def load_model(model_id: str, device="cpu", heads_version: str | None = None) -> LoadedModel:
    from ..heads import HeadStore, load_head_set
    from ..models.catalogue import get_model
    from ..features.cohort import load_backbones

    spec = get_model(model_id)
    store = spec.heads_for_read()
    if not HeadStore(store).current() and heads_version is None:
        raise UserError(f"model '{spec.id}' has no fitted heads in {store}; fit them with "
                        f"`orthodiffusion fit --model {spec.id} --manifest COHORT.csv`")
    heads, manifest = load_head_set(store, heads_version)
    backbones = load_backbones(spec, device=device)
    for p, (_, sha) in backbones.items():
        want = (manifest.get("backbones") or {}).get(p)
        if want and want != sha:
            raise UserError(f"head set {manifest.get('version')} in {store} was fitted on another {p} backbone "
                            f"(sha256 {want[:12]}… vs {sha[:12]}…); refit the heads")
        fitted = (manifest.get("feature_spec") or {}).get(p)  # e.g. changed by `sweep --write-config`
        if fitted and (int(fitted["timestep"]), fitted["block"]) != (int(spec.planes[p]["timestep"]),
                                                                     spec.planes[p]["block"]):
            raise UserError(f"head set {manifest.get('version')} in {store} was fitted on {p} features at "
                            f"t={fitted['timestep']} {fitted['block']}, the model now uses "
                            f"t={spec.planes[p]['timestep']} {spec.planes[p]['block']}; refit the heads "
                            f"(orthodiffusion fit --model {spec.id} --manifest …)")
    return LoadedModel(spec, backbones, heads, manifest, Path(store), device)


@dataclass
class PlaneData:
    plane: str
    source: str
    reformatted: bool
    image: object             # SimpleITK source image
    array: np.ndarray         # network input [D, H, W]
    transform: object
    content_hash: str
    features: torch.Tensor | None = None      # [K, C, d, h, w]
    seg_network: np.ndarray | None = None     # [C, D, H, W] mean probabilities on the network grid


@dataclass
class Prediction:
    result: object                         # CaseResult
    labels: object                         # SimpleITK label image on the reference grid
    uncertainty: object
    reference_image: object
    planes: dict                           # plane -> PlaneData
    probabilities: np.ndarray              # [K_findings] mean
    spread: np.ndarray
    plane_weights: np.ndarray              # [K_findings, 3]
    draw_probabilities: np.ndarray         # [draws, K_findings]
    structure_volumes_ml: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    out_dir: Path | None = None


def _resample_vector(img, reference):
    import SimpleITK as sitk

    return sitk.Resample(img, reference, sitk.Transform(), sitk.sitkLinear, 0.0, img.GetPixelID())


def predict_study(job: PredictJob, loaded: LoadedModel | None = None, log=print, write: bool = True,
                  after_write=None) -> Prediction:
    """``after_write(pred)`` runs on the staged folder (``pred.out_dir``) before it is renamed into
    place, so exports such as pseudonymisation are never seen half done."""
    import SimpleITK as sitk

    from ..device import resolve_device
    from ..features import FeatureCache, FeatureExtractor
    from ..heads import fuse_plane_probabilities
    from ..io import load_study, preprocess, volume_hash
    from ..labelsets import load_label_set
    from ..io.headers import source_sha256  # the header and its detached data files
    from ..ownership import check_replaceable, refuse_inputs_inside
    from ..results.folder import CaseResult, Finding, write_result_folder
    from .guard import guard_predict

    job.validate()
    if job.draws is None:  # the model's default (catalogue ``inference.draws``)
        from ..models.catalogue import get_model

        job = replace(job, draws=(loaded.spec if loaded else get_model(job.model)).default_draws)
    t_all = time.perf_counter()
    timer = StageTimer(log)
    timer.start("loading", f"model {job.model}, study {' '.join(str(p) for p in job.all_inputs)}")
    # inputs first (headers, then pixels), weights last: a bad input fails fast and leaves nothing
    if write:
        check_replaceable(job.out, "case")
        refuse_inputs_inside(job.out, job.all_inputs)
    guard_predict(job.all_inputs, job.model, job.draws, job.max_voxels, job.max_memory_gb, log=log,
                  reformat=job.reformat)
    ehr = validate_ehr(parse_ehr(job.ehr))
    study = load_study([str(p) for p in job.inputs], echo=job.echo, reformat=job.reformat, ehr=ehr, planes=job.planes)
    device = loaded.device if loaded else resolve_device(job.device)
    if loaded is None:
        loaded = load_model(job.model, device, job.heads_version)
    spec, heads, hman = loaded.spec, loaded.heads, loaded.head_manifest
    warnings = list(study.warnings)
    usable = {p: s for p, s in study.planes.items() if p in loaded.backbones}
    for p in study.planes:
        if p not in loaded.backbones:
            warnings.append(f"{p} series ignored: model {spec.id} has no {p} backbone")
    if not usable:
        raise InputError(f"no plane of the study ({', '.join(study.planes) or 'none'}) is supported by model "
                         f"{spec.id} ({', '.join(loaded.backbones)})")
    reference = job.reference or ("sagittal" if "sagittal" in usable else next(iter(usable)))
    if reference not in usable:
        raise InputError(f"--reference {reference}: the study has no {reference} series "
                         f"(present: {', '.join(usable)})")
    case_id = job.case_id or Path(str(job.all_inputs[0]).rstrip("/")).name.split(".")[0] or "case"

    timer.start("preprocess", f"planes present: {', '.join(usable)}")
    planes: dict[str, PlaneData] = {}
    for plane, series in usable.items():
        model = loaded.backbones[plane][0]
        arr, tr = preprocess(series.image, mode=spec.preprocessing, plane=plane, depth=model.config.depth_size,
                             size=(model.config.image_size, model.config.image_size))
        if tr.warning:  # the outlier guard clipped saturated voxels
            warnings.append(tr.warning)
        planes[plane] = PlaneData(plane, str(series.info.source), bool(series.info.reformatted), series.image,
                                  arr, tr, volume_hash(series.image))

    timer.start("features", f"{job.draws} noise draw(s) per plane")
    cache = None if job.no_cache else FeatureCache(job.cache)
    seed = int((hman.get("feature_spec") or {}).get(reference, {}).get("seed", job.seed))
    with torch.no_grad():
        for plane, pd in planes.items():
            model, sha = loaded.backbones[plane]
            # CPU: one draw per pass. Batching K draws saves no time there but multiplies the
            # activations (released config, one plane, K=3: 4.2 vs 1.7 GiB peak; bench/predict.md)
            ex = FeatureExtractor(model, device=device, backbone_sha256=sha, cache=cache,
                                  max_batch=1 if torch.device(device).type == "cpu" else 4)
            feats = ex.extract(pd.array, pd.content_hash, plane, spec.feature_spec(plane, job.draws, seed))
            pd.features = next(iter(feats.values())).float().cpu()
            log(f"  {plane}: features {tuple(pd.features.shape)}")

    structures = load_label_set(spec.label_sets.get("structures", "knee-11"))
    ref_img = planes[reference].image
    seg_planes = [p for p in planes if f"seg_{p}" in heads]
    timer.start("segment", f"planes with a segmentation head: {', '.join(seg_planes) or 'none'}")
    probs_ref, valid_ref = [], []
    with torch.no_grad():
        for plane in seg_planes:
            pd = planes[plane]
            logits = heads[f"seg_{plane}"](pd.features)
            pd.seg_network = torch.softmax(logits, 1).mean(0).numpy().astype(np.float32)
            prob_img = pd.transform.to_source(pd.seg_network, is_label=False)
            cover_img = pd.transform.to_source(np.ones(pd.array.shape, np.uint8), is_label=True)
            if plane != reference:
                prob_img = _resample_vector(prob_img, ref_img)
                cover_img = sitk.Resample(cover_img, ref_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            p = sitk.GetArrayFromImage(prob_img)          # [z, y, x, C]
            probs_ref.append(np.moveaxis(p, -1, 0))
            valid_ref.append(sitk.GetArrayFromImage(cover_img) > 0)
    if probs_ref:
        fused = fuse_plane_probabilities(probs_ref, valid_ref)
        lab_arr = fused["labels"].astype(np.uint8)
        unc_arr = fused["entropy"].astype(np.float32)
    else:
        warnings.append("no segmentation head for the present planes: empty label map")
        lab_arr = np.zeros(sitk.GetArrayViewFromImage(ref_img).shape[:3], np.uint8)
        unc_arr = np.ones_like(lab_arr, dtype=np.float32)
    labels_img = sitk.GetImageFromArray(lab_arr)
    labels_img.CopyInformation(ref_img)
    unc_img = sitk.GetImageFromArray(unc_arr)
    unc_img.CopyInformation(ref_img)
    voxel_ml = float(np.prod(ref_img.GetSpacing())) / 1000.0
    counts = np.bincount(lab_arr.ravel(), minlength=max(structures.values) + 1)
    volumes = {lab["key"]: round(float(counts[lab["value"]]) * voxel_ml, 3) for lab in structures.labels}

    timer.start("diagnose", "MPAE over present planes" + (" + EHR fusion" if ehr and "ehr" in heads else ""))
    findings_set = load_label_set(hman.get("label_set", "knee-8"))
    k = job.draws
    feats = {p: (planes[p].features if p in planes else None) for p in PLANES}
    present = torch.tensor([[p in planes for p in PLANES]] * k)
    with torch.no_grad():
        out = heads["mpae"](feats, present)
        logits = out.logits
        if ehr and "ehr" in heads:
            logits = heads["ehr"](logits, [ehr] * k)
        elif ehr:
            warnings.append("EHR given but this head set has no EHR fusion head: ignored")
    draw_p = torch.sigmoid(logits).numpy()
    prob, spread = draw_p.mean(0), draw_p.std(0)
    weights = out.plane_weights.mean(0).numpy()  # [K, 3]
    thresholds = hman.get("thresholds", {})
    findings = []
    for i, lab in enumerate(findings_set.labels):
        th = float(thresholds.get(lab["key"], 0.5))
        findings.append(Finding(key=lab["key"], name=lab["name"], probability=float(prob[i]), spread=float(spread[i]),
                                decision=bool(prob[i] >= th), threshold=th,
                                plane_weights={p: float(weights[i, j]) for j, p in enumerate(PLANES)}))

    if write:
        timer.start("writing", str(job.out))
    provenance = {
        "orthodiffusion_version": __version__, "torch": torch.__version__, "device": str(device),
        "model": {"id": spec.id, "version": spec.version, "source": spec.source,
                  "backbones": {p: sha for p, (_, sha) in loaded.backbones.items()},
                  "heads": {"store": str(loaded.head_store), "version": hman.get("version"),
                            "weights_sha256": hman.get("weights_sha256"),
                            "fitted_on_synthetic": bool((hman.get("data_summary") or {}).get("synthetic"))}},
        "feature_spec": {p: {**spec.planes[p], "draws": k, "seed": seed, "preprocessing": spec.preprocessing}
                         for p in planes},
        "inputs": {p: {"source": pd.source, "reformatted": pd.reformatted, "content_hash": pd.content_hash,
                       **({"file_sha256": source_sha256(pd.source)} if Path(pd.source).is_file() else {})}
                   for p, pd in planes.items()},
        "planes_used": list(planes), "planes_missing": [p for p in PLANES if p not in planes],
        "reformatted_planes": [p for p, pd in planes.items() if pd.reformatted],
        "segmentation_planes": seg_planes, "ehr_used": bool(ehr and "ehr" in heads),
        "structure_volumes_ml": volumes, "warnings": warnings, "job": job.to_dict(),
    }
    result = CaseResult(case_id=case_id, reference_plane=reference, planes_present=list(planes), findings=findings,
                        model={"id": spec.id, "version": spec.version}, head_version=str(hman.get("version")),
                        provenance=provenance, timings={})
    pred = Prediction(result, labels_img, unc_img, ref_img, planes, prob, spread, weights, draw_p, volumes, warnings)
    stages = timer.finish()
    result.timings = {f"{s}_s": v["seconds"] for s, v in stages.items() if s != "writing"}
    result.timings["peak_rss_mb"] = peak_rss_mb()
    result.provenance["stages"] = {s: v for s, v in stages.items() if s != "writing"}
    if write:
        from ..storage import atomic_write_json, staged_folder

        t0 = time.perf_counter()
        with staged_folder(job.out) as stage:  # the folder appears whole or not at all
            write_result_folder(result, labels_img, stage, uncertainty=unc_img)
            result.timings["writing_s"] = round(time.perf_counter() - t0, 3)
            atomic_write_json(stage / "timings.json", {
                "disclaimer": DISCLAIMER, "stages": {**result.provenance["stages"],
                                                     "writing": {"seconds": result.timings["writing_s"],
                                                                 "peak_rss_mb": peak_rss_mb()}},
                "total_s": round(time.perf_counter() - t_all, 3)})
            if after_write is not None:
                pred.out_dir = stage
                after_write(pred)
        pred.out_dir = result.directory = Path(job.out)
    result.timings["total_s"] = round(time.perf_counter() - t_all, 3)
    return pred
