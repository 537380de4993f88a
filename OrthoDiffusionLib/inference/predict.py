"""One study → result folder, one function per stage:

``check_job`` (output folder, inputs inside it, headers and memory, EHR) → ``load_study`` (io) →
``prepare_planes`` (features.prepare_plane) → ``extract_features`` (features.plane_features) →
``segment_study`` (heads.segment per plane, fused on the reference grid) → ``diagnose``
(heads.diagnose) → ``build_result`` → ``write_prediction`` (results.write_result_folder, staged).

Stage tags printed for the Slicer module: [loading] [preprocess] [features] [segment] [diagnose]
[writing]. Research use only, not for clinical decisions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .. import DISCLAIMER, __version__
from ..ehr import parse_ehr, validate_ehr
from ..errors import InputError
from ..features.plane import PlaneInput, plane_features, prepare_plane, prepare_windows, single_features
from ..heads.inference import Diagnosis, diagnose, segment, segmentation_planes
from ..jobs import PredictJob
from ..models.loading import LoadedModel, load_model
from ..planes import PLANES
from ..results.folder import CaseResult
from ..runtime import StageTimer, peak_rss_mb
from .windows import blend_windows


@dataclass
class PlaneData(PlaneInput):
    """A plane of the study as predict uses it: the network input plus where it came from."""

    source: str = ""
    reformatted: bool = False
    features: torch.Tensor | None = None      # [K, C, d, h, w]
    seg_network: np.ndarray | None = None     # [C, D, H, W] mean probabilities on the network grid
    windows: list = field(default_factory=list)  # sliding segmentation: the other windows (PlaneInputs)
    window_features: list = field(default_factory=list)


@dataclass
class Segmentation:
    labels: sitk.Image        # label map on the reference grid
    uncertainty: sitk.Image   # per-voxel entropy on the reference grid
    planes: list              # planes whose decoder contributed
    volumes_ml: dict          # structure key -> mL


@dataclass
class Prediction:
    result: CaseResult
    labels: sitk.Image                     # label map on the reference grid
    uncertainty: sitk.Image
    reference_image: sitk.Image
    planes: dict                           # plane -> PlaneData
    diagnosis: Diagnosis
    structure_volumes_ml: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    out_dir: Path | None = None

    @property
    def probabilities(self) -> np.ndarray:
        return self.diagnosis.probabilities

    @property
    def spread(self) -> np.ndarray:
        return self.diagnosis.spread

    @property
    def plane_weights(self) -> np.ndarray:
        return self.diagnosis.plane_weights

    @property
    def draw_probabilities(self) -> np.ndarray:
        return self.diagnosis.draw_probabilities


# --------------------------------------------------------------------------------------- stages

def check_job(job: PredictJob, write: bool, log) -> dict | None:
    """Before any pixel or weight is read: the output folder, inputs inside it, headers against the
    voxel and memory limits, the EHR. Returns the validated EHR record."""
    from ..ownership import check_replaceable, refuse_inputs_inside
    from .guard import guard_predict

    if write:
        check_replaceable(job.out, "case")
        refuse_inputs_inside(job.out, job.all_inputs)
    guard_predict(job.all_inputs, job.model, job.draws, job.max_voxels, job.max_memory_gb, log=log,
                  reformat=job.reformat, windows=job.windows)
    return validate_ehr(parse_ehr(job.ehr))


def prepare_planes(study, loaded: LoadedModel, job: PredictJob, warnings: list) -> tuple[dict, str]:
    """The study's planes the model has a backbone for, on their network grids; the reference plane."""
    usable = {p: s for p, s in study.planes.items() if p in loaded.backbones}
    for p in study.planes:
        if p not in loaded.backbones:
            warnings.append(f"{p} series ignored: model {loaded.spec.id} has no {p} backbone")
    if not usable:
        raise InputError(f"no plane of the study ({', '.join(study.planes) or 'none'}) is supported by model "
                         f"{loaded.spec.id} ({', '.join(loaded.backbones)})")
    reference = job.reference or ("sagittal" if "sagittal" in usable else next(iter(usable)))
    if reference not in usable:
        raise InputError(f"--reference {reference}: the study has no {reference} series "
                         f"(present: {', '.join(usable)})")
    mode, overlap = window_setting(loaded, job, warnings)
    seg = segmentation_planes(loaded.heads, usable)
    planes = {}
    for plane, series in usable.items():
        config = loaded.backbones[plane][0].config
        ready = prepare_plane(series.image, plane, config, loaded.spec.preprocessing)
        if ready.transform.warning:  # the outlier guard clipped saturated voxels
            warnings.append(ready.transform.warning)
        planes[plane] = pd = PlaneData(**vars(ready), source=str(series.info.source),
                                       reformatted=bool(series.info.reformatted))
        if mode == "sliding" and plane in seg:  # the central window is pd itself (diagnosis uses it)
            pd.windows = [w for w in prepare_windows(series.image, plane, config, loaded.spec.preprocessing, overlap)
                          if w.content_hash != pd.content_hash]
    return planes, reference


