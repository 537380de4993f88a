"""Per-user store of annotator corrections (edited label maps + confirmed/flipped findings).

Every save is a new immutable entry ``<root>/<case>/<entry-id>/`` holding ``labels.nrrd``,
``findings.json`` and ``record.json`` (timestamp, case id, user, sha256 of both files). An entry is
staged in a hidden folder and renamed into place in one step, then made read-only, so a crash
never leaves a half entry and nothing is ever overwritten. Research use, not for clinical decisions.
"""

from __future__ import annotations

import getpass
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import DISCLAIMER, __version__
from ..errors import InputError
from ..storage import _fsync_dir, atomic_write_json, read_json, sha256_file

ACTIONS = ("confirmed", "flipped")


def default_home() -> Path:
    return Path(os.environ.get("ORTHODIFFUSION_HOME") or Path.home() / ".orthodiffusion")


def _safe(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    if not s:
        raise InputError(f"case id '{name}' has no usable characters")
    return s


@dataclass(frozen=True)
class CorrectionEntry:
    entry_id: str
    case_id: str
    created: str
    user: str
    directory: Path
    labels_sha256: str
    findings_sha256: str

    @property
    def labels_path(self) -> Path:
        return self.directory / "labels.nrrd"

    @property
    def findings_path(self) -> Path:
        return self.directory / "findings.json"


def normalise_findings(findings: dict) -> dict:
    """``{KEY: {"decision": bool, "action": "confirmed"|"flipped", ...}}``; checks the fields."""
    out = {}
    for key, v in (findings or {}).items():
        if not isinstance(v, dict) or not isinstance(v.get("decision"), bool) or v.get("action") not in ACTIONS:
            raise InputError(f"finding correction '{key}' needs a boolean 'decision' and an 'action' in {ACTIONS}")
        out[str(key)] = dict(v)
    return out


class CorrectionsStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_home() / "corrections"

    def save(self, case_id: str, labels_image, findings: dict, user: str | None = None,
             source: dict | None = None) -> CorrectionEntry:
        """Write a new entry from a SimpleITK knee-11 label image and finding corrections."""
        import SimpleITK as sitk

        from ..io.labels import check_label_image

        findings = normalise_findings(findings)
        check_label_image(labels_image, f"correction of {case_id}")  # a cast to uint8 would wrap bad values
        case_dir = self.root / _safe(case_id)
        case_dir.mkdir(parents=True, exist_ok=True)
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"
        entry_id = created.replace(":", "").replace("-", "").replace(".", "_") + "-" + uuid.uuid4().hex[:8]
        stage = case_dir / f".staging-{entry_id}"
        stage.mkdir()
        img = sitk.Cast(labels_image, sitk.sitkUInt8)
        img.SetMetaData("OrthoDiffusion_Disclaimer", DISCLAIMER)
        sitk.WriteImage(img, str(stage / "labels.nrrd"), True)
        atomic_write_json(stage / "findings.json", {"disclaimer": DISCLAIMER, "case_id": case_id,
                                                     "label_set": "knee-8", "findings": findings})
        user = user or _user()
        record = {"disclaimer": DISCLAIMER, "entry_id": entry_id, "case_id": case_id, "created": created,
                  "user": user, "label_set": "knee-11", "orthodiffusion_version": __version__,
                  "source": source or {},
                  "files": {"labels": {"path": "labels.nrrd", "sha256": sha256_file(stage / "labels.nrrd")},
                            "findings": {"path": "findings.json",
                                         "sha256": sha256_file(stage / "findings.json")}}}
        atomic_write_json(stage / "record.json", record)
        for p in stage.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            p.chmod(0o444)
        final = case_dir / entry_id
        if final.exists():  # uuid clash: never overwrite
            raise FileExistsError(final)
        os.rename(stage, final)
        _fsync_dir(case_dir)
        return self._entry(final)

    def _entry(self, d: Path) -> CorrectionEntry:
        r = read_json(d / "record.json")
        return CorrectionEntry(entry_id=r["entry_id"], case_id=r["case_id"], created=r["created"], user=r["user"],
                               directory=d, labels_sha256=r["files"]["labels"]["sha256"],
                               findings_sha256=r["files"]["findings"]["sha256"])

    def entries(self, case_id: str | None = None) -> list[CorrectionEntry]:
        """Committed entries (oldest first); staging leftovers of a crash are ignored."""
        if not self.root.is_dir():
            return []
        dirs = [self.root / _safe(case_id)] if case_id else [p for p in self.root.iterdir() if p.is_dir()]
        out = [self._entry(e) for d in dirs if d.is_dir() for e in d.iterdir()
               if e.is_dir() and not e.name.startswith(".") and (e / "record.json").is_file()]
        return sorted(out, key=lambda e: (e.created, e.entry_id))

    def verify(self, entry: CorrectionEntry) -> bool:
        return (sha256_file(entry.labels_path) == entry.labels_sha256
                and sha256_file(entry.findings_path) == entry.findings_sha256)

    def load(self, entry: CorrectionEntry):
        """``(SimpleITK label image, findings dict)`` of an entry, after checking its checksums."""
        import SimpleITK as sitk

        if not self.verify(entry):
            raise InputError(f"correction {entry.directory} does not match its recorded sha256")
        return sitk.ReadImage(str(entry.labels_path)), read_json(entry.findings_path)["findings"]


def prediction_record(result_dir) -> dict:
    """What ``orthodiffusion finetune`` needs from the prediction a correction was made on, copied
    into the entry at save time (the result folder may be a temporary one): model, head version,
    reference plane, per-plane input content hashes and feature spec, the predict job, the
    predicted probabilities. Empty when ``result_dir`` is not a readable result folder."""
    from .folder import read_result_folder

    try:
        result = read_result_folder(result_dir)
    except (InputError, OSError, ValueError):
        return {}
    prov = result.provenance or {}
    return {"result_dir": str(result.directory), "case_id": result.case_id, "reference_plane": result.reference_plane,
            "planes_present": list(result.planes_present), "model": prov.get("model", result.model),
            "head_version": result.head_version, "inputs": prov.get("inputs", {}),
            "feature_spec": prov.get("feature_spec", {}), "job": prov.get("job", {}),
            "ehr_used": bool(prov.get("ehr_used")), "labels_sha256": (result.files.get("labels") or {}).get("sha256"),
            "probabilities": {f.key: f.probability for f in result.findings}}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"
