"""Installing a model folder or archive into the user's model folder, safely: copied once into a
staging folder there without following any link, within size and file-count limits, verified there
(schema, id, paths inside the folder, every file's sha256), then renamed into place; ``--force``
moves the earlier install into a dated backup. Research use only, not for clinical decisions."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..errors import CheckpointError, InputError, UserError
from ..storage import file_lock, read_json
from .catalogue import (MODEL_FILE, ModelSpec, _spec_from_entry, check_model_id, get_model, home_dir,
                        user_models_dir, validate_entry, verify_model)

# Limits of one install (folder or archive): a released 3-plane model is about 0.5 GB in ~20 files.
MAX_INSTALL_BYTES = 8 << 30
MAX_INSTALL_FILES = 10_000


def _refuse(src: Path, why: str):
    raise InputError(f"{src}: refused: {why}; nothing was installed")


def _copy_folder(src: Path, dst: Path) -> None:
    """Copy a model folder once, never following a link and within the install limits."""
    count = total = 0
    for top, dirs, files in os.walk(src, followlinks=False):
        for name in dirs + files:
            p = Path(top) / name
            if p.is_symlink():
                _refuse(src, f"{p.relative_to(src)} is a symbolic link (installs never follow links)")
            if name in files and not p.is_file():
                _refuse(src, f"{p.relative_to(src)} is not a regular file")
        for name in files:
            p = Path(top) / name
            count += 1
            total += p.stat().st_size
            if count > MAX_INSTALL_FILES or total > MAX_INSTALL_BYTES:
                _refuse(src, f"more than {MAX_INSTALL_FILES} files or {MAX_INSTALL_BYTES >> 30} GiB")
            target = dst / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target, follow_symlinks=False)


def _extract_zip(src: Path, dst: Path) -> None:
    """Extract an archive within the install limits: no links, no absolute or '..' names, sizes
    bounded before and while extracting (a small archive may expand to gigabytes)."""
    import stat

    with zipfile.ZipFile(src) as z:
        infos = z.infolist()
        if len(infos) > MAX_INSTALL_FILES or sum(i.file_size for i in infos) > MAX_INSTALL_BYTES:
            _refuse(src, f"the archive expands to more than {MAX_INSTALL_FILES} files or {MAX_INSTALL_BYTES >> 30} GiB")
        written = 0
        for info in infos:
            name = info.filename
            if name.startswith("/") or "\\" in name or ".." in Path(name).parts or ":" in name:
                _refuse(src, f"unsafe path in the archive: {name}")
            if stat.S_ISLNK(info.external_attr >> 16):
                _refuse(src, f"{name} is a symbolic link (installs never follow links)")
            target = dst / name
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as fin, open(target, "wb") as fout:
                for block in iter(lambda: fin.read(1 << 20), b""):
                    written += len(block)
                    if written > MAX_INSTALL_BYTES:
                        _refuse(src, f"the archive expands to more than {MAX_INSTALL_BYTES >> 30} GiB")
                    fout.write(block)


def backup_dir() -> Path:
    return home_dir() / "replaced"


def move_to_backup(dest: Path) -> Path:
    """--force never destroys what a user fitted: the previous install (heads versions included)
    is moved whole into a dated backup folder."""
    import datetime as _dt

    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    backup = backup_dir() / f"{dest.name}-{stamp}"
    n = 1
    while backup.exists():
        n += 1
        backup = backup_dir() / f"{dest.name}-{stamp}-{n}"
    backup.parent.mkdir(parents=True, exist_ok=True)
    os.replace(dest, backup)
    return backup


def install_model(src: str | os.PathLike, force: bool = False, log=None) -> ModelSpec:
    """Install a model folder or .zip (``model.json`` at its top or in one sub-folder) into the
    user's model folder: copied once into a staging folder there, verified there (schema, paths,
    every file's sha256), then renamed into place. ``force`` moves an earlier install of the same
    id into ``$ORTHODIFFUSION_HOME/replaced/<id>-<time>``. Never touches the install tree."""
    src = Path(src).expanduser()
    if not src.exists():
        raise InputError(f"{src}: not found")
    if src.is_file() and not zipfile.is_zipfile(src):
        raise InputError(f"{src}: not a zip file or a folder")
    root = user_models_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
    except OSError as exc:
        raise UserError(f"cannot write the user model folder {root} ({exc.strerror or exc}); "
                        "set ORTHODIFFUSION_HOME to a writable folder") from None
    try:
        try:
            if src.is_file():
                _extract_zip(src, staging)
            else:
                _copy_folder(src, staging)
        except (OSError, zipfile.BadZipFile) as exc:
            raise InputError(f"{src}: cannot copy it ({getattr(exc, 'strerror', None) or exc})") from None
        model_dir = staging
        if not (staging / MODEL_FILE).is_file():
            subs = [d for d in staging.iterdir() if d.is_dir() and (d / MODEL_FILE).is_file()]
            if len(subs) != 1:
                raise InputError(f"{src}: no {MODEL_FILE} at the top level (or in exactly one sub-folder)")
            model_dir = subs[0]
        entry = read_json(model_dir / MODEL_FILE)
        validate_entry(entry)
        check_model_id(entry["id"], "model.json id")
        spec = _spec_from_entry(entry, model_dir, "user")
        problems = verify_model(spec, heads=False)  # on the staged copy: the bytes that will be used
        if problems:
            raise CheckpointError(f"{src}: refused: " + "; ".join(problems))
        dest = root / spec.id
        with file_lock(root / ".install.lock"):
            backup = None
            if dest.exists() or dest.is_symlink():
                if not force:
                    raise UserError(f"model '{spec.id}' is already installed in {dest} (use --force to replace it; "
                                    f"the old install is then kept in {backup_dir()})")
                backup = move_to_backup(dest)
            os.rename(model_dir, dest)
        if backup is not None and log is not None:
            log(f"previous '{spec.id}' kept in {backup}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return get_model(spec.id)
