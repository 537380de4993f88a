"""Outlier guard of the released min-max scaling: a few saturated or corrupt voxels must not set
the intensity range (they squash the contrast of everything else and move findings by 0.1-0.4).

Clean volumes come out untouched, bit for bit, so the published checkpoints see exactly the
input they were trained on; only a volume with voxels far beyond the rest is clamped, with a count
the caller reports as a warning. See docs/io.md, "Preprocessing modes".
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

OUTLIER_PERCENTILES = (0.1, 99.9)
# A voxel this many (0.1-99.9 percentile) ranges beyond that range is no tissue: a saturated or
# corrupt value. Clean knee MR reaches at most 0.74 (measured on the sample knee 0.23-0.26, the
# 8-echo series 0.26-0.29, DESS echoes 0.60-0.74, native and reformatted); a voxel saturated at the
# int16 maximum in a knee of range ~7,400 is 3.4.
OUTLIER_FENCE = 1.5
_PERCENTILE_SAMPLE = 2_000_000  # voxels the percentiles are taken from (every k-th voxel of a bigger volume)


def clip_outliers(image: sitk.Image) -> tuple[sitk.Image, int]:
    """(image, 0) unchanged when no voxel lies beyond the fences; else the image with those voxels
    clamped to the most extreme voxels inside the fences, and how many were clamped. Done on the
    source voxels, before resampling: an interpolated spike is diluted (a few dozen saturated voxels
    still squash the contrast of a 64x64 network input) but no longer stands out."""
    arr = sitk.GetArrayViewFromImage(image)
    lo, hi = float(arr.min()), float(arr.max())
    flat = arr.reshape(-1)
    sample = flat[:: max(1, flat.size // _PERCENTILE_SAMPLE)]
    p_lo, p_hi = (float(v) for v in np.percentile(sample, OUTLIER_PERCENTILES))
    span = p_hi - p_lo
    fence_lo, fence_hi = p_lo - OUTLIER_FENCE * span, p_hi + OUTLIER_FENCE * span
    if span <= 0 or (lo >= fence_lo and hi <= fence_hi):
        return image, 0  # clean volume: the released min-max, bit for bit
    inside = (arr >= fence_lo) & (arr <= fence_hi)
    kept = arr[inside]
    clamped = sitk.Clamp(image, lowerBound=float(kept.min()), upperBound=float(kept.max()))
    return clamped, int(arr.size - kept.size)
