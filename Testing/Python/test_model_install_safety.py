"""Model installs (issue #17): shipped ids reserved, --force keeps a dated backup with the fitted
heads, links never followed, paths stay inside the model folder, the verified bytes are the
installed ones, archives and folders are bounded."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.errors import UserError
from OrthoDiffusionLib.models import catalogue as cat
from OrthoDiffusionLib.models import install
from standins import make_standin_model
from OrthoDiffusionLib.storage import sha256_file


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return make_standin_model(tmp_path_factory.mktemp("m") / "m", model_id="my-knee")


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit_entry(folder, **changes):
    entry = json.loads((folder / "model.json").read_text())
    entry.update(changes)
    (folder / "model.json").write_text(json.dumps(entry))
    return folder


def test_shipped_id_is_reserved(standin, tmp_path, home, capsys):
    src = _edit_entry(_copy(standin, tmp_path / "m"), id="knee-demo")
    for force in ([], ["--force"]):
        assert main(["models", "install", str(src), *force]) == 2
        assert "shipped model (shipped ids are reserved)" in capsys.readouterr().err
    assert cat.get_model("knee-demo").source == "shipped"
    assert not (home / "models" / "knee-demo").exists()


def test_force_moves_the_previous_install_with_its_heads_into_a_backup(standin, home, capsys):
    assert main(["models", "install", str(standin)]) == 0
    heads = home / "models" / "my-knee" / "heads" / "v0001"
    heads.mkdir(parents=True)
    (heads / "weights.safetensors").write_bytes(b"fitted by the user")
    assert main(["models", "install", str(standin)]) == 2  # without --force: refused, untouched
    assert (heads / "weights.safetensors").is_file()
    assert main(["models", "install", str(standin), "--force"]) == 0
    out = capsys.readouterr().out
    (backup,) = (home / "replaced").iterdir()
    assert backup.name.startswith("my-knee-") and str(backup) in out
    assert (backup / "heads" / "v0001" / "weights.safetensors").read_bytes() == b"fitted by the user"
    assert cat.verify_model(cat.get_model("my-knee"), heads=False) == []


def test_symlinks_in_a_folder_are_never_followed(standin, tmp_path, home, capsys):
    src = _copy(standin, tmp_path / "m")
    os.symlink("/etc", src / "extras")
    assert main(["models", "install", str(src)]) == 2
    err = capsys.readouterr().err
    assert "extras is a symbolic link" in err and "Traceback" not in err
    assert not (home / "models" / "my-knee").exists()
    loop = _copy(standin, tmp_path / "loop")
    os.symlink(loop, loop / "again", target_is_directory=True)  # a folder loop
    assert main(["models", "install", str(loop)]) == 2
    assert "symbolic link" in capsys.readouterr().err


def test_archive_symlink_and_bomb_refused(standin, tmp_path, home, monkeypatch):
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in standin.iterdir():
            zf.write(p, f"my-knee/{p.name}")
        info = zipfile.ZipInfo("my-knee/passwd")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UserError, match="passwd is a symbolic link"):
        install.install_model(z)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("my-knee/model.json", (standin / "model.json").read_text())
        zf.writestr("my-knee/padding.bin", b"\0" * (8 << 20))
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(install, "MAX_INSTALL_BYTES", 4 << 20)
    with pytest.raises(UserError, match="expands to more than"):
        install.install_model(bomb)
    monkeypatch.setattr(install, "MAX_INSTALL_FILES", 3)
    with pytest.raises(UserError, match="more than 3 files"):
        install.install_model(standin)
    assert not (home / "models" / "my-knee").exists()
    assert [p.name for p in (home / "models").iterdir()] in ([], [".install.lock"])  # no staging left


@pytest.mark.parametrize("where", ["absolute_backbone", "dotdot_backbone", "heads_outside", "file_outside"])
def test_paths_in_model_json_stay_inside_the_model_folder(standin, tmp_path, home, where):
    src = _copy(standin, tmp_path / "m")
    entry = json.loads((src / "model.json").read_text())
    if where == "absolute_backbone":
        entry["planes"]["sagittal"]["backbone"] = "/etc/passwd"
    elif where == "dotdot_backbone":
        entry["planes"]["sagittal"]["backbone"] = "../sagittal.safetensors"
    elif where == "heads_outside":
        entry["heads"] = "/tmp"
    else:
        entry["files"].append({"path": "../../x", "sha256": "0" * 64, "bytes": 1})
    (src / "model.json").write_text(json.dumps(entry))
    with pytest.raises(UserError, match="not a path inside the model folder"):
        install.install_model(src)
    with pytest.raises(UserError, match="not a path inside the model folder"):
        cat.get_model(str(src))  # also when used in place


def test_unsafe_id_refused(standin, tmp_path, home):
    src = _edit_entry(_copy(standin, tmp_path / "m"), id="../../escape")
    with pytest.raises(UserError, match="id: '../../escape' does not match"):  # the schema's pattern
        install.install_model(src)
    assert not (tmp_path / "escape").exists()
    with pytest.raises(UserError, match="use letters, digits"):  # the same rule for every id given
        cat.check_model_id("../x")


def test_the_installed_bytes_are_the_verified_ones(standin, tmp_path, home, monkeypatch):
    """A file swapped in the source after the copy (while verifying) does not reach the install."""
    src = _copy(standin, tmp_path / "m")
    good = sha256_file(src / "axial.safetensors")
    real_verify = install.verify_model

    def swap_then_verify(spec, heads=True):
        (src / "axial.safetensors").write_bytes(b"swapped after the copy")
        return real_verify(spec, heads)

    monkeypatch.setattr(install, "verify_model", swap_then_verify)
    spec = install.install_model(src)
    assert sha256_file(spec.root / "axial.safetensors") == good


def test_unwritable_home_is_one_line(standin, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(blocker / "home"))
    assert main(["models", "install", str(standin)]) == 2
    err = capsys.readouterr().err
    assert "cannot write the user model folder" in err and "Traceback" not in err
