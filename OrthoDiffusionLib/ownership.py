"""Output ownership: the tool replaces or deletes only what it can prove it wrote.

Every folder the tool writes carries ``.orthodiffusion-output.json`` (the marker): which command
wrote it (``kind``), when, and the entries it wrote there. The rules, one per function:

- :func:`check_replaceable` — a folder may be replaced whole (a case result folder) only when it is
  absent, empty, or holds a marker and nothing the marker does not list. A user's file beside the
  tool's files (a thesis, a ``data/`` folder) makes it untouchable.
- :func:`claim_folder` — a folder the tool adds to over several runs (cohort, evaluation, demo,
  sweep, synth, pretrain) must be new, empty, or an earlier output of the same kind.
- :func:`remove_owned` — delete one entry only when the folder's marker lists it (and, for a folder,
  only when it is replaceable itself).
- :func:`check_file_replaceable` — a single output file (a report) is overwritten only when its
  folder's marker lists it or the file carries the tool's signature.
- :func:`refuse_inputs_inside` — an input inside the output folder is refused (a cohort's own folder
  as ``--out`` would otherwise lose its images).

Symlinked output folders are refused: the rename that replaces a folder would not follow them.
Research use only, not for clinical decisions.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from .errors import UserError

MARKER = ".orthodiffusion-output.json"
FORMAT = "orthodiffusion-output"
# What the tool's own single files start with (reports, CSV tables): check_file_replaceable looks for it.
HTML_SIGNATURE = b'<meta name="generator" content="OrthoDiffusion'
CSV_SIGNATURE = b"# Research use only, not for clinical decisions."
# Names a cohort output folder uses itself: no study id may take them as its case folder name.
COHORT_RESERVED = (MARKER, "errors.csv", "cohort_summary.json", "report.html", "report_cases.csv", "evaluation")
# The hidden work folders the tool itself makes next to its outputs (staged_folder, atomic_path).
_OWN_HIDDEN = (".staging-", ".previous-", ".tmp")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The folder's marker, or None when it has none (or an unreadable one: then it is not ours)."""
    import json

    path = Path(folder) / MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), list):
        return None
    return data


def write_marker(folder: str | os.PathLike, kind: str, files) -> Path:
    """Write (atomically) the marker listing ``files`` (names of the folder's top-level entries)."""
    from . import DISCLAIMER, __version__
    from .storage import atomic_write_json

    folder = Path(folder)
    old = read_marker(folder) or {}
    return atomic_write_json(folder / MARKER, {
        "format": FORMAT, "kind": kind, "written_by": f"orthodiffusion {__version__}",
        "created": old.get("created", _now()), "updated": _now(),
        "files": sorted({str(f) for f in files} - {MARKER}), "disclaimer": DISCLAIMER})


def mark_folder_complete(folder: str | os.PathLike, kind: str) -> Path:
    """Marker listing every top-level entry now in ``folder`` (a folder the tool filled itself)."""
    folder = Path(folder)
    return write_marker(folder, kind, [p.name for p in folder.iterdir() if p.name != MARKER])


def record_files(folder: str | os.PathLike, kind: str, *names: str) -> None:
    """Add entries the tool just wrote to a claimed folder's marker (under the folder's lock)."""
    from .storage import file_lock

    folder = Path(folder)
    with file_lock(folder / MARKER):
        old = read_marker(folder) or {"files": []}
        write_marker(folder, old.get("kind", kind), list(old["files"]) + list(names))


def _is_own_hidden(name: str) -> bool:
    return name.startswith(".") and any(tag in name for tag in _OWN_HIDDEN) or name == MARKER + ".lock"


def foreign_entries(folder: str | os.PathLike) -> list[str]:
    """Top-level entries of ``folder`` its marker does not list (all of them when it has none)."""
    folder = Path(folder)
    marker = read_marker(folder)
    listed = set(marker["files"]) if marker else set()
    return sorted(p.name for p in folder.iterdir()
                  if p.name != MARKER and p.name not in listed and not (marker and _is_own_hidden(p.name)))


def _refuse_link_or_file(folder: Path, what: str) -> None:
    if folder.is_symlink():
        raise UserError(f"{what} {folder} is a symbolic link; give the real folder "
                        f"({os.path.realpath(folder)}) or a new path")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file; give a folder path")


def _names(entries: list[str]) -> str:
    return ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")


