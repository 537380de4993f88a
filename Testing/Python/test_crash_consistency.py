"""Crash consistency and concurrency of the stores, with real processes.

A child process is SIGKILLed at an exact moment of a write (``OD_TEST_KILL_AT``, see
OrthoDiffusionLib/storage.py): every file that existed before is byte-identical afterwards (sha256),
the store still loads, every saved correction still verifies. Two processes writing the same store
at once leave two valid results.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from OrthoDiffusionLib.features import FeatureCache
from OrthoDiffusionLib.heads import HeadStore

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "Resources" / "SampleData" / "knee_mese_t2_sag_echo1.nii.gz"
KILLED = -signal.SIGKILL


def _env(tmp: Path, kill_at: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OD_TEST_KILL_AT"}
    env.update({"ORTHODIFFUSION_HOME": str(tmp / "home"), "ORTHODIFFUSION_CACHE": str(tmp / "cache"),
                "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    if kill_at:
        env["OD_TEST_KILL_AT"] = kill_at
    return env


def _run(args: list[str], tmp: Path, kill_at: str | None = None, timeout: int = 300):
    return subprocess.run([sys.executable, *args], env=_env(tmp, kill_at), capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))


def _hashes(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.name.endswith(".lock"):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _assert_previous_intact(before: dict, after: dict) -> None:
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"changed or lost by the crash: {changed}"


# ------------------------------------------------------------------------------ feature cache
CACHE_CHILD = textwrap.dedent("""
    import sys, torch
    from OrthoDiffusionLib.features import FeatureCache
    cache = FeatureCache(sys.argv[1])
    for i in range(4):  # rewrite the existing entries, then add new ones
        cache.put({"case": i}, torch.full((2, 3), float(i)))
    for i in range(4, 8):
        cache.put({"case": i}, torch.full((2, 3), float(i)))
""")


@pytest.mark.parametrize("point", ["before-fsync:2", "before-rename:3", "after-rename:5"])
def test_kill_during_feature_cache_writes(point, tmp_path):
    root = tmp_path / "features"
    cache = FeatureCache(root)
    for i in range(4):
        cache.put({"case": i}, torch.full((2, 3), float(i)))
    before = _hashes(root)
    proc = _run(["-c", CACHE_CHILD, str(root)], tmp_path, kill_at=point)
    assert proc.returncode == KILLED, proc.stderr
    _assert_previous_intact(before, _hashes(root))
    fresh = FeatureCache(root)
    for i in range(4):
        assert torch.equal(fresh.get({"case": i}), torch.full((2, 3), float(i)))
    for entry in root.rglob("*.safetensors"):  # anything under a final name is whole
        if not entry.name.startswith("."):
            from safetensors.torch import load_file

            load_file(str(entry))
    # the interrupted work simply runs again
    assert _run(["-c", CACHE_CHILD, str(root)], tmp_path).returncode == 0
    assert all(torch.equal(fresh.get({"case": i}), torch.full((2, 3), float(i))) for i in range(8))


# --------------------------------------------------------------------------------- head store
STORE_CHILD = textwrap.dedent("""
    import sys, torch
    from OrthoDiffusionLib.heads import HeadStore, MPAEHead
    torch.manual_seed(int(sys.argv[2]))
    HeadStore(sys.argv[1]).save({"mpae": MPAEHead(16, 8, num_heads=4)}, {"label_set": "knee-8", "task": "diagnosis",
                                "metrics": {"seed": int(sys.argv[2])}}, parent="v0002")
