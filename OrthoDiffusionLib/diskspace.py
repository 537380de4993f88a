"""A full disk or a folder the tool may not write gives one line, not a traceback.

Python reports those as ``OSError`` (ENOSPC, EDQUOT, EROFS, EACCES); SimpleITK only as a
``RuntimeError`` after its C layer has printed several lines of its own. So images are checked
against the free space before they are written (``check_free_space``), and ``as_user_error`` turns
the OS errors into ``UserError`` lines for the CLI. Research use only, not for clinical decisions.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from .errors import DiskFullError, InputError, UserError

FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
MARGIN = 1 << 20  # bytes kept free beyond the estimate (the JSON and CSV files written next to it)


def check_free_space(folder: str | os.PathLike, needed: int) -> None:
    """``DiskFullError`` when ``folder``'s file system has less than ``needed`` bytes (+1 MB) free."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # unknown: the write itself will tell
    if free < needed + MARGIN:
        raise DiskFullError(f"{folder}: no space left on the device ({free / 1e6:.1f} MB free, about "
                            f"{(needed + MARGIN) / 1e6:.1f} MB needed); free some space or choose another --out")


def as_user_error(exc: OSError) -> UserError | None:
    """The one-line ``UserError`` for a full disk or a read-only / forbidden folder; None otherwise."""
    where = exc.filename or "the output folder"
    if exc.errno in FULL:
        return DiskFullError(f"{where}: no space left on the device (or over quota); free some space or choose "
                             "another --out")
    if exc.errno in NOT_WRITABLE:
        return InputError(f"{where}: cannot write there ({os.strerror(exc.errno)}); choose a folder you may write "
                          "to (--out, ORTHODIFFUSION_HOME, ORTHODIFFUSION_CACHE)")
    return None
