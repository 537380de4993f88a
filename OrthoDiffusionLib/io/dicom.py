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


PIXEL_DATA = 0x7FE00010


def _index_file(path: str) -> tuple[str, tuple] | None:
    """(series UID, sort key) of a DICOM image file; None for anything else (not DICOM, no pixel
    data, or pixel data cut short: GDCM skipped those too, the folder note counts them)."""
    import pydicom

    try:
        with open(path, "rb") as f:
            head = f.read(132)
        # files without the 128-byte preamble (old ACR-NEMA style) start with a group 0002/0008 tag
        force = head[128:132] != b"DICM" and head[:2] in (b"\x02\x00", b"\x08\x00")
        if head[128:132] != b"DICM" and not force:
            return None
        ds = pydicom.dcmread(path, defer_size=256, force=force)  # headers only: big values are skipped
        raw = ds._dict.get(PIXEL_DATA)
        uid = str(ds.get("SeriesInstanceUID", "") or "")
    except Exception:  # pydicom raises many types on damaged files; such a file is simply not a slice
        return None
    if raw is None or not uid:
        return None
    tell = getattr(raw, "value_tell", None)
    if tell is not None and raw.length != 0xFFFFFFFF and tell + raw.length > os.path.getsize(path):
        return None
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    try:
        number = int(ds.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        number = 0
    return uid, (orientation, position, number, os.path.basename(path))


def _ordered(entries: list[tuple]) -> list[str]:
    """File names of one series in slice order, as GDCM orders them: by position along the slice
    normal when every slice has a distinct one, else by instance number when those are distinct,
    else by file name (two echoes at the same positions come out by name, as from GDCM)."""
    import numpy as np

    iop = entries[0][1][0]
    if iop is not None and all(e[1][1] is not None for e in entries):
        normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
        dist = {e[0]: float(np.dot(normal, e[1][1])) for e in entries}
        if len({round(d, 6) for d in dist.values()}) == len(entries):
            return sorted(dist, key=dist.get)
    if len({e[1][2] for e in entries}) == len(entries):
        return [e[0] for e in sorted(entries, key=lambda e: e[1][2])]
    return [e[0] for e in sorted(entries, key=lambda e: e[1][3])]


def find_dicom_series(root: Path, recursive: bool = True) -> list[tuple[Path, str, list[str]]]:
    """(folder, series UID, ordered file names) of every DICOM series under ``root``.

    One pass over the files (each header read once, pixel data skipped), so the time grows with the
    file count; GDCM's per-series rescans of the folder made it quadratic. Result folders of the
    tool are not searched (their DICOM SEG is not a scan).
    """
    from .own_outputs import is_result_folder
    from .paths import itk_path, is_utf8_path

    out = []
    for folder, dirs, names in (os.walk(root) if recursive else [(str(root), [], os.listdir(root))]):
        dirs[:] = sorted(d for d in dirs if not is_result_folder(os.path.join(folder, d)))
        series: dict[str, list[tuple]] = {}
        for name in sorted(names):
            path = os.path.join(folder, name)
            if not os.path.isfile(path):  # devices, pipes and broken links are never opened
                continue
            entry = _index_file(path)
            if entry is None:
                continue
            if not is_utf8_path(path):
                itk_path(path, "DICOM file")  # ITK cannot take the name: one line instead of an abort
            series.setdefault(entry[0], []).append((path, entry[1]))
        out += [(Path(folder), uid, _ordered(series[uid])) for uid in sorted(series)]
    return sorted(out, key=lambda s: (str(s[0]), s[1]))


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
    kept = set(files)
    check_slice_geometry([t for f, t in zip(per_file_all, per_file) if f in kept], label)
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
