"""Cohort manifest: one CSV row per study, read by synth, predict, fit and evaluate alike.

Format (see docs/manifest.md): UTF-8 CSV with a header. Required columns ``study_id``,
``patient_id``, ``sagittal``, ``coronal``, ``axial`` (image paths; a plane may be empty when it
was not acquired, but at least one must be present). Optional known columns: ``labels_sagittal``,
``labels_coronal``, ``labels_axial``, ``labels_reference``, one column per finding key of the
label set (``0``/``1``, empty = unknown), EHR ``age``, ``sex``, ``height_cm``, ``weight_kg``,
``patient_type``, ``event``, and ``center``, ``field_strength``, ``vendor``,
``annotated_classes`` (``;``-separated knee-11 keys), ``split`` (train/val/test), ``side``.
Other columns are kept in ``row.extra``; an upper-case column that is not a key of the label
set, or a ``labels_*`` column other than the four above, is rejected as an unknown label column.
Relative paths resolve against the folder that holds the manifest.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .. import csvsafe  # formula-safe cells in every CSV the tool writes
from ..ehr import EVENTS, PATIENT_TYPES, SEXES, check_value  # noqa: F401  (re-exported names)
from ..errors import InputError
from ..labelsets import load_label_set

from ..planes import PLANES
LABEL_COLUMNS = ("labels_sagittal", "labels_coronal", "labels_axial", "labels_reference")
REQUIRED = ("study_id", "patient_id") + PLANES
EHR_COLUMNS = ("age", "sex", "height_cm", "weight_kg", "patient_type", "event")
SITE_COLUMNS = ("center", "field_strength", "vendor", "annotated_classes", "split", "side")
SPLITS = ("train", "val", "test")
# Names a cohort output folder uses for itself (the same list as the output-ownership rules): a
# study id becomes a case folder name there, so none may take one of these (before: a study id
# errors.csv crashed the end of a cohort and the report said "0 failed").
from ..ownership import COHORT_RESERVED as RESERVED_STUDY_IDS  # noqa: E402  (names a cohort folder uses itself)
SIDES = ("left", "right")


@dataclass
class ManifestRow:
    study_id: str
    patient_id: str
    images: dict[str, Path | None]            # plane -> absolute path or None
    labels: dict[str, Path | None] = field(default_factory=dict)  # labels_* column -> path
    findings: dict[str, int | None] = field(default_factory=dict)
    ehr: dict = field(default_factory=dict)
    center: str | None = None
    field_strength: float | None = None
    vendor: str | None = None
    annotated_classes: tuple[str, ...] | None = None
    split: str | None = None
    side: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"study_id": self.study_id, "patient_id": self.patient_id}
        d.update({p: self.images.get(p) for p in PLANES})
        d.update({c: self.labels.get(c) for c in LABEL_COLUMNS})
        d.update(self.findings)
        d.update({k: self.ehr.get(k) for k in EHR_COLUMNS})
        d.update({"center": self.center, "field_strength": self.field_strength,
                  "vendor": self.vendor,
                  "annotated_classes": None if self.annotated_classes is None else ";".join(self.annotated_classes),
                  "split": self.split, "side": self.side})
        d.update(self.extra)
        return d


@dataclass
class Manifest:
    path: Path
    label_set: str
    columns: list[str]
    rows: list[ManifestRow]

    @property
    def root(self) -> Path:
        return self.path.parent

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    def by_split(self, split: str) -> list[ManifestRow]:
        return [r for r in self.rows if r.split == split]

    def finding_keys(self) -> list[str]:
        keys = load_label_set(self.label_set).keys
        return [k for k in keys if k in self.columns]


def _where(path: Path, line: int, col: str) -> str:
    return f"{path}: line {line}, column '{col}'"


def check_study_id(sid: str, where: str) -> str:
    """A study id usable as a case folder name inside the cohort output folder."""
    if sid in (".", "..") or any(c in sid for c in "/\\") or any(ord(c) < 32 for c in sid):
        raise InputError(f"{where}: study_id {sid!r} cannot be a folder name (no '/', '\\', '..' or control "
                         "characters); rename the study")
    if sid.startswith("."):
        raise InputError(f"{where}: study_id {sid!r} starts with '.', which the tool keeps for its hidden work "
                         "folders; rename the study")
    if sid.lower() in RESERVED_STUDY_IDS:
        raise InputError(f"{where}: study_id {sid!r} is a name the cohort output folder uses itself "
                         f"({', '.join(RESERVED_STUDY_IDS)}); rename the study")
    return sid


def _parse_int01(v: str, where: str) -> int | None:
    v = v.strip()
    if v == "":
        return None
    if v in ("0", "1", "0.0", "1.0"):
        return int(float(v))
    raise InputError(f"{where}: finding values must be 0, 1 or empty (unknown), got '{v}'")


def _parse_float(v: str, where: str, lo: float, hi: float) -> float | None:
    v = v.strip()
    if v == "":
        return None
    try:
        x = float(v)
    except ValueError:
        raise InputError(f"{where}: expected a number, got '{v}'") from None
    if not (lo <= x <= hi):
        raise InputError(f"{where}: {x} is outside the plausible range {lo}-{hi}")
    return x


def _parse_choice(v: str, where: str, choices) -> str | None:
    v = v.strip()
    if v == "":
        return None
    if v not in choices:
        raise InputError(f"{where}: '{v}' is not one of {', '.join(choices)}")
    return v


def _resolve(v: str, root: Path, where: str, check_files: bool) -> Path | None:
    v = v.strip()
    if v == "":
        return None
    p = Path(v).expanduser()
    if not p.is_absolute():
        p = root / p
    if check_files and not p.exists():
        raise InputError(f"{where}: file not found: {p} (relative paths resolve against {root})")
    return p


def read_manifest(path: str | os.PathLike, label_set: str = "knee-8", check_files: bool = True) -> Manifest:
    """Read and validate a cohort manifest; relative paths resolve against its folder."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    lab = load_label_set(label_set)
    keys = lab.keys
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); save the manifest as UTF-8 CSV") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if not columns:
        raise InputError(f"{path}: empty manifest (no header line)")
    dup_cols = sorted({c for c in columns if columns.count(c) > 1})
    if dup_cols:
        raise InputError(f"{path}: duplicate columns: {', '.join(dup_cols)}")
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise InputError(f"{path}: missing required column(s): {', '.join(missing)} "
                         f"(required: {', '.join(REQUIRED)})")
    known = set(REQUIRED) | set(LABEL_COLUMNS) | set(EHR_COLUMNS) | set(SITE_COLUMNS) | set(keys)
    for c in columns:
        if c in known:
            continue
        if c.startswith("labels_"):
            raise InputError(f"{path}: unknown label column '{c}' (known: {', '.join(LABEL_COLUMNS)})")
        if c.isupper():
            raise InputError(f"{path}: unknown label column '{c}': label set {label_set} has "
                             f"{', '.join(keys)}")
    k11 = set(load_label_set("knee-11").keys)
    root = path.parent
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    reader.fieldnames = columns
    for line, raw in enumerate(reader, start=2):
        # a cell the tool escaped against formula injection ('=...) reads back as written
        rec = {k: csvsafe.unescape(v if v is not None else "") for k, v in raw.items() if k is not None}
        if None in raw:
            raise InputError(f"{path}: line {line} has more fields than the header")
        sid = rec["study_id"].strip()
        if not sid:
            raise InputError(f"{_where(path, line, 'study_id')}: empty study_id")
        check_study_id(sid, _where(path, line, "study_id"))
        if sid in seen:
            raise InputError(f"{path}: duplicate study_id '{sid}' on lines {seen[sid]} and {line}")
        seen[sid] = line
        pid = rec["patient_id"].strip()
        if not pid:
            raise InputError(f"{_where(path, line, 'patient_id')}: empty patient_id")
        images = {p: _resolve(rec[p], root, _where(path, line, p), check_files) for p in PLANES}
        if not any(images.values()):
            raise InputError(f"{path}: line {line} ('{sid}') has no image in any plane")
        labels = {c: _resolve(rec[c], root, _where(path, line, c), check_files)
                  for c in LABEL_COLUMNS if c in rec}
        findings = {k: _parse_int01(rec[k], _where(path, line, k)) for k in keys if k in rec}
        # the same rule as `predict --ehr` (ehr.py): NaN, true or an unknown code is refused
        ehr = {k: check_value(k, rec[k], _where(path, line, k)) for k in EHR_COLUMNS if k in rec}
        annotated = None
        if rec.get("annotated_classes", "").strip():
            annotated = tuple(a.strip() for a in rec["annotated_classes"].split(";") if a.strip())
            bad = [a for a in annotated if a not in k11]
            if bad:
                raise InputError(f"{_where(path, line, 'annotated_classes')}: unknown knee-11 "
                                 f"key(s) {', '.join(bad)}")
        rows.append(ManifestRow(
            study_id=sid, patient_id=pid, images=images, labels=labels, findings=findings, ehr=ehr,
            center=rec.get("center", "").strip() or None,
            field_strength=_parse_float(rec.get("field_strength", ""), _where(path, line, "field_strength"), 0.1, 11.7),
            vendor=rec.get("vendor", "").strip() or None,
            annotated_classes=annotated,
            split=_parse_choice(rec.get("split", ""), _where(path, line, "split"), SPLITS),
            side=_parse_choice(rec.get("side", ""), _where(path, line, "side"), SIDES),
            extra={c: rec[c] for c in columns if c not in known},
        ))
    if not rows:
        raise InputError(f"{path}: the manifest has a header but no rows")
    return Manifest(path=path, label_set=label_set, columns=columns, rows=rows)


