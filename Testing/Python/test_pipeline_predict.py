"""fit → predict → demo on a stand-in model (random tiny backbones) and a toy cohort: new head
versions with parents, result-folder geometry and schemas, missing planes, the HTML report."""

import json

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from OrthoDiffusionLib.jobs import FitJob, PredictJob
from OrthoDiffusionLib.adapt.fit import fit_heads
from OrthoDiffusionLib.inference.predict import predict_study
from standins import make_standin_model, make_toy_cohort
from OrthoDiffusionLib.resources import resource_path, sample_knee_path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pipe")
    mp = pytest.MonkeyPatch()
    mp.setenv("ORTHODIFFUSION_HOME", str(root / "home"))
    mp.setenv("ORTHODIFFUSION_CACHE", str(root / "cache"))
    model = make_standin_model(root / "model")
    manifest = make_toy_cohort(root / "cohort", n=8, missing_axial_every=4)
    job = FitJob(manifest=str(manifest), model=str(model), task="all", folds=2, max_epochs=8, seg_epochs=3,
                 device="cpu", out=str(model / "heads"))
    first = fit_heads(job, log=lambda m: None, progress=False)
    second = fit_heads(FitJob(**{**job.to_dict(), "task": "diagnosis"}), log=lambda m: None, progress=False)
    yield {"root": root, "model": model, "first": first, "second": second}
    mp.undo()


def test_fit_versions(fitted):
    from OrthoDiffusionLib.heads import HeadStore

    assert fitted["first"]["version"] == "v0001"
    assert fitted["second"]["version"] == "v0002"
    store = HeadStore(fitted["model"] / "heads")
    m2 = store.manifest("v0002")
    assert m2["parent"] == "v0001" and store.current() == "v0002"
    assert {"mpae", "ehr", "seg_sagittal"} <= set(m2["heads"])  # segmentation carried over from the parent
    assert m2["label_set"] == "knee-8" and m2["data_summary"]["n_train"] == 6
    assert "diagnosis_val" in m2["metrics"] and set(m2["thresholds"]) == {"ACL", "PCL", "MM", "LM", "MCL", "LCL",
                                                                         "PD", "EFFU"}


def _check_folder(out, reference_image, planes):
    from OrthoDiffusionLib.results.folder import read_result_folder

    res = read_result_folder(out, verify=True)
    for name in ("labels.nrrd", "uncertainty.nrrd", "segmentation.seg.nrrd"):
        img = sitk.ReadImage(str(out / name))
        assert img.GetSize() == reference_image.GetSize()
        assert np.allclose(img.GetSpacing(), reference_image.GetSpacing(), atol=1e-4)
        assert np.allclose(img.GetOrigin(), reference_image.GetOrigin(), atol=1e-4)
        assert np.allclose(img.GetDirection(), reference_image.GetDirection(), atol=1e-6)
    seg = sitk.ReadImage(str(out / "segmentation.seg.nrrd"))
    assert seg.GetMetaData("Segment0_Name") == "Femur"
    findings = json.loads((out / "findings.json").read_text())
    schema = json.loads(resource_path("Schemas", "findings.schema.json").read_text())
    jsonschema.validate(findings, schema)
    assert findings["planes_present"] == planes
    for f in findings["findings"]:
        w = f["plane_weights"]
        assert abs(sum(w[p] for p in planes) - 1) < 1e-5
        assert all(w[p] == 0 for p in w if p not in planes)
    assert "Research use only" in findings["disclaimer"]
    assert res.provenance["model"]["heads"]["version"] == "v0002"
    return findings


def test_predict_sample_knee_all_planes(fitted, capsys):
    from OrthoDiffusionLib.cli.main import main

    out = fitted["root"] / "pred3"
    rc = main(["predict", "--sagittal", str(sample_knee_path()), "--reformat", "--model", str(fitted["model"]),
               "--device", "cpu", "--out", str(out), "--draws", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    for tag in ("[loading]", "[preprocess]", "[features]", "[segment]", "[diagnose]", "[writing]"):
        assert tag in text
    ref = sitk.ReadImage(str(sample_knee_path()))
    findings = _check_folder(out, ref, ["sagittal", "coronal", "axial"])
    prov = findings["provenance"]
    assert prov["reformatted_planes"] == ["coronal", "axial"]
    assert len(prov["inputs"]["sagittal"]["file_sha256"]) == 64
    assert set(findings["timings"]) >= {"loading_s", "features_s", "segment_s", "diagnose_s", "peak_rss_mb"}
    assert (out / "timings.json").is_file()


def test_predict_missing_planes(fitted):
    out = fitted["root"] / "pred1"
    job = PredictJob(inputs=[str(sample_knee_path())], out=str(out), model=str(fitted["model"]), device="cpu",
                     draws=2, reformat=False, ehr="age=50,sex=F")
    pred = predict_study(job, log=lambda m: None)
    ref = sitk.ReadImage(str(sample_knee_path()))
    findings = _check_folder(out, ref, ["sagittal"])
    assert findings["provenance"]["planes_missing"] == ["coronal", "axial"]
    assert findings["provenance"]["ehr_used"] is True
    assert pred.draw_probabilities.shape == (2, 8)


def test_demo_report(fitted, capsys):
    from OrthoDiffusionLib.cli.main import main

    out = fitted["root"] / "demo"
    assert main(["demo", "--model", str(fitted["model"]), "--out", str(out), "--draws", "1"]) == 0
    html = (out / "report.html").read_text()
    assert "Research use only, not for clinical decisions." in html
    assert "data:image/png;base64," in html and "Reformatted: coronal, axial" in html
    assert "report:" in capsys.readouterr().out
