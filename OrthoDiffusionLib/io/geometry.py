"""Image grid geometry (size, spacing, origin, direction) and resampling between grids.

All coordinates are LPS millimetres, as SimpleITK reports them. A direction matrix holds one
column per image axis: column k is the physical direction of increasing index k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Geometry:
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, as SimpleITK.GetDirection()

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(
            tuple(int(v) for v in image.GetSize()),
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def image(self, array: np.ndarray | None = None, pixel_type=sitk.sitkFloat32) -> sitk.Image:
        """An image on this grid: filled from ``array`` ([z, y, x]) or zeros of ``pixel_type``."""
        if array is None:
            img = sitk.Image(list(self.size), pixel_type)
        else:
            expected = tuple(reversed(self.size))
            if tuple(array.shape) != expected:
                raise ValueError(f"array shape {tuple(array.shape)} does not match grid {expected}")
            img = sitk.GetImageFromArray(np.ascontiguousarray(array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def physical_corners(self) -> np.ndarray:
        """The 8 corners of the voxel box (voxel edges, not centres), shape (8, 3)."""
        m, s, o = self.matrix, np.asarray(self.spacing), np.asarray(self.origin)
        corners = []
        for cx in (-0.5, self.size[0] - 0.5):
            for cy in (-0.5, self.size[1] - 0.5):
                for cz in (-0.5, self.size[2] - 0.5):
                    corners.append(o + m @ (np.array([cx, cy, cz]) * s))
        return np.array(corners)

    def centre(self) -> np.ndarray:
        half = (np.asarray(self.size) - 1) / 2.0
        return np.asarray(self.origin) + self.matrix @ (half * np.asarray(self.spacing))

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}


def resample_to(image: sitk.Image, grid: Geometry, is_label: bool, default: float = 0.0,
                pixel_type=None) -> sitk.Image:
    """Resample ``image`` onto ``grid`` in physical space (nearest for labels, linear otherwise)."""
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    if pixel_type is None:
        pixel_type = image.GetPixelID() if is_label else sitk.sitkFloat32
    return sitk.Resample(image, list(grid.size), sitk.Transform(), interp, grid.origin, grid.spacing,
                         grid.direction, default, pixel_type)
