"""Normalise one plane volume to the backbone input [D, H, W] (float32 in [-1, 1]) and map
network outputs back to the source grid.

Two modes:

``released``  as the published code: canonical orientation, the central D slices along the slice
              axis (edge-replicated symmetrically when the series is shorter), each slice resized to
              H×W with bilinear interpolation (the resized pixels cover the same field of view),
              min-max scaling to [-1, 1], with an outlier guard: source voxels more than 1.5 × the
              0.1-99.9 percentile range beyond it are clamped first (counted in
              ``transform.clipped``), so a few saturated voxels cannot squash the tissue contrast;
              a volume without such voxels is scaled exactly as before (plain min-max).
``spacing``   resample to a fixed spacing (default 0.6×0.6 mm in-plane, 3.5 mm slices) on a grid of
              D×H×W voxels centred on the volume (a centre crop/pad), robust scaling of the 0.5 and
              99.5 percentiles to [-1, 1] (voxels outside the source read as -1).

In both modes the network grid keeps the source's (reoriented) direction, so no rotation is
interpolated; the grid is a real physical geometry given by ``NetworkTransform.grid``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .geometry import Geometry, resample_to
from .intensity import clip_outliers
from .planes import PLANES, detect_plane, reorient_canonical

MODES = ("released", "spacing")


@dataclass(frozen=True)
class NetworkTransform:
    """Geometry link between a source series and the [D, H, W] network grid."""

    mode: str
    plane: str
    source: Geometry  # the original series grid (as read, not reoriented)
    grid: Geometry  # the network grid; array[d, h, w] is voxel (w, h, d) of this grid
    slice_start: int = 0  # first source slice (canonical order) on the grid; negative when padded
    padded: tuple[int, int] = (0, 0)  # edge-replicated slices before / after (released mode)
    intensity: tuple[float, float] = (0.0, 1.0)  # source values mapped to -1 and +1
    clipped: int = 0  # released mode: outlier voxels clipped by the guard (0 for a clean volume)

    @property
    def warning(self) -> str | None:
        """One line for the result's warnings when the outlier guard clipped voxels."""
        if not self.clipped:
            return None
        return (f"{self.plane}: {self.clipped} voxel(s) far outside the intensity range of the rest "
                "(saturated or corrupt) were clipped to the range of the other voxels before scaling; "
                "check the series")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(reversed(self.grid.size))

    def network_grid_image(self, array: np.ndarray | None = None) -> sitk.Image:
        """The network grid as an image (zeros, or ``array`` [D, H, W]) with physical geometry."""
        if array is not None and array.dtype == bool:
            array = array.astype(np.uint8)
        return self.grid.image(array)

    def to_network(self, image: sitk.Image, is_label: bool) -> np.ndarray:
        """Push an image on the source grid (e.g. a label map) onto the network grid, [D, H, W]."""
        return sitk.GetArrayFromImage(resample_to(image, self.grid, is_label))

    def to_source(self, array: np.ndarray, is_label: bool) -> sitk.Image:
        """Map a network-grid array back to the source series grid.

        Labels use nearest neighbour and keep their integer type; probabilities use linear
        interpolation (float32). ``array`` is [D, H, W], or [C, D, H, W] for per-class
        probabilities (returns a C-component vector image). Source voxels the grid does not
        cover (outside the central slices) become 0.
        """
        array = np.asarray(array)
        if array.ndim == 4:
            return sitk.Compose([self.to_source(channel, is_label) for channel in array])
        if array.shape != self.shape:
            raise ValueError(f"array shape {array.shape} is not the network shape {self.shape}")
        if not is_label:
            array = array.astype(np.float32, copy=False)
        return resample_to(self.network_grid_image(array), self.source, is_label)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "plane": self.plane, "source": self.source.to_dict(),
                "grid": self.grid.to_dict(), "slice_start": self.slice_start, "padded": list(self.padded),
                "intensity": list(self.intensity)}


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:  # flat image: nothing to scale, map to the middle of the range
        return np.zeros_like(arr, dtype=np.float32)
    out = 2.0 * (arr - lo) / (hi - lo) - 1.0
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def central_start(n_slices: int, depth: int) -> int:
    """First slice of the published central window of ``depth`` slices (negative: padded)."""
    return (n_slices - depth) // 2 if n_slices >= depth else -((depth - n_slices) // 2)


