"""Locate the shipped data files (label sets, sample data, demo models) in-tree or in a wheel."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def resources_dir() -> Path:
    # A wheel maps Resources/ into the package; a source checkout (and Slicer) keeps it beside it.
    for candidate in (_PKG / "Resources", _PKG.parent / "Resources"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("OrthoDiffusion Resources/ folder not found next to the library")


def resource_path(*parts: str) -> Path:
    return resources_dir().joinpath(*parts)


def sample_knee_path() -> Path:
    """The embedded real knee (3 T GE sagittal MESE, first echo; MIT, mskt 0.1.22)."""
    return resource_path("SampleData", "knee_mese_t2_sag_echo1.nii.gz")
