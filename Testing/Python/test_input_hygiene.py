"""Input hygiene (issue #17, part 3): what a header makes the tool read, the tool's own outputs as
inputs, saturated voxels, complex and non-finite voxels, non-UTF-8 names, the reformat memory
estimate and DICOM discovery time. Every file is written here; research use only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.errors import InputError, ResourceError, UserError
from OrthoDiffusionLib.io import load_study, preprocess
from OrthoDiffusionLib.io.headers import data_files, source_sha256

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "Resources" / "SampleData" / "knee_mese_t2_sag_echo1.nii.gz"
sys.path.insert(0, str(REPO / "scripts"))
from make_bad_inputs import write_dicom  # noqa: E402  (the corpus's DICOM writer)


def knee(shape=(8, 24, 24), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    blob = ((y - shape[1] // 2) ** 2 + (x - shape[2] // 2) ** 2 < (shape[1] // 3) ** 2)
    return (200 + 500 * blob + rng.normal(0, 20, shape)).astype(np.int16)


def image(arr: np.ndarray, spacing=(0.5, 0.5, 3.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    return img


def nhdr(folder: Path, name: str, data_line: str, sizes="24 24 8", type_="short", extra="") -> Path:
    """A detached NRRD header whose data-file line is ``data_line`` (written verbatim)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"NRRD0004\ntype: {type_}\ndimension: 3\nsizes: {sizes}\nspacings: 0.5 0.5 3\n"
                    f"encoding: raw\nendian: little\n{data_line}\n{extra}")
    return path


def mhd(folder: Path, name: str, data_value: str, tail: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 24 24 8\nElementSpacing = 0.5 0.5 3\n"
                    f"ElementType = MET_SHORT\nElementDataFile = {data_value}\n{tail}")
    return path


def refused(path, fragment: str) -> str:
    with pytest.raises(InputError) as info:
        load_study(str(path))
    message = str(info.value)
    assert fragment in message and "\n" not in message, message
    return message


# ---------------------------------------------------------------------------- detached headers
@pytest.mark.parametrize("fmt", ["nrrd", "mhd"])
def test_header_pointing_at_etc_passwd_is_refused(tmp_path, fmt):
    """Before: /etc/passwd read as voxels, 'findings' and exit 0."""
    path = (nhdr(tmp_path, "p.nhdr", "data file: /etc/passwd", sizes="16 16 4", type_="uchar") if fmt == "nrrd"
            else mhd(tmp_path, "p.mhd", "/etc/passwd"))
    refused(path, "absolute path ('/etc/passwd')")
    from OrthoDiffusionLib.io.guards import read_headers  # the header guard refuses too (before ITK)

    with pytest.raises(InputError, match="absolute path"):
        read_headers(path)


def test_header_pointing_at_dev_stdin_is_refused_without_hanging(tmp_path):
    """Before: ITK blocked reading the terminal. A real process, stdin an open pipe nobody writes to."""
    header = nhdr(tmp_path, "stdin.nhdr", "data file: /dev/stdin", sizes="16 16 4", type_="uchar")
    os.symlink("/dev/stdin", tmp_path / "in.raw")  # the same through a link in the folder
    linked = nhdr(tmp_path, "linked.nhdr", "data file: in.raw", sizes="16 16 4", type_="uchar")
    for path, fragment in ((header, "absolute path"), (linked, "outside the header's folder")):
        proc = subprocess.Popen([sys.executable, "-m", "OrthoDiffusionLib", "info", str(path)], cwd=str(REPO),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
        try:
            _out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], err


def test_fifo_and_folder_as_data_file_are_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe.raw")
    refused(nhdr(tmp_path, "fifo.nhdr", "data file: pipe.raw"), "is not a regular file")
    (tmp_path / "dir.raw").mkdir()
    refused(mhd(tmp_path, "dir.mhd", "dir.raw"), "is not a regular file")


