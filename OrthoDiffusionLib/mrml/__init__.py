"""MRML layer: OrthoDiffusion results <-> Slicer nodes.

Imports only the ``slicer`` MRML/VTK classes (never Qt, ctk or ScriptedLoadableModule), so it runs
in the Slicer app and headless on the ``slicer-core`` wheel. The scene and module logics are always
passed in (``slicer.mrmlScene`` / ``slicer.modules.segmentations.logic()`` in Slicer).
Research use, not for clinical decisions.
"""

from .planes import assign_planes, plane_from_direction, slice_view_plane, volume_plane  # noqa: F401
