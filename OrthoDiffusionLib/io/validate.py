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
# Knee MR voxels are ~0.1-10 mm; outside [0.01, 20] mm the header is wrong (metres, a scale bug)
MIN_SPACING_MM, MAX_SPACING_MM = 0.01, 20.0
# |voxel| above this is no MR value (scanners store at most ~1e6); near float32's 3.4e38 the
# difference max - min overflows to inf and the network input becomes NaN
MAX_ABS_VOXEL = 1e30


def _check_dimension(image: sitk.Image) -> str | None:
    if image.GetDimension() == 2 or (image.GetDimension() == 3 and 1 in image.GetSize()):
        return ("is a 2D image (a single slice); give the whole series "
                "(the DICOM folder or a 3D NIfTI/NRRD/MHA file)")
    if image.GetDimension() != 3:
        return (f"has {image.GetDimension()} dimensions; a 4D series needs an echo choice (--echo N), "
                "other dimensions are not supported")
    return None


def _check_complex(image: sitk.Image) -> str | None:
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        return ("has complex-valued voxels (raw k-space or real/imaginary data); give the magnitude image "
                "the scanner reconstructs")
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


def _check_plausible_spacing(image: sitk.Image) -> str | None:
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        return (f"has an implausible voxel spacing {tuple(round(float(v), 6) for v in spacing)} mm (MR voxels are "
                f"{MIN_SPACING_MM}-{MAX_SPACING_MM:g} mm); check the header's units or re-export the series")
    return None


def _check_direction(image: sitk.Image) -> str | None:
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    # orthonormal columns (not only |det| = 1: a shear has det 1 and would distort the anatomy)
    if not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
        return "has a degenerate orientation (direction matrix is not a rotation); fix the header"
    return None


def _check_dtype(image: sitk.Image) -> str | None:
    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize == 8:
        return (f"has 64-bit integer voxels (values {int(arr.min())}..{int(arr.max())}), which no MR export "
                "writes; re-export the series as 16-bit integers or float32")
    if np.issubdtype(arr.dtype, np.floating) and arr.size:
        finite = arr[np.isfinite(arr)]
        # float32 max is refused for float64; far above any MR scale, the scaling itself overflows
        if finite.size and np.abs(finite).max() > MAX_ABS_VOXEL:
            return (f"has voxel values up to {float(np.abs(finite).max()):.3g}, far beyond any MR scale and near or "
                    "beyond the float32 range (±3.4e38); rescale or re-export the series")
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
    _check_complex,
    _check_components,
    _check_size,
    _check_spacing,
    _check_plausible_spacing,
    _check_direction,
    _check_dtype,
    _check_voxels,
]


def validate_image(image: sitk.Image, path) -> None:
    """Raise ``InputError("<path>: <problem>; <what to do>")`` for the first failed check."""
    for check in CHECKS:
        problem = check(image)
        if problem:
            raise InputError(f"{path}: {problem}")