def check_replaceable(folder: str | os.PathLike, kind: str, what: str = "output folder") -> Path:
    """``folder`` may be replaced whole: absent, empty, or an output of ``kind`` holding only what the
    tool wrote. Anything else raises one line that names what is in the way."""
    folder = Path(folder)
    _refuse_link_or_file(folder, what)
    if not folder.is_dir() or not any(folder.iterdir()):
        return folder
    marker = read_marker(folder)
    if marker is None:
        raise UserError(f"{what} {folder} already holds files the tool did not write ({_names(foreign_entries(folder))}); "
                        "nothing was changed: choose a new or empty folder")
    if marker.get("kind") != kind:
        raise UserError(f"{what} {folder} is an OrthoDiffusion '{marker.get('kind')}' output, not a '{kind}' one; "
                        "nothing was changed: choose a new or empty folder")
    foreign = foreign_entries(folder)
    if foreign:
        raise UserError(f"{what} {folder} holds files the tool did not write ({_names(foreign)}); nothing was "
                        "changed: move them away or choose a new folder")
    return folder


def claim_folder(folder: str | os.PathLike, kind: str, what: str = "--out") -> Path:
    """Make ``folder`` an output of ``kind`` the tool may add to: new, empty, or already one (user files
    inside an earlier output are left alone and never deleted)."""
    from .storage import file_lock

    folder = Path(folder)
    _refuse_link_or_file(folder, what)

    def check(marker: dict | None) -> bool:  # True: already ours; raises when it is not claimable
        if marker is not None:
            if marker.get("kind") != kind:
                raise UserError(f"{what} {folder} is an OrthoDiffusion '{marker.get('kind')}' output, not a '{kind}' "
                                "one; choose a new or empty folder")
            return True
        others = sorted(p.name for p in folder.iterdir() if not _is_own_hidden(p.name)) if folder.is_dir() else []
        if others:
            raise UserError(f"{what} {folder} is not empty and is not an earlier OrthoDiffusion {kind} output "
                            f"(it holds {_names(others)}); nothing was changed: choose a new or empty folder")
        return False

    if check(read_marker(folder) if folder.is_dir() else None):
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with file_lock(folder / MARKER):  # torchrun ranks claim the same folder at once
            if not check(read_marker(folder)):
                write_marker(folder, kind, [])
    except OSError as exc:
        raise UserError(f"{what} {folder}: cannot write there ({exc.strerror or exc})") from None
    return folder


def remove_owned(folder: str | os.PathLike, name: str, kind: str) -> bool:
    """Delete ``folder/name`` when the tool can prove it wrote it; False (and nothing deleted) otherwise."""
    import shutil

    folder = Path(folder)
    marker = read_marker(folder)
    target = folder / name
    if marker is None or name not in marker["files"] or not os.path.lexists(target):
        return False
    if target.is_dir() and not target.is_symlink():
        try:
            check_replaceable(target, kind)
        except UserError:
            return False
        shutil.rmtree(target)
    else:
        target.unlink()
    record_files_without(folder, name)
    return True


def record_files_without(folder: Path, name: str) -> None:
    from .storage import file_lock

    with file_lock(folder / MARKER):
        old = read_marker(folder)
        if old is not None:
            write_marker(folder, old["kind"], [f for f in old["files"] if f != name])


def check_file_replaceable(path: str | os.PathLike, signature: bytes, what: str = "--out") -> Path:
    """A single output file may be overwritten when absent, listed by its folder's marker, or when its
    first 4 KiB carry ``signature`` (the tool's own header line)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UserError(f"{what} {path} is not a regular file; give a new file name")
    if not path.exists():
        return path
    marker = read_marker(path.parent)
    if marker is not None and path.name in marker["files"]:
        return path
    with open(path, "rb") as f:
        head = f.read(4096)
    if signature in head:
        return path
    raise UserError(f"{what} {path} exists and was not written by OrthoDiffusion; nothing was changed: "
                    "give a new file name or move it away")


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def refuse_inputs_inside(out: str | os.PathLike, inputs, what: str = "--out") -> None:
    """One line when an input (image, folder, manifest) lies inside the output folder ``out``."""
    out = Path(out)
    for p in inputs:
        if p is not None and _inside(Path(p), out):
            raise UserError(f"{what} {out} contains the input {p}; outputs never go where the inputs are: "
                            "choose an output folder outside the study and cohort folders")