""")


def _seed_store(root: Path) -> None:
    for seed in (0, 1):
        subprocess.run([sys.executable, "-c", STORE_CHILD.replace('parent="v0002"', "parent=None"), str(root),
                        str(seed)], check=True, env=_env(root.parent), capture_output=True, timeout=120)


@pytest.mark.parametrize("point", ["before-fsync@manifest.json", "before-rename@manifest.json",
                                   "before-rename@current.json", "after-rename@current.json"])
def test_kill_during_head_store_save(point, tmp_path):
    root = tmp_path / "store"
    _seed_store(root)
    store = HeadStore(root)
    assert store.list_versions() == ["v0001", "v0002"] and store.current() == "v0002"
    before = _hashes(root)
    if point == "after-rename@current.json":  # the new version is committed; the old ones stay intact
        before.pop(str(root / "current.json"))
    proc = _run(["-c", STORE_CHILD, str(root), "7"], tmp_path, kill_at=point)
    assert proc.returncode == KILLED, proc.stderr
    _assert_previous_intact(before, _hashes(root))
    store = HeadStore(root)
    for version in store.list_versions():  # every version visible under its name is whole and verifies
        store.load(version)
    expected_current = "v0003" if point == "after-rename@current.json" else "v0002"
    assert store.current() == expected_current
    heads, manifest = store.load()
    assert manifest["version"] == expected_current and "mpae" in heads
    # a later save after the crash works and never reuses a committed version id
    assert _run(["-c", STORE_CHILD, str(root), "8"], tmp_path).returncode == 0
    assert len(set(store.list_versions())) == len(store.list_versions()) and store.current() == store.list_versions()[-1]


# ---------------------------------------------------------------------------------- fine-tune
@pytest.fixture(scope="module")
def corrected(tmp_path_factory):
    """A predicted sample knee, one saved correction and one completed fine-tune (the state to keep)."""
    root = tmp_path_factory.mktemp("finetune")
    setup = textwrap.dedent(f"""
        import sys
        import SimpleITK as sitk
        from pathlib import Path
        from OrthoDiffusionLib.cli.main import main
        from OrthoDiffusionLib.results.corrections import CorrectionsStore
        root = Path(sys.argv[1])
        assert main(["predict", {str(SAMPLE)!r}, "--out", str(root / "pred"), "--device", "cpu", "--draws", "1",
                     "--case-id", "knee1"]) == 0
        lab = sitk.ReadImage(str(root / "pred" / "labels.nrrd"))
        arr = sitk.GetArrayFromImage(lab)
        arr[:, :20, :20] = 1
        new = sitk.GetImageFromArray(arr)
        new.CopyInformation(lab)
        CorrectionsStore(root / "corr").save("knee1", new, {{}}, source={{"result_dir": str(root / "pred")}})
    """)
    proc = _run(["-c", setup, str(root)], root)
    assert proc.returncode == 0, proc.stderr
    assert _finetune(root).returncode == 0
    return root


def _finetune(root: Path, kill_at: str | None = None, seed: int = 0):
    return _run(["-m", "OrthoDiffusionLib", "finetune", "--corrections", str(root / "corr"), "--model", "knee-demo",
                 "--device", "cpu", "--epochs", "1", "--replay", "0", "--quiet", "--seed", str(seed),
                 "--accept-worse"], root, kill_at)  # one step may lower Dice: the guard would keep the pointer


def _user_store(root: Path) -> HeadStore:
    return HeadStore(root / "home" / "models" / "knee-demo" / "heads")


def _assert_corrections_intact(root: Path) -> None:
    from OrthoDiffusionLib.results.corrections import CorrectionsStore

    corrections = CorrectionsStore(root / "corr")
    entries = corrections.entries()
    assert len(entries) == 1 and all(corrections.verify(e) for e in entries)
    corrections.load(entries[0])


@pytest.mark.skipif(not (REPO / "OrthoDiffusionLib" / "cli" / "finetune.py").is_file(), reason="no finetune CLI")
@pytest.mark.parametrize("point", ["before-fsync@manifest.json", "before-rename@manifest.json",
                                   "before-rename@current.json"])
def test_kill_during_finetune(point, corrected):
    root = corrected
    store = _user_store(root)
    current, versions = store.current(), store.list_versions()
    before = _hashes(store.root, root / "corr")
    proc = _finetune(root, kill_at=point)
    assert proc.returncode == KILLED, proc.stdout[-2000:] + proc.stderr[-2000:]
    _assert_previous_intact(before, _hashes(store.root, root / "corr"))
    assert store.current() == current  # the pointer never moved: the previous head set is what loads
    heads, manifest = store.load()
    assert manifest["version"] == current and heads
    assert set(versions) <= set(store.list_versions())
    for version in store.list_versions():
        store.verify(version)
    _assert_corrections_intact(root)


@pytest.mark.skipif(not (REPO / "OrthoDiffusionLib" / "cli" / "finetune.py").is_file(), reason="no finetune CLI")
def test_two_finetunes_at_once(corrected):
    root = corrected
    store = _user_store(root)
    versions = set(store.list_versions())
    before = _hashes(store.root, root / "corr")
    before.pop(str(store.root / "current.json"))  # the pointer moves to one of the two new versions
    procs = [subprocess.Popen([sys.executable, "-m", "OrthoDiffusionLib", "finetune", "--corrections",
                               str(root / "corr"), "--model", "knee-demo", "--device", "cpu", "--epochs", "1",
                               "--replay", "0", "--quiet", "--seed", str(seed)], env=_env(root),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO))
             for seed in (1, 2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    new = set(store.list_versions()) - versions
    assert len(new) == 2  # two distinct versions, none overwritten
    _assert_previous_intact(before, _hashes(store.root, root / "corr"))
    for version in new:
        store.load(version)
    assert store.current() in new
    _assert_corrections_intact(root)


def test_kill_while_replacing_a_result_folder(tmp_path):
    """predict into an existing result folder, killed just before the swap: the old folder is untouched."""
    out = tmp_path / "case_out"  # a name no file inside the folder shares (the kill point matches by name)
    args = ["-m", "OrthoDiffusionLib", "predict", str(SAMPLE), "--out", str(out), "--device", "cpu", "--draws", "1"]
    assert _run(args, tmp_path).returncode == 0
    before = _hashes(out)
    proc = _run(args + ["--seed", "3"], tmp_path, kill_at=f"before-rename@{out.name}")
    assert proc.returncode == KILLED, proc.stderr
    assert _hashes(out) == before
    from OrthoDiffusionLib.results.folder import read_result_folder

    read_result_folder(out, verify=True)
    assert sitk.ReadImage(str(out / "labels.nrrd")).GetSize() == sitk.ReadImage(str(SAMPLE)).GetSize()
