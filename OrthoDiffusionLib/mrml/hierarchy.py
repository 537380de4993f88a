"""Subject-hierarchy placement: results go into a folder next to the input volume."""

from __future__ import annotations

import slicer


def case_folder(scene, reference_volume, case_id: str) -> int:
    """Item ID of the folder 'OrthoDiffusion <case>' beside the reference volume (created once)."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    ref_item = sh.GetItemByDataNode(reference_volume)
    if not ref_item:  # headless scenes do not add nodes to the hierarchy automatically
        ref_item = sh.CreateItem(sh.GetSceneItemID(), reference_volume)
    parent = sh.GetItemParent(ref_item)
    name = f"OrthoDiffusion {case_id}"
    children = vtk_id_list()
    sh.GetItemChildren(parent, children)
    for i in range(children.GetNumberOfIds()):
        item = children.GetId(i)
        if sh.GetItemName(item) == name and sh.GetItemLevel(item) == "Folder":
            return item
    return sh.CreateFolderItem(parent, name)


def place_in_case_folder(scene, nodes, reference_volume, case_id: str) -> int:
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = case_folder(scene, reference_volume, case_id)
    for node in nodes:
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, folder)
        else:
            sh.CreateItem(folder, node)
    return folder


def vtk_id_list():
    import vtk

    return vtk.vtkIdList()
