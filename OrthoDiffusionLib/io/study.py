"""``Study``: up to three plane volumes of one knee, their metadata, warnings and optional EHR."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError
from .dicom import find_dicom_series, is_dicom_file, read_dicom_series
from .planes import OBLIQUE_WARN_DEG, PLANES, detect_plane, is_near_isotropic_3d, reformat_to_planes, slice_axis
from .paths import itk_path, shown
from .volumes import is_volume_file, read_volume_file, volume_files_in


@dataclass
class SeriesInfo:
    source: str
    plane: str
    obliquity_deg: float
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    slices: int = 0
    field_strength_t: float | None = None
    manufacturer: str | None = None
    series_description: str | None = None
    modality: str | None = None
    echo: int | None = None
    is_3d: bool = False
    reformatted: bool = False
    assigned: bool = False              # the plane was given (manifest column, --sagittal, the GUI), not detected

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Series:
    image: sitk.Image
    info: SeriesInfo


def make_series(image: sitk.Image, source: str, reformatted: bool = False, **tags) -> Series:
    """Wrap an image with its geometry, detected plane and the given metadata tags."""
    plane, obliquity = detect_plane(image)
    info = SeriesInfo(
        source=str(source), plane=plane, obliquity_deg=round(obliquity, 3),
        size=tuple(int(v) for v in image.GetSize()), spacing=tuple(float(v) for v in image.GetSpacing()),
        origin=tuple(float(v) for v in image.GetOrigin()), direction=tuple(float(v) for v in image.GetDirection()),
        slices=int(image.GetSize()[slice_axis(image)]),
        is_3d=is_near_isotropic_3d(image), reformatted=reformatted, **tags)
    return Series(image, info)


@dataclass
class Study:
    sagittal: Series | None = None
    coronal: Series | None = None
    axial: Series | None = None
    warnings: list[str] = field(default_factory=list)
    ehr: dict | None = None

    @property
    def planes(self) -> dict[str, Series]:
        """Present planes in the fixed order sagittal, coronal, axial."""
        return {p: getattr(self, p) for p in PLANES if getattr(self, p) is not None}

    def image(self, plane: str) -> sitk.Image:
        series = getattr(self, plane, None)
        if series is None:
            raise InputError(f"the study has no {plane} series; found: {', '.join(self.planes) or 'none'}")
        return series.image

    def to_dict(self) -> dict:
        return {"planes": {p: s.info.to_dict() for p, s in self.planes.items()},
                "warnings": list(self.warnings), "ehr": self.ehr}


def read_series(path: str | os.PathLike, echo: int | None = None, notes: list[str] | None = None) -> list[Series]:
    """All series in a volume file, a DICOM file's series, or a folder (DICOM series + volume files)."""
    path = Path(path)
    notes = notes if notes is not None else []
    if not path.exists():
        raise InputError(f"{shown(path)}: no such file or folder; check the path")
    itk_path(path)  # ITK aborts the process on a name that is not UTF-8: refuse it in one line first
    if not (path.is_file() or path.is_dir()):
        raise InputError(f"{path}: is not a regular file or folder (a device, pipe or socket); give an image "
                         "file or a DICOM folder")
    if path.is_file() and is_volume_file(path):
        image, chosen = read_volume_file(path, echo)
        return [make_series(image, str(path), echo=chosen)]
    if path.is_file() and not is_dicom_file(path):
        # other formats SimpleITK knows (Analyze, VTK, ...); otherwise a one-line "cannot read"
        image, chosen = read_volume_file(path, echo)
        return [make_series(image, str(path), echo=chosen)]
    if path.is_file():  # one DICOM file stands for the series it belongs to, in its own folder
        target = str(path.resolve())
        found = [f for f in find_dicom_series(path.parent, recursive=False)
                 if target in {str(Path(n).resolve()) for n in f[2]}]
    else:
        found = find_dicom_series(path)
    series = []
    for folder_, uid, files in found:
        dicom = read_dicom_series(folder_, uid, files, echo, notes)
        if dicom is None:
            continue
        t = dicom.tags
        series.append(make_series(dicom.image, f"{folder_} [{t['series_description'] or uid}]",
                                  field_strength_t=t["field_strength_t"], manufacturer=t["manufacturer"],
                                  series_description=t["series_description"], modality=t["modality"],
                                  echo=dicom.echo))
    if path.is_dir():
        for file in volume_files_in(path, notes):
            image, chosen = read_volume_file(file, echo)
            series.append(make_series(image, str(file), echo=chosen))
    if not series:
        if path.is_dir() and not found:  # GDCM skips files it cannot parse: say so instead of "no images"
            unreadable = sum(1 for f in path.rglob("*") if f.is_file() and is_dicom_file(f))
            if unreadable:
                notes.append(f"{unreadable} DICOM file(s) that form no readable image series "
                             "(damaged, truncated or not images)")
        why = f" ({'; '.join(notes)})" if notes else ""
        raise InputError(f"{path}: no usable images found{why}; give a DICOM folder or a NIfTI/NRRD/MHA file")
    return series


