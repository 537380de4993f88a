"""Which acquisition plane a volume (or a slice view) shows, from its orientation matrix."""

from __future__ import annotations

import numpy as np
import vtk

_AXIS_TO_PLANE = {0: "sagittal", 1: "coronal", 2: "axial"}  # normal along R, A, S


def _matrix(m) -> np.ndarray:
    if hasattr(m, "GetElement"):
        return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    return np.asarray(m, dtype=float)


def plane_from_direction(normal) -> str:
    """Plane whose normal is closest to ``normal`` (an RAS vector): R->sagittal, A->coronal, S->axial."""
    n = np.abs(np.asarray(normal, dtype=float)[:3])
    return _AXIS_TO_PLANE[int(np.argmax(n))]


def volume_plane(volume_node) -> str:
    """'sagittal' / 'coronal' / 'axial' for a 2D multi-slice series, '3d' for a near-isotropic 3D
    volume: the library's plane rule (``io.planes.plane_of_geometry``) on the node's geometry, so the
    module proposes the planes the CLI would detect."""
    from ..io.planes import plane_of_geometry

    mat = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(mat)
    m = _matrix(mat)[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    lps = np.diag([-1.0, -1.0, 1.0]) @ (m / spacing)  # RAS -> LPS, unit columns
    image = volume_node.GetImageData()
    size = image.GetDimensions() if image is not None else (1, 1, 1)
    plane, _, is_3d = plane_of_geometry(lps.ravel(), spacing, size)
    return "3d" if is_3d else plane


def assign_planes(volume_nodes) -> dict:
    """Map plane -> volume node for the given volumes (first come first served; '3d' too)."""
    out = {}
    for node in volume_nodes:
        if node is None or node.GetImageData() is None:
            continue
        out.setdefault(volume_plane(node), node)
    return out


def slice_view_plane(slice_node) -> str:
    """Plane shown by a vtkMRMLSliceNode (Red/Yellow/Green or reformatted), from its slice normal."""
    return plane_from_direction(_matrix(slice_node.GetSliceToRAS())[:3, 2])
