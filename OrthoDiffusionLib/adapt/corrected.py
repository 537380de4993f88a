"""The input of a fine-tune: the latest correction of each case, with its features (from the
feature cache under the content hashes the prediction recorded; the backbone is re-run only for
planes missing there), the corrected label map on the segmentation plane's network grid, and the
confirmed / flipped findings as labels (others unknown). Research use only, not for clinical decisions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..results.corrections import CorrectionEntry
from ..planes import PLANES


@dataclass
class CorrectedCase:
    entry: CorrectionEntry
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


def _recompute_features(pred: dict, planes: list, spec, cache, backbone_shas: dict, device, case_id: str, log,
                        head_store=None, head_manifest=None):
    """Re-run only the backbones of ``planes`` (to the needed block; with the head set's fine-tuned
    encoders) and fill the cache."""
    from ..features.plane import plane_features, prepare_plane, single_features
    from ..models.loading import load_backbones, load_backbones_for_heads

    log(f"[features] {case_id}: {', '.join(planes)} not in the cache; running the backbone")
    study = _reload_study(pred, case_id)
    if (head_manifest or {}).get("encoders"):
        backbones = load_backbones_for_heads(spec, head_store, head_manifest, planes=planes, device=device)
    else:
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
                        device, log, head_store=None) -> CorrectedCase:
    """``head_store``: the folder of the head set (needed to re-run its fine-tuned encoders when
    the cache lacks a case's features)."""
    from ..features import FeatureCache
    from ..models.loading import effective_backbone_shas

    pred = _prediction_of(entry)
    backbone_shas = (pred.get("model") or {}).get("backbones") or {}
    # the encoder that makes the head set's features (published, or its Stage-I fine-tuned one)
    want = effective_backbone_shas(head_manifest)
    for plane, sha in want.items():
        if plane in backbone_shas and backbone_shas[plane] != sha:
            raise UserError(f"case {entry.case_id} was predicted with another {plane} backbone or encoder than the "
                            f"current heads use; predict it again with model {spec.id}, save the correction, then "
                            f"fine-tune")
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
        more, study = _recompute_features(pred, missing, spec, cache, backbone_shas, device, entry.case_id, log,
                                          head_store, head_manifest)
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