def _released_grid(oriented: sitk.Image, depth: int, size_hw: tuple[int, int],
                   slice_start: int | None = None) -> tuple[Geometry, int, tuple[int, int]]:
    nx, ny, nz = oriented.GetSize()
    sx, sy, sz = oriented.GetSpacing()
    height, width = size_hw
    if nz >= depth:
        start = central_start(nz, depth) if slice_start is None else int(slice_start)
        if not 0 <= start <= nz - depth:
            raise ValueError(f"window start {start} outside 0..{nz - depth} for {nz} slices")
        padded = (0, 0)
    else:
        before = (depth - nz) // 2
        start, padded = -before, (before, depth - nz - before)
    spacing = np.array([sx * nx / width, sy * ny / height, sz])
    # index of the first network voxel centre in oriented-source index units: resized pixels
    # share the outer edges of the field of view (like align_corners=False)
    first = np.array([-0.5 + 0.5 * nx / width, -0.5 + 0.5 * ny / height, start])
    m = np.asarray(oriented.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(oriented.GetOrigin()) + m @ (first * np.asarray([sx, sy, sz]))
    grid = Geometry((width, height, depth), tuple(float(v) for v in spacing), tuple(float(v) for v in origin),
                    tuple(float(v) for v in m.ravel()))
    return grid, start, padded


def _spacing_grid(oriented: sitk.Image, depth: int, size_hw: tuple[int, int],
                  spacing: tuple[float, float, float]) -> Geometry:
    height, width = size_hw
    size = np.array([width, height, depth])
    m = np.asarray(oriented.GetDirection(), dtype=float).reshape(3, 3)
    origin = Geometry.of(oriented).centre() - m @ ((size - 1) / 2.0 * np.asarray(spacing, dtype=float))
    return Geometry(tuple(int(v) for v in size), tuple(float(v) for v in spacing), tuple(float(v) for v in origin),
                    tuple(float(v) for v in m.ravel()))


def preprocess(image: sitk.Image, mode: str = "released", plane: str | None = None, depth: int = 16,
               size: tuple[int, int] = (256, 256), spacing: tuple[float, float, float] = (0.6, 0.6, 3.5),
               percentiles: tuple[float, float] = (0.5, 99.5),
               slice_start: int | None = None) -> tuple[np.ndarray, NetworkTransform]:
    """Backbone input [depth, H, W] float32 in [-1, 1] and the transform back to ``image``'s grid.

    ``plane`` defaults to the detected plane; ``size`` is (H, W); ``spacing`` (spacing mode only)
    is (in-plane, in-plane, slice) mm. ``slice_start`` (released mode, a series of at least
    ``depth`` slices): the first canonical slice of the window instead of the central one (the
    sliding windows of whole-series segmentation; each window is scaled as the published code
    scales its central window).
    """
    if mode not in MODES:
        raise InputError(f"unknown preprocessing mode {mode!r}; choose one of {', '.join(MODES)}")
    plane = plane or detect_plane(image)[0]
    if plane not in PLANES:
        raise InputError(f"unknown plane {plane!r}; choose one of {', '.join(PLANES)}")
    oriented = reorient_canonical(image, plane)
    source = Geometry.of(image)
    if mode == "released":
        grid, start, padded = _released_grid(oriented, depth, size, slice_start)
        oriented, clipped = clip_outliers(oriented)
        arr = sitk.GetArrayFromImage(resample_to(oriented, grid, is_label=False))
        before, after = padded
        if before:
            arr[:before] = arr[before]
        if after:
            arr[depth - after:] = arr[depth - after - 1]
        lo, hi = float(arr.min()), float(arr.max())
        transform = NetworkTransform(mode, plane, source, grid, start, padded, (lo, hi), clipped)
    else:
        grid = _spacing_grid(oriented, depth, size, spacing)
        arr = sitk.GetArrayFromImage(resample_to(oriented, grid, is_label=False, default=float("nan")))
        inside = arr[np.isfinite(arr)]
        lo, hi = (float(v) for v in np.percentile(inside, percentiles)) if inside.size else (0.0, 1.0)
        arr = np.where(np.isfinite(arr), arr, lo)
        transform = NetworkTransform(mode, plane, source, grid, 0, (0, 0), (lo, hi))
    return _scale(arr, lo, hi), transform
