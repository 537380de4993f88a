"""Property-based fuzzing (Hypothesis) of what reads user text before anything else runs: the
NRRD / MetaImage header guard (``io.headers``, ahead of ITK; an accepted header is then read by
``load_study``), the manifest reader and the EHR parser. Any generated input either works or
raises one ``UserError`` with a one-line message: never another exception, never a hang (every
example runs under a Hypothesis deadline; the sandbox offers a FIFO and a link to /dev-like files,
which would block ITK), never a file written (the example's folder and the current folder are
compared before and after). Bounded example counts keep the whole file well under a minute.
Research use only, not for clinical decisions.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from OrthoDiffusionLib.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "Resources" / "SampleData" / "knee_mese_t2_sag_echo1.nii.gz"
FAST = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow], database=None,
                derandomize=True)  # the same examples in every CI run: a failure reproduces

# names a hostile header would point at: absolute, parent, devices, links, patterns, lists, junk
DATA_NAMES = st.sampled_from([
    "knee.raw", "/etc/passwd", "/dev/stdin", "/dev/zero", "../knee.raw", "sub/knee.raw", "C:\\x.raw", "~/x.raw",
    "link.raw", "fifo.raw", "dir.raw", "missing.raw", "LIST", "LIST 2", "LOCAL", "s%03d.raw 0 7 1 2",
    "s%03d.raw 0 7 1", "s%d.raw 0 99999999 1 2", "s%d.raw 5 0 1", "s%s.raw 0 7 1 2", "%n 0 1 1 2", "",
    "knee.raw\x00.txt", "k\u00e9n\u00e9e.raw",
]) | st.text(alphabet=string.printable, max_size=30)
FIELDS = st.sampled_from(["data file", "datafile", "DATA FILE", "data  file", "content", "sizes", "type"])


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


class Sandbox:
    """A fresh folder per example holding a valid raw file, a link out of it, a FIFO and a folder.
    ``freeze()`` marks the moment the code under test starts: from then on nothing may appear,
    change or vanish in the folder, nor in the current folder."""

    def __enter__(self) -> "Sandbox":
        self.root = Path(tempfile.mkdtemp(prefix="od-fuzz-"))
        d = self.dir = self.root / "case"
        d.mkdir()
        (d / "knee.raw").write_bytes(bytes(range(256)) * 18)  # 24*24*8 bytes of uchar
        for k in range(8):
            (d / f"s{k:03d}.raw").write_bytes(bytes(576))
        os.symlink("/etc/passwd", d / "link.raw")
        os.mkfifo(d / "fifo.raw")
        (d / "dir.raw").mkdir()
        self.frozen = None
        return self

    def freeze(self) -> None:
        self.frozen = (_files_under(self.root), sorted(os.listdir(os.getcwd())))

    def __exit__(self, *exc):
        after = (_files_under(self.root), sorted(os.listdir(os.getcwd())))
        shutil.rmtree(self.root)
        if exc[0] is None and self.frozen is not None:
            assert after == self.frozen, "the reader wrote files"


def _one_line(exc: UserError) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text


def _check_header(path: Path) -> None:
    """The guard's verdict; when it accepts, ITK must then read the file without blocking."""
    from OrthoDiffusionLib.io.volumes import check_volume_path

    try:
        check_volume_path(path)
    except UserError as exc:
        _one_line(exc)
        hypothesis.event(f"guard refused: {str(exc).split(': ', 1)[-1][:40]}")
        return
    hypothesis.event("guard accepted")
    # accepted: every data file is a regular file next to the header, so ITK cannot block on
    # a device or leave the folder; reading it may still fail (one line from the loader)
    from OrthoDiffusionLib.io import load_study

    try:
        load_study(str(path))
    except UserError as exc:
        _one_line(exc)


@FAST
@given(field=FIELDS, value=DATA_NAMES, tail=st.lists(DATA_NAMES, max_size=4),
       sizes=st.sampled_from(["24 24 8", "16 16 4", "0 0 0", "-1 5 5", "99999 99999 99999", "x"]),
       type_=st.sampled_from(["uchar", "short", "float", "complex", "nope"]))
def test_nrrd_headers_work_or_give_one_line(field, value, tail, sizes, type_):
    with Sandbox() as box:
        d = box.dir
        text = (f"NRRD0004\ntype: {type_}\ndimension: 3\nsizes: {sizes}\nspacings: 0.5 0.5 3\nencoding: raw\n"
                f"{field}: {value}\n" + "".join(t + "\n" for t in tail))
        path = d / "k.nhdr"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        box.freeze()
        _check_header(path)


