"""Whole-series segmentation: blend the decoder's probabilities of overlapping slice windows on the
plane's source grid. Each window's probabilities are weighted by a triangular profile over its
slices (highest in the middle, low at the window's ends, where the network sees the least
context) and mapped to the source grid; the blend is the weighted mean wherever a window covers."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

SEGMENTATION_WINDOWS = ("central", "sliding")
DEFAULT_OVERLAP = 0.5


def slice_weights(depth: int) -> np.ndarray:
    """[depth] triangular weights in (0, 1]: 1 at the middle slice(s), 1 / ceil(depth / 2) at the ends."""
    d = np.arange(depth)
    return (np.minimum(d + 1, depth - d) / np.ceil(depth / 2)).astype(np.float32)


def blend_windows(windows, probabilities) -> tuple[sitk.Image, sitk.Image]:
    """(C-component probability image, uint8 coverage image) on the source grid of the windows'
    series. ``windows``: PlaneInputs of one plane; ``probabilities``: each window's [C, D, H, W].

    Linear interpolation inside the windows' grids; the rim of source voxels beyond the outermost
    network voxel centres (half a network pixel) takes the nearest network voxel, as the central
    window's coverage does."""
    sums = {}
    for window, p in zip(windows, probabilities):
        d, h, w = window.array.shape
        wmap = np.broadcast_to(slice_weights(d)[:, None, None], (d, h, w)).astype(np.float32)
        for nearest in (False, True):
            num = sitk.GetArrayFromImage(window.transform.to_source(p * wmap[None], is_label=nearest))  # [z, y, x, C]
            den = sitk.GetArrayFromImage(window.transform.to_source(wmap, is_label=nearest))            # [z, y, x]
            old = sums.get(nearest)
            sums[nearest] = (num, den) if old is None else (old[0] + num, old[1] + den)
    (num_lin, den_lin), (num_nn, den_nn) = sums[False], sums[True]
    inside = den_lin > 1e-6
    covered = den_nn > 1e-6
    blended = np.where(inside[..., None], num_lin / np.maximum(den_lin, 1e-6)[..., None],
                       num_nn / np.maximum(den_nn, 1e-6)[..., None])
    blended = np.where(covered[..., None], blended, 0.0).astype(np.float32)
    reference = windows[0].image
    prob_img = sitk.GetImageFromArray(blended, isVector=True)
    prob_img.CopyInformation(reference)
    cover_img = sitk.GetImageFromArray(covered.astype(np.uint8))
    cover_img.CopyInformation(reference)
    return prob_img, cover_img
