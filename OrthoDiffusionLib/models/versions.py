"""Head versions of a model for listings (CLI ``finetune --list``, the Slicer versions box):
plain JSON reads, no torch, so the Slicer GUI process can call it cheaply."""

from __future__ import annotations

import re
from pathlib import Path

from .. import DISCLAIMER
from ..errors import UserError
from ..storage import read_json

_VERSION = re.compile(r"^v(\d{4,})$")
FINETUNE_LOCK = "finetune"  # <user heads>/finetune.lock: one fine-tune (or rollback) per store at a time


def _store_versions(root: Path) -> tuple[list[str], str | None]:
    vdir = root / "versions"
    found = [p.name for p in vdir.iterdir() if p.is_dir() and _VERSION.match(p.name)
             and (p / "manifest.json").is_file()] if vdir.is_dir() else []
    current = read_json(root / "current.json")["version"] if (root / "current.json").is_file() else None
    return sorted(found, key=lambda v: int(v[1:])), current


def _row(version: str, manifest: dict, current: str | None) -> dict:
    ft = manifest.get("finetune")
    imported = manifest.get("imported_from")
    row = {"version": version, "parent": manifest.get("parent"), "created": manifest.get("created"),
           "kind": "finetune" if ft else (f"copy of {imported['version']}" if imported else "fit"),
           "current": version == current,
           # a version's extra files may also be Stage-I encoders: the replay record names its file
           "replay": (manifest.get("replay") or {}).get("file") in (manifest.get("files") or {}),
           "encoders": sorted(manifest.get("encoders") or {})}
    if ft:
        row["corrections"] = [c["case_id"] for c in ft["corrections"]]
        row["cases"] = {cid: {k: c.get(k) for k in ("mean_dice_before", "mean_dice_after")}
                        for cid, c in ft["cases"].items()}
    else:
        metrics = manifest.get("metrics") or {}
        seg = next((v for k, v in metrics.items() if k.startswith("segmentation_") and k.endswith("_val")), None)
        diag = metrics.get("diagnosis_val") or metrics.get("diagnosis_oof")
        row["val_mean_dice"] = (seg or {}).get("mean_dice")
        row["macro_auroc"] = (diag or {}).get("macro_auroc")
    return row


def head_versions(model: str) -> dict:
    """{"model", "store", "user_store", "current", "versions": [{version, parent, created, kind,
    current, replay, and before/after Dice (fine-tunes) or validation metrics (fits)}]}: the user
    store's versions, or the model's own store while the user has none."""
    from .catalogue import get_model

    spec = get_model(model)
    user = Path(spec.heads_for_write())
    versions, current = _store_versions(user)
    root, is_user = user, True
    if not versions:
        root, is_user = Path(spec.shipped_heads), False
        versions, current = _store_versions(root)
    rows = [_row(v, read_json(root / "versions" / v / "manifest.json"), current) for v in versions]
    return {"model": spec.id, "store": str(root), "user_store": is_user, "current": current, "versions": rows,
            "disclaimer": DISCLAIMER}


def latest_finetune(model: str) -> dict | None:
    """The ``finetune`` record of the user's newest head version (None if it is not a fine-tune);
    ``current`` says whether it is in use (a version worse than its parent is saved, not made current)."""
    from .catalogue import get_model

    user = Path(get_model(model).heads_for_write())
    versions, current = _store_versions(user)
    if not versions:
        return None
    newest = versions[-1]
    manifest = read_json(user / "versions" / newest / "manifest.json")
    record = manifest.get("finetune")
    return {**record, "version": newest, "parent": manifest.get("parent"), "current": newest == current} \
        if record else None


def fmt_metric(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def finetune_summary_lines(s: dict) -> list[str]:
    """Human summary of a fine-tune record: Dice before → after per corrected case, the findings
    whose probability moved (or were corrected), replay, warnings, the disclaimer."""
    lines = [f"fine-tuned head set {s.get('version')} (parent {s.get('parent')}): "
             f"{len(s['corrections'])} correction(s), {s['replay']['used']} replay case(s), "
             f"{s['job']['epochs']} step(s)"
             + (f", {s['seconds']} s" if "seconds" in s else "")]
    for cid, c in s["cases"].items():
        if "mean_dice_before" in c:
            lines.append(f"  {cid}: mean Dice {fmt_metric(c['mean_dice_before'])} → "
                         f"{fmt_metric(c['mean_dice_after'])} "
                         f"({s['dice_grid']})")
        corrected = next((x["corrected_findings"] for x in s["corrections"] if x["case_id"] == cid), {})
        for k, before in c["probabilities_before"].items():
            after = c["probabilities_after"][k]
            if k in corrected or abs(after - before) >= 0.01:
                note = f" (corrected: {'positive' if corrected[k] else 'negative'})" if k in corrected else ""
                lines.append(f"    {k:<5} p {before:.3f} → {after:.3f}{note}")
    h = (s.get("history") or {}).get("segmentation") or {}
    if h.get("replay_mean_dice_before") is not None:
        lines.append(f"  replay sample mean Dice {fmt_metric(h['replay_mean_dice_before'])} → "
                     f"{fmt_metric(h['replay_mean_dice_after'])}")
    guard = s.get("guard") or {}
    if guard.get("worse"):
        lines.append(("made current although worse than its parent: " if guard.get("made_current") else
                      f"NOT made current ({s.get('parent')} stays in use): worse than its parent: ")
                     + "; ".join(guard["worse"]))
    elif s.get("current") is False:
        lines.append("not current: another head version is in use (rolled back)")
    lines += [f"warning: {w}" for w in s.get("warnings", []) if "worse than its parent" not in w]
    lines.append(DISCLAIMER)
    return lines


def rollback(model: str, version: str) -> dict:
    """Make ``version`` of the user's head store current again (nothing is deleted)."""
    from ..heads import HeadStore
    from ..storage import file_lock
    from .catalogue import get_model

    spec = get_model(model)
    user = HeadStore(spec.heads_for_write())
    if not user.list_versions():
        shipped = HeadStore(spec.shipped_heads)
        if version == shipped.current():
            return {"version": version, "store": str(shipped.root), "changed": False}
        raise UserError(f"cannot roll back to {version}: model '{spec.id}' has no fine-tuned head versions yet")
    with file_lock(user.root / FINETUNE_LOCK):
        before = user.current()
        user.rollback(version)
    return {"version": version, "previous": before, "store": str(user.root), "changed": before != version}
