"""Both HTML reports escape what users control (case ids, titles, notes, warnings, error messages),
render from the templates with StrictUndefined, and keep the generator signature where the
ownership check looks for it. One real prediction (shipped knee-demo model, sample knee) feeds both."""

from __future__ import annotations

import pytest

from OrthoDiffusionLib import DISCLAIMER
from OrthoDiffusionLib.errors import UserError
from OrthoDiffusionLib.ownership import HTML_SIGNATURE, claim_folder
from OrthoDiffusionLib.reports.case import write_report
from OrthoDiffusionLib.reports.cohort import write_cohort_report
from OrthoDiffusionLib.resources import sample_knee_path

CASE_ID = '<script>alert("case")</script>'
ERROR = "<script>alert('error')</script> & <b>bold</b>"
ERROR_ID = "<script>K2</script>"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    import torch

    from OrthoDiffusionLib.inference.predict import predict_study
    from OrthoDiffusionLib.jobs import PredictJob

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("escaping")
    mp = pytest.MonkeyPatch()
    mp.setenv("ORTHODIFFUSION_HOME", str(root / "home"))  # the shipped heads, not a user's refit
    mp.setenv("ORTHODIFFUSION_CACHE", str(root / "cache"))
    folder = claim_folder(root / "preds", "cohort")
    job = PredictJob(inputs=[str(sample_knee_path())], out=str(folder / "K1"), model="knee-demo", device="cpu",
                     draws=1, reformat=True, case_id=CASE_ID)
    pred = predict_study(job, log=lambda m: None)
    # errors.csv as cohort predict writes it (disclaimer comment line first)
    (folder / "errors.csv").write_text(f"# {DISCLAIMER}\nstudy_id,error,trace\n\"{ERROR_ID}\",\"{ERROR}\",\n")
    yield {"root": root, "folder": folder, "pred": pred}
    mp.undo()


def _assert_escaped(text: str, *raw: str):
    assert "<script" not in text.lower()
    for s in raw:
        assert s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;").replace(
            "'", "&#39;") in text


def test_case_report_escapes_case_id_title_notes_and_warnings(cohort):
    pred = cohort["pred"]
    pred.warnings.append(ERROR)  # a warning whose text carries markup
    try:
        out = write_report(pred, cohort["root"] / "case.html", title="<script>title</script>", notes=[ERROR])
    finally:
        pred.warnings.remove(ERROR)
    text = out.read_text(encoding="utf-8")
    _assert_escaped(text, CASE_ID, ERROR, "<script>title</script>")
    assert text.count(DISCLAIMER) >= 2 and text.count("data:image/png;base64,") == 2


def test_cohort_report_escapes_case_ids_and_error_messages(cohort):
    paths = write_cohort_report(cohort["folder"], out=cohort["root"] / "cohort.html")
    text = paths["html"].read_text(encoding="utf-8")
    _assert_escaped(text, CASE_ID, ERROR_ID, ERROR)
    assert "1 predicted cases, 1 failed" in text and 'src="http' not in text


def test_reports_overwrite_only_their_own_files(cohort):
    out = cohort["root"] / "own.html"
    write_report(cohort["pred"], out)
    assert HTML_SIGNATURE in out.read_bytes()[:4096]  # where check_file_replaceable looks
    write_report(cohort["pred"], out)  # its own file: replaced
    foreign = cohort["root"] / "notes.html"
    foreign.write_text("<html>the department's notes</html>")
    with pytest.raises(UserError, match="was not written by OrthoDiffusion"):
        write_report(cohort["pred"], foreign)
    assert foreign.read_text() == "<html>the department's notes</html>"


def test_templates_refuse_a_missing_value_and_escape_everything():
    import jinja2

    from OrthoDiffusionLib.reports.render import environment, render

    with pytest.raises(jinja2.UndefinedError, match="case"):
        render("case.html.j2", title="t")
    html = render("cohort.html.j2", title="<i>t</i>", counts="c", folder="/a&b", models="m", notes=[],
                  distribution=None, weights=None, evaluation=None, finding_keys="", cases=[], errors=[],
                  version="<v>")
    assert "&lt;i&gt;t&lt;/i&gt;" in html and "/a&amp;b" in html and "&lt;v&gt;" in html
    assert environment().autoescape is True
