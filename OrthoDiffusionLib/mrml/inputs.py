"""Input volumes -> files for the CLI, named per case, without touching the user's nodes."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .volumes import array_view, ijk_to_ras

PLANE_KEYS = ("sagittal", "coronal", "axial", "volume")  # "volume": one 3D series, reformatted by the CLI
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def _patient_label(scene, node) -> str | None:
    """DICOM patient ID (or name) of the subject-hierarchy patient holding the volume, if any."""
    import slicer  # the MRML classes; present in Slicer and in slicer-core

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(node) if sh else 0
    while item and item != sh.GetSceneItemID():
        for attr in ("DICOM.PatientID", "DICOM.PatientName"):
            value = sh.GetItemAttribute(item, attr)
            if value:
                return value
        item = sh.GetItemParent(item)
    return None


def volume_fingerprint(node) -> str:
    """sha256 over voxels and IJK->RAS: the same series gives the same id, another patient another."""
    h = hashlib.sha256(array_view(node).tobytes())
    h.update(ijk_to_ras(node).round(6).tobytes())
    return h.hexdigest()


def case_id_for(scene, node) -> str:
    """``<patient or volume name>-<8 hex of the fingerprint>``: differs per patient and series, and is
    stable when the same series is predicted again (fine-tuning uses the latest correction per id)."""
    label = _patient_label(scene, node) or node.GetName() or "case"
    stem = _SAFE.sub("_", label).strip("_")[:40] or "case"
    return f"{stem}-{volume_fingerprint(node)[:8]}"


def export_volume(scene, node, path) -> None:
    """Write ``node`` to ``path`` through a temporary storage node, as slicer.util.exportNode does:
    unlike saveNode, the node's own storage node (the user's file) is left as it was."""
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(str(path))
        storage.UseCompressionOff()  # the file is read once by the CLI; compression only costs time
        if not storage.WriteData(node):
            raise OSError(f"could not write {node.GetName()} to {path}")
    finally:
        scene.RemoveNode(storage)


def write_inputs(scene, volumes: dict, folder, case_id: str, writer=None) -> dict:
    """``{plane: node}`` -> ``{plane: Path}`` named ``<case>_<plane>.nrrd`` in ``folder``."""
    unknown = sorted(set(volumes) - set(PLANE_KEYS))
    if unknown:
        raise ValueError(f"unknown input plane(s) {unknown}; use {', '.join(PLANE_KEYS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for plane, node in volumes.items():
        paths[plane] = folder / f"{case_id}_{plane}.nrrd"
        (writer or (lambda n, p: export_volume(scene, n, p)))(node, paths[plane])
    return paths
