"""Shape of ``OrthoDiffusionLib/training`` (#13): small files, no argparse (the command lines live in
``cli/``), and the torchrun environment read in one place (``runtime.torchrun_env``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from OrthoDiffusionLib.errors import UserError
from OrthoDiffusionLib.training import distributed

TRAINING = Path(__file__).resolve().parents[2] / "OrthoDiffusionLib" / "training"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_training_files_are_small_and_free_of_argparse():
    files = sorted(TRAINING.glob("*.py"))
    assert len(files) > 5
    too_long = {f.name: n for f in files if (n := len(f.read_text(encoding="utf-8").splitlines())) > 450}
    assert not too_long
    assert not [f.name for f in files if "argparse" in _imports(f)]


def test_distributed_reads_torchrun_env_only_through_runtime(monkeypatch):
    source = (TRAINING / "distributed.py").read_text(encoding="utf-8")
    assert "os.environ" not in source and "torchrun_env" in source
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    info = distributed.init("cpu")
    assert (info.rank, info.world_size, info.enabled, info.is_main) == (0, 1, False, True)
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: still no process group
    monkeypatch.setenv("RANK", "0")
    assert not distributed.init("cpu").enabled
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")  # outside 0..1: the runtime's one-line error, before any rendezvous
    with pytest.raises(UserError, match="RANK=5"):
        distributed.init("cpu")
