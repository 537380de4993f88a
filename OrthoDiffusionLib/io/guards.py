"""Header-only checks: how big an input is, read before any pixel data is loaded.

``read_headers`` returns one ``HeaderInfo`` per image a path would load (volume files via
SimpleITK ``ReadImageInformation``, DICOM series via pydicom headers without pixels), so a
volume whose header declares gigabytes is refused with an estimate instead of being read.
Paths that cannot be read are skipped here: the loader reports them with its own message.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..errors import ResourceError

DEFAULT_MAX_VOXELS = 512 ** 3  # per image; ~0.5 GB as int16, ~2 GB once converted to float32


@dataclass(frozen=True)
class HeaderInfo:
    source: str
    size: tuple[int, ...]          # as stored (x, y, z[, t]); a DICOM series: (columns, rows, files)
    components: int = 1
    bytes_per_component: int = 2

    @property
    def voxels(self) -> int:
        """Voxels of one 3D volume (what one plane costs after echo selection)."""
        return math.prod(self.size[:3]) if len(self.size) >= 3 else math.prod(self.size)

    @property
    def stored_bytes(self) -> int:
        """Bytes of pixel data the reader loads at once (every echo of a 4D file)."""
        return math.prod(self.size) * self.components * self.bytes_per_component

    def shape_text(self) -> str:
        return "x".join(str(v) for v in self.size)


def _file_header(path: Path) -> HeaderInfo | None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    pixel = sitk.Image(1, 1, reader.GetPixelID())  # one pixel, only to ask for the component size
    return HeaderInfo(str(path), tuple(int(v) for v in reader.GetSize()), int(reader.GetNumberOfComponents()),
                      int(pixel.GetSizeOfPixelComponent()))


def _dicom_headers(root: Path, recursive: bool = True) -> list[HeaderInfo]:
    import pydicom

    from .dicom import find_dicom_series

    out = []
    for folder, _uid, files in find_dicom_series(root, recursive=recursive):
        ds = pydicom.dcmread(files[0], stop_before_pixels=True, force=True)
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        bits = int(getattr(ds, "BitsAllocated", 16) or 16)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        out.append(HeaderInfo(str(folder), (cols, rows, len(files)), samples, max(1, bits // 8)))
    return out


def read_headers(path: str | os.PathLike) -> list[HeaderInfo]:
    """Header of every image ``path`` (a file or a folder) would load; nothing unreadable."""
    from .dicom import is_dicom_file
    from .volumes import is_volume_file

    path = Path(path)
    if path.is_file():
        if is_dicom_file(path):
            return _dicom_headers(path.parent, recursive=False)  # the file's folder: an upper bound
        header = _file_header(path)
        return [header] if header else []
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_volume_file(p))
        return _dicom_headers(path) + [h for h in map(_file_header, files) if h]
    return []


def check_voxels(headers: list[HeaderInfo], max_voxels: int | None = DEFAULT_MAX_VOXELS) -> None:
    """ResourceError (with the size and an estimate) for an image above ``max_voxels``."""
    if not max_voxels:
        return
    for h in headers:
        if h.voxels > max_voxels:
            raise ResourceError(
                f"{h.source}: {h.shape_text()} = {h.voxels:,} voxels per volume ({human_bytes(h.stored_bytes)} of "
                f"pixel data, {human_bytes(h.voxels * 4)} per float32 copy) is above --max-voxels {max_voxels:,}; "
                "crop or downsample the series, or raise --max-voxels if this machine has the memory")


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _nifti_layout(path: Path) -> tuple[int, str] | None:
    """(voxel data offset, byte order) of an uncompressed NIfTI-1/2 file; None for another format."""
    import struct

    with open(path, "rb") as f:
        head = f.read(544)
    for order in "<>":
        if len(head) >= 4 and struct.unpack(order + "i", head[:4])[0] == 348 and len(head) >= 348:
            if head[344:348] not in (b"n+1\0", b"ni1\0"):
                return None
            return int(struct.unpack(order + "f", head[108:112])[0]), order
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            if head[4:8] != b"n+2\0":
                return None
            return int(struct.unpack(order + "q", head[168:176])[0]), order
    return None


def _detached_data_file(path: Path) -> Path | None:
    """The raw data file a .nhdr / .mhd header names (None when attached, compressed or a list)."""
    text = path.read_text(encoding="latin-1", errors="replace")
    key = "data file:" if path.suffix.lower() == ".nhdr" else "ElementDataFile ="
    if path.suffix.lower() == ".nhdr" and "encoding: raw" not in text:
        return None
    for line in text.splitlines():
        if line.startswith(key):
            name = line[len(key):].strip()
            if name and name.upper() not in ("LOCAL", "LIST") and " " not in name:
                return path.parent / name
    return None


def check_stored_size(path: str | os.PathLike) -> None:
    """Refuse a file whose voxel data are shorter than its header declares, and a .nii without
    the NIfTI magic: ITK reads both without an error (zeros for the missing voxels; an old
    Analyze guess), so the result would be a silently wrong image."""
    from ..errors import InputError

    path = Path(path)
    name = path.name.lower()
    if name.endswith(".nii"):
        if path.stat().st_size < 348:
            raise InputError(f"{path}: cannot read as an image (shorter than a NIfTI header); copy or export it again")
        layout = _nifti_layout(path)
        if layout is None:
            raise InputError(f"{path}: cannot read as an image (not a NIfTI file: wrong magic or header size); "
                             "export the series again as NIfTI, NRRD or MHA")
        data_file, offset = path, layout[0]
    elif name.endswith((".nhdr", ".mhd")):
        data_file, offset = _detached_data_file(path), 0
        if data_file is None:
            return
        if not data_file.is_file():
            raise InputError(f"{path}: its data file {data_file.name} is missing; copy it next to the header")
    else:
        return
    header = _file_header(path)
    if header is None:
        return  # the reader reports it
    need, have = offset + header.stored_bytes, data_file.stat().st_size
    if have < need:
        raise InputError(f"{path}: truncated: the header declares {human_bytes(need)} of data but "
                         f"{data_file.name} holds {human_bytes(have)}; copy or export it again")
