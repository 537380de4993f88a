"""The per-case result folder: the contract between case inference, the CLI and the Slicer module.

A result folder holds::

    labels.nrrd              knee-11 label map (uint8) on the reference volume's grid
    segmentation.seg.nrrd    the same labels as a Slicer segmentation (names, colours, terminology)
    uncertainty.nrrd         float32 per-voxel uncertainty, same grid
    findings.json / .csv     the knee-8 findings (probability, spread, decision, plane weights)
    segmentation.dcm         optional DICOM SEG (``predict --dicom-seg``, DICOM input), files["dicom_seg"]
    result.json              the index; written last, so a folder without it is incomplete

Everything is written atomically and without Slicer: ``segmentation.seg.nrrd`` carries the
``Segment<i>_*`` header keys that vtkMRMLSegmentationStorageNode reads.
Research use, not for clinical decisions.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import DISCLAIMER, __version__, csvsafe  # csvsafe: formula-safe cells in every CSV the tool writes
from ..errors import InputError
from ..labelsets import load_label_set
from ..resources import resource_path
from ..storage import atomic_path, atomic_write_json, atomic_write_text, read_json, sha256_file

from ..planes import PLANES
SCHEMA_VERSION = 1
STRUCTURES_LABEL_SET = "knee-11"
FINDINGS_LABEL_SET = "knee-8"
FILE_NAMES = {
    "labels": "labels.nrrd",
    "segmentation": "segmentation.seg.nrrd",
    "uncertainty": "uncertainty.nrrd",
    "findings_json": "findings.json",
    "findings_csv": "findings.csv",
}
# Slicer's terminology string: context~category~type~typeModifier~anatomicContext~region~regionModifier
TERMINOLOGY_CONTEXT = "Segmentation category and type - OrthoDiffusion knee-11"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
DISCLAIMER_KEY = "OrthoDiffusion_Disclaimer"


@dataclass
class Finding:
    key: str
    name: str
    probability: float
    spread: float
    decision: bool
    threshold: float
    plane_weights: dict = field(default_factory=dict)  # plane -> weight; absent planes weigh 0

    def weight(self, plane: str) -> float:
        return float(self.plane_weights.get(plane, 0.0))

    def dominant_plane(self) -> str | None:
        present = {p: w for p, w in self.plane_weights.items() if w is not None}
        return max(present, key=present.get) if present else None


@dataclass
class CaseResult:
    case_id: str
    reference_plane: str
    planes_present: list
    findings: list = field(default_factory=list)
    model: dict = field(default_factory=lambda: {"id": "unknown", "version": "0"})
    head_version: str = "0"
    provenance: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # filled by write/read: name -> {"path", "sha256"}
    directory: Path | None = None
    disclaimer: str = DISCLAIMER
    # the model's label sets (its catalogue entry / head manifest); the knee sets when not given
    label_sets: dict = field(default_factory=lambda: {"structures": STRUCTURES_LABEL_SET,
                                                      "findings": FINDINGS_LABEL_SET})

    def finding(self, key: str) -> Finding:
        for f in self.findings:
            if f.key.lower() == key.lower():
                return f
        raise InputError(f"finding '{key}' is not in this result (known: {', '.join(f.key for f in self.findings)})")

    def path(self, name: str) -> Path:
        """Absolute path of a file of a folder read from disk (``labels``, ``uncertainty`` ...)."""
        if self.directory is None or name not in self.files:
            raise InputError(f"result has no file '{name}'")
        return Path(self.directory) / self.files[name]["path"]


# ---------------------------------------------------------------------------------------------
# terminology (pure: shared by the .seg.nrrd writer and the MRML layer)

def _code(c: dict | None) -> str:
    if not c:
        return "^^"
    return f"{c['CodingSchemeDesignator']}^{c['CodeValue']}^{c['CodeMeaning']}"


def terminology_string(label: dict) -> str:
    """Slicer's serialised terminology entry (the ``TerminologyEntry`` segment tag) for a label."""
    t = label.get("terminology") or {}
    return "~".join([
        TERMINOLOGY_CONTEXT, _code(t.get("category")), _code(t.get("type")), _code(t.get("typeModifier")),
        ANATOMIC_CONTEXT, _code(t.get("anatomicRegion")), _code(t.get("anatomicRegionModifier")),
    ])


def structure_labels(label_set: str = STRUCTURES_LABEL_SET) -> list[dict]:
    return list(load_label_set(label_set).labels)


# ---------------------------------------------------------------------------------------------
# validation

