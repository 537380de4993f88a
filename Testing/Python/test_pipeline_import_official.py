"""`orthodiffusion import-official` on the published-format fixture: registration, bit-exact EMA
weights, catalogue verification, fit → predict, and precise refusals that leave nothing behind."""

import json
import pickle
import re

import pytest
import torch
from test_backbone_checkpoints import _NotATensor, _RunsCode

from OrthoDiffusionLib.backbone import UNetConfig
from OrthoDiffusionLib.backbone.checkpoints import load_backbone
from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.models.catalogue import get_model, validate_entry, verify_model
from OrthoDiffusionLib.models.import_official import expected_tensors
from OrthoDiffusionLib.storage import sha256_file


@pytest.fixture()
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(h))
    monkeypatch.setenv("ORTHODIFFUSION_CACHE", str(tmp_path / "cache"))
    return h


@pytest.fixture()
def ckpt(reference_dir):
    return reference_dir / "official_tiny_checkpoint.pt"


@pytest.fixture()
def tiny_config(reference_dir):
    return str(reference_dir / "official_tiny_parity.json")


@pytest.fixture()
def container(ckpt):
    return torch.load(ckpt, weights_only=True, map_location="cpu")


def _second_plane(container, path):
    """Another checkpoint in the published container: the fixture's weights, shifted."""
    other = {**container, "ema": {k: (v + 0.01 if k.startswith("denoise_fn.") else v)
                                  for k, v in container["ema"].items()}}
    torch.save(other, path)
    return path


def _cli(capsys, *argv):
    rc = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return rc, out, err


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_expected_tensors_equal_the_published_schema(reference_dir):
    schema = json.loads((reference_dir / "official_checkpoint_schema.json").read_text())
    ours = expected_tensors(UNetConfig.from_dict(schema["config"]))
    assert {e["key"]: (tuple(e["shape"]), e["dtype"]) for e in schema["state_dict"]} == \
        {k: (shape, str(dtype).replace("torch.", "")) for k, (shape, dtype) in ours.items()}


def test_import_register_verify_list_and_refuse_predict(home, ckpt, tiny_config, container, tmp_path, capsys,
                                                        sample_knee):
    coronal = _second_plane(container, tmp_path / "coronal.pt")
    rc, out, err = _cli(capsys, "import-official", "--sagittal", ckpt, "--coronal", coronal, "--name", "pub",
                        "--config", tiny_config)
    assert rc == 0, err
    assert "heads not fitted" in out
    spec = get_model("pub")
    assert spec.source == "user" and spec.root == (home / "models" / "pub").resolve()
    validate_entry(spec.entry)
    assert spec.entry["needs_heads"] is True
    # released multi-plane feature setting (method.md); the absent axial plane is simply not there
    assert spec.planes == {"sagittal": {"backbone": "sagittal.safetensors", "timestep": 150, "block": "mid_0"},
                           "coronal": {"backbone": "coronal.safetensors", "timestep": 50, "block": "mid_2"}}
    assert spec.entry["imported"]["sources"]["sagittal"]["sha256"] == sha256_file(ckpt)
    assert spec.entry["input"] == {"depth": 4, "height": 64, "width": 64, "notes": spec.entry["input"]["notes"]}
    # the backbone weights are the checkpoints' EMA tensors, bit for bit
    for plane, src in (("sagittal", container["ema"]), ("coronal", torch.load(coronal, weights_only=True)["ema"])):
        model, manifest = load_backbone(spec.backbone_path(plane))
        sd = model.state_dict()
        unet_keys = [k for k in src if k.startswith("denoise_fn.")]
        assert len(unet_keys) == len(sd)
        for k in unet_keys:
            assert torch.equal(sd[k[len("denoise_fn."):]], src[k]), k
        assert manifest["provenance"]["weights"] == "ema"

    assert verify_model(spec) == []
    rc, out, _ = _cli(capsys, "models", "verify", "pub")
    assert rc == 0 and "pub 1.0.0: OK (4 files, heads not fitted: run orthodiffusion fit --model pub" in out
    rc, out, _ = _cli(capsys, "models", "list")
    line = next(ln for ln in out.splitlines() if ln.startswith("pub "))
    assert "heads not fitted: run orthodiffusion fit --model pub" in line and "planes=sagittal,coronal" in line
    # a changed byte is caught
    data = bytearray(spec.backbone_path("coronal").read_bytes())
    data[-3] ^= 1
    spec.backbone_path("coronal").write_bytes(bytes(data))
    rc, out, _ = _cli(capsys, "models", "verify", "pub")
    assert rc == 1 and "coronal.safetensors: sha256" in out

    rc, _, err = _cli(capsys, "predict", sample_knee, "--model", "pub", "--out", tmp_path / "out")
    assert rc != 0 and "no fitted heads" in err and "orthodiffusion fit --model pub" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_imported_model_fits_and_predicts(home, ckpt, tiny_config, container, tmp_path, capsys, one_thread):
    from standins import make_toy_cohort

    # the fixture's architecture at the 16x16 input its parity data was made with (a plain config JSON)
    meta = json.loads(open(tiny_config).read())
    config = {**meta["config"], "image_size": 16, "attention_resolutions": "8", "depth_size": 4}
    (tmp_path / "cfg16.json").write_text(json.dumps(config))
    coronal = _second_plane(container, tmp_path / "coronal.pt")
    rc, _, err = _cli(capsys, "import-official", "--sagittal", ckpt, "--coronal", coronal, "--name", "pub",
                      "--config", tmp_path / "cfg16.json", "--coronal-timestep", "100", "--coronal-block", "mid_0")
    assert rc == 0, err
    assert get_model("pub").planes["coronal"] == {"backbone": "coronal.safetensors", "timestep": 100,
                                                  "block": "mid_0"}
    manifest = make_toy_cohort(tmp_path / "cohort", n=8)
    rc, _, err = _cli(capsys, "fit", "--manifest", manifest, "--model", "pub", "--task", "diagnosis", "--folds", "2",
                      "--max-epochs", "5", "--device", "cpu", "--quiet")
    assert rc == 0, err
    assert (home / "models" / "pub" / "heads" / "current.json").is_file()
    case = tmp_path / "cohort" / "cases" / "T000"
    rc, out, err = _cli(capsys, "predict", "--sagittal", case / "sagittal.nii.gz", "--coronal",
                        case / "coronal.nii.gz", "--axial", case / "axial.nii.gz", "--model", "pub",
                        "--out", tmp_path / "out", "--device", "cpu")
    assert rc == 0, err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["model"]["id"] == "pub" and result["planes_present"] == ["sagittal", "coronal"]
    # no --draws: the imported entry's default (2, the fewest that give a spread), not knee-demo's 3
    assert get_model("pub").default_draws == 2 and get_model("knee-demo").default_draws == 3
    assert {v["draws"] for v in result["provenance"]["feature_spec"].values()} == {2}
    assert "axial series ignored: model pub has no axial backbone" in result["provenance"]["warnings"]


