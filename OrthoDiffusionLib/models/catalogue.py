"""Model catalogue: a model = per-plane backbones + a versioned head store + a feature spec per
plane (t, block) + preprocessing + label sets, described by one JSON entry.

Where models live:
- shipped: ``Resources/Models/catalogue.json`` (entries with ``path`` relative to that folder);
  the install tree is never written to;
- per user: ``$ORTHODIFFUSION_HOME/models/<id>/model.json`` (default ``~/.orthodiffusion``):
  models installed with ``orthodiffusion models install``, and the heads a user fits for a
  shipped model (``<id>/heads``). Shipped ids are reserved for installs; only the copy that
  ``sweep --write-config`` derives from a shipped model (``derived_from``) takes its id.

Version: major = label set changed, minor = quality (new backbones/heads), patch = other.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import DISCLAIMER
from ..errors import CheckpointError, InputError, UserError
from ..resources import resource_path
from ..storage import atomic_write_json, read_json, sha256_file

CATALOGUE_FORMAT = "orthodiffusion-catalogue"
MODEL_FILE = "model.json"
DEFAULT_DRAWS = 3
# Released-size backbones (34.5 M parameters, 16x256x256) are slow per noise draw on a CPU
# (bench/predict.md), so their entries ask for 2 draws, the fewest that give a spread.
RELEASED_INFERENCE = {"draws": 2, "notes": "2 noise draws per plane by default (about 4 s per draw and plane on "
                                            "2 CPU cores); 2 is the fewest that give a spread; --draws overrides"}


def home_dir() -> Path:
    return Path(os.environ.get("ORTHODIFFUSION_HOME") or Path.home() / ".orthodiffusion")


def user_models_dir() -> Path:
    return home_dir() / "models"


def shipped_catalogue_path() -> Path:
    return resource_path("Models", "catalogue.json")


@dataclass
class ModelSpec:
    id: str
    version: str
    root: Path                      # folder the entry's relative paths resolve against
    planes: dict                    # plane -> {"backbone": file, "timestep": t, "block": name}
    heads: str = "heads"
    preprocessing: str = "released"
    input: dict = field(default_factory=dict)
    label_sets: dict = field(default_factory=lambda: {"findings": "knee-8", "structures": "knee-11"})
    segmentation_planes: list = field(default_factory=lambda: ["sagittal"])
    files: list = field(default_factory=list)  # [{"path", "sha256", "bytes"}]
    source: str = "shipped"         # shipped | user
    entry: dict = field(default_factory=dict)

    # ---- paths
    def backbone_path(self, plane: str) -> Path:
        return self.root / self.planes[plane]["backbone"]

    @property
    def shipped_heads(self) -> Path:
        return self.root / self.heads

    @property
    def user_dir(self) -> Path:
        return user_models_dir() / self.id

    @property
    def user_heads(self) -> Path:
        return self.user_dir / "heads"

    def heads_for_read(self) -> Path:
        """The user's fitted heads when they have a current version, else the model's own."""
        from ..heads import HeadStore

        if self.user_heads != self.shipped_heads and HeadStore(self.user_heads).current():
            return self.user_heads
        return self.shipped_heads

    def heads_for_write(self) -> Path:
        return self.user_heads

    def feature_spec(self, plane: str, n_draws: int = 1, seed: int = 0):
        from ..features import FeatureSpec

        p = self.planes[plane]
        return FeatureSpec(timesteps=(int(p["timestep"]),), blocks=(p["block"],), seed=seed, n_draws=n_draws,
                           preprocessing=self.preprocessing)

    @property
    def segmentation_windows(self) -> tuple[str, float]:
        """(mode, overlap) of the segmentation: ``central`` (the published window of D slices) or
        ``sliding`` (overlapping windows over every slice), from ``inference.segmentation_windows``."""
        w = (self.entry.get("inference") or {}).get("segmentation_windows") or {}
        return str(w.get("mode", "central")), float(w.get("overlap", 0.5))

    @property
    def default_draws(self) -> int:
        """Noise draws per plane when predict is not told (``inference.draws``; 3 when absent)."""
        return int((self.entry.get("inference") or {}).get("draws", DEFAULT_DRAWS))

    def to_dict(self) -> dict:
        return dict(self.entry)

    def short(self) -> dict:
        return {"id": self.id, "version": self.version, "source": self.source, "root": str(self.root)}


def _spec_from_entry(entry: dict, root: Path, source: str) -> ModelSpec:
    if not isinstance(entry, dict):
        raise InputError(f"model entry must be a JSON object, got {type(entry).__name__}")
    check_entry_paths(entry, root)
    try:
        return ModelSpec(id=entry["id"], version=entry["version"], root=root, planes=entry["planes"],
                         heads=entry.get("heads", "heads"), preprocessing=entry.get("preprocessing", "released"),
                         input=entry.get("input", {}), label_sets=entry.get("label_sets", {}),
                         segmentation_planes=list(entry.get("segmentation_planes", ["sagittal"])),
                         files=list(entry.get("files", [])), source=source, entry=entry)
    except KeyError as exc:
        raise InputError(f"model entry lacks the field {exc}") from None
    except (TypeError, ValueError):
        raise InputError("model entry has a field of the wrong type; check it against "
                         "Resources/Schemas/catalogue.schema.json") from None


def read_model_json(path: Path) -> dict:
    """A ``model.json``, parsed and checked against the schema; one-line ``InputError`` when it is
    not JSON, too deeply nested, not an object or not a model entry."""
    try:
        entry = read_json(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read ({type(exc).__name__}); fix or remove it") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to be a model description; fix or remove it") from None
    except ValueError as exc:
        raise InputError(f"{path}: invalid JSON ({str(exc).splitlines()[0]}); fix or remove it") from None
    try:
        validate_entry(entry)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    return entry


def validate_entry(entry: dict) -> None:
    import jsonschema

    schema = json.loads(resource_path("Schemas", "catalogue.schema.json").read_text(encoding="utf-8"))
    try:
        jsonschema.validate(entry, schema["$defs"]["model"] | {"$defs": schema["$defs"]})
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        message = exc.message if len(exc.message) < 200 else exc.message[:200] + "..."
        raise InputError(f"model entry: {where}: {' '.join(message.split())}") from None
    except RecursionError:
        raise InputError("model entry: nested too deeply to be a model description") from None


def shipped_models() -> list[ModelSpec]:
    path = shipped_catalogue_path()
    if not path.is_file():
        return []
    cat = read_json(path)
    return [_spec_from_entry(e, (path.parent / e.get("path", e["id"])).resolve(), "shipped") for e in cat["models"]]


_warned: set[str] = set()


def broken_user_models() -> dict[str, str]:
    """Folder name -> one-line problem of each unusable ``model.json`` in the user's model folder."""
    out = {}
    root = user_models_dir()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if (d / MODEL_FILE).is_file():
                try:
                    _spec_from_entry(read_model_json(d / MODEL_FILE), d.resolve(), "user")
                except UserError as exc:
                    out[d.name] = str(exc)
    return out