def _schema(name: str) -> dict:
    return json.loads(resource_path("Schemas", name).read_text(encoding="utf-8"))


def validate_json(obj: dict, schema_name: str) -> None:
    import jsonschema

    try:
        jsonschema.validate(obj, _schema(schema_name))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        raise InputError(f"{schema_name}: {where}: {exc.message}") from None


def findings_to_json(result: CaseResult) -> dict:
    return {
        "disclaimer": DISCLAIMER,
        "case_id": result.case_id,
        "label_set": result.label_sets["findings"],
        "planes_present": list(result.planes_present),
        "plane_order": list(PLANES),
        "findings": [
            {"key": f.key, "name": f.name, "probability": float(f.probability), "spread": float(f.spread),
             "decision": bool(f.decision), "threshold": float(f.threshold),
             "plane_weights": {p: float(f.plane_weights.get(p, 0.0)) for p in PLANES}}
            for f in result.findings
        ],
        "head_version": str(result.head_version),
        "model": dict(result.model),
        "provenance": dict(result.provenance),
        "timings": dict(result.timings),
    }


def findings_to_csv(result: CaseResult) -> str:
    buf = io.StringIO()
    buf.write(f"# {DISCLAIMER}\n")  # readers: pandas.read_csv(..., comment="#")
    w = csvsafe.writer(buf, lineterminator="\n")
    w.writerow(["key", "name", "probability", "spread", "decision", "threshold"] + [f"w_{p}" for p in PLANES])
    for f in result.findings:
        w.writerow([f.key, f.name, f"{f.probability:.6g}", f"{f.spread:.6g}", int(bool(f.decision)),
                    f"{f.threshold:.6g}"] + [f"{f.weight(p):.6g}" for p in PLANES])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# images

def _grid(img) -> dict:
    return {"size": list(img.GetSize()), "spacing": list(img.GetSpacing()),
            "origin": list(img.GetOrigin()), "direction": list(img.GetDirection())}


def _same_grid(a, b, tol: float = 1e-4) -> bool:
    ga, gb = _grid(a), _grid(b)
    return ga["size"] == gb["size"] and all(
        np.allclose(ga[k], gb[k], atol=tol) for k in ("spacing", "origin", "direction"))


def _write_image(img, path: Path, compress: bool = True) -> None:
    import SimpleITK as sitk

    from ..diskspace import check_free_space

    img = sitk.Image(img)  # metadata is per image object: don't touch the caller's
    img.SetMetaData(DISCLAIMER_KEY, DISCLAIMER)
    # ITK reports a full disk only as a generic RuntimeError after printing its own lines
    check_free_space(path.parent, img.GetNumberOfPixels() * img.GetSizeOfPixelComponent()
                     * img.GetNumberOfComponentsPerPixel())
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), compress)


def ijk_to_ras(img) -> np.ndarray:
    """4x4 IJK->RAS matrix of a SimpleITK image (ITK is LPS)."""
    d = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())[None, :]
    m = np.eye(4)
    flip = np.diag([-1.0, -1.0, 1.0])
    m[:3, :3] = flip @ d
    m[:3, 3] = flip @ np.array(img.GetOrigin())
    return m


