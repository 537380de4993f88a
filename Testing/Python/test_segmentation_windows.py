"""Whole-series segmentation (#14 item 1): sliding windows over every slice, blended on the series
grid; the published central window stays the default of the shipped model and of diagnosis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.backbone import UNetConfig
from OrthoDiffusionLib.features.plane import prepare_windows, window_starts
from OrthoDiffusionLib.inference.windows import blend_windows, slice_weights
from OrthoDiffusionLib.io.preprocess import central_start
from OrthoDiffusionLib.training.presets import PRESETS


@pytest.mark.parametrize("n,depth,overlap", [(40, 16, 0.5), (24, 16, 0.5), (17, 16, 0.25), (100, 16, 0.0),
                                             (16, 16, 0.5), (9, 16, 0.5)])
def test_window_starts_cover_every_slice_and_include_the_central_window(n, depth, overlap):
    starts = window_starts(n, depth, overlap)
    assert central_start(n, depth) in starts
    if n <= depth:
        assert starts == [central_start(n, depth)]
        return
    covered = np.zeros(n, bool)
    for s in starts:
        assert 0 <= s <= n - depth
        covered[s:s + depth] = True
    assert covered.all() and starts == sorted(set(starts))
    regular = [s for s in starts if s != central_start(n, depth)]
    assert max(np.diff(regular), default=0) <= max(1, int(depth * (1 - overlap)))
    with pytest.raises(ValueError):
        window_starts(n, depth, 1.0)


def test_slice_weights_are_triangular_and_positive():
    w = slice_weights(16)
    assert w.shape == (16,) and w.min() > 0 and w.max() == 1.0
    assert np.allclose(w, w[::-1]) and w[0] == pytest.approx(1 / 8)


def _series(n_slices: int) -> sitk.Image:
    """An axial-layout test volume (LPS identity direction) of n_slices 3 mm slices, 64x64 pixels."""
    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.normal(100, 10, (n_slices, 64, 64)).astype(np.float32))
    img.SetSpacing((0.5, 0.5, 3.0))
    return img


def test_blend_reproduces_a_map_every_window_agrees_on_over_all_slices():
    """Windows that predict the same value for a source slice blend to that value, on every slice:
    the class-1 probability is the slice index / n in each window, wherever the window lies."""
    n = 40
    image = _series(n)
    config = UNetConfig(**{**PRESETS["tiny"]["model"], "depth_size": 16, "image_size": 32})
    windows = prepare_windows(image, "axial", config, "released", overlap=0.5)
    starts = [w.transform.slice_start for w in windows]
    assert starts == window_starts(n, 16, 0.5) and len({w.content_hash for w in windows}) == len(windows)
    probs = []
    for w in windows:
        d = np.arange(16, dtype=np.float32) + w.transform.slice_start
        p1 = np.broadcast_to((d / n)[:, None, None], (16, 32, 32))
        probs.append(np.stack([1 - p1, p1]).astype(np.float32))
    prob_img, cover_img = blend_windows(windows, probs)
    blended = sitk.GetArrayFromImage(prob_img)[..., 1]          # [z, y, x]
    assert sitk.GetArrayFromImage(cover_img).all()               # every voxel of all 40 slices covered
    expected = np.broadcast_to((np.arange(n) / n)[:, None, None], blended.shape)
    assert np.abs(blended - expected).max() < 1e-5
    assert prob_img.GetSize() == image.GetSize() and prob_img.GetSpacing() == image.GetSpacing()


def _forty_slice_knee(sample_knee, tmp_path):
    """The real sample knee (sagittal, 24 slices of 4 mm) resampled to 40 slices of 2.4 mm."""
    img = sitk.ReadImage(str(sample_knee))
    size, spacing = list(img.GetSize()), list(img.GetSpacing())
    axis = int(np.argmax(spacing))
    extent = size[axis] * spacing[axis]
    size[axis], spacing[axis] = 40, extent / 40
    origin = np.asarray(img.GetOrigin()) + np.asarray(img.GetDirection()).reshape(3, 3)[:, axis] * (
        (spacing[axis] - img.GetSpacing()[axis]) / 2)
    out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, tuple(origin), spacing, img.GetDirection(),
                        0.0, img.GetPixelID())
    path = tmp_path / "knee40.nii.gz"
    sitk.WriteImage(out, str(path))
    return path, axis


def test_forty_slice_series_gets_labels_on_every_slice(sample_knee, tmp_path, monkeypatch):
    from OrthoDiffusionLib.cli.main import main

    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(tmp_path / "home"))
    path, axis = _forty_slice_knee(sample_knee, tmp_path)
    per_slice = {}
    for mode in ("central", "sliding"):
        out = tmp_path / mode
        assert main(["predict", str(path), "--out", str(out), "--device", "cpu", "--draws", "1", "--windows", mode,
                     "--cache", str(tmp_path / "cache"), "--no-reformat"]) == 0
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nrrd")))   # [z, y, x]
        entropy = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "uncertainty.nrrd")))  # 1 where not segmented
        other = tuple(i for i in range(3) if i != 2 - axis)
        per_slice[mode] = (labels > 0).sum(axis=other)
        per_slice[mode + "_covered"] = (entropy < 1).mean(axis=other)
        result = json.loads((out / "result.json").read_text())
        per_slice[mode + "_windows"] = result["provenance"]["segmentation_windows"]["sagittal"]
    assert per_slice["central_windows"] == [central_start(40, 16)]
    assert per_slice["sliding_windows"] == window_starts(40, 16, 0.5)
    central = per_slice["central"]
    outside = np.r_[0:central_start(40, 16), central_start(40, 16) + 16:40]
    assert (central[outside] == 0).all() and (per_slice["central_covered"][outside] == 0).all()  # left out
    assert (per_slice["sliding_covered"] > 0.999).all(), per_slice["sliding_covered"]  # every slice segmented
    # labels on the slices the central window left out (the first two are beyond the bone here)
    assert (per_slice["sliding"][outside] > 0).mean() >= 0.8
    assert (per_slice["sliding"] > 0).sum() > (central > 0).sum() + 15


def test_memory_estimate_accounts_for_the_windows(sample_knee):
    from OrthoDiffusionLib.inference.guard import estimate_predict_memory
    from OrthoDiffusionLib.io.guards import read_headers
    from OrthoDiffusionLib.models.catalogue import get_model

    headers = read_headers(str(sample_knee))
    spec = get_model("knee-demo")
    central = estimate_predict_memory(headers, spec, 3, windows="central")
    sliding = estimate_predict_memory(headers, spec, 3, windows="sliding")
    assert sliding.parts["segmentation"] > central.parts["segmentation"]
    assert sliding.total - central.total == sliding.parts["segmentation"] - central.parts["segmentation"]
