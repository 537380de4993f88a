"""Versioned head-set store.

Layout::

    <store>/
      current.json              {"version": "v0003", "updated": "..."}  (atomic pointer)
      store.lock                inter-process lock for id allocation and pointer moves
      versions/
        v0001/
          weights.safetensors   all heads' tensors, keys "<head name>.<state-dict key>"
          manifest.json         label_set, task, heads {name: {type, config}}, feature_spec,
                                data_summary, metrics, parent, created, weights_sha256, version,
                                files {name: {sha256, bytes}} (extra files, e.g. the replay sample)
          replay.safetensors    optional: a small sample of the training cases' features and
                                targets, replayed by ``orthodiffusion finetune`` against forgetting
          encoder_<plane>.safetensors  optional: Stage-I fine-tuned encoder blocks
                                (``backbone.encoder``; described in the manifest's ``encoders``)

A version is written completely in a hidden temporary folder and renamed into place under the
lock, so it appears whole or not at all and is never overwritten. ``rollback`` only moves the
pointer. ``load`` verifies the weights' (and every extra file's) sha256 before building anything.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, UserError
from ..labelsets import load_label_set
from ..storage import atomic_write_json, file_lock, read_json, sha256_file
from .registry import build_head, head_spec

FORMAT = "orthodiffusion-heads/1"
WEIGHTS, MANIFEST, POINTER = "weights.safetensors", "manifest.json", "current.json"
_VERSION = re.compile(r"^v(\d{4,})$")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _flatten(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, module in modules.items():
        if "." in name or not name:
            raise ValueError(f"head name '{name}' must be non-empty and contain no '.'")
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous().clone()
    return tensors


def _check_sha256(path: Path, expected) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (listed in its manifest)")
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"{path} sha256 {actual[:12]}… does not match its manifest "
                              f"({str(expected)[:12]}…); the file was changed or corrupted")


class HeadStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    # ----- reading -----
    def list_versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        found = [p.name for p in self.versions_dir.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def current(self) -> str | None:
        pointer = self.root / POINTER
        return read_json(pointer)["version"] if pointer.is_file() else None

    def manifest(self, version: str | None = None) -> dict:
        return read_json(self._version_dir(version) / MANIFEST)

    def _version_dir(self, version: str | None) -> Path:
        version = version or self.current()
        if version is None:
            raise UserError(f"head store {self.root} has no current version (save one first)")
        path = self.versions_dir / version
        if not (path / MANIFEST).is_file():
            raise UserError(f"head store {self.root} has no version '{version}' (have: {', '.join(self.list_versions()) or 'none'})")
        return path

    def verify(self, version: str | None = None) -> dict:
        """Manifest of ``version`` after checking the weights' sha256 (CheckpointError on mismatch)."""
        path = self._version_dir(version)
        manifest = read_json(path / MANIFEST)
        _check_sha256(path / WEIGHTS, manifest.get("weights_sha256"))
        for name, record in (manifest.get("files") or {}).items():
            _check_sha256(path / name, record.get("sha256"))
        return manifest

    def extra_file(self, name: str, version: str | None = None) -> Path | None:
        """Path of the verified extra file ``name`` of ``version`` (None when the version has none)."""
        manifest = self.verify(version)
        if name not in (manifest.get("files") or {}):
            return None
        return self._version_dir(manifest["version"]) / name

    def load(self, version: str | None = None, build: bool = True):
        """-> (heads, manifest). heads: name -> rebuilt module in eval mode (``build=True``) or
        name -> state dict. ``version=None`` loads the current version."""
        manifest = self.verify(version)
        tensors = load_file(str(self._version_dir(manifest["version"]) / WEIGHTS))
        states: dict[str, dict] = {name: {} for name in manifest["heads"]}
        for key, value in tensors.items():
            name, _, rest = key.partition(".")
            if name not in states:
                raise CheckpointError(f"weights contain tensors for unknown head '{name}'")
            states[name][rest] = value
        if not build:
            return states, manifest
        heads = {}
        for name, spec in manifest["heads"].items():
            module = build_head(spec["type"], spec["config"])
            try:
                module.load_state_dict(states[name], strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"head '{name}' does not match its stored config: {exc}") from None
            heads[name] = module.eval()
        return heads, manifest

    # ----- writing -----
    def save(self, modules: Mapping[str, nn.Module], manifest: Mapping, parent: str | None = None,
             make_current: bool = True, files: Mapping[str, object] | None = None) -> str:
        """New version; ``files``: extra file name -> {tensor name: Tensor} (written as safetensors)
        or a path (copied); each is recorded with its sha256 and checked by ``verify``."""
        for key in ("label_set", "task"):
            if key not in manifest:
                raise UserError(f"head-set manifest needs '{key}'")
        load_label_set(manifest["label_set"])  # unknown label set -> UserError
        if parent is not None and parent not in self.list_versions():
            raise UserError(f"parent version '{parent}' is not in {self.root}")
        specs = {name: head_spec(module) for name, module in modules.items()}
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.versions_dir))
        try:
            save_file(_flatten(modules), str(staging / WEIGHTS), metadata={"format": FORMAT})
            with open(staging / WEIGHTS, "rb+") as f:
                os.fsync(f.fileno())
            records = {}
            for name, content in (files or {}).items():
                if name in (WEIGHTS, MANIFEST) or "/" in name or name.startswith("."):
                    raise ValueError(f"extra file name '{name}' is reserved or not a plain file name")
                if isinstance(content, Mapping):
                    save_file({k: v.detach().cpu().contiguous() for k, v in content.items()}, str(staging / name),
                              metadata={"format": FORMAT})
                else:
                    shutil.copyfile(content, staging / name)
                with open(staging / name, "rb+") as f:
                    os.fsync(f.fileno())
                records[name] = {"sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size}
            full = {**dict(manifest), "format": FORMAT, "heads": specs, "parent": parent, "created": _now(),
                    "weights_sha256": sha256_file(staging / WEIGHTS)}
            if records:
                full["files"] = records
            else:
                full.pop("files", None)
            with file_lock(self.root / "store"):
                existing = self.list_versions()
                version = f"v{(int(existing[-1][1:]) + 1 if existing else 1):04d}"
                full["version"] = version
                atomic_write_json(staging / MANIFEST, full)
                target = self.versions_dir / version
                if target.exists():  # cannot happen under the lock; never overwrite a version
                    raise CheckpointError(f"version folder {target} already exists")
                os.rename(staging, target)
                if make_current:
                    self._point_to(version)
            return version
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _point_to(self, version: str) -> None:
        atomic_write_json(self.root / POINTER, {"version": version, "updated": _now()})

    def rollback(self, version: str) -> None:
        """Make ``version`` current again (pointer only; nothing is deleted or rewritten)."""
        with file_lock(self.root / "store"):
            self.verify(version)
            self._point_to(version)


def save_head_set(store_dir, modules: Mapping[str, nn.Module], manifest: Mapping, parent: str | None = None,
                  make_current: bool = True, files: Mapping[str, object] | None = None) -> str:
    return HeadStore(store_dir).save(modules, manifest, parent=parent, make_current=make_current, files=files)


def load_head_set(store_dir, version: str | None = None, build: bool = True):
    return HeadStore(store_dir).load(version, build=build)
