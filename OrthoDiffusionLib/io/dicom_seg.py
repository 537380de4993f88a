"""DICOM SEG export of a case's knee-11 label map, and pseudonymisation of a result folder.

The label map is on the reference series' grid, so when that series was read from DICOM each
label-map slice is one source instance: the SEG (highdicom, BINARY, one segment per knee-11
structure with its terminology codes) references the source series and instances 1:1.

Privacy: highdicom copies every root attribute of the Patient and Study modules of the source
datasets it is given (names, ids, age, weight, comments, clinical-trial ids, ...). We therefore
hand it *reduced* copies of the source headers holding only what the SEG IOD needs: the
references (UIDs), the geometry, and the type 1/2 patient/study attributes ``SEG_PATIENT_STUDY``.
With a pseudonym, name and id are replaced and birth date, accession number, study id and
referring physician are emptied. Research use only, not for clinical decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import DISCLAIMER, __version__
from ..errors import InputError

SEG_FILE = "segmentation.dcm"
# Patient / General Study attributes of type 1 or 2 in the Segmentation IOD: the only ones copied.
SEG_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                     "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
# What highdicom needs to reference the instances and place the frames.
SEG_REFERENCE = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality",
                 "Rows", "Columns", "PixelSpacing", "SliceThickness", "ImageOrientationPatient",
                 "ImagePositionPatient", "InstanceNumber", "SamplesPerPixel", "PhotometricInterpretation",
                 "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation")
# Emptied (type 2) when pseudonymising; name and id get the pseudonym.
PSEUDONYMISED_EMPTY = ("PatientBirthDate", "AccessionNumber", "StudyID", "ReferringPhysicianName")
# Source attributes whose values must never appear in our outputs once pseudonymised.
IDENTIFYING = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber",
               "OtherPatientNames", "PatientMotherBirthName", "IssuerOfPatientID")
POSITION_TOL_MM = 0.01


@dataclass
class SourceSeries:
    folder: Path
    series_uid: str
    datasets: list               # pydicom headers ordered like the image's slices (k = 0, 1, ...)


def dicom_source_folder(source: str) -> Path | None:
    """``read_series`` names a DICOM series ``"<folder> [<description or uid>]"``."""
    if not source.endswith("]") or " [" not in source:
        return None
    folder = Path(source.rsplit(" [", 1)[0])
    return folder if folder.is_dir() else None


def identifying_values(ds) -> set[str]:
    """The values of ``IDENTIFYING`` attributes in a header (names also as 'Given Family' etc.)."""
    from pydicom.multival import MultiValue

    out = set()
    for kw in IDENTIFYING:
        value = getattr(ds, kw, None)
        values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
        for v in values:
            text = str(v or "").strip()
            if len(text) >= 3:
                out.add(text)
                if "^" in text:  # PN components as people write them
                    parts = [p for p in text.split("^") if p]
                    out.update({" ".join(parts), " ".join(reversed(parts)), ", ".join(parts)})
    return out


def find_source_series(source: str, image, echo: int | None = None) -> SourceSeries | None:
    """The DICOM instances of ``image`` (a series as ``read_series`` returned it), one per slice in
    slice order, found by matching ImagePositionPatient to the image's slice origins. None when the
    source is not a DICOM series or no series in its folder lies exactly on the image grid."""
    import pydicom

    from .dicom import find_dicom_series

    folder = dicom_source_folder(source)
    if folder is None:
        return None
    nz, rows, cols = image.GetSize()[2], image.GetSize()[1], image.GetSize()[0]
    origins = np.array([image.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(nz)])
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    iop = np.concatenate([direction[:, 0], direction[:, 1]])   # row then column direction cosines
    for _folder, uid, files in find_dicom_series(folder, recursive=False):
        headers = [pydicom.dcmread(f, stop_before_pixels=True, force=True) for f in files]
        if echo is not None and len({getattr(h, "EchoNumbers", None) for h in headers}) > 1:
            headers = [h for h in headers if str(getattr(h, "EchoNumbers", "")) == str(echo)]
        if len(headers) != nz or any(int(getattr(h, "Rows", 0)) != rows or int(getattr(h, "Columns", 0)) != cols
                                     or len(getattr(h, "ImagePositionPatient", None) or []) != 3
                                     or len(getattr(h, "ImageOrientationPatient", None) or []) != 6 for h in headers):
            continue
        if np.abs(np.array([float(v) for v in headers[0].ImageOrientationPatient]) - iop).max() > 1e-3:
            continue
        positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
        order = [int(np.argmin(np.linalg.norm(positions - o, axis=1))) for o in origins]
        if len(set(order)) != nz or np.abs(positions[order] - origins).max() > POSITION_TOL_MM:
            continue
        return SourceSeries(Path(_folder), uid, [headers[i] for i in order])
    return None


def reduced_header(ds, pseudonym: str | None = None):
    """A copy of a source header with only ``SEG_REFERENCE`` + ``SEG_PATIENT_STUDY`` (type 2
    attributes present, possibly empty), pseudonymised when ``pseudonym`` is given."""
    from pydicom.dataset import Dataset

    out = Dataset()
    for kw in SEG_REFERENCE:
        if kw in ds:
            setattr(out, kw, ds.data_element(kw).value)
    for kw in SEG_PATIENT_STUDY:
        setattr(out, kw, ds.data_element(kw).value if kw in ds else "")
    if pseudonym is not None:
        # a one-component person name ends with '^' (PS3.5 6.2.1.2)
        out.PatientName, out.PatientID = pseudonym if "^" in pseudonym else f"{pseudonym}^", pseudonym
        for kw in PSEUDONYMISED_EMPTY:
            setattr(out, kw, "")
    return out


def segment_descriptions(labels: list[dict]):
    """One highdicom SegmentDescription per knee-11 label, segment number = label value."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    def code(c):
        return hd.sr.CodedConcept(c["CodeValue"], c["CodingSchemeDesignator"], c["CodeMeaning"])

    algorithm = hd.AlgorithmIdentificationSequence(name="OrthoDiffusion", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    out = []
    for lab in labels:
        t = lab["terminology"]
        region = [code(t["anatomicRegion"])] if t.get("anatomicRegion") else None
        out.append(hd.seg.SegmentDescription(
            segment_number=int(lab["value"]), segment_label=lab["name"],
            segmented_property_category=code(t["category"]), segmented_property_type=code(t["type"]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_id=lab["key"], tracking_uid=hd.UID(), anatomic_regions=region,
            display_color=hd.color.CIELabColor.from_rgb(*lab["color"])))
    return out


def write_dicom_seg(label_img, source: SourceSeries, path: str | Path, pseudonym: str | None = None,
                    label_set: str = "knee-11") -> Path:
    """Write ``label_img`` (values of the structure ``label_set`` on the source series' grid) as a
    BINARY DICOM SEG."""
    import highdicom as hd
    import SimpleITK as sitk

    from ..labelsets import load_label_set
    from ..storage import atomic_path

    labels = list(load_label_set(label_set).labels)
    arr = sitk.GetArrayFromImage(label_img).astype(np.uint8)   # [slice k, row, column] = frame k
    present = set(np.unique(arr).tolist()) - {0}
    unknown = present - {int(lab["value"]) for lab in labels}
    if unknown:
        raise InputError(f"label map has values outside {label_set}: {sorted(unknown)}")
    missing = [kw for kw in ("FrameOfReferenceUID", "ImageOrientationPatient", "PixelSpacing", "StudyInstanceUID")
               if kw not in source.datasets[0]]
    if missing:
        raise InputError(f"source series {source.series_uid} lacks {', '.join(missing)}: cannot reference it in a "
                         "DICOM SEG")
    headers = [reduced_header(ds, pseudonym) for ds in source.datasets]
    seg = hd.seg.Segmentation(
        source_images=headers, pixel_array=arr, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(labels), series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="OrthoDiffusion",
        manufacturer_model_name=f"OrthoDiffusion {label_set}", software_versions=__version__,
        device_serial_number="none", content_label="ORTHODIFFUSION", content_description=DISCLAIMER,
        series_description=f"OrthoDiffusion {label_set} segmentation (research use)")
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return Path(path)
