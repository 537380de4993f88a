"""Reading label maps (ground truth, corrections): 3D, one component, integer values of the label set."""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from ..errors import InputError


def check_label_image(image: sitk.Image, where: str, label_set: str = "knee-11") -> None:
    """InputError unless ``image`` is a 3D single-component map of 0 and ``label_set`` values."""
    from ..labelsets import load_label_set

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"label map {where} must be a 3D single-component image")
    arr = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(arr.dtype, np.integer) and not np.all(np.mod(arr, 1) == 0):
        raise InputError(f"label map {where} holds non-integer values: give a {label_set} label map")
    allowed = {0, *load_label_set(label_set).values}
    bad = sorted(set(np.unique(arr).tolist()) - allowed)
    if bad:
        raise InputError(f"label map {where} has values outside {label_set}: {[int(v) for v in bad[:8]]}; "
                         f"allowed are 0 (background) and {sorted(allowed - {0})}")


def read_label_map(path: str | os.PathLike, label_set: str = "knee-11") -> sitk.Image:
    """Read and check a label map file (one-line InputError when unreadable or out of the set)."""
    from pathlib import Path

    from .paths import itk_path
    from .volumes import check_gzip_complete, check_volume_path

    if Path(itk_path(path, "label map")).exists():
        check_volume_path(path, allow_outputs=True)  # a corrected labels.nrrd is fine; a hostile header is not
    check_gzip_complete(path)  # ITK fills a truncated .gz with zeros silently
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"label map {path}: cannot read as an image (missing, unknown format or damaged)") from None
    check_label_image(image, str(path), label_set)
    return image
