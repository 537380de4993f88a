"""Pretraining data: sources (manifest column, folder, 4D echoes, reformatting), augmentation and the
resumable batch stream."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.training.data import Augment, BatchStream, load_plane_volumes


def _sag_image(seed=0, echoes=None):
    rng = np.random.default_rng(seed)
    arr = rng.normal(100, 10, size=(20, 20, 6)).astype(np.float32)  # (z, y, x); x = thick L-R axis
    arr[5:15, 5:15] += 200
    if echoes:
        img = sitk.JoinSeries([sitk.GetImageFromArray(arr * (1 - 0.1 * e)) for e in range(echoes)])
        img.SetSpacing((3.5, 0.6, 0.6, 1.0))
        return img
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((3.5, 0.6, 0.6))
    return img


def test_folder_manifest_echoes_and_reformat(tmp_path):
    (tmp_path / "vols").mkdir()
    sitk.WriteImage(_sag_image(0), str(tmp_path / "vols" / "a.nii.gz"))
    sitk.WriteImage(_sag_image(1, echoes=3), str(tmp_path / "vols" / "b_4d.nii.gz"))
    items = load_plane_volumes([tmp_path / "vols"], "sagittal", 8, (16, 16))
    assert len(items) == 1 + 3  # one 3D volume + three echoes
    assert all(it.array.shape == (8, 16, 16) and it.array.min() >= -1 and it.array.max() <= 1 for it in items)
    assert [it.echo for it in items] == [None, 1, 2, 3]
    assert len(load_plane_volumes([tmp_path / "vols"], "sagittal", 8, (16, 16), echoes="2")) == 2

    (tmp_path / "m.csv").write_text("study_id,sagittal,coronal\ns1,vols/a.nii.gz,vols/a.nii.gz\ns2,,\n")
    cor = load_plane_volumes([tmp_path / "m.csv"], "coronal", 8, (16, 16))
    assert len(cor) == 1 and cor[0].reformatted  # a sagittal volume reformatted to coronal
    with pytest.raises(InputError):
        load_plane_volumes([tmp_path / "m.csv"], "coronal", 8, (16, 16), reformat=False)
    with pytest.raises(InputError, match="no 'axial' column"):
        load_plane_volumes([tmp_path / "m.csv"], "axial", 8, (16, 16))
    with pytest.raises(InputError):
        load_plane_volumes([tmp_path / "missing"], "sagittal", 8, (16, 16))


def test_augment_is_deterministic_and_bounded():
    x = torch.linspace(-1, 1, 8 * 16 * 16).reshape(8, 16, 16)
    aug = Augment()
    a = aug(x, "sagittal", torch.Generator().manual_seed(1))
    b = aug(x, "sagittal", torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    Augment(enabled=False)(x, "axial", g1)
    aug(x, "axial", g2)
    assert torch.equal(g1.get_state(), g2.get_state())  # same number of draws whether on or off


def test_batch_stream_resumes_by_skipping():
    full = BatchStream(5, 2, seed=3)
    seq = [full.next() for _ in range(7)]
    part = BatchStream(5, 2, seed=3)
    part.skip(4)
    assert [part.next() for _ in range(3)] == seq[4:]
    r0, r1 = BatchStream(5, 2, seed=3, rank=0, world_size=2), BatchStream(5, 2, seed=3, rank=1, world_size=2)
    assert r0.next() != r1.next()


def test_loading_in_worker_processes_gives_the_same_volumes(tmp_path):
    (tmp_path / "vols").mkdir()
    for i in range(3):
        sitk.WriteImage(_sag_image(i), str(tmp_path / "vols" / f"v{i}.nii.gz"))
    sitk.WriteImage(_sag_image(9, echoes=2), str(tmp_path / "vols" / "w_4d.nii.gz"))
    serial = load_plane_volumes([tmp_path / "vols"], "coronal", 8, (16, 16))
    pooled = load_plane_volumes([tmp_path / "vols"], "coronal", 8, (16, 16), workers=2)
    assert [it.name for it in pooled] == [it.name for it in serial] and len(serial) == 5
    assert all(np.array_equal(a.array, b.array) for a, b in zip(serial, pooled))
    with pytest.raises(InputError, match="cannot read"):  # a worker's one-line error reaches the caller
        (tmp_path / "vols" / "x_broken.nii.gz").write_bytes(b"not an image")
        load_plane_volumes([tmp_path / "vols"], "coronal", 8, (16, 16), workers=2)
