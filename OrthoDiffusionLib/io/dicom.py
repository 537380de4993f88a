"""DICOM folders: find series with SimpleITK/GDCM, read tags SimpleITK lacks with pydicom.

A folder (searched recursively) may hold several series. Localizers (ImageType contains
LOCALIZER) and non-MR series are skipped with a note; a series holding several echoes (same
SeriesInstanceUID, different EchoNumbers) needs an echo choice, like a 4D file.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError
from .validate import validate_image


@dataclass
class DicomSeries:
    image: sitk.Image
    folder: Path
    series_uid: str
    tags: dict = field(default_factory=dict)
    echo: int | None = None


def _tags(path: str) -> dict:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)

    def get(name, cast=str):
        value = getattr(ds, name, None)
        if value in (None, ""):
            return None
        try:
            return cast(value)
        except (TypeError, ValueError):
            return None

    image_type = getattr(ds, "ImageType", None) or []
    image_type = [image_type] if isinstance(image_type, str) else list(image_type)
    return {
        "modality": get("Modality"),
        "manufacturer": get("Manufacturer"),
        "series_description": get("SeriesDescription"),
        "field_strength_t": get("MagneticFieldStrength", float),
        "echo_number": get("EchoNumbers", int),
        "image_type": [str(v).upper() for v in image_type],
        "matrix": (get("Rows", int), get("Columns", int)),
        "orientation": _floats(getattr(ds, "ImageOrientationPatient", None), 6),
        "position": _floats(getattr(ds, "ImagePositionPatient", None), 3),
    }


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def check_slice_geometry(per_file: list[dict], label: str) -> None:
    """One matrix size, orientation tags present and one slice every ~equal step: GDCM would
    otherwise guess an identity orientation or average the gaps (a silently distorted volume)."""
    import numpy as np

    sizes = sorted({t["matrix"] for t in per_file}, key=str)
    if len(sizes) > 1:
        shown = " and ".join(f"{r}x{c}" for r, c in sizes[:3])
        raise InputError(f"{label}: mixes slices of different sizes ({shown}) under one series UID; "
                         "export each acquisition as its own series")
    for tag, key in (("ImageOrientationPatient", "orientation"), ("ImagePositionPatient", "position")):
        missing = sum(t[key] is None for t in per_file)
        if missing:
            raise InputError(f"{label}: {missing} of {len(per_file)} slices lack {tag}, so the slices cannot be "
                             "placed in space; export the series with its geometry tags (not as secondary capture)")
    iop = np.asarray(per_file[0]["orientation"])
    normal = np.cross(iop[:3], iop[3:])
    steps = np.diff(np.sort([float(np.dot(normal, t["position"])) for t in per_file]))
    if steps.size and (steps.min() < 1e-3 or steps.max() - steps.min() > 0.1 * max(steps.max(), 1e-6)):
        raise InputError(f"{label}: slice spacing is not uniform (gaps {steps.min():.2f} to {steps.max():.2f} mm: "
                         "missing or duplicated slices); give the complete series")


def is_dicom_file(path: Path) -> bool:
    from pydicom.misc import is_dicom

    try:
        return bool(is_dicom(str(path)))
    except OSError:
        return False


@contextlib.contextmanager
def _quiet_itk():
    """GDCM prints multi-line warnings for folders without series; errors are reported by us."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _series_in_folder(folder: str) -> list[tuple[str, list[str]]]:
    reader = sitk.ImageSeriesReader
    with _quiet_itk():
        return [(uid, list(reader.GetGDCMSeriesFileNames(folder, uid))) for uid in reader.GetGDCMSeriesIDs(folder)]


def find_dicom_series(root: Path, recursive: bool = True) -> list[tuple[Path, str, list[str]]]:
    """(folder, series UID, ordered file names) of every DICOM series under ``root``."""
    folders = sorted(str(f) for f, _d, _n in os.walk(root)) if recursive else [str(root)]
    return [(Path(folder), uid, files) for folder in folders for uid, files in _series_in_folder(folder)]


def read_dicom_series(folder: Path, uid: str, files: list[str], echo: int | None,
                      notes: list[str]) -> DicomSeries | None:
    """Read one series; returns None (with a note) for localizers and non-MR series."""
    per_file = [_tags(f) for f in files]
    per_file_all = list(files)
    first = per_file[0]
    label = f"{folder} series {first['series_description'] or uid}"
    if any("LOCALIZER" in t["image_type"] for t in per_file):
        notes.append(f"{label}: skipped a localizer series")
        return None
    if first["modality"] not in (None, "MR"):
        notes.append(f"{label}: skipped a {first['modality']} series (not MR)")
        return None
    echoes = sorted({t["echo_number"] for t in per_file if t["echo_number"] is not None})
    chosen = None
    if len(echoes) > 1:
        if echo is None:
            raise InputError(f"{label}: holds {len(echoes)} echoes {echoes}; choose one with --echo N")
        if echo not in echoes:
            raise InputError(f"{label}: echo {echo} not found; choose --echo among {echoes}")
        files = [f for f, t in zip(files, per_file) if t["echo_number"] == echo]
        chosen = echo
    if len(files) < 2:
        raise InputError(f"{label}: has a single slice (2D image); give a series with several slices")
    check_slice_geometry([t for f, t in zip(per_file_all, per_file) if f in set(files)], label)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with _quiet_itk():
            image = reader.Execute()
    except RuntimeError:
        raise InputError(f"{label}: the DICOM files cannot be read as one volume; "
                         "check that the folder holds complete, uncompressed or standard-compressed slices") from None
    validate_image(image, label)
    return DicomSeries(image, folder, uid, first, chosen)