def _mutated(container, tmp_path, name, fn):
    fn(container)
    path = tmp_path / name
    torch.save(container, path)
    return path


def _set(d, key, value):
    d[key] = value


BAD = {
    "missing_key": (lambda c: c["ema"].pop("denoise_fn.middle_block.1.qkv.weight"),
                    r"missing keys: middle_block\.1\.qkv\.weight"),
    "extra_key": (lambda c: _set(c["ema"], "denoise_fn.middle_block.9.weight", torch.zeros(3)),
                  r"unexpected keys: middle_block\.9\.weight"),
    "wrong_shape": (lambda c: _set(c["ema"], "denoise_fn.out.2.weight", torch.zeros(1, 32, 3, 3, 1)),
                    r"mis-shaped keys: out\.2\.weight: checkpoint \(1, 32, 3, 3, 1\) vs model \(1, 32, 3, 3, 3\)"),
    "wrong_dtype": (lambda c: _set(c["ema"], "denoise_fn.out.2.bias", c["ema"]["denoise_fn.out.2.bias"].half()),
                    r"wrong dtype: out\.2\.bias: torch\.float16 \(expected torch\.float32\)"),
    "int_tensor": (lambda c: _set(c["ema"], "denoise_fn.out.2.bias", torch.zeros(1, dtype=torch.int64)),
                   r"non-float tensors: out\.2\.bias"),
    "not_a_tensor": (lambda c: _set(c["ema"], "denoise_fn.out.2.bias", "not a tensor"),
                     r"entries that are not tensors: denoise_fn\.out\.2\.bias \(str\)"),
    "pickled_object": (lambda c: _set(c["ema"], "denoise_fn.out.2.bias", _NotATensor()),
                       "refused to load: the file contains pickled objects that are not plain tensors"),
    "no_ema": (lambda c: c.pop("ema"), r"no 'ema' weights in the checkpoint"),
    "other_schedule": (lambda c: _set(c["ema"], "betas", c["ema"]["betas"] * 1.5),
                       "diffusion buffer betas differs from the cosine schedule"),
    "missing_buffer": (lambda c: c["ema"].pop("posterior_variance"),
                       "diffusion buffers missing from 'ema': posterior_variance"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_refused_nothing_written(case, home, container, tiny_config, tmp_path, capsys):
    fn, message = BAD[case]
    path = _mutated(container, tmp_path, f"{case}.pt", fn)
    rc, out, err = _cli(capsys, "import-official", "--axial", path, "--name", "x", "--config", tiny_config)
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("orthodiffusion import-official: error: --axial") and "Traceback" not in err
    assert re.search(message, last), last
    assert _files(home) == []


def test_malicious_pickle_refused_and_not_run(home, tmp_path, monkeypatch, capsys, tiny_config):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"step": 0, "model": {}, "ema": {"x": _RunsCode()}, "opt": {}}, f)
    rc, _, err = _cli(capsys, "import-official", "--sagittal", path, "--name", "x", "--config", tiny_config)
    assert rc == 2 and "refused to load" in err
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists() and _files(home) == []


