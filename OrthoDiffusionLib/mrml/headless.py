"""A minimal headless Slicer scene on slicer-core (tests, scripting outside the app)."""

from __future__ import annotations

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