@pytest.mark.parametrize("line, fragment", [
    ("data file: ../outside.raw", "outside its own folder"),
    ("datafile: sub/knee.raw", "outside its own folder"),
    ("DATA FILE: C:\\scans\\knee.raw", "absolute path"),
    ("data file: LIST\nknee.raw\n/etc/passwd", "absolute path ('/etc/passwd')"),
    ("data file: LIST 2\n../a.raw", "outside its own folder"),
    ("data file: /etc/s%03d.raw 0 7 1 2", "absolute path"),
    ("data file: s%03d.raw 0 1000000000 1 2", "above 10,000 files"),
    ("data file: s%03d.raw 0 7 0 2", "endless"),
    ("data file: s%s.raw 0 7 1 2", "one integer field"),
    ("data file: missing.raw", "its data file missing.raw is missing"),
])
def test_nrrd_data_file_forms_outside_the_folder_are_refused(tmp_path, line, fragment):
    (tmp_path / "outside.raw").write_bytes(knee().astype("<i2").tobytes())  # present, but not next to it
    (tmp_path / "case").mkdir()
    (tmp_path / "case" / "knee.raw").write_bytes(knee().astype("<i2").tobytes())
    refused(nhdr(tmp_path / "case", "k.nhdr", line), fragment)


@pytest.mark.parametrize("value, tail, fragment", [
    ("../knee.raw", "", "outside its own folder"),
    ("LIST 2D", "s0.raw\n/dev/zero\n", "absolute path ('/dev/zero')"),
    ("/tmp/s%d.raw 1 8 1", "", "absolute path"),
    ("s%d.raw 1 8 0", "", "endless"),
])
def test_metaimage_data_file_forms_outside_the_folder_are_refused(tmp_path, value, tail, fragment):
    refused(mhd(tmp_path, "k.mhd", value, tail), fragment)


def test_list_and_pattern_headers_in_the_folder_are_read_and_hashed_with_their_data(tmp_path):
    """The forms a scanner export uses still work, and the provenance hash covers every data file."""
    arr = knee()
    for k, sl in enumerate(arr):
        (tmp_path / f"s{k:03d}.raw").write_bytes(sl.astype("<i2").tobytes())
    names = "\n".join(f"s{k:03d}.raw" for k in range(8))
    listed = nhdr(tmp_path, "list.nhdr", "data file: LIST 2", extra=names + "\n")
    pattern = nhdr(tmp_path, "pattern.nhdr", "data file: s%03d.raw 0 7 1 2")
    meta_pattern = mhd(tmp_path, "pattern.mhd", "s%03d.raw 0 7 1")
    for header in (listed, pattern, meta_pattern):
        study = load_study(str(header))
        got = sitk.GetArrayFromImage(study.axial.image if study.axial else next(iter(study.planes.values())).image)
        assert np.array_equal(got, arr), header.name
        assert [p.name for p in data_files(header)] == [f"s{k:03d}.raw" for k in range(8)]
    before = {h: source_sha256(h) for h in (listed, pattern, meta_pattern)}
    raw = bytearray((tmp_path / "s005.raw").read_bytes())
    raw[10] ^= 0xFF  # one voxel of one data file: the header is unchanged
    (tmp_path / "s005.raw").write_bytes(bytes(raw))
    assert all(source_sha256(h) != before[h] for h in before)


def test_provenance_hash_covers_the_data_file_of_a_detached_header(tmp_path):
    sitk.WriteImage(image(knee()), str(tmp_path / "k.nhdr"))  # SimpleITK writes k.nhdr + k.raw
    assert [p.name for p in data_files(tmp_path / "k.nhdr")] == ["k.raw"]
    first = source_sha256(tmp_path / "k.nhdr")
    (tmp_path / "k.raw").write_bytes((tmp_path / "k.raw").read_bytes()[::-1])
    assert source_sha256(tmp_path / "k.nhdr") != first
    import hashlib  # a single-file image keeps the digest sha256sum prints

    assert source_sha256(SAMPLE) == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()


