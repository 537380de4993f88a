"""The extension configures, builds and installs with CTK's real build macros, and the INSTALLED
tree (not the source tree) imports OrthoDiffusionLib and finds Resources/ in a clean interpreter.

CTK's macros come from ``<repo>/../shared/tools/slicer-cmake`` (the copy Slicer 5.12.3 pins); the
test skips without it or without cmake. Slicer's own CMake entry points are stood in for by
``Testing/Data/slicer_sdk_standin`` (see its README).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import REPO

CTK_MACROS = REPO.parent / "shared" / "tools" / "slicer-cmake"
STANDIN = REPO / "Testing" / "Data" / "slicer_sdk_standin"
MODULES_DIR = "lib/Slicer-5.12/qt-scripted-modules"


def _cmake(*args, cwd):
    done = subprocess.run(["cmake", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if not (CTK_MACROS / "ctkMacroCompilePythonScript.cmake").is_file():
        pytest.skip("../shared/tools/slicer-cmake is not present")
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    root = tmp_path_factory.mktemp("cmake")
    build, prefix = root / "build", root / "install"
    include = sysconfig.get_paths()["include"]
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    _cmake("-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={STANDIN}", f"-DCTK_CMAKE_DIR={CTK_MACROS}",
           f"-DPYTHON_EXECUTABLE={sys.executable}", f"-DPYTHON_INCLUDE_DIR={include}",
           f"-DPYTHON_LIBRARY={libdir}/{sysconfig.get_config_var('LDLIBRARY') or 'libpython3.so'}",
           "-DBUILD_TESTING=OFF", f"-DCMAKE_INSTALL_PREFIX={prefix}", cwd=root)
    _cmake("--build", str(build), cwd=root)
    log = _cmake("--install", str(build), cwd=root)
    return prefix / MODULES_DIR, build / MODULES_DIR, log


def _listed():
    sys.path.insert(0, str(REPO / "scripts"))
    import update_cmake_lists

    return update_cmake_lists.listed()


def test_every_listed_file_is_installed_beside_the_module(installed):
    modules, _, _ = installed
    assert (modules / "OrthoDiffusion.py").is_file() and (modules / "OrthoDiffusion.pyc").is_file()
    lists = _listed()
    assert lists["SCRIPTS"] and lists["RESOURCES"]
    missing = [p for p in lists["SCRIPTS"] + lists["RESOURCES"] if not (modules / p).is_file()]
    assert not missing, f"not installed: {missing[:10]}"
    assert (modules / "OrthoDiffusionLib" / "__init__.pyc").is_file()  # byte-compiled like the module
    # the icon Slicer picks up for a scripted module: Resources/Icons/<Module>.png beside <Module>.py
    assert (modules / "Resources" / "Icons" / "OrthoDiffusion.png").is_file()


def test_build_tree_has_the_same_layout(installed):
    _, build_modules, _ = installed
    assert (build_modules / "OrthoDiffusionLib" / "__init__.py").is_file()
    assert (build_modules / "Resources" / "Models" / "catalogue.json").is_file()


def test_installed_tree_imports_in_a_clean_interpreter(installed, tmp_path):
    modules, _, _ = installed
    code = f"""
import json, sys
sys.path.insert(0, {str(modules)!r})  # what OrthoDiffusion.py does: the folder holding OrthoDiffusionLib
import OrthoDiffusionLib
from OrthoDiffusionLib import DISCLAIMER
from OrthoDiffusionLib.resources import resources_dir, sample_knee_path
from OrthoDiffusionLib.models.catalogue import list_models
print(json.dumps({{"lib": OrthoDiffusionLib.__file__, "resources": str(resources_dir()),
                  "sample": sample_knee_path().is_file(), "models": [m.id for m in list_models()],
                  "model_root": str(list_models()[0].root), "disclaimer": DISCLAIMER,
                  "path": sys.path}}))
"""
    # -I: no PYTHON* variables, no user site, no script dir; -S: no site-packages (the editable install)
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"ORTHODIFFUSION_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["lib"].startswith(str(modules)) and got["resources"] == str(modules / "Resources")
    assert got["sample"] and got["models"] == ["knee-demo"] and got["model_root"].startswith(str(modules))
    assert not any(str(REPO) in p for p in got["path"]) and "not for clinical decisions" in got["disclaimer"]
