"""Three 2D stacks (sagittal, coronal, axial) sampled from the case's signal volume.

Geometry (per centre, see ``contrast.CENTERS``): square matrix of ``matrix`` x ``matrix`` at
``inplane_mm`` (0.625-0.7 mm; FOV 156-160 mm), slices ``slice_mm`` thick (3-4 mm) with a
``gap_mm`` gap (0.3-0.8 mm), obliquity up to +-10 deg about random axes, centre jittered by
+-5 mm. Slice normals (LPS, before obliquity): sagittal -x (slices run left to right), coronal
+y, axial +z; rows/columns follow the usual radiological layout (sagittal: P and I; coronal:
L and I; axial: L and P). Coverage along the normal: 110 mm sagittal, 100 mm coronal and axial.

Physics: slice-profile blur (weighted average of 3 samples at -1/3, 0, +1/3 of the slice
thickness, weights 0.8/1/0.8: a rounded profile), smooth multiplicative receive bias (exp of a random quadratic, strength per centre),
optional mild motion ringing (random phase errors on ~8 % of phase-encode lines), Rician noise
``|S + n1 + i n2|`` with ``sigma = S_muscle / SNR``. Labels are sampled nearest-neighbour at the
slice centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .shapes import Grid

from ..planes import PLANES
_BASE_DIRECTIONS = {  # columns: row axis i, column axis j, slice normal k (LPS)
    "sagittal": np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float),
    "coronal": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float),
    "axial": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], float),
}
COVERAGE_MM = {"sagittal": 110.0, "coronal": 100.0, "axial": 100.0}
_PROFILE_OFFSETS = np.array([-1.0 / 3.0, 0.0, 1.0 / 3.0])
_PROFILE_WEIGHTS = np.array([0.8, 1.0, 0.8]) / 2.6


def base_direction(plane: str) -> np.ndarray:
    """3x3 direction matrix (columns = row, column, slice-normal unit vectors, LPS)."""
    return _BASE_DIRECTIONS[plane].copy()


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


@dataclass(frozen=True)
class StackGeometry:
    plane: str
    direction: np.ndarray   # 3x3, columns = unit axes
    spacing: tuple[float, float, float]  # in-plane, in-plane, slice spacing (thickness + gap)
    thickness: float
    gap: float
    shape: tuple[int, int, int]
    origin: np.ndarray      # world position of voxel (0, 0, 0)
    obliquity_deg: float

    def normal(self) -> np.ndarray:
        return self.direction[:, 2]


def sample_geometry(plane: str, center_mm, inplane_mm: float, matrix: int, slice_mm: float,
                    gap_mm: float, rng: np.random.Generator, max_oblique_deg: float = 10.0) -> StackGeometry:
    angle = np.deg2rad(rng.uniform(0.0, max_oblique_deg))
    axis = rng.standard_normal(3)
    d = _rotation(axis, angle) @ base_direction(plane)
    step = slice_mm + gap_mm
    n_slices = int(np.ceil(COVERAGE_MM[plane] / step))
    shape = (matrix, matrix, n_slices)
    spacing = (inplane_mm, inplane_mm, step)
    c = np.asarray(center_mm, float) + rng.uniform(-5.0, 5.0, 3)
    half = (np.array(shape) - 1) / 2.0 * np.array(spacing)
    origin = c - d @ half
    return StackGeometry(plane, d, spacing, slice_mm, gap_mm, shape, origin,
                         float(np.rad2deg(angle)))


def _grid_coords(geom: StackGeometry, grid: Grid, slice_offset_mm: float = 0.0) -> np.ndarray:
    """Continuous case-grid indices (3, ni, nj, nk) of every stack voxel."""
    ni, nj, nk = geom.shape
    o = (geom.origin + geom.direction[:, 2] * slice_offset_mm - np.asarray(grid.origin)) / grid.spacing
    e = geom.direction * (np.asarray(geom.spacing)[None, :] / grid.spacing)
    ii = np.arange(ni, dtype=np.float32)
    jj = np.arange(nj, dtype=np.float32)
    kk = np.arange(nk, dtype=np.float32)
    out = np.empty((3, ni, nj, nk), np.float32)
    for r in range(3):
        out[r] = (o[r] + e[r, 0] * ii[:, None, None] + e[r, 1] * jj[None, :, None]
                  + e[r, 2] * kk[None, None, :])
    return out


def world_coords(geom: StackGeometry) -> np.ndarray:
    unit = Grid(shape=(1, 1, 1), origin=(0.0, 0.0, 0.0), spacing=1.0)
    return _grid_coords(geom, unit)


def slice_profile(samples: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (fractions of the thickness) and weights of the rounded slice profile; 3 samples
    is the test bed's profile, more spread the same shape (weight 1 - 1.8 offset^2) finer."""
    if samples == 3:
        return _PROFILE_OFFSETS, _PROFILE_WEIGHTS
    off = np.linspace(-1.0 / 3.0, 1.0 / 3.0, samples)
    w = 1.0 - 1.8 * off ** 2
    return off, w / w.sum()


def render_signal(signal: np.ndarray, grid: Grid, geom: StackGeometry, samples: int = 3) -> np.ndarray:
    """Slice-profile-weighted trilinear sampling of a case-grid signal volume."""
    out = np.zeros(geom.shape, np.float32)
    base = _grid_coords(geom, grid)
    kvec = (geom.direction[:, 2] * geom.thickness / grid.spacing).astype(np.float32)
    for off, w in zip(*slice_profile(samples)):
        coords = base + (kvec * off)[:, None, None, None]
        out += w * ndimage.map_coordinates(signal, coords, order=1, mode="constant", cval=0.0,
                                           prefilter=False, output=np.float32)
    return out


def render_labels(labels: np.ndarray, grid: Grid, geom: StackGeometry) -> np.ndarray:
    return ndimage.map_coordinates(labels, _grid_coords(geom, grid), order=0, mode="constant",
                                   cval=0, prefilter=False, output=np.uint8)


def bias_field(geom: StackGeometry, center_mm, strength: float, rng: np.random.Generator) -> np.ndarray:
    """exp(random quadratic in (p - centre)/80 mm), 1 at the centre; ``strength`` ~ its range."""
    coef = rng.standard_normal(9) * strength / 3.0
    w = world_coords(geom)
    x, y, z = ((w[r] - float(center_mm[r])) / 80.0 for r in range(3))
    poly = (coef[0] * x + coef[1] * y + coef[2] * z + coef[3] * x * x + coef[4] * y * y
            + coef[5] * z * z + coef[6] * x * y + coef[7] * x * z + coef[8] * y * z)
    return np.exp(poly).astype(np.float32)


def motion_ringing(img: np.ndarray, rng: np.random.Generator, strength: float = 0.3,
                   fraction: float = 0.08) -> np.ndarray:
    """Random phase errors on a fraction of phase-encode lines (axis 1) of every slice."""
    k = np.fft.fft(img, axis=1)
    n = img.shape[1]
    lines = rng.random(n) < fraction
    phase = np.zeros(n)
    phase[lines] = rng.normal(0.0, strength, int(lines.sum()))
    k *= np.exp(1j * phase)[None, :, None]
    return np.abs(np.fft.ifft(k, axis=1)).astype(np.float32)


def add_rician(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    n = rng.standard_normal((2, *img.shape), dtype=np.float32) * np.float32(sigma)
    return np.sqrt((img + n[0]) ** 2 + n[1] ** 2)