def window_setting(loaded: LoadedModel, job: PredictJob, warnings: list) -> tuple[str, float]:
    """(mode, overlap) of the segmentation windows: the job's, else the model's."""
    mode, overlap = loaded.spec.segmentation_windows
    mode = job.windows or mode
    if mode == "sliding" and loaded.spec.preprocessing != "released":
        warnings.append(f"sliding segmentation windows need the released preprocessing (this model uses "
                        f"{loaded.spec.preprocessing}): the central window is segmented")
        mode = "central"
    return mode, overlap


def feature_seed(loaded: LoadedModel, reference: str, job: PredictJob) -> int:
    """The noise seed the heads were fitted with (their manifest), else the job's."""
    return int((loaded.head_manifest.get("feature_spec") or {}).get(reference, {}).get("seed", job.seed))


def extract_features(planes: dict, loaded: LoadedModel, job: PredictJob, seed: int, log) -> None:
    from ..features import FeatureCache

    cache = None if job.no_cache else FeatureCache(job.cache)
    for plane, pd in planes.items():
        spec = loaded.spec.feature_spec(plane, job.draws, seed)
        pd.features = single_features(plane_features(loaded.backbones[plane], pd, spec, cache, loaded.device))
        pd.window_features = [single_features(plane_features(loaded.backbones[plane], w, spec, cache, loaded.device))
                              for w in pd.windows]
        log(f"  {plane}: features {tuple(pd.features.shape)}"
            + (f" (+ {len(pd.windows)} more slice window(s) for the segmentation)" if pd.windows else ""))


def _resample_vector(img, reference):
    return sitk.Resample(img, reference, sitk.Transform(), sitk.sitkLinear, 0.0, img.GetPixelID())