def test_symlink_inside_the_folder_is_followed_one_leaving_it_is_not(tmp_path):
    sitk.WriteImage(image(knee()), str(tmp_path / "k.nhdr"))
    os.rename(tmp_path / "k.raw", tmp_path / "real.raw")
    os.symlink("real.raw", tmp_path / "k.raw")
    assert load_study(str(tmp_path / "k.nhdr")).planes
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.rename(tmp_path / "real.raw", other / "real.raw")
    os.unlink(tmp_path / "k.raw")
    os.symlink(other / "real.raw", tmp_path / "k.raw")
    refused(tmp_path / "k.nhdr", "is a link to")


# ------------------------------------------------------------------------- own outputs as input
def test_own_outputs_are_refused_as_input_images(tmp_path, small_result_folder):
    result, _ref = small_result_folder
    folder = Path(result)
    for name in ("labels.nrrd", "uncertainty.nrrd", "segmentation.seg.nrrd"):
        message = refused(folder / name, "not a scan")
        assert "give the MR series" in message
    renamed = tmp_path / "knee_t2.nrrd"  # moved out and renamed: its header still says who wrote it
    renamed.write_bytes((folder / "uncertainty.nrrd").read_bytes())
    refused(renamed, "header carries the tool's disclaimer")


def test_study_folder_with_an_old_result_folder_uses_the_scan(tmp_path, small_result_folder):
    """Before: the old labels.nrrd (bigger than the scan) took the sagittal slot."""
    import shutil

    result, ref = small_result_folder
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(ref)), str(study_dir / "scan.nrrd"))
    shutil.copytree(result, study_dir / "old_result")
    study = load_study(str(study_dir))
    assert [s.info.source for s in study.planes.values()] == [str(study_dir / "scan.nrrd")]
    assert any("written by orthodiffusion" in w for w in study.warnings)


# --------------------------------------------------------------------------- voxel values
def test_saturated_voxels_are_clipped_with_a_warning_and_clean_volumes_are_untouched():
    """Before: 32 voxels at the int16 maximum (0.002 % of the sample) squashed the contrast."""
    from OrthoDiffusionLib.io.intensity import clip_outliers

    clean = sitk.ReadImage(str(SAMPLE))
    same, count = clip_outliers(clean)
    assert same is clean and count == 0  # clean volume: the same object, so bit-identical scaling
    x_clean, t_clean = preprocess(clean, "released", "sagittal", size=(64, 64))
    arr = sitk.GetArrayFromImage(clean)
    assert t_clean.clipped == 0 and t_clean.warning is None
    spiked = arr.copy()
    spiked.ravel()[np.random.default_rng(0).choice(arr.size, 32, replace=False)] = 32767
    img = sitk.GetImageFromArray(spiked)
    img.CopyInformation(clean)
    x_spiked, t_spiked = preprocess(img, "released", "sagittal", size=(64, 64))
    assert t_spiked.clipped == 32 and "32 voxel(s)" in t_spiked.warning
    # without the guard the tissue contrast of the 64x64 input fell by about a third
    assert float(np.median(np.abs(x_spiked - x_clean))) < 0.01
    # the reformatted views are made from the clamped source too
    views = __import__("OrthoDiffusionLib.io.planes", fromlist=["x"]).reformat_to_planes(img)
    assert float(sitk.GetArrayViewFromImage(views["coronal"]).max()) <= float(arr.max()) + 1e-3


def test_saturated_voxels_do_not_move_the_findings():
    """End to end with the shipped knee-demo heads: clean vs 32 saturated voxels."""
    from OrthoDiffusionLib.jobs import PredictJob
    from OrthoDiffusionLib.inference.predict import predict_study
    from OrthoDiffusionLib.models.loading import load_model

    clean = sitk.ReadImage(str(SAMPLE))
    arr = sitk.GetArrayFromImage(clean)
    arr.ravel()[np.random.default_rng(0).choice(arr.size, 32, replace=False)] = 32767
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(clean)
    loaded = load_model("knee-demo", "cpu")
    probs = {}
    for name, volume in (("clean", clean), ("spiked", img)):
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"od-hygiene-{os.getpid()}-{name}.nii.gz"
        sitk.WriteImage(volume, str(path))
        try:
            pred = predict_study(PredictJob(inputs=[str(path)], out=str(path) + ".out", device="cpu", no_cache=True),
                                 loaded=loaded, log=lambda m: None, write=False)
        finally:
            path.unlink()
        probs[name] = np.array([f.probability for f in pred.result.findings])
        if name == "spiked":
            assert any("were clipped" in w for w in pred.warnings)
    # before the guard the largest shift was 0.175 on this case (0.3-0.4 at 256x256)
    assert np.abs(probs["spiked"] - probs["clean"]).max() < 0.05


