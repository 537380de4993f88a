"""Whole-series segmentation: blend the decoder's probabilities of overlapping slice windows of one
plane. Each window's probabilities are weighted by a triangular profile over its slices (highest
in the middle, low at the window's ends, where the network sees the least context); the blend is
the weighted mean per slice, mapped to the plane's source grid in one step."""

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
    series. ``windows``: PlaneInputs of one plane (released preprocessing: their grids share the
    in-plane geometry and differ by whole slices); ``probabilities``: each window's [C, D, H, W].

    The windows are blended exactly on the network stack of all slices (weighted by
    ``slice_weights``), which then goes to the source grid in one step, as a single window does."""
    first = min(windows, key=lambda w: w.transform.slice_start)
    last = max(w.transform.slice_start + w.array.shape[0] for w in windows)
    start0 = first.transform.slice_start
    c = probabilities[0].shape[0]
    _, h, w = first.array.shape
    total = np.zeros((c, last - start0, h, w), np.float32)
    weight = np.zeros(last - start0, np.float32)
    for window, p in zip(windows, probabilities):
        d = window.array.shape[0]
        at = window.transform.slice_start - start0
        sw = slice_weights(d)
        total[:, at:at + d] += p * sw[None, :, None, None]
        weight[at:at + d] += sw
    stack = stack_transform(first.transform, last - start0)
    blended = total / weight[None, :, None, None]
    return (stack.to_source(blended, is_label=False),
            stack.to_source(np.ones(blended.shape[1:], np.uint8), is_label=True))


def stack_transform(transform, n_slices: int):
    """The NetworkTransform of ``n_slices`` consecutive network slices starting at ``transform``'s
    first slice (same in-plane grid and slice spacing)."""
    from dataclasses import replace

    from ..io.geometry import Geometry

    g = transform.grid
    return replace(transform, grid=Geometry((g.size[0], g.size[1], int(n_slices)), g.spacing, g.origin, g.direction),
                   padded=(0, 0))
