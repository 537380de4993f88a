"""Volume IO: read NIfTI/NRRD/MHA/DICOM into a ``Study`` of plane volumes, detect planes,
reformat 3D series, validate inputs, hash volumes and normalise to the backbone input.

See docs/io.md for the conventions (LPS, canonical orientation per plane, preprocessing modes).
"""

from .geometry import Geometry, resample_to
from .planes import (CANONICAL_CODE, PLANES, canonical_direction, detect_plane, is_near_isotropic_3d,
                     reformat_to_planes, reorient_canonical, slice_axis)
from .preprocess import NetworkTransform, preprocess
from .study import Series, SeriesInfo, Study, assign_planes, load_study, make_series, read_series
from .validate import CHECKS, validate_image
from .volumes import read_volume_file, select_echo, volume_hash

__all__ = [
    "CANONICAL_CODE", "CHECKS", "Geometry", "NetworkTransform", "PLANES", "Series", "SeriesInfo", "Study",
    "assign_planes", "canonical_direction", "detect_plane", "is_near_isotropic_3d", "load_study",
    "make_series", "preprocess", "read_series", "read_volume_file", "reformat_to_planes",
    "reorient_canonical", "resample_to", "select_echo", "slice_axis", "validate_image", "volume_hash",
]
