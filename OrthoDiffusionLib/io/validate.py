"""Checks that a loaded image is a usable 3D MR volume.

Each check is a small function returning ``None`` (fine) or a one-line problem description.
``validate_image`` runs them in order and raises the first problem as an ``InputError``. To add a
check (the reliability corpus will), write one function and append it to ``CHECKS``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

MIN_INPLANE_PIXELS = 16  # below this it is a thumbnail or a localizer, not a diagnostic series


def _check_dimension(image: sitk.Image) -> str | None:
    if image.GetDimension() == 2 or (image.GetDimension() == 3 and 1 in image.GetSize()):
        return ("is a 2D image (a single slice); give the whole series "
                "(the DICOM folder or a 3D NIfTI/NRRD/MHA file)")
    if image.GetDimension() != 3:
        return (f"has {image.GetDimension()} dimensions; a 4D series needs an echo choice (--echo N), "
                "other dimensions are not supported")
    return None


def _check_components(image: sitk.Image) -> str | None:
    n = image.GetNumberOfComponentsPerPixel()
    if n != 1:
        return f"has {n} values per voxel (colour or vector image); give a greyscale MR volume or choose --echo N"
    return None


def _check_size(image: sitk.Image) -> str | None:
    sx, sy, _ = image.GetSize()
    if min(sx, sy) < MIN_INPLANE_PIXELS:
        return f"is only {sx}x{sy} pixels in-plane; this looks like a localizer or thumbnail, not a diagnostic series"
    return None


def _check_spacing(image: sitk.Image) -> str | None:
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        return f"has an invalid voxel spacing {tuple(spacing)}; fix the header (spacing must be positive)"
    return None


def _check_direction(image: sitk.Image) -> str | None:
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(d)) or abs(abs(np.linalg.det(d)) - 1.0) > 1e-3:
        return "has a degenerate orientation (direction matrix is not a rotation); fix the header"
    return None


def _check_voxels(image: sitk.Image) -> str | None:
    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            return f"has {bad} NaN or infinite voxels; re-export the image or replace them before running"
    if arr.size and arr.min() == arr.max():
        return "has the same value in every voxel (empty image); check the export"
    return None


CHECKS: list[Callable[[sitk.Image], str | None]] = [
    _check_dimension,
    _check_components,
    _check_size,
    _check_spacing,
    _check_direction,
    _check_voxels,
]


def validate_image(image: sitk.Image, path) -> None:
    """Raise ``InputError("<path>: <problem>; <what to do>")`` for the first failed check."""
    for check in CHECKS:
        problem = check(image)
        if problem:
            raise InputError(f"{path}: {problem}")