@FAST
@given(value=DATA_NAMES, tail=st.lists(DATA_NAMES, max_size=4),
       dims=st.sampled_from(["24 24 8", "16 16", "0 0 0", "8 8 8 8", ""]),
       etype=st.sampled_from(["MET_UCHAR", "MET_SHORT", "MET_FLOAT", "MET_NOPE"]),
       extra=st.sampled_from(["", "CompressedData = True\n", "HeaderSize = -1\n", "NDims = 9\n"]))
def test_metaimage_headers_work_or_give_one_line(value, tail, dims, etype, extra):
    with Sandbox() as box:
        d = box.dir
        text = (f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\n{extra}ElementType = {etype}\n"
                f"ElementDataFile = {value}\n" + "".join(t + "\n" for t in tail))
        path = d / "k.mhd"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        box.freeze()
        _check_header(path)


@FAST
@given(head=st.binary(max_size=300))
def test_random_bytes_named_as_headers_work_or_give_one_line(head):
    with Sandbox() as box:
        for name, prefix in (("r.nhdr", b"NRRD0004\n"), ("r.mha", b"NDims = 3\nElementDataFile = ")):
            (box.dir / name).write_bytes(prefix + head)
        box.freeze()
        for name in ("r.nhdr", "r.mha"):
            _check_header(box.dir / name)


CELLS = st.sampled_from(["", "S1", "=1+1", "+x", "-2", "@a", "\t", "..", "errors.csv", ".hidden", "a/b", "NaN",
                         "true", "1", "0", "2", "250", "1.75", "F", "X", "female", "sport", "moon", "knee.nii.gz",
                         "/etc/passwd", "../knee.nii.gz", "/dev/stdin", '"', "x,y", "\u00fc", "inf"]) | st.text(max_size=12)
COLUMNS = st.sampled_from(["study_id", "patient_id", "sagittal", "coronal", "axial", "age", "sex", "height_cm",
                           "weight_kg", "patient_type", "event", "ACL", "XYZ", "labels_sagittal", "labels_x", "split",
                           "side", "annotated_classes", "field_strength", "center", "note", ""])


@FAST
@given(extra_cols=st.lists(COLUMNS, max_size=4), rows=st.lists(st.lists(CELLS, min_size=0, max_size=10), max_size=4),
       raw_tail=st.binary(max_size=40))
def test_manifest_reader_works_or_gives_one_line(extra_cols, rows, raw_tail):
    from OrthoDiffusionLib.io.manifest import read_manifest

    with Sandbox() as box:
        d = box.dir
        shutil.copy(SAMPLE, d / "knee.nii.gz")
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["study_id", "patient_id", "sagittal", "coronal", "axial", *extra_cols])
        w.writerows(rows)
        data = buf.getvalue().encode("utf-8") + raw_tail
        path = d / "m.csv"
        path.write_bytes(data)
        box.freeze()
        try:
            manifest = read_manifest(path)
        except UserError as exc:
            _one_line(exc)
        else:
            for row in manifest.rows:  # what it accepts is usable: a study id is a plain folder name
                assert Path(row.study_id).name == row.study_id and not row.study_id.startswith(".")


EHR_TEXT = st.lists(st.tuples(st.sampled_from(["age", "sex", "height_cm", "weight_kg", "patient_type", "event",
                                                "bmi", "", "=", "AGE"]),
                              st.sampled_from(["54", "NaN", "nan", "inf", "-inf", "true", "1e400", "-0", "F", "x",
                                               "female", "sport", "moon", "", "=", ",", "1,2", "170.5"])
                              | st.text(max_size=8)),
                    max_size=6)


@FAST
@given(pairs=EHR_TEXT, junk=st.text(max_size=10))
def test_ehr_text_works_or_gives_one_line(pairs, junk):
    from OrthoDiffusionLib.ehr import parse_ehr, validate_ehr

    text = ",".join(f"{k}={v}" for k, v in pairs) + junk
    if Path(text).expanduser().exists() or text.lower().endswith(".json"):
        return  # a path: the JSON case below
    try:
        record = validate_ehr(parse_ehr(text))
    except UserError as exc:
        _one_line(exc)
    else:
        assert record is None or isinstance(record, dict)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True)
                           | st.integers(-10**6, 10**6) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                     max_size=3), max_leaves=8)


@FAST
@given(record=st.dictionaries(st.sampled_from(["age", "sex", "height_cm", "weight_kg", "patient_type", "event",
                                               "bmi"]), JSON_VALUES, max_size=6) | JSON_VALUES)
def test_ehr_json_works_or_gives_one_line(record):
    import json

    from OrthoDiffusionLib.ehr import parse_ehr, validate_ehr

    with Sandbox() as box:
        path = box.dir / "ehr.json"
        path.write_text(json.dumps(record))
        box.freeze()
        try:
            out = validate_ehr(parse_ehr(str(path)))
        except UserError as exc:
            _one_line(exc)
        else:
            assert out is None or isinstance(out, dict)
