"""Reading volume files (NIfTI, NRRD, MHA/MHD) and DICOM folders into ``Series`` objects."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .guards import check_stored_size
from .headers import data_files
from .nifti import count_non_finite
from .own_outputs import is_result_folder, output_reason
from .paths import itk_path, shown
from .validate import validate_image

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def check_volume_path(path, allow_outputs: bool = False) -> None:
    """Everything decided before ITK opens ``path``: a UTF-8 name, a regular file, not one of the
    tool's own outputs (unless ``allow_outputs``: label maps), and a detached header's data files
    next to it (``headers.data_files``). One-line ``InputError`` otherwise."""
    itk_path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{shown(path)}: no such file or folder; check the path") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{shown(path)}: is not a regular file (a device, pipe or socket); give an image file "
                         "or a DICOM folder")
    reason = None if allow_outputs else output_reason(path)
    if reason:
        raise InputError(f"{shown(path)}: {reason}; give the MR series (a DICOM folder or a NIfTI/NRRD/MHA scan)")
    data_files(path)


def volume_files_in(folder: Path, notes: list[str] | None = None) -> list[Path]:
    """Volume files under ``folder`` (recursive, sorted) that are scans: the tool's own outputs and
    anything inside one of its result folders are left out, with one note saying so."""
    found, skipped = [], []
    for p in sorted(folder.rglob("*")):
        if not (is_volume_file(p) and p.is_file()):
            continue
        parents = p.relative_to(folder).parents
        if any(is_result_folder(folder / q) for q in list(parents)[:-1]) or output_reason(p):
            skipped.append(p)
        else:
            found.append(p)
    if skipped and notes is not None:
        shown_names = ", ".join(shown(p.relative_to(folder)) for p in skipped[:3])
        notes.append(f"skipped {len(skipped)} file(s) written by orthodiffusion ({shown_names}"
                     f"{', ...' if len(skipped) > 3 else ''}): outputs are not scans")
    return found


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
    check_volume_path(path)
    check_gzip_complete(path)
    check_stored_size(path)  # short raw data or a .nii without the NIfTI magic (ITK reads both silently)
    if str(path).lower().endswith((".nii", ".nii.gz")):
        bad = count_non_finite(path)  # ITK reads them as 0: count them in the stored bytes
        if bad:
            raise InputError(f"{path}: has {bad} NaN or infinite voxels (stored in the file; the reader would make "
                             "them 0); re-export the image or replace them before running")
    try:
        image = sitk.ReadImage(itk_path(path))
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
