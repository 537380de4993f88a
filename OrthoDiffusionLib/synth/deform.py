"""Per-case spatial variation: random affine, smooth elastic field and left/right mirroring.

The case grid is the template grid. For each case voxel ``p`` the template point sampled is
``q = c + A^-1 (m(p) - c) + u(p)``, where ``m`` mirrors across the sagittal plane through the
knee centre ``c`` (a right knee becomes a left knee), ``A`` = rotation (each axis uniform
within +-10 deg) x isotropic scale (0.85-1.15) x small anisotropy (+-3 %), and ``u`` is a smooth
displacement (Gaussian radial basis on a ~25 mm lattice, amplitude ~2 mm). Tissue, structure
and lesion maps are packed into one uint16 and resampled nearest-neighbour in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .shapes import Grid

TISSUE_BITS, STRUCT_BITS = 5, 4


@dataclass(frozen=True)
class SpatialParams:
    rotation_deg: tuple[float, float, float]
    scale: float
    anisotropy: tuple[float, float, float]
    mirror: bool
    elastic_mm: float
    elastic_coeffs: np.ndarray  # (3, n, n, n) lattice coefficients (unit variance)

    def matrix(self) -> np.ndarray:
        """Forward template->case linear map A (about the knee centre, before mirroring)."""
        ax, ay, az = np.deg2rad(self.rotation_deg)
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        return rz @ ry @ rx @ np.diag(self.scale * np.asarray(self.anisotropy))


def sample_spatial(rng: np.random.Generator, max_rot_deg: float = 10.0,
                   scale_range=(0.85, 1.15), mirror_prob: float = 0.5,
                   elastic_mm: float = 2.0, lattice: int = 6) -> SpatialParams:
    return SpatialParams(
        rotation_deg=tuple(rng.uniform(-max_rot_deg, max_rot_deg, 3).tolist()),
        scale=float(rng.uniform(*scale_range)),
        anisotropy=tuple(rng.uniform(0.97, 1.03, 3).tolist()),
        mirror=bool(rng.random() < mirror_prob),
        elastic_mm=float(elastic_mm),
        elastic_coeffs=rng.standard_normal((3, lattice, lattice, lattice)),
    )


def pack(tissue: np.ndarray, struct: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    return (tissue.astype(np.uint16) | (struct.astype(np.uint16) << TISSUE_BITS)
            | (lesion.astype(np.uint16) << (TISSUE_BITS + STRUCT_BITS)))


def unpack(packed: np.ndarray):
    tissue = (packed & 0x1F).astype(np.uint8)
    struct = ((packed >> TISSUE_BITS) & 0xF).astype(np.uint8)
    lesion = ((packed >> (TISSUE_BITS + STRUCT_BITS)) & 1).astype(bool)
    return tissue, struct, lesion


def _basis(n_vox: int, n_ctrl: int) -> np.ndarray:
    """(n_vox, n_ctrl) Gaussian bumps evenly spread over the axis (sigma = lattice step)."""
    pos = np.linspace(0, 1, n_vox)[:, None]
    ctr = np.linspace(0, 1, n_ctrl)[None, :]
    step = 1.0 / (n_ctrl - 1)
    return np.exp(-0.5 * ((pos - ctr) / step) ** 2)


def elastic_field(shape, params: SpatialParams) -> np.ndarray:
    """Displacement (3, nx, ny, nz) in mm, separable so it costs ~3 tensordots."""
    c = params.elastic_coeffs
    n = c.shape[1]
    bx, by, bz = (_basis(s, n).astype(np.float32) for s in shape)
    norm = float(np.sqrt((_basis(64, n) ** 2).sum(1).mean()) ** 3)
    out = np.empty((3, *shape), np.float32)
    for k in range(3):
        t = np.tensordot(c[k].astype(np.float32), bz, axes=([2], [1]))   # (n, n, nz)
        t = np.tensordot(t, by, axes=([1], [1]))                         # (n, nz, ny)
        t = np.tensordot(bx, t, axes=([1], [0]))                         # (nx, nz, ny)
        out[k] = t.transpose(0, 2, 1) * (params.elastic_mm / norm)
    return out


def warp_packed(packed: np.ndarray, grid: Grid, center, params: SpatialParams) -> np.ndarray:
    """Resample a packed template onto the case grid (nearest neighbour, outside = 0 = air)."""
    xs, ys, zs = grid.axes()
    c = np.asarray(center, np.float32)
    inv = np.linalg.inv(params.matrix()).astype(np.float32)
    px = xs - c[0]
    if params.mirror:
        px = -px
    py, pz = ys - c[1], zs - c[2]
    disp = elastic_field(grid.shape, params)
    coords = np.empty((3, *grid.shape), np.float32)
    for r in range(3):
        q = (inv[r, 0] * px[:, None, None] + inv[r, 1] * py[None, :, None]
             + inv[r, 2] * pz[None, None, :])
        coords[r] = (q + c[r] + disp[r] - grid.origin[r]) / grid.spacing
    del disp
    return ndimage.map_coordinates(packed, coords, order=0, mode="constant", cval=0,
                                   prefilter=False, output=np.uint16)