def user_models() -> list[ModelSpec]:
    """The user's installed models; a broken ``model.json`` is skipped with a one-line warning
    (it must not break every other model), and refused only when that model is asked for."""
    import logging

    out = []
    root = user_models_dir()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            f = d / MODEL_FILE
            if f.is_file():
                try:
                    out.append(_spec_from_entry(read_model_json(f), d.resolve(), "user"))
                except UserError as exc:
                    if str(f) not in _warned:
                        _warned.add(str(f))
                        logging.getLogger("orthodiffusion").warning(f"warning: skipped the model in {d}: {exc}")
    return out


def list_models() -> list[ModelSpec]:
    users = user_models()
    ids = {m.id for m in users}
    return users + [m for m in shipped_models() if m.id not in ids]


def get_model(model_id: str) -> ModelSpec:
    """A model by id, or by path to a folder holding ``model.json``."""
    p = Path(model_id).expanduser()
    if (p / MODEL_FILE).is_file():
        return _spec_from_entry(read_model_json(p / MODEL_FILE), p.resolve(), "folder")
    for m in list_models():
        if m.id == model_id:
            return m
    broken = broken_user_models().get(model_id)
    if broken:  # asked for by its folder name: now the problem is an error
        raise UserError(f"model '{model_id}' cannot be used: {broken}")
    known = ", ".join(m.id for m in list_models()) or "none"
    raise UserError(f"unknown model '{model_id}' (known: {known}); `orthodiffusion models list` shows them, "
                    f"`orthodiffusion models install PATH` adds one")


def file_record(root: Path, rel: str) -> dict:
    f = root / rel
    return {"path": rel, "sha256": sha256_file(f), "bytes": f.stat().st_size}