@pytest.mark.parametrize("fmt", ["nrrd", "mha", "nii.gz"])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_voxels_are_refused(tmp_path, fmt, value):
    arr = knee().astype(np.float32)
    arr[3, 4, 5] = value
    path = tmp_path / f"v.{fmt}"
    sitk.WriteImage(image(arr), str(path))
    refused(path, "NaN or infinite voxels")


def test_values_near_the_float32_limit_are_refused(tmp_path):
    """max - min would overflow to inf in the scaling: a NaN network input."""
    arr = knee().astype(np.float32) * np.float32(1e35)
    sitk.WriteImage(image(arr), str(tmp_path / "big.nrrd"))
    refused(tmp_path / "big.nrrd", "float32 range")


def test_complex_volume_is_refused_in_one_line(tmp_path):
    """Before: a traceback from DICOMOrient."""
    arr = knee().astype(np.float32)
    img = sitk.GetImageFromArray(arr.astype(np.complex64) + 1j * arr)
    img.SetSpacing((0.5, 0.5, 3.0))
    assert img.GetPixelID() == sitk.sitkComplexFloat32
    sitk.WriteImage(img, str(tmp_path / "complex.nrrd"))
    refused(tmp_path / "complex.nrrd", "complex-valued voxels")


# ------------------------------------------------------------------------------- names
LATIN1 = b"Z\xfcrich"  # 'Zürich' in Latin-1: not UTF-8


def _cli(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "OrthoDiffusionLib", *args], capture_output=True, timeout=300,
                          cwd=str(cwd), env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("where", ["file", "folder", "dicom"])
def test_non_utf8_names_give_one_line_not_an_abort(tmp_path, where):
    """Before: SimpleITK aborted the process (exit 134, no message)."""
    base = os.fsencode(tmp_path)
    if where == "file":
        sitk.WriteImage(image(knee()), str(tmp_path / "k.nrrd"))
        target = base + b"/" + LATIN1 + b".nrrd"
        os.rename(os.fsencode(tmp_path / "k.nrrd"), target)
    elif where == "folder":
        os.mkdir(base + b"/" + LATIN1)
        sitk.WriteImage(image(knee()), str(tmp_path / "k.nrrd"))
        os.rename(os.fsencode(tmp_path / "k.nrrd"), base + b"/" + LATIN1 + b"/k.nrrd")
        target = base + b"/" + LATIN1
    else:
        write_dicom(tmp_path / "dcm", 1, knee())
        first = sorted(os.listdir(tmp_path / "dcm"))[0]
        os.rename(os.fsencode(tmp_path / "dcm" / first), os.fsencode(tmp_path / "dcm") + b"/" + LATIN1 + b".dcm")
        target = os.fsencode(tmp_path / "dcm")
    for command in (["info", os.fsdecode(target)],
                    ["predict", os.fsdecode(target), "--out", str(tmp_path / "out"), "--device", "cpu"]):
        proc = _cli(*command)
        err = proc.stderr.decode("utf-8", "replace")
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert proc.returncode == 2, (proc.returncode, err)
        assert len(lines) == 1 and "not UTF-8" in lines[0] and "\\xfc" in lines[0], err
        assert not (tmp_path / "out").exists()


