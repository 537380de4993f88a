"""The sample knee as a SampleData source and the knee terminology in a real Terminologies logic."""

from __future__ import annotations

import hashlib
import urllib.request

import pytest

from OrthoDiffusionLib.resources import sample_knee_path
from OrthoDiffusionLib.slicerlogic.sampledata import SAMPLE_NAME, load_terminology, sample_data_source


def test_sample_source_is_the_embedded_file_with_its_checksum(tmp_path):
    src = sample_data_source()
    assert src["sampleName"] == SAMPLE_NAME and src["fileNames"] == sample_knee_path().name
    # SampleData downloads with urllib.request.urlretrieve: a file:// URI works the same way
    got, _ = urllib.request.urlretrieve(src["uris"], tmp_path / src["fileNames"])
    algo, digest = src["checksums"].split(":")
    assert algo == "SHA256" and hashlib.sha256(open(got, "rb").read()).hexdigest() == digest


def test_terminology_loads_into_the_terminologies_logic():
    slicer = pytest.importorskip("slicer")
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    name = load_terminology(logic)
    assert name == "Segmentation category and type - OrthoDiffusion knee-11"
    import vtk

    names = vtk.vtkStringArray()
    logic.GetLoadedTerminologyNames(names)
    assert name in [names.GetValue(i) for i in range(names.GetNumberOfValues())]
