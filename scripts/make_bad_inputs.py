#!/usr/bin/env python
"""Generate the bad-input corpus ``Testing/Data/bad/`` and its ``cases.json``.

Every case is an input a scanner, an archive or a user produces and the tool must refuse with
one clear line (no traceback, exit code != 0, no output folder). Volumes are tiny (24x24x8) so
the folder stays small; "huge" volumes are headers that declare gigabytes with no pixel data.

``cases.json``: a list of {"id", "what", "cli" (arguments after ``orthodiffusion``, with
``{bad}`` = this folder and ``{out}`` = an output folder; null when no CLI command takes the
input), "api" ({"call", "kwargs"} of the library function that must refuse it), "exit" (expected
exit code), "message" (a fragment the one-line error must contain)}.
Testing/Python/test_bad_inputs.py runs every case both ways.

    .venv/bin/python scripts/make_bad_inputs.py [--out Testing/Data/bad]

Deterministic: the same files on every run (fixed seeds, fixed UIDs, no timestamps).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE = (8, 24, 24)  # z, y, x: the smallest volume that passes every check
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"
CASES: list[dict] = []


def case(cid: str, what: str, cli: list[str] | None, api: dict, exit_code: int, message: str) -> None:
    CASES.append({"id": cid, "what": what, "cli": cli, "api": api, "exit": exit_code, "message": message})


def predict(*args: str) -> list[str]:
    return ["predict", *args, "--out", "{out}", "--device", "cpu"]


def study(*paths: str, **kw) -> dict:
    return {"call": "load_study", "kwargs": {"paths": list(paths), **kw}}


def knee_like(seed: int = 0, dtype=np.int16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    blob = ((y - 12) ** 2 + (x - 12) ** 2 < 49).astype(float)
    return (200 + 500 * blob + rng.normal(0, 20, SHAPE)).astype(dtype)


def image(arr: np.ndarray, spacing=(0.5, 0.5, 3.0), direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    if direction is not None:
        img.SetDirection(direction)
    return img


def write(img: sitk.Image, path: Path, compress: bool = True) -> None:
    sitk.WriteImage(img, str(path), compress)


# ----------------------------------------------------------------------------------- volume files
def volume_cases(d: Path) -> None:
    (d / "empty.nii.gz").write_bytes(b"")
    case("empty_nifti", "0-byte .nii.gz", predict("{bad}/empty.nii.gz"), study("{bad}/empty.nii.gz"), 2,
         "cannot read as an image")
    (d / "empty.nrrd").write_bytes(b"")
    case("empty_nrrd", "0-byte .nrrd", predict("{bad}/empty.nrrd"), study("{bad}/empty.nrrd"), 2,
         "cannot read as an image")

    write(image(knee_like()), d / "_ok.nii", compress=False)
    raw = (d / "_ok.nii").read_bytes()
    (d / "_ok.nii").unlink()
    (d / "truncated.nii").write_bytes(raw[: 352 + (len(raw) - 352) // 2])
    case("truncated_nifti", "NIfTI cut in the middle of the voxel data", predict("{bad}/truncated.nii"),
         study("{bad}/truncated.nii"), 2, "truncated: the header declares")
    (d / "truncated.nii.gz").write_bytes(gzip.compress(raw, mtime=0)[:400])
    case("truncated_nifti_gz", "gzip stream cut short", predict("{bad}/truncated.nii.gz"),
         study("{bad}/truncated.nii.gz"), 2, "damaged or truncated gzip file")
    (d / "header_only.nii").write_bytes(raw[:352])
    case("nifti_header_only", "a NIfTI header without voxel data", predict("{bad}/header_only.nii"),
         study("{bad}/header_only.nii"), 2, "truncated: the header declares")
    wrong = bytearray(raw)
    wrong[344:348] = b"xyz\0"
    (d / "wrong_magic.nii").write_bytes(bytes(wrong))
    case("wrong_magic", "NIfTI with a damaged magic string (ITK would guess Analyze)", predict("{bad}/wrong_magic.nii"),
         study("{bad}/wrong_magic.nii"), 2, "not a NIfTI file")
    (d / "text_named.nii.gz").write_bytes(b"this is a report, not an image\n")
    case("text_as_nifti", "a text file named .nii.gz", predict("{bad}/text_named.nii.gz"),
         study("{bad}/text_named.nii.gz"), 2, "cannot read as an image")
    (d / "notes.txt").write_text("patient notes\n")
    case("unknown_format", "a text file with an unknown extension", predict("{bad}/notes.txt"),
         study("{bad}/notes.txt"), 2, "cannot read as an image")
    case("missing_path", "a path that does not exist", predict("{bad}/no_such_file.nii.gz"),
         study("{bad}/no_such_file.nii.gz"), 2, "no such file or folder")

    arr = knee_like().astype(np.float32)
    arr[3, 5:9, 5:9] = np.nan
    write(image(arr), d / "nan_voxels.nrrd")
    case("nan_voxels", "float volume with NaN voxels", predict("{bad}/nan_voxels.nrrd"),
         study("{bad}/nan_voxels.nrrd"), 2, "NaN or infinite voxels")
    arr = knee_like().astype(np.float32)
    arr[0, 0, 0] = np.inf
    write(image(arr), d / "inf_voxels.nrrd")
    case("inf_voxels", "float volume with an infinite voxel", predict("{bad}/inf_voxels.nrrd"),
         study("{bad}/inf_voxels.nrrd"), 2, "NaN or infinite voxels")
    write(image(np.zeros(SHAPE, np.int16)), d / "all_zero.nrrd")
    case("all_zero", "every voxel 0", predict("{bad}/all_zero.nrrd"), study("{bad}/all_zero.nrrd"), 2,
         "same value in every voxel")
    write(image(np.full(SHAPE, 700, np.int16)), d / "constant.nrrd")
    case("constant", "every voxel 700", predict("{bad}/constant.nrrd"), study("{bad}/constant.nrrd"), 2,
         "same value in every voxel")

    write(sitk.GetImageFromArray(knee_like()[0]), d / "image_2d.nrrd")
    case("image_2d", "a 2D image", predict("{bad}/image_2d.nrrd"), study("{bad}/image_2d.nrrd"), 2, "2D image")
    write(image(knee_like()[:1]), d / "single_slice.nrrd")
    case("single_slice", "a 3D file with one slice", predict("{bad}/single_slice.nrrd"),
         study("{bad}/single_slice.nrrd"), 2, "2D image")
    four = sitk.JoinSeries([image(knee_like(s)) for s in range(3)])
    write(four, d / "four_d.nrrd")
    case("four_d_no_echo", "4D multi-echo volume without --echo", predict("{bad}/four_d.nrrd"),
         study("{bad}/four_d.nrrd"), 2, "choose one with --echo")
    case("four_d_bad_echo", "4D volume with --echo 5 of 3", predict("{bad}/four_d.nrrd", "--echo", "5"),
         study("{bad}/four_d.nrrd", echo=5), 2, "echo 5 does not exist")
    rgb = sitk.Compose([image(knee_like(s)) for s in range(3)])
    write(rgb, d / "vector_3comp.nrrd")
    case("vector_volume", "3 values per voxel (colour/vector)", predict("{bad}/vector_3comp.nrrd"),
         study("{bad}/vector_3comp.nrrd"), 2, "choose one with --echo")
    write(image(knee_like()[:, :8, :8]), d / "thumbnail.nrrd")
    case("thumbnail", "8x8 pixels in-plane", predict("{bad}/thumbnail.nrrd"), study("{bad}/thumbnail.nrrd"), 2,
         "localizer or thumbnail")

    for name, spacing, frag in (("spacing_zero", (0.5, 0.5, 0.0), "spacing"),
                                ("spacing_100mm", (0.5, 0.5, 100.0), "implausible voxel spacing"),
                                ("spacing_metres", (0.0005, 0.0005, 0.003), "implausible voxel spacing")):
        _mha_with_header(d / f"{name}.mha", "ElementSpacing", spacing)
        case(name, f"spacing {spacing} mm in the header", predict(f"{{bad}}/{name}.mha"),
             study(f"{{bad}}/{name}.mha"), 2, frag)
    shear = (1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # det 1, but not a rotation
    _mha_with_header(d / "direction_sheared.mha", "TransformMatrix", shear)
    case("direction_sheared", "direction matrix with a shear (det 1, not orthogonal)",
         predict("{bad}/direction_sheared.mha"), study("{bad}/direction_sheared.mha"), 2, "not a rotation")
    _mha_with_header(d / "direction_scaled.mha", "TransformMatrix", (2.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    case("direction_scaled", "direction matrix with a scaled axis", predict("{bad}/direction_scaled.mha"),
         study("{bad}/direction_scaled.mha"), 2, "not a rotation")

    big = knee_like().astype(np.uint64) * np.uint64(2 ** 40)
    write(image(big), d / "uint64_huge.nrrd")
    case("uint64_overflow", "uint64 voxels up to ~1e15 (integer overflow in an export)",
         predict("{bad}/uint64_huge.nrrd"), study("{bad}/uint64_huge.nrrd"), 2, "64-bit integer voxels")
    f64 = knee_like().astype(np.float64) * 1e300
    write(image(f64), d / "float64_overflow.nrrd")
    case("float64_overflow", "float64 voxels beyond the float32 range", predict("{bad}/float64_overflow.nrrd"),
         study("{bad}/float64_overflow.nrrd"), 2, "float32 range")

    # headers that declare huge volumes: refused before any pixel data is read
    (d / "huge_5gb.nhdr").write_text("NRRD0004\ntype: int16\ndimension: 3\nsizes: 2048 2048 600\n"
                                     "spacings: 0.1 0.1 0.5\nencoding: raw\nendian: little\n"
                                     "data file: huge_5gb.raw\n")
    (d / "huge_5gb.raw").write_bytes(b"")  # the data never arrived: only the header is here
    case("huge_header_nrrd", "NRRD header declaring 2048x2048x600 int16 (5 GB), data file absent",
         predict("{bad}/huge_5gb.nhdr"), {"call": "guard", "kwargs": {"inputs": ["{bad}/huge_5gb.nhdr"]}}, 3,
         "above --max-voxels")
    hdr = bytearray(raw[:352])
    struct.pack_into("<8h", hdr, 40, 3, 1400, 1400, 600, 1, 1, 1, 1)  # dim[]: 1.2 G voxels of int16
    (d / "huge_2gb.nii").write_bytes(bytes(hdr))
    case("huge_header_nifti", "NIfTI header declaring 1400x1400x600 int16 (2.4 GB), no voxels",
         predict("{bad}/huge_2gb.nii"), {"call": "guard", "kwargs": {"inputs": ["{bad}/huge_2gb.nii"]}}, 3,
         "above --max-voxels")
    (d / "big_float.nhdr").write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 480 480 480\n"
                                      "spacings: 0.3 0.3 0.3\nencoding: raw\nendian: little\n"
                                      "data file: big_float.raw\n")
    (d / "big_float.raw").write_bytes(b"")
    case("memory_estimate", "480^3 float header under --max-voxels but above --max-memory 2",
         predict("{bad}/big_float.nhdr", "--max-memory", "2"),
         {"call": "guard", "kwargs": {"inputs": ["{bad}/big_float.nhdr"], "max_memory_gb": 2}}, 3,
         "needs an estimated")
    case("max_voxels_small", "a valid sample-size volume with --max-voxels 1000",
         predict("{sample}", "--max-voxels", "1000"),
         {"call": "guard", "kwargs": {"inputs": ["{sample}"],
                                      "max_voxels": 1000}}, 3, "above --max-voxels 1,000")

    # folders
    (d / "empty_dir").mkdir()
    (d / "empty_dir" / ".keep").write_text("")
    case("empty_directory", "a folder with no images", predict("{bad}/empty_dir"), study("{bad}/empty_dir"), 2,
         "no usable images found")
    (d / "no_images").mkdir()
    (d / "no_images" / "readme.txt").write_text("exported report\n")
    (d / "no_images" / "scan.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    case("folder_without_images", "a folder of documents", predict("{bad}/no_images"), study("{bad}/no_images"), 2,
         "no usable images found")


def _mha_with_header(path: Path, key: str, values) -> None:
    """A valid knee .mha whose header field ``key`` (ElementSpacing, TransformMatrix) is rewritten."""
    write(image(knee_like()), path, compress=False)
    text = path.read_bytes()
    head, _, data = text.partition(b"ElementDataFile = LOCAL\n")
    lines = [ln for ln in head.decode().splitlines() if not ln.startswith(key)]
    lines.insert(-1, f"{key} = " + " ".join(repr(float(v)) for v in values))
    path.write_bytes(("\n".join(lines) + "\nElementDataFile = LOCAL\n").encode() + data)


# ------------------------------------------------------------------------------------------ DICOM
def write_dicom(folder: Path, series: int, arr: np.ndarray, spacing=(0.5, 0.5), positions=None,
                modality="MR", image_type=("ORIGINAL", "PRIMARY", "M", "ND"), drop=(), name_prefix="",
                echo: int | None = None, series_uid: str | None = None) -> None:
    """One file per slice (sagittal slices along x), written with pydicom; ``drop`` removes tags."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or f"{UID_ROOT}.{series}"
    positions = positions if positions is not None else [3.0 * k for k in range(arr.shape[0])]
    for k, (sl, x) in enumerate(zip(arr, positions)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = f"{uid}.{echo or 1}.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.ImageType = modality, list(image_type)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{UID_ROOT}.0", uid
        ds.SeriesNumber, ds.InstanceNumber = series, k + 1
        ds.SeriesDescription = f"series {series}"
        ds.ImagePositionPatient = [float(x), 0.0, 0.0]
        ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # sagittal
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = 3.0
        if echo is not None:
            ds.EchoNumbers = echo
        ds.Rows, ds.Columns = sl.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = sl.astype("<i2").tobytes()
        for tag in drop:
            if tag in ds:
                delattr(ds, tag)
        pydicom.dcmwrite(folder / f"{name_prefix}s{series}_e{echo or 1}_{k:03d}.dcm", ds, enforce_file_format=True)


def dicom_cases(d: Path) -> None:
    base = knee_like()  # 8 sagittal slices of 24x24
    write_dicom(d / "dicom_ct", 1, base, modality="CT")
    case("dicom_ct", "a CT series (not MR)", predict("{bad}/dicom_ct"), study("{bad}/dicom_ct"), 2,
         "not MR")
    write_dicom(d / "dicom_localizer", 2, base, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    case("dicom_localizer_only", "only a localizer series", predict("{bad}/dicom_localizer"),
         study("{bad}/dicom_localizer"), 2, "localizer")
    write_dicom(d / "dicom_no_iop", 3, base, drop=("ImageOrientationPatient",))
    case("dicom_missing_orientation", "slices without ImageOrientationPatient", predict("{bad}/dicom_no_iop"),
         study("{bad}/dicom_no_iop"), 2, "ImageOrientationPatient")
    write_dicom(d / "dicom_no_ipp", 4, base, drop=("ImagePositionPatient",))
    case("dicom_missing_position", "slices without ImagePositionPatient", predict("{bad}/dicom_no_ipp"),
         study("{bad}/dicom_no_ipp"), 2, "ImagePositionPatient")
    write_dicom(d / "dicom_uneven", 5, base, positions=[0, 3, 6, 9, 15, 18, 21, 24])
    case("dicom_uneven_spacing", "a missing slice: gaps of 3 and 6 mm", predict("{bad}/dicom_uneven"),
         study("{bad}/dicom_uneven"), 2, "slice spacing is not uniform")
    write_dicom(d / "dicom_duplicate", 6, base, positions=[0, 3, 6, 6, 9, 12, 15, 18])
    case("dicom_duplicate_slice", "two slices at the same position", predict("{bad}/dicom_duplicate"),
         study("{bad}/dicom_duplicate"), 2, "slice spacing is not uniform")
    write_dicom(d / "dicom_single", 7, base[:1])
    case("dicom_single_slice", "a one-file series", predict("{bad}/dicom_single"), study("{bad}/dicom_single"), 2,
         "single slice")
    # one SeriesInstanceUID, two matrix sizes: two acquisitions mixed by an anonymiser or a copy
    write_dicom(d / "dicom_mixed", 8, base[:4])
    write_dicom(d / "dicom_mixed", 8, np.pad(base[4:], ((0, 0), (4, 4), (4, 4)), mode="edge"),
                positions=[12, 15, 18, 21], name_prefix="b_")
    case("dicom_mixed_series", "one series UID holding slices of two sizes", predict("{bad}/dicom_mixed"),
         study("{bad}/dicom_mixed"), 2, "mixes")
    write_dicom(d / "dicom_echoes", 9, base, echo=1)
    write_dicom(d / "dicom_echoes", 9, knee_like(1), echo=2)
    case("dicom_multi_echo", "two echoes in one series, no --echo", predict("{bad}/dicom_echoes"),
         study("{bad}/dicom_echoes"), 2, "choose one with --echo")
    (d / "dicom_truncated").mkdir()
    write_dicom(d / "_tmp_dcm", 10, base)
    for f in sorted((d / "_tmp_dcm").iterdir()):
        (d / "dicom_truncated" / f.name).write_bytes(f.read_bytes()[: -600])  # pixel data cut short
    shutil.rmtree(d / "_tmp_dcm")
    case("dicom_truncated", "every slice's pixel data cut short", predict("{bad}/dicom_truncated"),
         study("{bad}/dicom_truncated"), 2, "DICOM file(s) that form no readable image series")


# -------------------------------------------------------------------------------- label maps
def label_cases(d: Path) -> None:
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:6, 5:15, 5:15] = 1
    lab[3, 8, 8] = 42  # not a knee-11 value
    write(image(lab), d / "labels_out_of_set.nrrd")
    case("labels_outside_set", "label map with value 42 (knee-11 has 1..11)", None,
         {"call": "read_label_map", "kwargs": {"path": "{bad}/labels_out_of_set.nrrd"}}, 2,
         "values outside knee-11")
    write(image(lab.astype(np.float32) + 0.5), d / "labels_fractional.nrrd")
    case("labels_fractional", "label map with fractional values", None,
         {"call": "read_label_map", "kwargs": {"path": "{bad}/labels_fractional.nrrd"}}, 2, "non-integer")
    neg = lab.astype(np.int16)
    neg[0, 0, 0] = -1
    write(image(neg), d / "labels_negative.nrrd")
    case("labels_negative", "label map with a negative value", None,
         {"call": "read_label_map", "kwargs": {"path": "{bad}/labels_negative.nrrd"}}, 2, "values outside knee-11")


# ----------------------------------------------------------------------------------- manifests
MANIFEST_HEADER = "study_id,patient_id,sagittal,coronal,axial"


def manifest_cases(d: Path) -> None:
    m = d / "manifests"
    m.mkdir()
    write(image(knee_like()), m / "knee.nrrd")

    def add(cid, what, text, fragment, raw: bytes | None = None):
        path = m / f"{cid}.csv"
        path.write_bytes(raw if raw is not None else text.encode())
        case(f"manifest_{cid}", what, ["predict", "--manifest", f"{{bad}}/manifests/{cid}.csv", "--out", "{out}",
                                        "--device", "cpu"],
             {"call": "read_manifest", "kwargs": {"path": f"{{bad}}/manifests/{cid}.csv"}}, 2, fragment)

    add("missing_column", "no axial column", "study_id,patient_id,sagittal,coronal\nS1,P1,knee.nrrd,\n",
        "missing required column(s): axial")
    add("unknown_label", "finding column XYZ not in knee-8", f"{MANIFEST_HEADER},ACL,XYZ\nS1,P1,knee.nrrd,,,1,0\n",
        "unknown label column 'XYZ'")
    add("unknown_labels_column", "labels_femur column", f"{MANIFEST_HEADER},labels_femur\nS1,P1,knee.nrrd,,,x.nrrd\n",
        "unknown label column 'labels_femur'")
    add("duplicate_id", "study_id S1 twice", f"{MANIFEST_HEADER}\nS1,P1,knee.nrrd,,\nS1,P2,knee.nrrd,,\n",
        "duplicate study_id 'S1'")
    add("duplicate_column", "sagittal column twice", "study_id,patient_id,sagittal,coronal,axial,sagittal\n"
        "S1,P1,knee.nrrd,,,knee.nrrd\n", "duplicate columns: sagittal")
    add("relative_missing", "relative path that does not exist next to the manifest",
        f"{MANIFEST_HEADER}\nS1,P1,cases/S1/sag.nii.gz,,\n", "relative paths resolve against")
    add("absolute_missing", "absolute path that does not exist", f"{MANIFEST_HEADER}\nS1,P1,/no/such/knee.nii.gz,,\n",
        "file not found: /no/such/knee.nii.gz")
    add("no_image", "a row with no image in any plane", f"{MANIFEST_HEADER}\nS1,P1,,,\n", "has no image in any plane")
    add("empty_study_id", "an empty study_id", f"{MANIFEST_HEADER}\n,P1,knee.nrrd,,\n", "empty study_id")
    add("finding_value", "finding value 2", f"{MANIFEST_HEADER},ACL\nS1,P1,knee.nrrd,,,2\n",
        "finding values must be 0, 1 or empty")
    add("age_out_of_range", "EHR age 250", f"{MANIFEST_HEADER},age\nS1,P1,knee.nrrd,,,250\n",
        "outside the plausible range")
    add("height_in_metres", "EHR height 1.75 (metres, not cm)", f"{MANIFEST_HEADER},height_cm\nS1,P1,knee.nrrd,,,1.75\n",
        "outside the plausible range")
    add("weight_not_number", "EHR weight 'heavy'", f"{MANIFEST_HEADER},weight_kg\nS1,P1,knee.nrrd,,,heavy\n",
        "expected a number")
    add("sex_unknown_code", "EHR sex 'X'", f"{MANIFEST_HEADER},sex\nS1,P1,knee.nrrd,,,X\n", "'X' is not one of F, M")
    add("extra_fields", "a row with more fields than the header", f"{MANIFEST_HEADER}\nS1,P1,knee.nrrd,,,extra\n",
        "more fields than the header")
    add("header_only", "a header and no rows", f"{MANIFEST_HEADER}\n", "has a header but no rows")
    add("empty", "a 0-byte manifest", "", "empty manifest")
    add("not_utf8", "a Latin-1 manifest (not UTF-8)", "", "not UTF-8 text",
        raw=f"{MANIFEST_HEADER},center\nS1,P1,knee.nrrd,,,Z\u00fcrich\n".encode("latin-1"))
    add("annotated_unknown", "annotated_classes names an unknown structure",
        f"{MANIFEST_HEADER},annotated_classes\nS1,P1,knee.nrrd,,,femur;kneecap\n", "unknown knee-11 key(s) kneecap")
    case("manifest_missing_file", "the manifest path does not exist",
         ["predict", "--manifest", "{bad}/manifests/nope.csv", "--out", "{out}", "--device", "cpu"],
         {"call": "read_manifest", "kwargs": {"path": "{bad}/manifests/nope.csv"}}, 2, "manifest not found")


# -------------------------------------------------------------------------- EHR and arguments
def ehr_and_argument_cases(d: Path) -> None:
    ok = "{sample}"
    for cid, text, fragment in (("ehr_age_300", "age=300", "outside the plausible range"),
                                ("ehr_height_metres", "height_cm=1.75", "outside the plausible range"),
                                ("ehr_weight_negative", "weight_kg=-70", "outside the plausible range"),
                                ("ehr_not_number", "age=old", "is not a number"),
                                ("ehr_not_key_value", "age", "is not KEY=VALUE"),
                                ("ehr_unknown_field", "age=50,bmi=22", "unknown field(s)"),
                                ("ehr_sex_code", "sex=Q", "not understood")):
        case(cid, f"--ehr {text}", predict(ok, "--ehr", text), {"call": "ehr", "kwargs": {"text": text}}, 2, fragment)
    (d / "ehr_list.json").write_text('[{"age": 50}]\n')
    case("ehr_json_list", "--ehr JSON file holding a list", predict(ok, "--ehr", "{bad}/ehr_list.json"),
         {"call": "ehr", "kwargs": {"text": "{bad}/ehr_list.json"}}, 2, "expected a JSON object")
    (d / "ehr_broken.json").write_text('{"age": 50,\n')
    case("ehr_json_broken", "--ehr JSON file with a syntax error", predict(ok, "--ehr", "{bad}/ehr_broken.json"),
         {"call": "ehr", "kwargs": {"text": "{bad}/ehr_broken.json"}}, 2, "invalid JSON")
    (d / "ehr_range.json").write_text('{"age": 54, "weight_kg": 7000}\n')
    case("ehr_json_out_of_range", "--ehr JSON with weight 7000 kg", predict(ok, "--ehr", "{bad}/ehr_range.json"),
         {"call": "ehr", "kwargs": {"text": "{bad}/ehr_range.json"}}, 2, "outside the plausible range")

    def job(**kw):
        return {"call": "predict_job", "kwargs": {"inputs": [ok], **kw}}

    case("draws_zero", "--draws 0", predict(ok, "--draws", "0"), job(draws=0), 2, "--draws must be between 1 and 32")
    case("max_voxels_zero", "--max-voxels 0", predict(ok, "--max-voxels", "0"), job(max_voxels=0), 2,
         "--max-voxels must be")
    case("out_is_file", "--out names an existing file", ["predict", ok, "--out", "{bad}/notes.txt", "--device", "cpu"],
         job(out="{bad}/notes.txt"), 2, "is a file")
    (d / "foreign_out").mkdir()
    (d / "foreign_out" / "thesis.docx").write_bytes(b"not ours")
    case("out_not_ours", "--out is a folder of someone else's files",
         ["predict", ok, "--out", "{bad}/foreign_out", "--device", "cpu"], job(out="{bad}/foreign_out"), 2,
         "already holds files the tool did not write")
    case("unknown_model", "--model that is not installed", predict(ok, "--model", "no-such-model"),
         job(model="no-such-model"), 2, "unknown model 'no-such-model'")


# ----------------------------------------------------------------- input hygiene (issue #17)
def _nhdr(path: Path, data_line: str, sizes: str = "24 24 8", type_: str = "short") -> None:
    path.write_text(f"NRRD0004\ntype: {type_}\ndimension: 3\nsizes: {sizes}\nspacings: 0.5 0.5 3\n"
                    f"encoding: raw\nendian: little\n{data_line}\n")


def hygiene_cases(d: Path) -> None:
    import os

    h = d / "headers"
    h.mkdir()
    (h / "knee.raw").write_bytes(knee_like().astype("<i2").tobytes())
    for cid, name, text, what, fragment in (
            ("header_etc_passwd", "passwd.nhdr", "data file: /etc/passwd",
             "detached NRRD header whose data file is /etc/passwd", "absolute path ('/etc/passwd')"),
            ("header_dev_stdin", "stdin.nhdr", "data file: /dev/stdin",
             "detached NRRD header reading /dev/stdin (ITK blocks)", "absolute path ('/dev/stdin')"),
            ("header_parent_dir", "parent.nhdr", "datafile: ../headers/knee.raw",
             "data file reached through '..'", "outside its own folder"),
            ("header_subfolder", "sub.nhdr", "data file: sub/knee.raw", "data file in a sub-folder",
             "outside its own folder"),
            ("header_list_outside", "list.nhdr", "data file: LIST 2\nknee.raw\n/etc/hostname",
             "a LIST naming a file outside the folder", "absolute path ('/etc/hostname')"),
            ("header_pattern_endless", "pattern.nhdr", "data file: s%03d.raw 0 1000000000 1 2",
             "a printf-style pattern over a billion files", "above 10,000 files"),
            ("header_link_out", "link.nhdr", "data file: link.raw",
             "data file is a symbolic link to /etc/passwd", "is a link to /etc/passwd")):
        _nhdr(h / name, text)
        case(cid, what, predict(f"{{bad}}/headers/{name}"), study(f"{{bad}}/headers/{name}"), 2, fragment)
    os.symlink("/etc/passwd", h / "link.raw")
    (h / "passwd.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 24 24 8\nElementType = MET_SHORT\n"
                                  "ElementDataFile = /etc/passwd\n")
    case("header_mhd_etc_passwd", "MetaImage header whose ElementDataFile is /etc/passwd",
         predict("{bad}/headers/passwd.mhd"), study("{bad}/headers/passwd.mhd"), 2, "absolute path ('/etc/passwd')")
    (h / "list.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 24 24 8\nElementType = MET_SHORT\n"
                                "ElementDataFile = LIST 2D\nknee.raw\n../headers/knee.raw\n")
    case("header_mhd_list_parent", "MetaImage LIST naming '../'", predict("{bad}/headers/list.mhd"),
         study("{bad}/headers/list.mhd"), 2, "outside its own folder")

    o = d / "own_outputs"
    o.mkdir()
    lab = sitk.Cast(image(np.zeros(SHAPE, np.uint8) + (knee_like() > 400).astype(np.uint8)), sitk.sitkUInt8)
    write(lab, o / "labels.nrrd")
    case("own_labels", "the tool's labels.nrrd given as the scan", predict("{bad}/own_outputs/labels.nrrd"),
         study("{bad}/own_outputs/labels.nrrd"), 2, "is an output of orthodiffusion (labels.nrrd)")
    write(lab, o / "knee.seg.nrrd")
    case("own_segmentation", "a .seg.nrrd given as the scan", predict("{bad}/own_outputs/knee.seg.nrrd"),
         study("{bad}/own_outputs/knee.seg.nrrd"), 2, "is a segmentation")
    renamed = image(knee_like().astype(np.float32))
    renamed.SetMetaData("OrthoDiffusion_Disclaimer", "Research use only, not for clinical decisions.")
    write(renamed, o / "knee_t2.nrrd")
    case("own_output_renamed", "an uncertainty map renamed knee_t2.nrrd (the header says who wrote it)",
         predict("{bad}/own_outputs/knee_t2.nrrd"), study("{bad}/own_outputs/knee_t2.nrrd"), 2,
         "header carries the tool's disclaimer")

    arr = knee_like().astype(np.float32)
    comp = sitk.GetImageFromArray(arr.astype(np.complex64) + 1j * arr)
    comp.SetSpacing((0.5, 0.5, 3.0))
    write(comp, d / "complex.nrrd")
    case("complex_voxels", "complex-valued voxels (real and imaginary parts)", predict("{bad}/complex.nrrd"),
         study("{bad}/complex.nrrd"), 2, "complex-valued voxels")
    neg = knee_like().astype(np.float32)
    neg[4, 6, 6] = -np.inf
    write(image(neg), d / "ninf_voxels.nrrd")
    case("ninf_voxels", "float volume with a -Inf voxel", predict("{bad}/ninf_voxels.nrrd"),
         study("{bad}/ninf_voxels.nrrd"), 2, "NaN or infinite voxels")
    write(image(knee_like().astype(np.float32)), d / "_f.nii", compress=False)
    raw = bytearray((d / "_f.nii").read_bytes())
    (d / "_f.nii").unlink()
    struct.pack_into("<f", raw, 352 + 4 * 100, float("inf"))  # ITK's NIfTI reader would return 0 here
    (d / "inf_voxels.nii").write_bytes(bytes(raw))
    case("nifti_inf_voxels", "NIfTI storing an Inf voxel (ITK reads it as 0)", predict("{bad}/inf_voxels.nii"),
         study("{bad}/inf_voxels.nii"), 2, "NaN or infinite voxels (stored in the file")
    write(image(knee_like().astype(np.float32) * np.float32(1e35)), d / "near_float_max.nrrd")
    case("near_float32_max", "float32 voxels near 3.4e38 (max - min overflows)", predict("{bad}/near_float_max.nrrd"),
         study("{bad}/near_float_max.nrrd"), 2, "float32 range")
    aniso = image(np.tile(knee_like()[:, :, :1], (1, 1, 800)), spacing=(0.1, 4.0, 4.0))
    write(aniso, d / "anisotropic.nrrd")
    case("reformat_views_too_big", "0.1x4x4 mm volume (154k voxels) whose reformatted views have 6.1 M voxels each (--reformat)",
         predict("{bad}/anisotropic.nrrd", "--reformat", "--max-voxels", "2000000"),
         {"call": "guard", "kwargs": {"inputs": ["{bad}/anisotropic.nrrd"], "reformat": True,
                                      "max_voxels": 2000000}}, 3, "reformatting the 3D series")

    for cid, folder, text, fragment in (("model_json_broken", "model_broken", "{\"id\": \"x\",", "invalid JSON"),
                                        ("model_json_deep", "model_deep", "[" * 5000 + "]" * 5000, "nested too deeply"),
                                        ("model_json_not_entry", "model_list", "[1, 2]", "model entry")):
        (d / folder).mkdir()
        (d / folder / "model.json").write_text(text)
        case(cid, f"--model pointing at a folder whose model.json is {cid.split('_')[-1]}",
             predict("{sample}", "--model", f"{{bad}}/{folder}"),
             {"call": "get_model", "kwargs": {"model": f"{{bad}}/{folder}"}}, 2, fragment)

    m = d / "manifests"
    for cid, text, what, fragment in (
            ("reserved_study_id", f"{MANIFEST_HEADER}\nerrors.csv,P1,knee.nrrd,,\n", "study_id errors.csv",
             "a name the cohort output folder uses itself"),
            ("hidden_study_id", f"{MANIFEST_HEADER}\n.staging-S1,P1,knee.nrrd,,\n", "study_id starting with '.'",
             "starts with '.'"),
            ("age_nan", f"{MANIFEST_HEADER},age\nS1,P1,knee.nrrd,,,NaN\n", "EHR age NaN", "is not a number"),
            ("patient_type_unknown", f"{MANIFEST_HEADER},patient_type\nS1,P1,knee.nrrd,,,astronaut\n",
             "EHR patient_type not in the vocabulary", "is not one of outpatient")):
        (m / f"{cid}.csv").write_text(text)
        case(f"manifest_{cid}", what, ["predict", "--manifest", f"{{bad}}/manifests/{cid}.csv", "--out", "{out}",
                                       "--device", "cpu"],
             {"call": "read_manifest", "kwargs": {"path": f"{{bad}}/manifests/{cid}.csv"}}, 2, fragment)

    for cid, text, fragment in (("ehr_age_nan", "age=NaN", "is not a number"),
                                ("ehr_event_unknown", "event=skydiving", "is not one of sport"),
                                ("ehr_sex_x", "sex=x", "is not one of F, M")):
        case(cid, f"--ehr {text}", predict("{sample}", "--ehr", text), {"call": "ehr", "kwargs": {"text": text}}, 2,
             fragment)
    (d / "ehr_true.json").write_text('{"age": true}\n')
    case("ehr_json_true", "--ehr JSON with age true", predict("{sample}", "--ehr", "{bad}/ehr_true.json"),
         {"call": "ehr", "kwargs": {"text": "{bad}/ehr_true.json"}}, 2, "is not a number")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "Testing" / "Data" / "bad"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    CASES.clear()
    volume_cases(out)
    dicom_cases(out)
    label_cases(out)
    manifest_cases(out)
    ehr_and_argument_cases(out)
    hygiene_cases(out)
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    (out / "cases.json").write_text(json.dumps({
        "about": "Bad-input corpus (generated by scripts/make_bad_inputs.py; do not edit by hand). "
                 "{bad} = this folder, {out} = an output folder that must stay absent, {sample} = Resources/SampleData/knee_mese_t2_sag_echo1.nii.gz (a valid knee).",
        "cases": CASES}, indent=1) + "\n")
    (out / "README.md").write_text(
        "# Bad-input corpus\n\nGenerated by `scripts/make_bad_inputs.py`; `cases.json` lists each case's command, "
        "library call, expected exit code and message fragment. `Testing/Python/test_bad_inputs.py` runs them "
        "all. Synthetic files, no patient data.\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{len(CASES)} cases, {size / 1024:.0f} kB in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
