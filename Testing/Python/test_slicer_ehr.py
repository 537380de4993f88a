"""Every EHR value the module's widgets can produce reaches the CLI and passes its EHR check.

The widgets' fields, ranges and choices are read from OrthoDiffusion.py with ``ast`` (the module
imports qt, so it cannot be imported here) and resolved to the library objects they name.
"""

from __future__ import annotations

import ast
import json

import pytest

from conftest import REPO
from OrthoDiffusionLib import ehr as ehr_fields
from OrthoDiffusionLib.cli import predict as cli_predict
from OrthoDiffusionLib.cli.main import build_parser
from OrthoDiffusionLib.errors import UserError
from OrthoDiffusionLib.jobs import PredictJob
from OrthoDiffusionLib.ehr import parse_ehr, validate_ehr
from OrthoDiffusionLib.slicerlogic import ehr as gui_ehr

MODULE = REPO / "OrthoDiffusion" / "OrthoDiffusion.py"


def _module_ehr_widgets():
    """{library field: list of every value its widget can hold}, from the parameter-node wrapper."""
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    mapping = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "EHR_PARAMETERS" for t in n.targets))
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "OrthoDiffusionParameterNode")
    values = {}
    for item in wrapper.body:
        if not (isinstance(item, ast.AnnAssign) and item.target.id in mapping):
            continue
        field = mapping[item.target.id]
        calls = {c.func.id: c for c in ast.walk(item.annotation) if isinstance(c, ast.Call)
                 and isinstance(c.func, ast.Name)}
        if "spin_box_range" in calls:
            arg = calls["spin_box_range"].args[0].value
            assert arg == field, f"{item.target.id} takes its range from {arg}"
            default = item.value  # spin_box_range("<field>")[0]: starts at "not given"
            assert isinstance(default, ast.Subscript) and ast.unparse(default) == f"spin_box_range({arg!r})[0]"
            lo, hi = gui_ehr.spin_box_range(arg)
            values[field] = list(range(lo, hi + 1))
        else:
            names = [n.id for n in ast.walk(calls["Choice"]) if isinstance(n, ast.Name) and n.id.endswith("CHOICES")]
            assert len(names) == 1, f"{item.target.id}: Choice must come from OrthoDiffusionLib.slicerlogic.ehr"
            values[field] = list(getattr(gui_ehr, names[0]))
    return mapping, values


@pytest.fixture(scope="module")
def widgets():
    return _module_ehr_widgets()


@pytest.fixture(scope="module")
def cli_ehr():
    """The EHR record exactly as predict sees it: GUI record -> PredictJob.to_argv -> CLI parser -> parse_ehr."""
    parser = build_parser()

    def through_cli(record):
        job = PredictJob(inputs=["k.nrrd"], out="r", ehr=record)
        args = parser.parse_args(job.to_argv())
        return validate_ehr(parse_ehr(cli_predict.job_from_args(args).ehr))

    return through_cli


def test_module_covers_the_library_fields(widgets):
    mapping, values = widgets
    assert set(mapping.values()) == set(ehr_fields.EHR_FIELDS) == set(values)
    assert "indication" not in json.dumps(mapping)


def test_every_single_value_is_accepted(widgets, cli_ehr):
    _, values = widgets
    checked = 0
    for field, options in values.items():
        for value in options:
            record = gui_ehr.ehr_record({field: value})
            got = cli_ehr(record)
            if record is None:
                assert got is None  # "not given" sends no --ehr at all
            else:
                # accepted, and normalised by the one EHR rule (female -> F) as the CLI would
                assert got is not None and got[field] == ehr_fields.check_value(field, value, "gui")
            checked += 1
    assert checked == sum(len(v) for v in values.values()) > 700


def test_full_records_are_accepted_and_encoded_by_the_shipped_heads(widgets, cli_ehr):
    torch = pytest.importorskip("torch")  # noqa: F841
    from OrthoDiffusionLib.heads.ehr import encode_ehr
    from OrthoDiffusionLib.resources import resource_path

    _, values = widgets
    manifest = json.loads(resource_path("Models", "knee-demo", "heads", "versions", "v0001", "manifest.json")
                          .read_text(encoding="utf-8"))
    spec = json.loads(json.dumps(manifest))
    spec = next(v for v in _walk(spec) if isinstance(v, dict) and "patient_types" in v)
    records = []
    for i in range(max(len(v) for k, v in values.items() if k in ehr_fields.CATEGORICAL_FIELDS)):
        gui = {k: v[1 + i % (len(v) - 1)] for k, v in values.items()}  # every choice, never "not given"
        records.append(cli_ehr(gui_ehr.ehr_record(gui)))
    enc = encode_ehr(records, spec, strict=True)
    assert bool(enc["present"].all()) and int(enc["numeric_missing"].sum()) == 0
    assert set(enc["patient_type"].tolist()) == set(range(1, len(ehr_fields.PATIENT_TYPES) + 1))
    assert set(enc["event"].tolist()) == set(range(1, len(ehr_fields.EVENTS) + 1))


def _walk(obj):
    yield obj
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def test_the_old_indication_field_is_refused_on_both_sides(cli_ehr):
    with pytest.raises(ValueError):
        gui_ehr.ehr_record({"indication": "twisting injury"})
    with pytest.raises(UserError):
        validate_ehr({"indication": "twisting injury"})


def test_vocabularies_match_the_cohort_manifest():
    from OrthoDiffusionLib.io import manifest as cohort

    assert cohort.PATIENT_TYPES == ehr_fields.PATIENT_TYPES and cohort.EVENTS == ehr_fields.EVENTS