def segmentation_header(labels_array: np.ndarray, img, labels: list[dict]) -> dict:
    """``Segment<i>_*`` / ``Segmentation_*`` keys for a one-layer .seg.nrrd (one segment per label).

    ``labels_array`` is in numpy (k, j, i) order. Segments absent from the array get the empty
    extent ``0 -1 0 -1 0 -1`` so an annotator can still paint them.
    """
    meta = {}
    m = ijk_to_ras(img)
    size = img.GetSize()
    geometry = ";".join(f"{v:.10g}" for v in m.ravel()) + f";0;{size[0]-1};0;{size[1]-1};0;{size[2]-1};"
    meta["Segmentation_MasterRepresentation"] = "Binary labelmap"
    meta["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    meta["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    meta["Segmentation_ConversionParameters"] = (
        f"Reference image geometry|{geometry}|Image geometry of the reference volume.&")
    for i, lab in enumerate(labels):
        value = int(lab["value"])
        k, j, ii = np.nonzero(labels_array == value)
        extent = (f"{ii.min()} {ii.max()} {j.min()} {j.max()} {k.min()} {k.max()}" if ii.size
                  else "0 -1 0 -1 0 -1")
        r, g, b = (c / 255.0 for c in lab["color"])
        meta[f"Segment{i}_ID"] = lab["key"]
        meta[f"Segment{i}_Name"] = lab["name"]
        meta[f"Segment{i}_NameAutoGenerated"] = "0"
        meta[f"Segment{i}_Color"] = f"{r:.6g} {g:.6g} {b:.6g}"
        meta[f"Segment{i}_ColorAutoGenerated"] = "0"
        meta[f"Segment{i}_LabelValue"] = str(value)
        meta[f"Segment{i}_Layer"] = "0"
        meta[f"Segment{i}_Extent"] = extent
        meta[f"Segment{i}_Tags"] = (f"TerminologyEntry:{terminology_string(lab)}|"
                                    f"OrthoDiffusion.Key:{lab['key']}|")
    return meta


def write_seg_nrrd(label_img, path: str | Path, labels: list[dict] | None = None) -> Path:
    """Write a knee-11 label image as a Slicer ``.seg.nrrd`` without Slicer (SimpleITK only)."""
    import SimpleITK as sitk

    labels = labels if labels is not None else structure_labels()
    arr = sitk.GetArrayViewFromImage(label_img)
    img = sitk.Cast(label_img, sitk.sitkUInt8)
    for key, value in segmentation_header(arr, label_img, labels).items():
        img.SetMetaData(key, value)
    img.SetMetaData(DISCLAIMER_KEY, DISCLAIMER)
    from ..diskspace import check_free_space

    check_free_space(Path(path).parent, img.GetNumberOfPixels() * img.GetSizeOfPixelComponent())
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), True)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# folder write / read



def _check_inputs(result: CaseResult, labels_img, uncertainty_img) -> None:
    import SimpleITK as sitk

    if result.reference_plane not in (*PLANES, "3d"):
        raise InputError(f"reference_plane must be one of {PLANES + ('3d',)}, got '{result.reference_plane}'")
    structures = result.label_sets["structures"]
    allowed = {0, *load_label_set(structures).values}
    present = set(np.unique(sitk.GetArrayViewFromImage(labels_img)).tolist())
    if not present <= allowed:
        raise InputError(f"label map has values outside {structures}: {sorted(present - allowed)}")
    if uncertainty_img is not None and not _same_grid(labels_img, uncertainty_img):
        raise InputError(f"uncertainty is not on the label map's grid ({_grid(uncertainty_img)} vs {_grid(labels_img)})")


