"""What the module may install into Slicer: never Slicer's own packages, never torch from PyPI."""

from __future__ import annotations

import pytest

from OrthoDiffusionLib.slicerlogic.dependencies import (PROTECTED, constraints_text, install_plan,
                                                        read_requirements, torch_problem)

SLICER_5_12 = {"torch": "2.6.0+cu124", "numpy": "2.4.6", "SimpleITK": "2.5.5", "pydicom": "3.0.2",
               "requests": "2.34.2", "tqdm": "4.60.0"}  # as importlib.metadata reports them (no vtk dist)


def fake(versions):
    return lambda name: next((v for k, v in versions.items() if k.lower() == name.lower()), None)


def test_constraints_pin_slicers_packages_and_block_the_rest():
    lines = constraints_text(fake(SLICER_5_12)).splitlines()
    assert "torch==2.6.0+cu124" in lines and "numpy==2.4.6" in lines and "SimpleITK==2.5.5" in lines
    assert "pydicom==3.0.2" in lines and "requests==2.34.2" in lines
    assert "vtk<0" in lines and "slicer-core<0" in lines  # Slicer's VTK is no pip package: nothing may pull one
    assert "torch<0" in constraints_text(fake({})).splitlines()  # no torch: PyPI's must not come in via a dependency


def test_plan_lists_only_what_is_missing_and_refuses_protected_names():
    plan = install_plan(["tqdm>=4.66", "jsonschema>=4.20", "numpy>=2", "vtk", "slicer-core>=5.11"], fake(SLICER_5_12))
    assert plan.missing == ["tqdm>=4.66", "jsonschema>=4.20"]  # tqdm 4.60 is too old
    assert plan.refused == ["numpy>=2", "vtk", "slicer-core>=5.11"] and plan.torch is None and plan.needed


def test_torch_minimum_version():
    assert torch_problem(fake({"torch": "2.0.1"})).startswith("PyTorch 2.0.1 is older than 2.1")
    assert "PyTorch Utils" in torch_problem(fake({}))
    assert torch_problem(fake({"torch": "2.13.0+cpu"})) is None


def test_shipped_requirements_name_no_protected_package():
    reqs = read_requirements()
    assert reqs and not install_plan(reqs, fake(SLICER_5_12)).refused
    names = {r.split(">")[0].split("=")[0].lower() for r in reqs}
    assert not names & {p.lower() for p in PROTECTED} and "monai" not in names  # the library no longer uses MONAI


def test_this_environment_satisfies_the_requirements():
    pytest.importorskip("packaging")
    plan = install_plan()
    assert plan.missing == [] and plan.torch is None
