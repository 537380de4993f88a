"""Steps that run on a written result folder: DICOM SEG export (``--dicom-seg``) and
pseudonymisation (``--anonymize``). Both update ``result.json`` (rewritten atomically, last).

Pseudonymisation replaces, in ``findings.json`` and ``result.json``: the case id by the pseudonym,
the input and output paths by ``<input N>`` / ``<out>``, and any patient name, id, birth date or
accession number read from the DICOM sources by the pseudonym; the DICOM SEG gets the pseudonym as
name and id (see ``io.dicom_seg``). Research use only, not for clinical decisions.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from ..io.dicom_seg import SEG_FILE, dicom_source_folder, find_source_series, identifying_values, write_dicom_seg
from .folder import validate_json
from ..storage import atomic_write_json, read_json, sha256_file

_HASH = re.compile(r"^[0-9a-f]{32,}$")


def export_case(pred, job, dicom_seg: bool = False, anonymize: bool = False, pseudonym: str | None = None,
                salt: str | None = None, log=print) -> dict:
    """Run the requested exports on ``pred.out_dir``; returns what was done (also in result.json
    ``provenance.exports``). The default pseudonym is ``anon-`` + HMAC-SHA256(salt, patient id or
    case id) (``Pseudonymizer``, as the reports use): random salt = unlinkable; the same ``salt``
    gives a patient the same pseudonym in every export."""
    out = Path(pred.out_dir)
    anonymize = anonymize or bool(pseudonym) or bool(salt)
    identity = _dicom_identity(pred) if anonymize else (None, set())
    if anonymize and not pseudonym:
        from .anonymize import Pseudonymizer

        pseudonym = Pseudonymizer(True, salt)(identity[0] or pred.result.case_id, prefix="anon")
    done: dict = {}
    if dicom_seg:
        done["dicom_seg"] = _export_seg(pred, job, out, pseudonym if anonymize else None, log)
    if anonymize:
        done["pseudonymised"] = True
    if not done:
        return done
    index = read_json(out / "result.json")
    if "file" in done.get("dicom_seg", {}):
        index["files"]["dicom_seg"] = {"path": SEG_FILE, "sha256": sha256_file(out / SEG_FILE)}
    index.setdefault("provenance", {})["exports"] = done
    if anonymize:
        scrub = _scrubber(pred, job, out, pseudonym, identity[1])
        findings_name = index["files"]["findings_json"]["path"]
        findings = _walk(read_json(out / findings_name), scrub)
        findings["case_id"] = pseudonym
        validate_json(findings, "findings.schema.json")
        atomic_write_json(out / findings_name, findings)
        index = _walk(index, scrub)
        index["case_id"] = pseudonym
        index["files"]["findings_json"]["sha256"] = sha256_file(out / findings_name)
        job_record = (index.get("provenance") or {}).get("job")
        if isinstance(job_record, dict) and job_record.get("case_id"):
            job_record["case_id"] = pseudonym
        log(f"pseudonymised the outputs as {pseudonym}")
    validate_json(index, "result.schema.json")
    atomic_write_json(out / "result.json", index)
    return done


def _export_seg(pred, job, out: Path, pseudonym: str | None, log) -> dict:
    ref = pred.result.reference_plane
    plane = pred.planes[ref]
    if plane.reformatted:
        reason = f"the {ref} reference volume is a reformat, not an acquired DICOM series"
    else:
        source = find_source_series(plane.source, plane.image, job.echo)
        if source is None:
            reason = f"the {ref} reference volume was not read from a DICOM series"
        else:
            try:
                write_dicom_seg(pred.labels, source, out / SEG_FILE, pseudonym,
                                label_set=pred.result.label_sets["structures"])
            except InputError as exc:
                reason = str(exc)
            except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom rejects the source
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                reason = f"highdicom cannot build a SEG from series {source.series_uid} ({first})"
            else:
                log(f"wrote {out / SEG_FILE} (DICOM SEG referencing series {source.series_uid})")
                return {"file": SEG_FILE, "segmentation_type": "BINARY", "reference_plane": ref,
                        "referenced_series_instance_uid": source.series_uid, "instances": len(source.datasets)}
    log(f"warning: --dicom-seg ignored: {reason}")
    return {"skipped": reason}


def _dicom_identity(pred) -> tuple[str | None, set[str]]:
    """(PatientID of the reference series or None, every identifying value in the DICOM sources)."""
    import pydicom

    from ..io.dicom import is_dicom_file

    patient_id, identifiers = None, set()
    for plane in sorted(pred.planes.values(), key=lambda p: p.plane != pred.result.reference_plane):
        folder = dicom_source_folder(plane.source)
        if folder is None:
            continue
        for f in sorted(folder.iterdir()):
            if f.is_file() and is_dicom_file(f):
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
                identifiers |= identifying_values(ds)
                patient_id = patient_id or (str(getattr(ds, "PatientID", "") or "").strip() or None)
    return patient_id, identifiers


def _scrubber(pred, job, out: Path, pseudonym: str, identifiers: set[str]):
    """A function str -> str replacing paths and patient identifiers."""
    paths: dict[str, str] = {}
    for i, p in enumerate(job.all_inputs, 1):
        for form in {str(p), str(Path(p).expanduser().resolve())}:
            paths[form.rstrip("/")] = f"<input {i}>"
    for plane in pred.planes.values():
        folder = dicom_source_folder(plane.source)
        if folder is None:
            continue
        for form in {str(folder), str(folder.resolve())}:
            paths.setdefault(form.rstrip("/"), f"<{plane.plane} series>")
    for form in {str(job.out), str(Path(job.out).expanduser().resolve()), str(out.resolve())}:
        paths[form.rstrip("/")] = "<out>"
    if job.ehr and Path(str(job.ehr)).is_file():
        paths[str(job.ehr)] = "<ehr file>"
    paths = {k: v for k, v in paths.items() if k not in ("", ".")}
    idents = sorted(identifiers, key=len, reverse=True)
    ordered = sorted(paths.items(), key=lambda kv: len(kv[0]), reverse=True)

    def scrub(text: str) -> str:
        if _HASH.match(text):
            return text
        for old, new in ordered:
            if text == old:
                text = new
            elif len(old) >= 8 or "/" in old:
                text = text.replace(old, new)
            elif text.startswith(old + "/") or text.startswith(old + " ["):
                text = new + text[len(old):]
        for ident in idents:
            text = re.sub(re.escape(ident), pseudonym, text, flags=re.IGNORECASE)
        return text

    return scrub


def _walk(obj, fn):
    if isinstance(obj, dict):
        return {k: _walk(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v, fn) for v in obj]
    if isinstance(obj, str):
        return fn(obj)
    return obj
