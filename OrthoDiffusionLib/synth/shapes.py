"""Small geometric primitives on an axis-aligned voxel grid (index order x, y, z; LPS mm)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Axis-aligned LPS grid: ``world = origin + spacing * index`` (index order x, y, z)."""

    shape: tuple[int, int, int]
    origin: tuple[float, float, float]
    spacing: float

    def world(self, idx) -> np.ndarray:
        return np.asarray(self.origin) + self.spacing * np.asarray(idx, dtype=float)

    def index(self, world) -> np.ndarray:
        return (np.asarray(world, dtype=float) - np.asarray(self.origin)) / self.spacing

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(self.origin[a] + self.spacing * np.arange(self.shape[a], dtype=np.float32)
                     for a in range(3))  # type: ignore[return-value]


def bbox_slices(grid: Grid, lo_mm, hi_mm) -> tuple[slice, slice, slice]:
    """Index slices covering the world box [lo, hi] (clipped to the grid)."""
    lo = np.floor(grid.index(lo_mm)).astype(int)
    hi = np.ceil(grid.index(hi_mm)).astype(int) + 1
    return tuple(slice(max(0, int(lo[a])), min(grid.shape[a], int(hi[a]))) for a in range(3))  # type: ignore


def local_coords(grid: Grid, sl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable world coordinates (x, y, z) of the sub-block ``sl``."""
    xs, ys, zs = grid.axes()
    return xs[sl[0]][:, None, None], ys[sl[1]][None, :, None], zs[sl[2]][None, None, :]


def band_mask(grid: Grid, p0, p1, width_dir, half_width: float, half_thick: float,
              end_pad: float = 0.0):
    """Flat band (ligament/tendon) from ``p0`` to ``p1`` (mm).

    Returns (slices, mask, t) where ``t`` is the position along the band (0 at p0, 1 at p1) for
    the voxels of the sub-block. The cross-section is a rounded rectangle ``half_width`` along
    ``width_dir`` (projected perpendicular to the axis) and ``half_thick`` across it.
    """
    p0 = np.asarray(p0, float)
    p1 = np.asarray(p1, float)
    axis = p1 - p0
    length = float(np.linalg.norm(axis))
    u = axis / length
    w = np.asarray(width_dir, float)
    w = w - u * (w @ u)
    w /= np.linalg.norm(w)
    n = np.cross(u, w)
    r = max(half_width, half_thick) + end_pad + grid.spacing
    sl = bbox_slices(grid, np.minimum(p0, p1) - r, np.maximum(p0, p1) + r)
    x, y, z = local_coords(grid, sl)
    dx, dy, dz = x - p0[0], y - p0[1], z - p0[2]
    t = (dx * u[0] + dy * u[1] + dz * u[2]) / length
    a = dx * w[0] + dy * w[1] + dz * w[2]
    b = dx * n[0] + dy * n[1] + dz * n[2]
    pad = end_pad / length
    rounded = (a / half_width) ** 2 + (b / half_thick) ** 2 <= 1.0
    mask = rounded & (t >= -pad) & (t <= 1 + pad)
    return sl, mask, np.broadcast_to(t, mask.shape)


def ellipsoid_mask(grid: Grid, center, semi_axes):
    """Axis-aligned ellipsoid; returns (slices, mask, normalised radius)."""
    c = np.asarray(center, float)
    s = np.asarray(semi_axes, float)
    sl = bbox_slices(grid, c - s - grid.spacing, c + s + grid.spacing)
    x, y, z = local_coords(grid, sl)
    rho = ((x - c[0]) / s[0]) ** 2 + ((y - c[1]) / s[1]) ** 2 + ((z - c[2]) / s[2]) ** 2
    return sl, rho <= 1.0, rho


def sphere_mask(grid: Grid, center, radius: float):
    return ellipsoid_mask(grid, center, (radius, radius, radius))