def segment_study(planes: dict, loaded: LoadedModel, reference: str, warnings: list) -> Segmentation:
    """Each plane's decoder (mean over draws), its probabilities resampled onto the reference grid
    and fused over the planes that cover each voxel."""
    from ..heads import fuse_plane_probabilities
    from ..labelsets import load_label_set

    ref_img = planes[reference].image
    seg_planes = segmentation_planes(loaded.heads, planes)
    probs_ref, valid_ref = [], []
    for plane in seg_planes:
        pd = planes[plane]
        pd.seg_network = segment(loaded.heads, plane, pd.features)
        if pd.windows:  # every slice: overlapping windows blended on the series grid
            windows = [pd, *pd.windows]
            probs = [pd.seg_network, *(segment(loaded.heads, plane, f) for f in pd.window_features)]
            prob_img, cover_img = blend_windows(windows, probs)
        else:
            prob_img = pd.transform.to_source(pd.seg_network, is_label=False)
            cover_img = pd.transform.to_source(np.ones(pd.array.shape, np.uint8), is_label=True)
        if plane != reference:
            prob_img = _resample_vector(prob_img, ref_img)
            cover_img = sitk.Resample(cover_img, ref_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        probs_ref.append(np.moveaxis(sitk.GetArrayFromImage(prob_img), -1, 0))  # [C, z, y, x]
        valid_ref.append(sitk.GetArrayFromImage(cover_img) > 0)
    if probs_ref:
        fused = fuse_plane_probabilities(probs_ref, valid_ref)
        lab_arr, unc_arr = fused["labels"].astype(np.uint8), fused["entropy"].astype(np.float32)
    else:
        warnings.append("no segmentation head for the present planes: empty label map")
        lab_arr = np.zeros(sitk.GetArrayViewFromImage(ref_img).shape[:3], np.uint8)
        unc_arr = np.ones_like(lab_arr, dtype=np.float32)
    labels_img, unc_img = sitk.GetImageFromArray(lab_arr), sitk.GetImageFromArray(unc_arr)
    labels_img.CopyInformation(ref_img)
    unc_img.CopyInformation(ref_img)
    structures = load_label_set(loaded.structures_label_set)
    voxel_ml = float(np.prod(ref_img.GetSpacing())) / 1000.0
    counts = np.bincount(lab_arr.ravel(), minlength=max(structures.values) + 1)
    volumes = {lab["key"]: round(float(counts[lab["value"]]) * voxel_ml, 3) for lab in structures.labels}
    return Segmentation(labels_img, unc_img, seg_planes, volumes)


def findings_of(diagnosis: Diagnosis, loaded: LoadedModel) -> list:
    """One ``Finding`` per label of the head set's finding label set, at the heads' thresholds."""
    from ..labelsets import load_label_set
    from ..results.folder import Finding

    thresholds = loaded.head_manifest.get("thresholds", {})
    findings = []
    for i, lab in enumerate(load_label_set(loaded.findings_label_set).labels):
        th = float(thresholds.get(lab["key"], 0.5))
        p = float(diagnosis.probabilities[i])
        findings.append(Finding(key=lab["key"], name=lab["name"], probability=p,
                                spread=float(diagnosis.spread[i]), decision=bool(p >= th), threshold=th,
                                plane_weights={pl: float(diagnosis.plane_weights[i, j]) for j, pl in enumerate(PLANES)}))
    return findings


def provenance_of(job: PredictJob, loaded: LoadedModel, planes: dict, seed: int, seg: Segmentation,
                  ehr_used: bool, warnings: list) -> dict:
    from ..io.headers import source_sha256  # the header and its detached data files

    spec, hman = loaded.spec, loaded.head_manifest
    return {
        "orthodiffusion_version": __version__, "torch": torch.__version__, "device": str(loaded.device),
        "model": {"id": spec.id, "version": spec.version, "source": spec.source,
                  "backbones": {p: sha for p, (_, sha) in loaded.backbones.items()},
                  "heads": {"store": str(loaded.head_store), "version": hman.get("version"),
                            "weights_sha256": hman.get("weights_sha256"),
                            "fitted_on_synthetic": bool((hman.get("data_summary") or {}).get("synthetic"))},
                  # Stage-I fine-tuned encoders of the head set: "backbones" above are then their effective ids
                  **({"encoders": {p: {"file": r["file"], "blocks": r["blocks"], "base_sha256": r["base_sha256"]}
                                   for p, r in hman["encoders"].items()}} if hman.get("encoders") else {})},
        "feature_spec": {p: {**spec.planes[p], "draws": job.draws, "seed": seed, "preprocessing": spec.preprocessing}
                         for p in planes},
        "inputs": {p: {"source": pd.source, "reformatted": pd.reformatted, "content_hash": pd.content_hash,
                       **({"file_sha256": source_sha256(pd.source)} if Path(pd.source).is_file() else {})}
                   for p, pd in planes.items()},
        "planes_used": list(planes), "planes_missing": [p for p in PLANES if p not in planes],
        "reformatted_planes": [p for p, pd in planes.items() if pd.reformatted],
        "segmentation_planes": seg.planes, "ehr_used": ehr_used,
        "segmentation_windows": {p: sorted(w.transform.slice_start for w in [planes[p], *planes[p].windows])
                                 for p in seg.planes},
        "structure_volumes_ml": seg.volumes_ml, "warnings": warnings, "job": job.to_dict(),
    }


def write_prediction(pred: Prediction, job: PredictJob, t_all: float, after_write=None) -> None:
    """The result folder, staged and renamed into place whole (``after_write`` runs on the stage)."""
    from ..results.folder import write_result_folder
    from ..storage import atomic_write_json, staged_folder

    result = pred.result
    t0 = time.perf_counter()
    with staged_folder(job.out) as stage:  # the folder appears whole or not at all
        write_result_folder(result, pred.labels, stage, uncertainty=pred.uncertainty)
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


# --------------------------------------------------------------------------------------- the job

def predict_study(job: PredictJob, loaded: LoadedModel | None = None, log=print, write: bool = True,
                  after_write=None) -> Prediction:
    """``after_write(pred)`` runs on the staged folder (``pred.out_dir``) before it is renamed into
    place, so exports such as pseudonymisation are never seen half done."""
    from ..device import resolve_device
    from ..io import load_study

    job.validate()
    if job.draws is None:  # the model's default (catalogue ``inference.draws``)
        from ..models.catalogue import get_model

        job = replace(job, draws=(loaded.spec if loaded else get_model(job.model)).default_draws)
    t_all = time.perf_counter()
    timer = StageTimer(log)
    timer.start("loading", f"model {job.model}, study {' '.join(str(p) for p in job.all_inputs)}")
    ehr = check_job(job, write, log)  # inputs first (headers, then pixels), weights last: fails fast
    study = load_study([str(p) for p in job.inputs], echo=job.echo, reformat=job.reformat, ehr=ehr, planes=job.planes)
    if loaded is None:
        loaded = load_model(job.model, resolve_device(job.device), job.heads_version)
    warnings = list(study.warnings)

    timer.start("preprocess", f"planes present: {', '.join(p for p in study.planes if p in loaded.backbones)}")
    planes, reference = prepare_planes(study, loaded, job, warnings)
    case_id = job.case_id or Path(str(job.all_inputs[0]).rstrip("/")).name.split(".")[0] or "case"

    timer.start("features", f"{job.draws} noise draw(s) per plane")
    seed = feature_seed(loaded, reference, job)
    extract_features(planes, loaded, job, seed, log)

    timer.start("segment", f"planes with a segmentation head: "
                           f"{', '.join(segmentation_planes(loaded.heads, planes)) or 'none'}")
    seg = segment_study(planes, loaded, reference, warnings)

    use_ehr = bool(ehr) and "ehr" in loaded.heads
    timer.start("diagnose", "MPAE over present planes" + (" + EHR fusion" if use_ehr else ""))
    if ehr and not use_ehr:
        warnings.append("EHR given but this head set has no EHR fusion head: ignored")
    dx = diagnose(loaded.heads, {p: pd.features for p, pd in planes.items()}, ehr if use_ehr else None)

    if write:
        timer.start("writing", str(job.out))
    provenance = provenance_of(job, loaded, planes, seed, seg, dx.ehr_used, warnings)
    hman = loaded.head_manifest
    result = CaseResult(case_id=case_id, reference_plane=reference, planes_present=list(planes),
                        findings=findings_of(dx, loaded), model={"id": loaded.spec.id, "version": loaded.spec.version},
                        head_version=str(hman.get("version")), provenance=provenance, timings={},
                        label_sets={"structures": loaded.structures_label_set, "findings": loaded.findings_label_set})
    pred = Prediction(result, seg.labels, seg.uncertainty, planes[reference].image, planes, dx, seg.volumes_ml,
                      warnings)
    stages = timer.finish()
    result.timings = {f"{s}_s": v["seconds"] for s, v in stages.items() if s != "writing"}
    result.timings["peak_rss_mb"] = peak_rss_mb()
    result.provenance["stages"] = {s: v for s, v in stages.items() if s != "writing"}
    if write:
        write_prediction(pred, job, t_all, after_write)
    result.timings["total_s"] = round(time.perf_counter() - t_all, 3)
    return pred
