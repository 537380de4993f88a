"""Test helper: point the app globals that ``slicer.util``'s segment helpers read at a headless
scene (the library itself never uses them: it is given the scene and the logics)."""

from __future__ import annotations

import contextlib

import slicer


@contextlib.contextmanager
def util_globals(scene, logics):
    """Point the app globals that ``slicer.util``'s segment helpers read (``slicer.mrmlScene``,
    ``slicer.modules.<name>.logic()``) at a headless scene for the duration; restored afterwards."""
    import types

    saved = {k: getattr(slicer, k, None) for k in ("mrmlScene", "modules")}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: logics["Segmentations"]),
        volumes=types.SimpleNamespace(logic=lambda: logics["Volumes"]))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                delattr(slicer, k)
            else:
                setattr(slicer, k, v)
