"""Shared test fixtures. Tests run on a fresh clone: fixture files live in Testing/Data and
Resources/; tests that also read ../shared/data skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "Testing" / "Data"
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def test_data() -> Path:
    return TEST_DATA


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return TEST_DATA / "reference"


@pytest.fixture(scope="session")
def sample_knee() -> Path:
    return REPO / "Resources" / "SampleData" / "knee_mese_t2_sag_echo1.nii.gz"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (optional real-data tests)")
    return SHARED_DATA


@pytest.fixture()
def one_thread():
    """Tiny models train far faster on one thread when the two cores are shared (no oversubscription)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_result_folder(tmp_path_factory):
    """A small valid result folder (format only: real label map a remapped to knee-11, not paired
    with the knee) and its reference volume: the sample knee shrunk 4x in-plane."""
    import SimpleITK as sitk

    from OrthoDiffusionLib.resources import sample_knee_path
    from OrthoDiffusionLib.results.folder import demo_result_folder

    d = tmp_path_factory.mktemp("result")
    sitk.WriteImage(sitk.BinShrink(sitk.ReadImage(str(sample_knee_path())), [4, 4, 1]), str(d / "ref.nrrd"))
    return demo_result_folder(d / "case"), d / "ref.nrrd"
