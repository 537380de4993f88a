"""Small, fast fixtures for tests and smoke runs: a stand-in model folder (random backbones built
through the same save/load code path as the shipped ones) and a toy cohort with a manifest.
Not a model: nothing here has any diagnostic value."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from OrthoDiffusionLib import DISCLAIMER

PLANES = ("sagittal", "coronal", "axial")


def make_standin_model(folder, model_id: str = "standin", preset: str = "tiny", timestep: int = 100,
                       block: str = "mid_2", seed: int = 0) -> Path:
    """A model folder (model.json + one random backbone per plane), installable and verifiable."""
    import torch

    from OrthoDiffusionLib.backbone import DiffusionUNet, UNetConfig
    from OrthoDiffusionLib.backbone.checkpoints import save_backbone
    from OrthoDiffusionLib.storage import atomic_write_json
    from OrthoDiffusionLib.training.presets import PRESETS
    from OrthoDiffusionLib.models.catalogue import RELEASED_INFERENCE, file_record

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = PRESETS[preset]["model"]
    files = []
    for i, plane in enumerate(PLANES):
        torch.manual_seed(seed + i)
        save_backbone(DiffusionUNet(UNetConfig(**cfg)), folder / f"{plane}.safetensors",
                      provenance={"standin": True, "preset": preset})
        files += [file_record(folder, f"{plane}.safetensors"), file_record(folder, f"{plane}.json")]
    entry = {
        "id": model_id, "name": f"stand-in ({preset}, random weights)", "version": "0.0.1",
        "planes": {p: {"backbone": f"{p}.safetensors", "timestep": timestep, "block": block} for p in PLANES},
        "segmentation_planes": ["sagittal"], "heads": "heads", "preprocessing": "released",
        "input": {"depth": cfg["depth_size"], "height": cfg["image_size"], "width": cfg["image_size"]},
        "label_sets": {"findings": "knee-8", "structures": "knee-11"}, "files": files,
        **({"inference": dict(RELEASED_INFERENCE)} if preset == "released" else {}),
        "licence": "Apache-2.0", "measured": {}, "user_cache": "$ORTHODIFFUSION_HOME/models/" + model_id,
        "disclaimer": DISCLAIMER,
    }
    atomic_write_json(folder / "model.json", entry)
    return folder


def _knee_like(rng, size=48, spacing=1.0):
    """Isotropic toy volume with three 'bones' (values 1-3 in the label map) and an effusion blob."""
    import SimpleITK as sitk

    z, y, x = np.mgrid[:size, :size, :size].astype(np.float32)
    c = size / 2
    labels = np.zeros((size, size, size), np.uint8)
    centers = [(c + 8, c, c), (c - 8, c, c), (c, c - 9, c)]
    for v, (cz, cy, cx) in enumerate(centers, start=1):
        r = 6 + rng.uniform(-1, 1)
        labels[((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) < r * r] = v
    img = 200 + 400 * (labels > 0) + rng.normal(0, 20, labels.shape)
    image = sitk.GetImageFromArray(img.astype(np.float32))
    lab = sitk.GetImageFromArray(labels)
    for im in (image, lab):
        im.SetSpacing((spacing,) * 3)
    return image, lab


def make_toy_cohort(folder, n: int = 12, seed: int = 0, missing_axial_every: int = 0) -> Path:
    """Toy cohort: three reformatted planes per case, sagittal label maps, knee-8 findings (ACL and
    EFFU correlate with intensity), EHR, splits train/val. Returns the manifest path."""
    import SimpleITK as sitk

    from OrthoDiffusionLib.io import reformat_to_planes

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    keys = ["ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU"]
    lines = ["study_id,patient_id,sagittal,coronal,axial,labels_sagittal," + ",".join(keys)
             + ",age,sex,height_cm,weight_kg,annotated_classes,split"]
    for i in range(n):
        d = folder / "cases" / f"T{i:03d}"
        d.mkdir(parents=True, exist_ok=True)
        image, lab = _knee_like(rng)
        y = (rng.random(len(keys)) < 0.4).astype(int)
        y[0], y[7] = i % 2, (i // 2) % 2
        image = image * (1.0 + 0.5 * y[0]) + 150.0 * y[7]
        views = reformat_to_planes(image, slice_mm=3.0)
        paths = {}
        for p in PLANES:
            if p == "axial" and missing_axial_every and i % missing_axial_every == 0:
                paths[p] = ""
                continue
            sitk.WriteImage(views[p], str(d / f"{p}.nii.gz"))
            paths[p] = f"cases/T{i:03d}/{p}.nii.gz"
        lab_sag = sitk.Resample(lab, views["sagittal"], sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        sitk.WriteImage(lab_sag, str(d / "labels_sagittal.nii.gz"))
        annotated = "femur;tibia;patella" if i % 3 else "femur;tibia"
        lines.append(",".join([f"T{i:03d}", f"P{i:03d}", paths["sagittal"], paths["coronal"], paths["axial"],
                               f"cases/T{i:03d}/labels_sagittal.nii.gz", *map(str, y),
                               f"{30 + i}", "F" if i % 2 else "M", "170", "70", annotated,
                               "val" if i % 4 == 3 else "train"]))
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
