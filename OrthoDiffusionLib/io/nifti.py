"""Non-finite voxels of a NIfTI file, counted from the stored bytes.

ITK's NIfTI reader turns NaN and ±Inf voxels into 0 without a word, so the image ITK returns looks
clean and the validation after it cannot see them: a volume with holes of zeros would be predicted
on. This reads the voxel data itself (plain or gzip) and counts them first.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 / float64
_CHUNK = 1 << 22


def _open(path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _layout(head: bytes) -> tuple[str, int, int] | None:
    """(byte order, datatype, voxel offset) of a NIfTI-1 or NIfTI-2 header; None for anything else."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            return order, struct.unpack(order + "h", head[70:72])[0], int(struct.unpack(order + "f", head[108:112])[0])
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            return order, struct.unpack(order + "h", head[12:14])[0], int(struct.unpack(order + "q", head[168:176])[0])
    return None


def count_non_finite(path: str | os.PathLike) -> int:
    """NaN and ±Inf voxels stored in a float NIfTI file (0 for integer types and other formats)."""
    try:
        with _open(path) as f:
            head = f.read(540)
            layout = _layout(head)
            if layout is None or layout[1] not in FLOAT_TYPES:
                return 0
            order, datatype, offset = layout
            dtype = np.dtype(order + FLOAT_TYPES[datatype])
            f.seek(max(offset, 348))
            bad, rest = 0, b""
            while block := f.read(_CHUNK):
                block = rest + block
                usable = len(block) - len(block) % dtype.itemsize
                bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(block[:usable], dtype=dtype))))
                rest = block[usable:]
            return bad
    except (OSError, EOFError, ValueError, struct.error):
        return 0  # an unreadable file is reported by the reader with its own message
