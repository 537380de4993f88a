"""Paths handed to SimpleITK / GDCM must be UTF-8 text.

Python keeps undecodable bytes of a file name (e.g. Latin-1 ``Z\\xfcrich``) as lone surrogates;
SimpleITK's C++ layer then aborts the whole process (exit 134, no message) when it converts such a
name. ``itk_path`` refuses those names with one line before any ITK call, and ``shown`` prints any
path without raising (the bytes appear as ``\\xNN``).
"""

from __future__ import annotations

import os

from ..errors import InputError


def shown(path) -> str:
    """``path`` as printable text: undecodable bytes as ``\\xNN`` (never raises)."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


def is_utf8_path(path) -> bool:
    try:
        os.fsdecode(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def itk_path(path, what: str = "") -> str:
    """``str(path)`` when ITK can take it; else a one-line ``InputError`` naming the bytes."""
    text = os.fsdecode(path)
    if not is_utf8_path(text):
        label = f"{what} " if what else ""
        raise InputError(f"{label}{shown(text)}: the file or folder name holds bytes that are not UTF-8 text "
                         "(e.g. Latin-1 accents); rename it (e.g. `convmv -f latin1 -t utf-8 -r --notest DIR`) "
                         "or copy the files to a UTF-8 path")
    return text