def test_non_utf8_out_folder_is_refused_before_the_computation(tmp_path):
    """SimpleITK would abort when writing labels.nrrd there, after the whole computation."""
    out = os.fsdecode(os.fsencode(tmp_path) + b"/" + LATIN1)
    proc = _cli("predict", str(SAMPLE), "--out", out, "--device", "cpu")
    err = proc.stderr.decode("utf-8", "replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "--out" in lines[0] and "not UTF-8" in lines[0], err
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------- reformat memory estimate
def test_memory_estimate_covers_the_reformatted_views(tmp_path):
    """A volume fine along one axis and coarse along two: each view is 40x the volume. Before: the
    estimate ignored them (it counted the 0.9 MB source; the two views are 147 MB as float32)."""
    from OrthoDiffusionLib.io.guards import read_headers, reformat_view_voxels
    from OrthoDiffusionLib.io.planes import detect_plane, reformat_to_planes
    from OrthoDiffusionLib.inference.guard import guard_predict

    arr = np.tile(knee((24, 24, 1)), (1, 1, 800))  # x: 800 voxels of 0.1 mm; y, z: 24 of 4 mm
    img = image(arr, spacing=(0.1, 4.0, 4.0))
    path = tmp_path / "aniso.nrrd"
    sitk.WriteImage(img, str(path))
    views = reformat_view_voxels(read_headers(path), reformat=True)
    real = reformat_to_planes(img)
    native = detect_plane(img)[0]
    made = sorted(int(np.prod(v.GetSize())) for p, v in real.items() if p != native)
    assert sorted(views) == made and min(made) >= 40 * arr.size
    with_views = guard_predict([path], "knee-demo", draws=1, reformat=True, log=lambda m: None, max_voxels=None)
    without = guard_predict([path], "knee-demo", draws=1, reformat=False, log=lambda m: None, max_voxels=None)
    assert with_views.total - without.total > 4 * sum(made)  # at least one float32 copy of every view
    with pytest.raises(ResourceError, match="reformatting the 3D series"):
        guard_predict([path], "knee-demo", draws=1, reformat=True, log=lambda m: None, max_voxels=10_000_000)


# --------------------------------------------------------------------------- DICOM discovery
def test_dicom_discovery_is_linear_in_the_file_count(tmp_path):
    """1,200 one-file series took 62 s to discover (GDCM rescanned the folder for each series)."""
    from OrthoDiffusionLib.io.dicom import find_dicom_series

    arr = knee((1200, 16, 16))
    for s in range(1200):
        write_dicom(tmp_path / "many", s + 1, arr[s:s + 1], name_prefix=f"x{s}_")
    write_dicom(tmp_path / "half", 1, arr[:8])
    for s in range(1, 600):
        write_dicom(tmp_path / "half", s + 1, arr[s:s + 1], name_prefix=f"x{s}_")
    t0 = time.perf_counter()
    half = find_dicom_series(tmp_path / "half")
    t_half = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = find_dicom_series(tmp_path / "many")
    t_full = time.perf_counter() - t0
    assert len(found) == 1200 and len(half) == 600 and len(half[0][2]) == 8
    assert t_full < 20 and t_full < 4 * t_half + 1.0, (t_half, t_full)  # twice the files: ~twice the time


def test_dicom_series_order_matches_gdcm(tmp_path):
    """The one-pass discovery orders slices as GDCM did (the volumes are unchanged)."""
    from OrthoDiffusionLib.io.dicom import find_dicom_series

    arr = knee((6, 16, 16))
    write_dicom(tmp_path / "asc", 1, arr)
    write_dicom(tmp_path / "desc", 2, arr, positions=[15, 12, 9, 6, 3, 0])
    write_dicom(tmp_path / "echo", 3, arr, echo=1)
    write_dicom(tmp_path / "echo", 3, arr, echo=2)
    write_dicom(tmp_path / "dup", 4, arr, positions=[0, 3, 6, 6, 9, 12])
    reader = sitk.ImageSeriesReader
    for name in ("asc", "desc", "echo", "dup"):
        folder = str(tmp_path / name)
        gdcm = [(uid, list(reader.GetGDCMSeriesFileNames(folder, uid))) for uid in reader.GetGDCMSeriesIDs(folder)]
        assert [(uid, files) for _f, uid, files in find_dicom_series(Path(folder))] == gdcm, name


def test_device_path_as_input_is_refused(tmp_path):
    os.mkfifo(tmp_path / "scan.nii.gz")
    with pytest.raises(UserError, match="not a regular file"):
        load_study(str(tmp_path / "scan.nii.gz"))
