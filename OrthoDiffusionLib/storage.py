"""Crash-safe file writes, checksums and inter-process locks shared by every store.

Every store (feature cache, head versions, corrections, cohort outputs) writes through
``atomic_write*``: data go to a temporary file in the destination folder, are fsynced, and are
renamed over the destination in one step, so a reader sees either the old or the new file, never a
torn one, even after ``kill -9``. ``staged_folder`` does the same for a whole folder (result folders).

Test hook: ``OD_TEST_KILL_AT=<point>[@<name fragment>][:<n>]`` makes the process SIGKILL itself the
n-th time a write reaches ``point`` (``before-fsync``, ``before-rename``, ``after-rename``;
optionally only for destinations whose name contains the fragment). It is inert unless set; the
crash-consistency tests use it to kill at exact moments instead of sleeping and hoping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


KILL_ENV = "OD_TEST_KILL_AT"
_kill_hits: dict[str, int] = {}


def crash_point(point: str, dest: str | os.PathLike = "") -> None:
    """SIGKILL this process here when ``OD_TEST_KILL_AT`` names this point (tests only; inert otherwise)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    name, _, fragment = name.partition("@")
    if name != point or (fragment and fragment not in Path(dest).name):
        return
    _kill_hits[spec] = _kill_hits.get(spec, 0) + 1
    if _kill_hits[spec] >= int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    For writers that need a file name (safetensors, SimpleITK, MRML storage nodes). The temporary
    name keeps the destination's suffix so format-by-extension writers still work.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(dest.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the permissions a plain open() would (umask-based).
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        crash_point("before-fsync", dest)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        crash_point("before-rename", dest)
        os.replace(tmp_path, dest)
        crash_point("after-rename", dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Run ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike):
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


@contextlib.contextmanager
def staged_folder(dest: str | os.PathLike, kind: str = "case") -> Iterator[Path]:
    """Yield a hidden sibling folder to fill; on success it replaces ``dest`` whole.

    ``dest`` must be replaceable (ownership.check_replaceable: absent, empty, or an earlier output of
    ``kind`` holding only what the tool wrote); the new folder gets the ownership marker listing
    what it holds. A failure (or ``kill -9``) before the end leaves ``dest`` as it was. A previous
    output is moved aside and removed only after the new one is in place.
    """
    import shutil

    from .ownership import check_replaceable, mark_folder_complete

    dest = check_replaceable(dest, kind)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    try:
        yield stage
        mark_folder_complete(stage, kind)
        for p in stage.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        os.chmod(stage, 0o777 & ~_UMASK)
        crash_point("before-rename", dest)
        check_replaceable(dest, kind)  # again: nothing foreign may have appeared while we computed
        previous = None
        if dest.is_dir() and any(dest.iterdir()):
            previous = Path(tempfile.mkdtemp(prefix=f".{dest.name}.previous-", dir=dest.parent))
            os.replace(dest, previous)  # mkdtemp made an empty folder: replacing it is allowed
        elif dest.is_dir():
            dest.rmdir()
        os.rename(stage, dest)
        crash_point("after-rename", dest)
        _fsync_dir(dest.parent)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = 600.0):
    """Inter-process lock (advisory, ``<path>.lock``) for read-modify-write on a shared store."""
    from filelock import FileLock

    lock_path = Path(str(path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path), timeout=timeout):
        yield
