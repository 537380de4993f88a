"""Plane detection from direction cosines, canonical in-plane orientation, 3D → planes reformat.

Conventions (LPS, as SimpleITK): x runs R→L, y runs A→P, z runs I→S. The slice normal of a series
is the third column of its direction matrix (unless the spacing shows the slice axis is another
one, see ``slice_axis``). Canonical layouts, written as ITK orientation codes (letter k = the
direction in which index k increases) and as the [D, H, W] array the network sees:

=========  ======  =====================  =====================  =====================
plane      code    W (columns)            H (rows)               D (slices)
=========  ======  =====================  =====================  =====================
sagittal   PIR     anterior → posterior   superior → inferior    left → right
coronal    LIP     right → left           superior → inferior    anterior → posterior
axial      LPS     right → left           anterior → posterior   inferior → superior
=========  ======  =====================  =====================  =====================

All three are right-handed, so a scanner's (right-handed) DICOM series only needs an axis
permutation and flips, never a mirror, to reach them.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from .geometry import Geometry, resample_to

from ..planes import PLANES
CANONICAL_CODE = {"sagittal": "PIR", "coronal": "LIP", "axial": "LPS"}
OBLIQUE_WARN_DEG = 30.0
ISOTROPIC_RATIO = 1.6  # max/min spacing below this counts as near-isotropic
MIN_3D_SLICES = 40
FINE_SLICE_MM = 1.5  # 3D sequences (DESS, SPACE, CUBE) with slices this thin also count as 3D

_LETTER = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def canonical_direction(plane: str) -> np.ndarray:
    """3x3 direction matrix (columns = W, H, D axes) of the canonical layout of ``plane``."""
    return np.array([_LETTER[c] for c in CANONICAL_CODE[plane]], dtype=float).T


def slice_axis(image: sitk.Image) -> int:
    """Index of the slice axis: 2, unless the spacing clearly marks another axis as the thick one
    (some converters store 2D series with the slices along x or y)."""
    return slice_axis_of(image.GetSpacing())


def slice_axis_of(spacing) -> int:
    spacing = np.asarray(spacing[:3], dtype=float)
    coarsest = int(np.argmax(spacing))
    others = np.delete(spacing, coarsest)
    if coarsest != 2 and spacing[coarsest] / others.max() >= ISOTROPIC_RATIO:
        return coarsest
    return 2


def detect_plane(image: sitk.Image) -> tuple[str, float]:
    """(plane, obliquity in degrees to the nearest cardinal axis) from the slice normal.

    The plane is the cardinal axis with the largest component of the normal: x → sagittal,
    y → coronal, z → axial. Obliquity above ``OBLIQUE_WARN_DEG`` is still assigned by that axis;
    callers warn about it.
    """
    return plane_of_geometry(image.GetDirection(), image.GetSpacing(), image.GetSize())[:2]


def plane_of_geometry(direction, spacing, size) -> tuple[str, float, bool]:
    """(plane, obliquity in degrees, near-isotropic 3D?) of a volume from its LPS direction matrix
    (9 values, row-major as SimpleITK gives), spacing and size: the one plane rule for files and
    for Slicer's volume nodes (``mrml.planes.volume_plane``)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    axis = slice_axis_of(spacing)
    normal = d[:, axis] / np.linalg.norm(d[:, axis])
    k = int(np.argmax(np.abs(normal)))
    obliquity = math.degrees(math.acos(min(1.0, abs(float(normal[k])))))
    return PLANES[k], obliquity, _near_isotropic_3d(spacing, int(size[axis]))


def reorient_canonical(image: sitk.Image, plane: str) -> sitk.Image:
    """Permute/flip axes (no resampling) so the array layout follows the plane's canonical code."""
    return sitk.DICOMOrient(image, CANONICAL_CODE[plane])


def is_near_isotropic_3d(image: sitk.Image) -> bool:
    """A 3D acquisition worth reformatting: at least 40 slices, and spacing ratio < 1.6 or slices
    no thicker than 1.5 mm (e.g. a 0.6×0.6×1.5 mm DESS)."""
    return _near_isotropic_3d(image.GetSpacing(), image.GetSize()[slice_axis(image)])


def _near_isotropic_3d(spacing, slices: int) -> bool:
    spacing = np.asarray(spacing[:3], dtype=float)
    enough = slices >= MIN_3D_SLICES
    return bool(enough and (spacing.max() / spacing.min() < ISOTROPIC_RATIO or spacing.max() <= FINE_SLICE_MM))


def cardinal_grid(source: Geometry, plane: str, inplane_mm: float, slice_mm: float) -> Geometry:
    """Canonical grid for ``plane`` whose voxel box covers the physical box of ``source``."""
    m = canonical_direction(plane)
    spacing = np.array([inplane_mm, inplane_mm, slice_mm])
    coords = source.physical_corners() @ m  # corner coordinates along the W, H, D axes
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    extent = hi - lo
    size = np.maximum(1, np.ceil(extent / spacing - 1e-6)).astype(int)
    slack = size * spacing - extent  # spread the rounding margin evenly on both sides
    first_centre = lo - slack / 2 + spacing / 2
    origin = m @ first_centre
    return Geometry(tuple(int(v) for v in size), tuple(float(v) for v in spacing),
                    tuple(float(v) for v in origin), tuple(float(v) for v in m.ravel()))


def reformat_to_planes(image: sitk.Image, slice_mm: float | None = None,
                       keep_native: bool = True) -> dict[str, sitk.Image]:
    """Reformat a 3D volume into sagittal, coronal and axial views on canonical cardinal grids.

    In-plane spacing is the finest source spacing; slice spacing is ``slice_mm`` or, by default,
    the coarsest source spacing (the native through-plane spacing, so no view claims more
    resolution than was acquired). With ``keep_native`` the native plane is the source itself
    (reoriented only, no interpolation).
    """
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    inplane = float(spacing.min())
    thickness = float(slice_mm if slice_mm is not None else spacing.max())
    from .intensity import clip_outliers

    native, _ = detect_plane(image)
    source = Geometry.of(image)
    # interpolation would smear saturated voxels into the views below the guard's notice; clean
    # volumes are returned unchanged by clip_outliers
    smooth_source, _ = clip_outliers(image)
    views = {}
    for plane in PLANES:
        if keep_native and plane == native:
            views[plane] = reorient_canonical(image, plane)
        else:
            views[plane] = resample_to(smooth_source, cardinal_grid(source, plane, inplane, thickness),
                                       is_label=False)
    return views
