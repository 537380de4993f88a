"""Backbone input preprocessing (released and spacing modes) and the way back to the source grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.io import Geometry, preprocess


@pytest.fixture(scope="module")
def knee(sample_knee):
    return sitk.ReadImage(str(sample_knee))


def _label_map(image: sitk.Image) -> sitk.Image:
    """Two large structures (ellipsoid + sphere, in mm around the volume centre) on the image grid."""
    geom = Geometry.of(image)
    size = geom.size
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    pts = (idx * geom.spacing) @ geom.matrix.T + np.asarray(geom.origin) - geom.centre()
    x, y, z = pts.T
    labels = np.zeros(len(pts), np.uint8)
    labels[(x / 30) ** 2 + (y / 45) ** 2 + (z / 35) ** 2 < 1] = 1
    labels[(x - 5) ** 2 + (y - 30) ** 2 + (z + 30) ** 2 < 18**2] = 2
    out = sitk.GetImageFromArray(labels.reshape(size).transpose(2, 1, 0).copy())
    out.CopyInformation(image)
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("mode", ["released", "spacing"])
def test_shape_range_and_type(knee, mode):
    arr, transform = preprocess(knee, mode=mode)
    assert arr.shape == (16, 256, 256) and arr.dtype == np.float32
    assert arr.min() == pytest.approx(-1.0) and arr.max() == pytest.approx(1.0)
    assert transform.plane == "sagittal" and transform.shape == (16, 256, 256)
    grid = transform.network_grid_image()
    assert grid.GetSize() == (256, 256, 16)
    if mode == "spacing":
        assert grid.GetSpacing() == pytest.approx((0.6, 0.6, 3.5))
        np.testing.assert_allclose(Geometry.of(grid).centre(), Geometry.of(knee).centre(), atol=1e-6)


def test_released_takes_central_slices_as_is(knee):
    arr, transform = preprocess(knee, mode="released")
    src = sitk.GetArrayFromImage(knee).astype(np.float32)  # the sample is stored canonically (PIR)
    expected = 2 * (src[4:20] - src[4:20].min()) / np.ptp(src[4:20]) - 1
    np.testing.assert_allclose(arr, expected, atol=1e-4)
    assert transform.slice_start == 4 and transform.padded == (0, 0)


def test_layout_is_canonical_whatever_the_storage_order(knee):
    reference, _ = preprocess(knee, mode="released", size=(128, 128))
    for stored in (sitk.Flip(knee, [True, False, True]), sitk.PermuteAxes(knee, [1, 0, 2])):
        arr, _ = preprocess(stored, mode="released", size=(128, 128))
        np.testing.assert_allclose(arr, reference, atol=1e-4)


def test_short_series_is_edge_padded(knee):
    arr, transform = preprocess(knee[:, :, 7:17], mode="released", size=(64, 64))
    assert arr.shape == (16, 64, 64) and transform.padded == (3, 3) and transform.slice_start == -3
    np.testing.assert_array_equal(arr[0], arr[3])
    np.testing.assert_array_equal(arr[15], arr[12])
    assert not np.array_equal(arr[3], arr[4])


@pytest.mark.parametrize("mode,size", [("released", (192, 160)), ("spacing", (256, 256))])
def test_label_round_trip(knee, mode, size):
    labels = _label_map(knee)
    _, transform = preprocess(knee, mode=mode, size=size)
    on_network = transform.to_network(labels, is_label=True)
    assert on_network.shape == (16, *size)
    back = transform.to_source(on_network, is_label=True)
    assert back.GetSize() == knee.GetSize() and back.GetPixelID() == labels.GetPixelID()
    np.testing.assert_allclose(back.GetDirection(), knee.GetDirection())
    covered = sitk.GetArrayFromImage(transform.to_source(np.ones(transform.shape, np.uint8), is_label=True)) > 0
    original, returned = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(back)
    for value in (1, 2):
        assert _dice(original[covered] == value, returned[covered] == value) > 0.95
    assert not returned[~covered].any()  # outside the network slices: background
    if mode == "released":
        assert covered[4:20].all() and not covered[:4].any() and not covered[20:].any()


def test_probabilities_go_back_linearly(knee):
    _, transform = preprocess(knee, mode="released", size=(128, 128))
    probs = np.stack([np.full(transform.shape, 0.25, np.float32), np.full(transform.shape, 0.75, np.float32)])
    back = transform.to_source(probs, is_label=False)
    assert back.GetNumberOfComponentsPerPixel() == 2 and back.GetSize() == knee.GetSize()
    arr = sitk.GetArrayFromImage(back)  # [z, y, x, C]
    np.testing.assert_allclose(arr[10, 100, 100], [0.25, 0.75], atol=1e-6)
    assert np.all(arr[0] == 0)  # slice 0 is outside the central 16
