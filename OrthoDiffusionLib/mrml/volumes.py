"""Volume nodes <-> files and SimpleITK images, through MRML storage nodes (no slicer.util I/O)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

_FLIP = np.diag([-1.0, -1.0, 1.0])


def load_volume(scene, path: str | Path, name: str | None = None, labelmap: bool = False,
                class_name: str | None = None):
    """Read a .nrrd/.nii.gz into a new scalar (or labelmap) volume node with display nodes."""
    cls = class_name or ("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode")
    node = scene.AddNewNodeByClass(cls, name or Path(path).name.split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if labelmap:
        storage.SetCenterImage(False)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise OSError(f"could not read volume {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_to_sitk(node):
    """SimpleITK image (LPS) with the node's voxels and geometry."""
    import SimpleITK as sitk

    img = node.GetImageData()
    dims = img.GetDimensions()
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(dims[::-1])
    out = sitk.GetImageFromArray(arr.copy())
    m = ijk_to_ras(node)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    out.SetSpacing(spacing.tolist())
    out.SetDirection((_FLIP @ (m[:3, :3] / spacing)).ravel().tolist())
    out.SetOrigin((_FLIP @ m[:3, 3]).tolist())
    return out


def same_geometry(a, b, tol: float = 1e-4) -> bool:
    return (a.GetImageData().GetDimensions() == b.GetImageData().GetDimensions()
            and np.allclose(ijk_to_ras(a), ijk_to_ras(b), atol=tol))


def array_view(node) -> np.ndarray:
    """(k, j, i) numpy view of a volume node's voxels (like slicer.util.arrayFromVolume)."""
    img = node.GetImageData()
    if img is None or img.GetPointData().GetScalars() is None:
        raise ValueError(f"volume {node.GetName()} has no voxels")
    return numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(img.GetDimensions()[::-1])


def new_labelmap_like(scene, reference, name: str):
    """An empty labelmap node (no voxels yet) on the reference volume's geometry."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    m = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(m)
    node.SetIJKToRASMatrix(m)
    return node


__all__ = ["load_volume", "volume_to_sitk", "ijk_to_ras", "same_geometry", "array_view", "new_labelmap_like"]
