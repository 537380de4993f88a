"""Loading a model for inference or adaptation: its backbones (with their sha256) and a head set
checked against them. Research use only, not for clinical decisions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .catalogue import ModelSpec


def require_fitted_heads(spec: ModelSpec, heads_version: str | None = None) -> Path:
    """The head store to read; one line when the model has no fitted heads (and no version is named)."""
    from ..heads import HeadStore

    store = spec.heads_for_read()
    if heads_version is None and not HeadStore(store).current():
        raise UserError(f"model '{spec.id}' has no fitted heads in {store}; fit them with "
                        f"`orthodiffusion fit --model {spec.id} --manifest COHORT.csv`")
    return Path(store)


def load_backbones(spec, planes=None, device="cpu") -> dict:
    """plane -> (model on device, sha256) for the model's planes (or the given subset)."""
    from ..backbone.checkpoints import load_backbone
    from ..errors import UserError

    out = {}
    for plane in planes or list(spec.planes):
        if plane not in spec.planes:
            continue
        path = spec.backbone_path(plane)
        if not path.is_file():
            raise UserError(f"model '{spec.id}': backbone for {plane} not found at {path}; "
                            f"`orthodiffusion models verify {spec.id}` checks the files")
        model, info = load_backbone(path)
        model.to(device).eval()
        sha = info.get("sha256") if isinstance(info, dict) else None
        if not sha:
            from ..storage import sha256_file
            sha = sha256_file(path)
        out[plane] = (model, sha)
    return out


def effective_backbone_shas(manifest: dict) -> dict:
    """plane -> sha256 naming the backbone a head set's features come from: the published
    backbone's, or, for a Stage-I fine-tuned encoder, the id derived from it and the sha256 of the
    encoder file recorded in the (verified) manifest."""
    from ..backbone.encoder import effective_sha256
    from ..errors import CheckpointError

    shas = dict(manifest.get("backbones") or {})
    files = manifest.get("files") or {}
    for plane, record in (manifest.get("encoders") or {}).items():
        file_sha = (files.get(record["file"]) or {}).get("sha256")
        if not file_sha:
            raise CheckpointError(f"head set {manifest.get('version')}: encoder file {record['file']} is not listed "
                                  f"in its manifest's files")
        shas[plane] = effective_sha256(record["base_sha256"], file_sha)
    return shas


def apply_head_encoders(backbones: dict, store, manifest: dict) -> dict:
    """``backbones`` (plane -> (model, sha256) of the published backbones) with the head set's
    fine-tuned encoders loaded into the models in place; their sha256 become the effective ids."""
    from ..backbone.encoder import apply_encoder
    from ..heads import HeadStore

    encoders = manifest.get("encoders") or {}
    if not encoders:
        return backbones
    effective = effective_backbone_shas(manifest)
    out = dict(backbones)
    for plane, record in encoders.items():
        if plane not in out:
            continue
        model, sha = out[plane]
        if sha != record["base_sha256"]:
            raise UserError(f"head set {manifest.get('version')}: its {plane} encoder was fine-tuned from another "
                            f"backbone (sha256 {record['base_sha256'][:12]}… vs {sha[:12]}…); refit the heads")
        apply_encoder(model, HeadStore(store).extra_file(record["file"], manifest["version"]), sha)
        out[plane] = (model, effective[plane])
    return out


def load_backbones_for_heads(spec, store, manifest: dict, planes=None, device="cpu") -> dict:
    """The backbones a head set's features come from (published + its fine-tuned encoders)."""
    return apply_head_encoders(load_backbones(spec, planes, device), store, manifest)


@dataclass
class LoadedModel:
    spec: ModelSpec
    backbones: dict            # plane -> (model, sha256)
    heads: dict
    head_manifest: dict
    head_store: Path
    device: torch.device

    @property
    def findings_label_set(self) -> str:
        """The findings the head set was fitted on (its manifest), else the model's."""
        return self.head_manifest.get("label_set") or self.spec.label_sets.get("findings", "knee-8")

    @property
    def structures_label_set(self) -> str:
        return self.head_manifest.get("structures_label_set") or self.spec.label_sets.get("structures", "knee-11")


def load_model(model_id: str, device="cpu", heads_version: str | None = None) -> LoadedModel:
    """The model's backbones on ``device`` and its head set (current, or ``heads_version``), checked
    to belong together (same backbones, same feature setting), with the head set's fine-tuned
    encoders applied."""
    from ..heads import load_head_set
    from .catalogue import get_model

    spec = get_model(model_id)
    store = require_fitted_heads(spec, heads_version)
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
    # Stage-I fine-tuned encoders of the head set (none for frozen-feature heads): from here on the
    # shas are the effective ones, so cache keys and provenance name the encoder that ran.
    backbones = apply_head_encoders(backbones, store, manifest)
    return LoadedModel(spec, backbones, heads, manifest, Path(store), device)
