"""Model catalogue: schema, verify (catches a changed byte), install from folder and zip."""

import json
import shutil
import zipfile

import jsonschema
import pytest

from OrthoDiffusionLib.errors import UserError
from OrthoDiffusionLib.models import catalogue as cat
from OrthoDiffusionLib.models import install
from standins import make_standin_model
from OrthoDiffusionLib.resources import resource_path


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_shipped_catalogue_validates():
    schema = json.loads(resource_path("Schemas", "catalogue.schema.json").read_text())
    data = json.loads(resource_path("Models", "catalogue.json").read_text())
    jsonschema.validate(data, schema)
    ids = [m["id"] for m in data["models"]]
    assert "knee-demo" in ids
    demo = cat.get_model("knee-demo")
    assert demo.root == resource_path("Models", "knee-demo").resolve()
    assert "models" in str(demo.user_dir) and str(resource_path("")) not in str(demo.user_heads)


def test_verify_catches_changed_byte(tmp_path, home):
    src = make_standin_model(tmp_path / "m")
    spec = cat.get_model(str(src))
    assert cat.verify_model(spec, heads=False) == []
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    f = copy / "coronal.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    problems = cat.verify_model(cat.get_model(str(copy)), heads=False)
    assert len(problems) == 1 and "coronal.safetensors" in problems[0] and "sha256" in problems[0]
    with pytest.raises(UserError, match="refused"):
        install.install_model(copy)


def test_install_folder_and_zip(tmp_path, home):
    src = make_standin_model(tmp_path / "m", model_id="my-knee")
    spec = install.install_model(src)
    assert spec.source == "user" and spec.root == (home / "models" / "my-knee").resolve()
    assert "my-knee" in [m.id for m in cat.list_models()]
    with pytest.raises(UserError, match="already installed"):
        install.install_model(src)
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in src.iterdir():
            zf.write(p, f"my-knee/{p.name}")
    spec2 = install.install_model(z, force=True)
    assert cat.verify_model(spec2, heads=False) == []
    # no heads fitted yet: verify with heads says so
    assert any("no fitted heads" in p for p in cat.verify_model(spec2))


def test_models_cli(tmp_path, home, capsys):
    from OrthoDiffusionLib.cli.main import main

    src = make_standin_model(tmp_path / "m", model_id="cli-knee")
    assert main(["models", "install", str(src)]) == 0
    assert main(["models", "list"]) == 0
    assert "cli-knee" in capsys.readouterr().out
    f = home / "models" / "cli-knee" / "axial.json"
    f.write_text(f.read_text() + " ")
    assert main(["models", "verify", "cli-knee"]) == 1
    assert "axial.json" in capsys.readouterr().out