def _cell(v, root: Path) -> str:
    if v is None:
        return ""
    if isinstance(v, Path):
        try:
            return v.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return str(v)
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and v.is_integer():
        return str(v)
    if isinstance(v, (tuple, list)):
        return ";".join(str(x) for x in v)
    return str(v)


def write_manifest(rows: Iterable[ManifestRow | dict], path: str | os.PathLike,
                   label_set: str = "knee-8") -> Path:
    """Write rows (``ManifestRow`` or dicts of column -> value) atomically as a manifest CSV.

    Absolute paths under the manifest's folder are written relative to it. Columns come in the
    documented order; extra columns follow.
    """
    from ..storage import atomic_write_text

    path = Path(path).expanduser()
    root = path.parent.resolve()
    dicts = [r.to_dict() if isinstance(r, ManifestRow) else dict(r) for r in rows]
    keys = load_label_set(label_set).keys
    order = list(REQUIRED) + list(LABEL_COLUMNS) + keys + list(EHR_COLUMNS) + list(SITE_COLUMNS)
    present = {k for d in dicts for k, v in d.items() if v is not None and v != ""}
    # a finding column is kept when any row names it (empty = unknown is information); other
    # optional columns only when some row has a value
    cols = [c for c in order if c in REQUIRED or c in present
            or (c in keys and any(c in d for d in dicts))]
    extras: list[str] = []
    for d in dicts:
        for k in d:
            if k not in order and k not in extras:
                extras.append(k)
    cols += extras
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for d in dicts:
        w.writerow([_cell(d.get(c), root) for c in cols])
    atomic_write_text(path, buf.getvalue())
    return path