def verify_model(spec: ModelSpec, heads: bool = True) -> list[str]:
    """Problems found (empty = OK): every listed file's size and sha256, the backbones present,
    and the head store version in use (its own sha256)."""
    problems = []
    for rec in spec.files:
        f = spec.root / rec["path"]
        if not f.is_file():
            problems.append(f"{rec['path']}: missing")
            continue
        if "bytes" in rec and f.stat().st_size != rec["bytes"]:
            problems.append(f"{rec['path']}: size {f.stat().st_size} != {rec['bytes']} in the catalogue")
            continue
        actual = sha256_file(f)
        if actual != rec["sha256"]:
            problems.append(f"{rec['path']}: sha256 {actual[:12]}… != {rec['sha256'][:12]}… in the catalogue "
                            f"(file changed or corrupted)")
    listed = {r["path"] for r in spec.files}
    for plane in spec.planes:
        rel = spec.planes[plane]["backbone"]
        if not (spec.root / rel).is_file():
            if rel not in listed:
                problems.append(f"{rel}: backbone for {plane} missing")
        elif rel not in listed:
            problems.append(f"{rel}: backbone for {plane} has no sha256 in the catalogue")
    if heads:
        from ..heads import HeadStore

        store = HeadStore(spec.heads_for_read())
        if not store.current():
            if not spec.entry.get("needs_heads"):  # imported backbones wait for `fit`: not a fault
                problems.append(f"{store.root}: no fitted heads (run `orthodiffusion fit --model {spec.id} ...`)")
        else:
            try:
                store.verify()
            except CheckpointError as exc:
                problems.append(str(exc))
    return problems


_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_model_id(model_id: str, what: str = "model id") -> str:
    """A user model's id is a plain folder name and never a shipped model's id (those are reserved)."""
    if not isinstance(model_id, str) or not _ID.match(model_id) or len(model_id) > 100:
        raise InputError(f"{what} {model_id!r}: use letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    if model_id in {m.id for m in shipped_models()}:
        raise UserError(f"{what} '{model_id}' is a shipped model (shipped ids are reserved); choose another id")
    return model_id


def _allowed_roots(entry: dict, root: Path) -> list[Path]:
    """The model folder; for a copy the tool derived from a shipped model (sweep --write-config),
    also that shipped model's folder, whose backbones the copy reuses."""
    roots = [root.resolve()]
    derived = entry.get("derived_from") or {}
    if isinstance(derived, dict) and derived.get("source") == "shipped":
        roots += [m.root for m in shipped_models() if m.id == derived.get("id")]
    return roots


def check_entry_paths(entry: dict, root: Path) -> None:
    """Every path a model.json names (backbones, heads, listed files) stays inside its model folder."""
    roots = _allowed_roots(entry, root)
    rels = [("planes." + p + ".backbone", (v or {}).get("backbone")) for p, v in (entry.get("planes") or {}).items()
            if isinstance(v, dict)]
    rels += [("heads", entry.get("heads", "heads"))]
    rels += [("files", (r or {}).get("path")) for r in entry.get("files") or [] if isinstance(r, dict)]
    for where, rel in rels:
        ok = isinstance(rel, str) and rel and ".." not in Path(rel).parts
        if ok:
            resolved = (root / rel).resolve()
            ok = any(resolved == r or r in resolved.parents for r in roots)
        if not ok:
            raise InputError(f"model.json {where}: {rel!r} is not a path inside the model folder {root}")


def refresh_file_records(catalogue_path: Path, model_id: str, extra: list[str] | None = None,
                         measured: dict | None = None) -> dict:
    """Maintainer helper: recompute sizes/sha256 of a shipped entry's backbones (+ their manifests,
    + ``extra`` paths) and optionally merge measured numbers. Returns the entry."""
    cat = read_json(catalogue_path)
    for entry in cat["models"]:
        if entry["id"] != model_id:
            continue
        root = (catalogue_path.parent / entry.get("path", entry["id"])).resolve()
        rels = []
        for p in entry["planes"].values():
            rels += [p["backbone"], str(Path(p["backbone"]).with_suffix(".json"))]
        rels += list(extra or [])
        entry["files"] = [file_record(root, r) for r in rels if (root / r).is_file()]
        if measured:
            entry.setdefault("measured", {}).update(measured)
        validate_entry(entry)
        atomic_write_json(catalogue_path, cat)
        return entry
    raise UserError(f"model '{model_id}' not in {catalogue_path}")


def describe(spec: ModelSpec) -> str:
    planes = ", ".join(f"{p} t={v['timestep']} {v['block']}" for p, v in spec.planes.items())
    return f"{spec.id} {spec.version} [{spec.source}] planes: {planes}; heads: {spec.heads_for_read()}  ({DISCLAIMER})"