def write_result_folder(result: CaseResult, labels, out_dir: str | Path, uncertainty=None) -> Path:
    """Write a complete result folder (SimpleITK images in, atomic files out); returns its path.

    ``labels``: label image (the result's structure label set) on the reference grid;
    ``uncertainty``: float image on the same grid (zeros when omitted). ``result.json`` goes last.
    """
    import SimpleITK as sitk

    _check_inputs(result, labels, uncertainty)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    findings_json = findings_to_json(result)
    validate_json(findings_json, "findings.schema.json")

    labels_u8 = sitk.Cast(labels, sitk.sitkUInt8)
    if uncertainty is None:
        uncertainty = sitk.Image(labels.GetSize(), sitk.sitkFloat32)
        uncertainty.CopyInformation(labels)
    _write_image(labels_u8, out / FILE_NAMES["labels"])
    write_seg_nrrd(labels_u8, out / FILE_NAMES["segmentation"], structure_labels(result.label_sets["structures"]))
    _write_image(sitk.Cast(uncertainty, sitk.sitkFloat32), out / FILE_NAMES["uncertainty"])
    atomic_write_json(out / FILE_NAMES["findings_json"], findings_json)
    atomic_write_text(out / FILE_NAMES["findings_csv"], findings_to_csv(result))

    names = dict(FILE_NAMES)
    files = {n: {"path": p, "sha256": sha256_file(out / p)} for n, p in names.items()}
    index = {
        "disclaimer": DISCLAIMER,
        "schema_version": SCHEMA_VERSION,
        "case_id": result.case_id,
        "reference_plane": result.reference_plane,
        "planes_present": list(result.planes_present),
        "label_sets": dict(result.label_sets),
        "reference_grid": _grid(labels),
        "files": files,
        "model": dict(result.model),
        "head_version": str(result.head_version),
        "provenance": {"orthodiffusion_version": __version__, **result.provenance},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    validate_json(index, "result.schema.json")
    atomic_write_json(out / "result.json", index)
    result.files, result.directory = files, out
    return out


def read_result_folder(directory: str | Path, verify: bool = False) -> CaseResult:
    """Read and validate a result folder; ``verify=True`` also checks every file's sha256."""
    d = Path(directory)
    if not (d / "result.json").is_file():
        raise InputError(f"{d} is not a complete OrthoDiffusion result folder (no result.json)")
    index = read_json(d / "result.json")
    validate_json(index, "result.schema.json")
    for name, entry in index["files"].items():
        p = d / entry["path"]
        if not p.is_file():
            raise InputError(f"result folder {d}: missing {entry['path']} ({name})")
        if verify and sha256_file(p) != entry["sha256"]:
            raise InputError(f"result folder {d}: {entry['path']} does not match its sha256 in result.json")
    fj = read_json(d / index["files"]["findings_json"]["path"])
    validate_json(fj, "findings.schema.json")
    findings = [Finding(key=f["key"], name=f["name"], probability=f["probability"], spread=f["spread"],
                        decision=f["decision"], threshold=f["threshold"], plane_weights=dict(f["plane_weights"]))
                for f in fj["findings"]]
    return CaseResult(case_id=index["case_id"], reference_plane=index["reference_plane"],
                      planes_present=list(index["planes_present"]), findings=findings, model=index["model"],
                      head_version=index["head_version"], provenance=index.get("provenance", {}),
                      timings=fj.get("timings", {}), files=index["files"], directory=d,
                      disclaimer=index["disclaimer"], label_sets=dict(index["label_sets"]))


def result_to_dict(result: CaseResult) -> dict:
    d = asdict(result)
    d["directory"] = str(result.directory) if result.directory else None
    return d


# ---------------------------------------------------------------------------------------------
# demo folder from the shipped real data (tests, the Slicer self-test, docs): NOT a model output

# knee_labels_a_10class.nrrd values -> knee-11 values
DEMO_REMAP = {5: 1, 6: 2, 7: 3, 8: 4, 1: 5, 2: 6, 3: 6, 4: 7, 10: 8, 9: 9}


def demo_result_folder(out_dir: str | Path, shrink=(4, 4, 1), case_id: str = "demo-knee") -> Path:
    """A small, valid result folder: the sample knee (shrunk) as reference, the real label map ``a``
    remapped to knee-11 and centred on it, fixed demo findings. The two knees differ, so the labels
    illustrate the format only."""
    import SimpleITK as sitk

    ref = sitk.BinShrink(sitk.ReadImage(str(resource_path("SampleData", "knee_mese_t2_sag_echo1.nii.gz"))),
                         list(shrink))
    lab = sitk.ReadImage(str(resource_path("Anatomy", "knee_labels_a_10class.nrrd")))
    arr = sitk.GetArrayFromImage(lab)
    lut = np.zeros(256, np.uint8)
    for src, dst in DEMO_REMAP.items():
        lut[src] = dst
    remapped = sitk.GetImageFromArray(lut[arr])
    remapped.CopyInformation(lab)
    centre = lambda im: np.array(im.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in im.GetSize()]))
    remapped.SetOrigin(tuple(np.array(lab.GetOrigin()) + centre(ref) - centre(lab)))
    labels = sitk.Resample(remapped, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)

    la = sitk.GetArrayFromImage(labels)
    edge = la != sitk.GetArrayFromImage(sitk.GrayscaleErode(labels, [1, 1, 1]))
    unc = sitk.GetImageFromArray(np.where(edge, 0.5, 0.05).astype(np.float32))
    unc.CopyInformation(labels)

    names = {lab_["key"]: lab_["name"] for lab_ in load_label_set(FINDINGS_LABEL_SET).labels}
    probs = [0.82, 0.07, 0.55, 0.12, 0.30, 0.05, 0.02, 0.64]
    weights = [(0.62, 0.25, 0.13), (0.55, 0.30, 0.15), (0.40, 0.45, 0.15), (0.38, 0.47, 0.15),
               (0.10, 0.70, 0.20), (0.12, 0.68, 0.20), (0.15, 0.15, 0.70), (0.50, 0.20, 0.30)]
    findings = [Finding(key=k_, name=names[k_], probability=p, spread=0.08, decision=p >= 0.5, threshold=0.5,
                        plane_weights=dict(zip(PLANES, w)))
                for k_, p, w in zip(names, probs, weights)]
    result = CaseResult(case_id=case_id, reference_plane="sagittal", planes_present=["sagittal"],
                        findings=findings, model={"id": "demo", "version": "0.0.0"}, head_version="demo",
                        provenance={"demo": True, "note": "built from shipped sample data, not a model output"},
                        timings={"total_s": 0.0})
    return write_result_folder(result, labels, out_dir, uncertainty=unc)