def _rank(series: Series) -> tuple:
    """Preferred series per plane: most slices, then finest in-plane pixels."""
    spacing = series.info.spacing
    return (series.info.slices, -sorted(spacing)[0] * sorted(spacing)[1])


def assign_planes(series: list[Series], reformat: bool | None = None, slice_mm: float | None = None,
                  notes: list[str] | None = None, ehr: dict | None = None) -> Study:
    """Put each series in its plane slot; resolve clashes; reformat a 3D series when asked or alone.

    The one plane rule (predict, cohort predict, fit, the Slicer module): a series whose plane was
    given (``info.assigned``: a manifest column, ``--sagittal F``, the module's selector) takes that
    slot; any other series goes to the plane of its slice normal (direction cosines). Of two series
    for one slot, a given one wins over a detected one, then the one with more slices.
    ``reformat``: None = reformat only a lone near-isotropic 3D series; True = reformat the
    best 3D candidate (most slices) into the planes no native series covers; False = never.
    """
    study = Study(warnings=list(notes or []), ehr=ehr)
    for s in sorted(series, key=lambda s: (s.info.assigned, *_rank(s)), reverse=True):
        if s.info.obliquity_deg > OBLIQUE_WARN_DEG and not s.info.assigned:
            study.warnings.append(f"{s.info.source}: slices are {s.info.obliquity_deg:.0f} deg oblique; "
                                  f"assigned to {s.info.plane} by the dominant axis")
        kept = getattr(study, s.info.plane)
        if kept is None:
            setattr(study, s.info.plane, s)
        else:
            study.warnings.append(f"two {s.info.plane} series: kept {kept.info.source} "
                                  f"({kept.info.slices} slices), ignored {s.info.source}")
    lone_3d = len(series) == 1 and series[0].info.is_3d
    if series and (reformat or (reformat is None and lone_3d)):
        source = max(series, key=lambda s: (s.info.is_3d, s.info.slices))
        missing = [p for p in PLANES if getattr(study, p) is None]
        if missing:
            views = reformat_to_planes(source.image, slice_mm=slice_mm, keep_native=True)
            for plane in missing:
                setattr(study, plane, make_series(views[plane], source.info.source,
                                                  reformatted=True, **_tags_of(source.info)))
    return study


def _tags_of(info: SeriesInfo) -> dict:
    return {k: getattr(info, k) for k in ("field_strength_t", "manufacturer", "series_description", "modality", "echo")}


def given_plane(series: Series, plane: str, notes: list[str]) -> Series:
    """``series`` assigned to ``plane`` (the user said so), with a note when its slices say otherwise."""
    from ..planes import Plane

    plane = Plane.parse(plane, "plane").value
    if series.info.plane != plane:
        notes.append(f"{series.info.source}: given as {plane}, but its slices are {series.info.plane} "
                     f"(direction cosines); used as {plane}")
    series.info.plane, series.info.assigned = plane, True
    return series


def load_study(paths=(), echo: int | None = None, reformat: bool | None = None, slice_mm: float | None = None,
               ehr: dict | None = None, planes: dict | None = None) -> Study:
    """Read every path (files or folders) and assign the series to planes: ``planes`` (plane -> path)
    are given, ``paths`` are detected (see ``assign_planes``)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    planes = {p: v for p, v in (planes or {}).items() if v is not None}
    if not paths and not planes:
        raise InputError("no input given; pass a DICOM folder or a NIfTI/NRRD/MHA file")
    notes: list[str] = []
    series: list[Series] = []
    for plane, p in planes.items():
        found = read_series(p, echo=echo, notes=notes)
        if len(found) > 1:
            notes.append(f"{p}: {len(found)} series given as {plane}; the one with the most slices is used")
        series.append(given_plane(max(found, key=_rank), plane, notes))
    for p in paths:
        series.extend(read_series(p, echo=echo, notes=notes))
    return assign_planes(series, reformat=reformat, slice_mm=slice_mm, notes=notes, ehr=ehr)


def geometry_summary(info: SeriesInfo) -> str:
    sx, sy, sz = info.spacing
    nx, ny, nz = info.size
    return f"{nx}x{ny}x{nz} voxels, {sx:.3g}x{sy:.3g}x{sz:.3g} mm, {info.obliquity_deg:.1f} deg oblique"


