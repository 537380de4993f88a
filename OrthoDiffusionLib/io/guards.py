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
    spacing: tuple[float, ...] | None = None     # with origin and direction: the grid, for the reformat estimate
    origin: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None

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
    from .volumes import check_volume_path

    check_volume_path(path)  # a hostile header is refused before ITK reads even its header
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    pixel = sitk.Image(1, 1, reader.GetPixelID())  # one pixel, only to ask for the component size
    return HeaderInfo(str(path), tuple(int(v) for v in reader.GetSize()), int(reader.GetNumberOfComponents()),
                      int(pixel.GetSizeOfPixelComponent()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                      tuple(reader.GetDirection()))


def _dicom_grid(first, second) -> tuple | None:
    """(spacing, origin, direction) of a series from its first two slices; None when tags are missing."""
    import numpy as np

    try:
        iop = np.asarray([float(v) for v in first.ImageOrientationPatient], dtype=float)
        ipp = np.asarray([float(v) for v in first.ImagePositionPatient], dtype=float)
        row_mm, col_mm = (float(v) for v in first.PixelSpacing)
        normal = np.cross(iop[:3], iop[3:])
        step = abs(float(np.dot(normal, np.asarray([float(v) for v in second.ImagePositionPatient]) - ipp)))
        step = step or float(getattr(first, "SliceThickness", 0) or 1.0)
    except (AttributeError, TypeError, ValueError):
        return None
    direction = np.stack([iop[:3], iop[3:], normal], axis=1)
    return (col_mm, row_mm, step), tuple(ipp), tuple(direction.ravel())


def _dicom_headers(root: Path, recursive: bool = True) -> list[HeaderInfo]:
    import pydicom

    from .dicom import find_dicom_series

    out = []
    for folder, _uid, files in find_dicom_series(root, recursive=recursive):
        ds = pydicom.dcmread(files[0], stop_before_pixels=True, force=True)
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        bits = int(getattr(ds, "BitsAllocated", 16) or 16)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        second = pydicom.dcmread(files[1], stop_before_pixels=True, force=True) if len(files) > 1 else ds
        grid = _dicom_grid(ds, second) or (None, None, None)
        out.append(HeaderInfo(str(folder), (cols, rows, len(files)), samples, max(1, bits // 8), *grid))
    return out


def reformat_view_voxels(headers: list[HeaderInfo], reformat: bool | None = None,
                         slice_mm: float | None = None) -> list[int]:
    """Voxels of each view ``assign_planes`` would reformat from these headers (an upper bound: every
    plane but the source's own). Views of a strongly anisotropic or oblique volume are far larger
    than the volume: in-plane spacing is the finest source spacing, over the whole physical box."""
    import numpy as np

    from .geometry import Geometry
    from .planes import FINE_SLICE_MM, ISOTROPIC_RATIO, MIN_3D_SLICES, PLANES, cardinal_grid, detect_plane

    grids = [h for h in headers if h.spacing is not None and len(h.size) >= 3 and len(h.spacing) >= 3]
    if reformat is False or not grids:
        return []

    def is_3d(h: HeaderInfo) -> bool:
        sp = np.asarray(h.spacing[:3], dtype=float)
        return bool(min(h.size[:3]) >= 1 and max(h.size[:3]) >= MIN_3D_SLICES
                    and (sp.max() / sp.min() < ISOTROPIC_RATIO or sp.max() <= FINE_SLICE_MM))

    if reformat is None and not (len(headers) == 1 and is_3d(grids[0])):
        return []
    source = max(grids, key=lambda h: (is_3d(h), h.size[2]))
    spacing = tuple(float(v) for v in source.spacing[:3])
    direction = tuple(float(v) for v in (source.direction or np.eye(3).ravel())[:9])
    if min(spacing) <= 0 or not np.all(np.isfinite(spacing + direction)):
        return []  # the loader refuses such a header with its own message
    geometry = Geometry(tuple(int(v) for v in source.size[:3]), spacing,
                        tuple(float(v) for v in (source.origin or (0.0, 0.0, 0.0))[:3]), direction)
    probe = sitk.Image([1, 1, 1], sitk.sitkUInt8)  # one voxel: detect_plane only reads spacing and direction
    probe.SetSpacing(spacing)
    try:
        probe.SetDirection(direction)
    except RuntimeError:
        return []
    native, _ = detect_plane(probe)
    thickness = float(slice_mm if slice_mm is not None else max(spacing))
    return [math.prod(cardinal_grid(geometry, p, min(spacing), thickness).size) for p in PLANES if p != native]


def read_headers(path: str | os.PathLike) -> list[HeaderInfo]:
    """Header of every image ``path`` (a file or a folder) would load; nothing unreadable."""
    from .dicom import is_dicom_file
    from .paths import itk_path
    from .volumes import volume_files_in

    itk_path(path)
    path = Path(path)
    if path.is_file():
        if is_dicom_file(path):
            return _dicom_headers(path.parent, recursive=False)  # the file's folder: an upper bound
        header = _file_header(path)
        return [header] if header else []
    if path.is_dir():
        return _dicom_headers(path) + [h for h in map(_file_header, volume_files_in(path)) if h]
    return []


def check_voxels(headers: list[HeaderInfo], max_voxels: int | None = DEFAULT_MAX_VOXELS,
                 views: list[int] | None = None) -> None:
    """ResourceError (with the size and an estimate) for an image, or a reformatted view of one
    (``views``: their voxel counts), above ``max_voxels``."""
    if not max_voxels:
        return
    for h in headers:
        if h.voxels > max_voxels:
            raise ResourceError(
                f"{h.source}: {h.shape_text()} = {h.voxels:,} voxels per volume ({human_bytes(h.stored_bytes)} of "
                f"pixel data, {human_bytes(h.voxels * 4)} per float32 copy) is above --max-voxels {max_voxels:,}; "
                "crop or downsample the series, or raise --max-voxels if this machine has the memory")
    for n in views or ():
        if n > max_voxels:
            raise ResourceError(
                f"reformatting the 3D series into the other planes gives views of {n:,} voxels ({human_bytes(n * 4)} "
                f"per float32 copy), above --max-voxels {max_voxels:,} (the finest spacing over the whole field of "
                "view); use --no-reformat, give the other planes as series, or raise --max-voxels")


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
    """The one raw data file a .nhdr / .mhd header names (None when attached, compressed or several)."""
    from .headers import data_files, header_refs

    refs = header_refs(path)
    if refs is None or refs.patterns or len(refs.names) != 1:
        return None
    files = data_files(path)
    if path.suffix.lower() == ".nhdr" and "encoding: raw" not in path.read_text(encoding="latin-1", errors="replace"):
        return None
    return files[0]


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