@pytest.mark.parametrize("case", ["missing_file", "not_torch", "same_file", "copy_of_same_file", "released_config",
                                  "bad_block", "bad_timestep", "bad_name", "no_plane", "shipped_name",
                                  "flag_for_absent_plane"])
def test_bad_invocation_refused_nothing_written(case, home, ckpt, tiny_config, tmp_path, capsys):
    import shutil

    args = ["--sagittal", ckpt, "--name", "x", "--config", tiny_config]
    if case == "missing_file":
        args, message = ["--coronal", tmp_path / "nope.pt", *args], r"--coronal .*nope\.pt: checkpoint not found"
    elif case == "not_torch":
        (tmp_path / "notes.pt").write_text("hello")
        args, message = ["--axial", tmp_path / "notes.pt", "--name", "x", "--config", tiny_config], \
            "not a readable torch checkpoint"
    elif case == "same_file":
        args, message = [*args, "--axial", ckpt], "--sagittal and --axial are the same file"
    elif case == "copy_of_same_file":
        shutil.copy(ckpt, tmp_path / "copy.pt")
        args, message = [*args, "--coronal", tmp_path / "copy.pt"], "--sagittal and --coronal are the same file"
    elif case == "released_config":
        args, message = ["--sagittal", ckpt, "--name", "x"], \
            "another architecture than config released: .* num_channels=32, channel_mult=1,2"
    elif case == "bad_block":
        args, message = [*args, "--sagittal-block", "in_7"], "--sagittal-block in_7: not a block of this architecture"
    elif case == "bad_timestep":
        args, message = [*args, "--sagittal-timestep", "1000"], r"--sagittal-timestep 1000: must be in 0\.\.999"
    elif case == "bad_name":
        args, message = ["--sagittal", ckpt, "--name", "../x", "--config", tiny_config], "--name '../x': use letters"
    elif case == "flag_for_absent_plane":
        args, message = [*args, "--axial-block", "mid_2"], "--axial-block given for a plane without a checkpoint"
    elif case == "no_plane":
        args, message = ["--name", "x"], "no checkpoint given"
    else:
        args, message = ["--sagittal", ckpt, "--name", "knee-demo", "--config", tiny_config], \
            "--name 'knee-demo' is a shipped model \\(shipped ids are reserved\\); choose another id"
    rc, _, err = _cli(capsys, "import-official", *args)
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err
    assert re.search(message, last), last
    assert _files(home) == []


def test_name_clash_needs_force_and_keeps_a_backup(home, ckpt, tiny_config, container, tmp_path, capsys):
    assert _cli(capsys, "import-official", "--sagittal", ckpt, "--name", "pub", "--config", tiny_config)[0] == 0
    model_dir = home / "models" / "pub"
    (model_dir / "heads").mkdir()
    (model_dir / "heads" / "my-notes.txt").write_text("fitted by me")
    before = {p: p.read_bytes() for p in _files(model_dir)}
    other = _second_plane(container, tmp_path / "other.pt")
    rc, _, err = _cli(capsys, "import-official", "--sagittal", other, "--name", "pub", "--config", tiny_config)
    assert rc == 2 and "a model named 'pub' already exists" in err and "--force" in err
    assert {p: p.read_bytes() for p in _files(model_dir)} == before
    rc, out, err = _cli(capsys, "import-official", "--sagittal", other, "--name", "pub", "--config", tiny_config,
                        "--force")
    assert rc == 0, err
    assert get_model("pub").entry["imported"]["sources"]["sagittal"]["sha256"] == sha256_file(other)
    (backup,) = (home / "replaced").iterdir()
    assert (backup / "heads" / "my-notes.txt").read_text() == "fitted by me"
    assert "kept in" in out


def test_sha256sums_catch_a_flipped_byte_that_torch_would_load(home, ckpt, tiny_config, tmp_path, capsys):
    import shutil

    good = tmp_path / "sagittal.pt"
    shutil.copy(ckpt, good)
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{sha256_file(good)}  sagittal.pt\n")
    flipped = tmp_path / "release" / "sagittal.pt"
    flipped.parent.mkdir()
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 1   # inside a tensor: the container still loads
    flipped.write_bytes(bytes(data))
    torch.load(flipped, weights_only=True)
    rc, _, err = _cli(capsys, "import-official", "--sagittal", flipped, "--name", "x", "--config", tiny_config,
                      "--sha256sums", sums)
    assert rc == 2 and "sagittal.pt: sha256" in err and "does not match SHA256SUMS" in err
    assert _files(home) == []
    rc, _, err = _cli(capsys, "import-official", "--sagittal", good, "--name", "x", "--config", tiny_config,
                      "--sha256sums", sums)
    assert rc == 0, err
    assert get_model("x").entry["imported"]["sha256_checked_against"] == "SHA256SUMS"
