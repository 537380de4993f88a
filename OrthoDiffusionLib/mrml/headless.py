"""A minimal headless Slicer scene on slicer-core (tests, scripting outside the app)."""

from __future__ import annotations

import contextlib

import slicer


def headless_scene():
    """Return ``(scene, logics)`` with colour, volumes, segmentations, subject-hierarchy and tables logic.

    The segmentations logic must exist before any segmentation node: setting its scene registers
    the representation converter rules that new segmentation nodes copy.
    """
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    app.GetColorLogic().AddDefaultColorNodes()
    logics = {}
    for name, cls in [("Volumes", slicer.vtkSlicerVolumesLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
                      ("Tables", slicer.vtkSlicerTablesLogic)]:
        lg = cls()
        lg.SetMRMLScene(scene)
        lg.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name, lg)
        logics[name] = lg
    logics["Application"] = app
    return scene, logics


@contextlib.contextmanager
def util_globals(scene, logics):
    """Point the app globals that ``slicer.util``'s segment helpers read (``slicer.mrmlScene``,
    ``slicer.modules.<name>.logic()``) at a headless scene for the duration; restored afterwards."""
    import types

    saved = {k: getattr(slicer, k, None) for k in ("mrmlScene", "modules")}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: logics["Segmentations"]),
        volumes=types.SimpleNamespace(logic=lambda: logics["Volumes"]))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                delattr(slicer, k)
            else:
                setattr(slicer, k, v)
