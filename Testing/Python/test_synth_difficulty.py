"""Per-finding difficulty of the synthetic test bed (issue #3): the knob changes only the named
finding's lesion, is recorded in case metadata, reproduces the earlier generator at 0.5, and the CLI
rejects bad values with one line."""

from __future__ import annotations

import numpy as np
import pytest

from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.cli.synth import _finding_difficulty
from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.synth import tissues as T
from OrthoDiffusionLib.synth.findings import FINDING_KEYS, effusion_depth_mm, finding_severity, finding_size
from OrthoDiffusionLib.synth.generate import DEFAULT_FINDING_DIFFICULTY, SynthConfig, _rng, generate_case

CFG = SynthConfig(seed=11, centers=("center_a",), base_maps=("a",), working_mm=1.5, motion=False)
NONE = {k: 0 for k in FINDING_KEYS}


def test_mapping_is_monotone_and_identity_at_half():
    u = np.linspace(0.15, 0.999, 9)
    assert all(finding_severity(v, 0.5) == v for v in u)  # bit for bit: the generator before the knob
    assert finding_size(0.5) == SynthConfig(difficulty=0.5).lesion_size == pytest.approx(0.95)
    for v in u:
        s = [finding_severity(v, d) for d in (0.0, 0.25, 0.5, 0.75, 1.0)]
        assert s == sorted(s, reverse=True) and min(s) >= 0.0
    assert finding_size(0.0) > finding_size(0.5) > finding_size(1.0)
    # effusion: positives are separated from physiologic fluid (0-2.5 mm) when easy, overlap when hard
    assert effusion_depth_mm(finding_severity(0.15, 0.0), finding_size(0.0), 0.0) > 2.5
    assert effusion_depth_mm(finding_severity(0.15, 1.0), finding_size(1.0), 1.0) < 2.5
    assert effusion_depth_mm(0.3, 0.95, 0.5) == (4.0 + 8.0 * 0.3) * 0.95


def test_config_defaults_fallback_and_validation():
    assert SynthConfig().finding_difficulties == DEFAULT_FINDING_DIFFICULTY
    cfg = SynthConfig(difficulty=0.7, finding_difficulty={"MM": 0.2})
    assert cfg.difficulty_of("MM") == 0.2 and cfg.difficulty_of("ACL") == 0.7
    with pytest.raises(ValueError, match="unknown finding 'XX'"):
        SynthConfig(finding_difficulty={"XX": 0.5})
    with pytest.raises(ValueError, match="within 0..1"):
        SynthConfig(finding_difficulty={"MM": 1.5})


def test_knob_changes_only_the_named_finding():
    force = {**NONE, "MM": 1, "ACL": 1}
    easy = generate_case(0, SynthConfig(**{**CFG.__dict__, "finding_difficulty": {**DEFAULT_FINDING_DIFFICULTY, "MM": 0.1}}),
                         force_findings=force)
    hard = generate_case(0, SynthConfig(**{**CFG.__dict__, "finding_difficulty": {**DEFAULT_FINDING_DIFFICULTY, "MM": 0.9}}),
                         force_findings=force)
    e, h = easy.meta, hard.meta
    assert e["finding_difficulty"]["MM"] == 0.1 and h["finding_difficulty"]["MM"] == 0.9
    assert e["finding_size"]["MM"] > h["finding_size"]["MM"] and e["severity"]["MM"] > h["severity"]["MM"]
    assert e["finding_details"]["MM"]["cleft_voxels"] > 1.5 * h["finding_details"]["MM"]["cleft_voxels"] > 0
    assert ((easy.tissue == T.MENISCAL_CLEFT).sum() > (hard.tissue == T.MENISCAL_CLEFT).sum())
    # everything else is the same: the other findings' parameters and every voxel outside the cleft
    for k in FINDING_KEYS:
        if k != "MM":
            assert e["severity"][k] == h["severity"][k] and e["finding_size"][k] == h["finding_size"][k]
    assert e["finding_details"]["ACL"] == h["finding_details"]["ACL"]
    differ = easy.tissue != hard.tissue
    assert differ.any()
    assert np.all((easy.tissue[differ] == T.MENISCAL_CLEFT) | (hard.tissue[differ] == T.MENISCAL_CLEFT))


def test_metadata_records_defaults_and_half_reproduces_draws():
    case = generate_case(1, CFG, force_findings={**NONE, "EFFU": 1})
    assert case.meta["finding_difficulty"] == DEFAULT_FINDING_DIFFICULTY
    assert case.meta["finding_size"] == {k: finding_size(d) for k, d in DEFAULT_FINDING_DIFFICULTY.items()}
    # all 0.5: severity is the raw per-finding draw and size the old global one (the earlier generator)
    half = SynthConfig(**{**CFG.__dict__, "finding_difficulty": {k: 0.5 for k in FINDING_KEYS}})
    old = generate_case(1, half, force_findings={**NONE, "EFFU": 1})
    for i, k in enumerate(FINDING_KEYS):
        assert old.meta["severity"][k] == float(_rng(11, 1, 10 + i).uniform(0.15, 1.0))
        assert old.meta["finding_size"][k] == half.lesion_size
    assert old.meta["finding_details"]["EFFU"]["depth_mm"] == (4.0 + 8.0 * old.meta["severity"]["EFFU"]) * half.lesion_size


def test_cli_finding_difficulty_parsing(tmp_path, capsys):
    assert _finding_difficulty("0.3") == {k: 0.3 for k in FINDING_KEYS}
    assert _finding_difficulty("mm=0.2, EFFU=0.8") == {**DEFAULT_FINDING_DIFFICULTY, "MM": 0.2, "EFFU": 0.8}
    for text, why in (("FOO=0.2", "unknown finding 'FOO'"), ("MM=1.5", "outside 0..1"), ("1.2", "outside 0..1"),
                      ("MM=x", "not a number"), ("MM", "not a number"), ("MM=0.1=2", "not KEY=D")):
        with pytest.raises(InputError, match=why):
            _finding_difficulty(text)
        assert main(["synth", "--n", "1", "--out", str(tmp_path), "--finding-difficulty", text]) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and "\n" not in err, err
