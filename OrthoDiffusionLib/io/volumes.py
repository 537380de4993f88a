"""Reading volume files (NIfTI, NRRD, MHA/MHD) and DICOM folders into ``Series`` objects."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .guards import check_stored_size
from .validate import validate_image

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def select_echo(image: sitk.Image, echo: int | None, path) -> tuple[sitk.Image, int | None]:
    """Reduce a 4D (or multi-component) image to one 3D echo; echo numbers start at 1 (as DICOM)."""
    n_comp = image.GetNumberOfComponentsPerPixel()
    if image.GetDimension() == 4:
        count = image.GetSize()[3]
    elif n_comp > 1:
        count = n_comp
    else:  # single echo: --echo only concerns the multi-echo series of a study
        return image, None
    if count == 1:
        echo = echo or 1
    if echo is None:
        raise InputError(f"{path}: is a 4D series with {count} echoes/volumes; choose one with --echo N (1..{count})")
    if not 1 <= echo <= count:
        raise InputError(f"{path}: echo {echo} does not exist; choose --echo between 1 and {count}")
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        size[3] = 0  # 0 = collapse this dimension
        return sitk.Extract(image, size, [0, 0, 0, echo - 1]), echo
    return sitk.VectorIndexSelectionCast(image, echo - 1), echo


def check_gzip_complete(path) -> None:
    """ITK reads a truncated .gz without an error (the missing voxels become 0): refuse it here."""
    if not str(path).lower().endswith(".gz") or not Path(path).is_file():
        return
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":  # not gzip at all: ITK's own "cannot read" error says it
            return
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path}: damaged or truncated gzip file ({exc}); copy or export it again") from None


def read_volume_file(path: Path, echo: int | None = None) -> tuple[sitk.Image, int | None]:
    """Read one NIfTI/NRRD/MHA file, select the echo of a 4D file and validate the result."""
    check_gzip_complete(path)
    check_stored_size(path)  # short raw data or a .nii without the NIfTI magic (ITK reads both silently)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"{path}: cannot read as an image (unknown format or damaged file); "
                         "give a NIfTI, NRRD or MHA file or a DICOM folder") from None
    image, echo = select_echo(image, echo, path)
    validate_image(image, path)
    return image, echo


def volume_hash(image: sitk.Image) -> str:
    """Stable sha256 of voxel values and grid geometry: the key of downstream feature caches.

    Geometry is rounded to 1e-6 mm so header float noise does not change the key; voxel bytes are
    hashed little-endian with their dtype and shape, so equal bytes of a different grid differ.
    """
    arr = sitk.GetArrayViewFromImage(image)
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}|{arr.shape}|{image.GetNumberOfComponentsPerPixel()}|".encode())
    for name, values in (("spacing", image.GetSpacing()), ("origin", image.GetOrigin()),
                         ("direction", image.GetDirection())):
        # +0.0 turns -0.0 into 0.0 so the text is the same for both
        h.update((name + ":" + ",".join(f"{round(v, 6) + 0.0:.6f}" for v in values) + "|").encode())
    h.update(arr.tobytes())
    return h.hexdigest()
