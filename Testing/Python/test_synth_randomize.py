"""Domain randomisation of the synthetic test bed (issues #14 item 4, #15 item 2): deterministic per
(seed, index), recorded in case.json, label maps and findings untouched, appearance really varies,
contrast inversion at its configured rate; ``--randomize`` / ``--base-maps`` on the command line.
The plain generator staying bit for bit is test_synth_determinism.py's golden test."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.cli.main import main
from OrthoDiffusionLib.io.manifest import read_manifest
from OrthoDiffusionLib.io.planes import detect_plane, is_near_isotropic_3d
from OrthoDiffusionLib.io.preprocess import preprocess
from OrthoDiffusionLib.synth import tissues as T
from OrthoDiffusionLib.synth.acquisition import render_labels, slice_profile
from OrthoDiffusionLib.synth.contrast import CENTERS, get_center, sample_sequence, signal_lut
from OrthoDiffusionLib.synth.generate import SynthConfig, case_domain, generate_case, write_case
from OrthoDiffusionLib.synth.randomize import BASE_TISSUES, DomainRanges, profile_samples, tissue_means

PLAIN = SynthConfig(seed=5, centers=("center_a",), base_maps=("a",), working_mm=1.5)
RANDOM = SynthConfig(**{**PLAIN.__dict__, "randomize": True})
FEMUR, FEMORAL_CARTILAGE, MEDIAL_MENISCUS = 1, 5, 8  # knee-11 values


CONFIGS = {"plain": PLAIN, "random": RANDOM}


@functools.lru_cache(maxsize=None)
def _cached(index: int, name: str):
    return generate_case(index, CONFIGS[name])


def case(index: int, config: SynthConfig):
    """Each (index, config) rendered once for the whole file (a few seconds per case)."""
    return _cached(index, next(k for k, v in CONFIGS.items() if v is config))


def _scalar(domain: dict, plane: str, key: str) -> float:
    return domain["planes"][plane][key]


def test_parameter_draw_ranges_strength_and_inversion_rate():
    r = DomainRanges()
    draws = [case_domain(i, SynthConfig(seed=7, randomize=True)) for i in range(400)]
    rate = np.mean([d["inverted"] for d in draws])
    assert 0.14 < rate < 0.26, rate  # configured 0.2; binomial sd 0.02
    half = [case_domain(i, SynthConfig(seed=7, randomize=True,
                                       domain_ranges=DomainRanges(invert_rate=0.5))) for i in range(20)]
    assert 6 <= sum(d["inverted"] for d in half) <= 14  # 0.5 of 20 cases (deterministic draw)
    for d in draws:
        for p in d["planes"].values():
            assert r.inplane_mm[0] <= p["inplane_mm"] <= r.inplane_mm[1]
            assert r.slice_mm[0] <= p["slice_mm"] <= r.slice_mm[1] and r.gap_mm[0] <= p["gap_mm"] <= r.gap_mm[1]
            assert r.gamma[0] <= p["gamma"] <= r.gamma[1] and r.noise_factor[0] <= p["noise_factor"] <= r.noise_factor[1]
            assert 0 <= p["blur_mm"] <= r.blur_mm[1] and 0 <= p["intensity_mix"] <= 1
            assert set(p["random_means"]) == {T.TISSUE_NAMES[t] for t in BASE_TISSUES}
            # still a 2D stack for preprocessing: slices at least 2 mm and 2x the in-plane spacing
            assert p["slice_mm"] + p["gap_mm"] >= max(2.0, 2 * p["inplane_mm"])
    # the draws span their ranges (per-tissue means independent, not one shared value)
    means = np.array([[d["planes"]["sagittal"]["random_means"][T.TISSUE_NAMES[t]] for t in BASE_TISSUES] for d in draws])
    assert means.min() < 0.1 and means.max() > 0.95 and abs(np.corrcoef(means[:, 0], means[:, 1])[0, 1]) < 0.15
    # strength scales every value towards the physics one with the same underlying draws
    center = get_center("center_a")
    cfg = SynthConfig(seed=7, centers=("center_a",), randomize=True)
    full, half_s, zero = (case_domain(3, SynthConfig(**{**cfg.__dict__, "randomize_strength": s})) for s in (1.0, 0.5, 0.0))
    for plane in ("sagittal", "axial"):
        assert _scalar(zero, plane, "inplane_mm") == center.inplane_mm and _scalar(zero, plane, "matrix") == center.matrix
        assert _scalar(zero, plane, "gamma") == 1.0 and _scalar(zero, plane, "noise_factor") == 1.0
        assert _scalar(zero, plane, "intensity_mix") == 0.0 and _scalar(zero, plane, "blur_mm") == 0.0
        assert _scalar(half_s, plane, "slice_mm") - center.slice_mm == pytest.approx(
            0.5 * (_scalar(full, plane, "slice_mm") - center.slice_mm))
        assert _scalar(half_s, plane, "gamma") == pytest.approx(_scalar(full, plane, "gamma") ** 0.5)
    assert not zero["inverted"]
    assert case_domain(3, SynthConfig(seed=8, randomize=True)) != case_domain(3, SynthConfig(seed=7, randomize=True))
    with pytest.raises(ValueError, match="randomize_strength"):
        SynthConfig(randomize=True, randomize_strength=1.5)


def test_inversion_reverses_the_tissue_order_and_lesions_stay_fluid_like():
    center = CENTERS["center_a"]
    seq = sample_sequence("PD-FS", np.random.default_rng(0), center)
    lut = signal_lut(T.tissue_table(3.0, 0.65), seq) * np.float32(2000.0)
    params = case_domain(0, RANDOM)["planes"]["sagittal"]
    plain, inverted = tissue_means(lut, params, False, 0.65), tissue_means(lut, params, True, 0.65)
    base = list(BASE_TISSUES)
    order = np.sign(plain[base][:, None] - plain[base][None, :])
    assert np.array_equal(np.sign(inverted[base][:, None] - inverted[base][None, :]), -order)  # every pair flips
    assert inverted[base].min() == pytest.approx(plain[base].min()) and inverted[base].max() == pytest.approx(plain[base].max())
    assert plain[T.AIR] == inverted[T.AIR] == 0.0
    # random part (mix weight 1): a lesion is its host moved towards fluid, in either contrast
    for inv in (False, True):
        m = tissue_means(lut, {**params, "intensity_mix": 1.0}, inv, 0.65)
        for t, (host, w) in T.LESION_HOSTS.items():
            assert m[t] == pytest.approx(m[host] + w * 0.65 * (m[T.FLUID] - m[host]))
    # zero mix weight: the physics intensities exactly
    assert np.allclose(tissue_means(lut, {**params, "intensity_mix": 0.0}, False, 0.65), lut)


def test_randomized_case_is_deterministic_recorded_and_keeps_labels(tmp_path):
    plain, rnd = case(0, PLAIN), case(0, RANDOM)
    again = generate_case(0, RANDOM)
    for plane, st in rnd.stacks.items():
        assert np.array_equal(st.image, again.stacks[plane].image) and np.array_equal(st.labels, again.stacks[plane].labels)
    assert rnd.meta == again.meta
    # same anatomy and findings as the plain case of this seed; only appearance and acquisition differ
    assert np.array_equal(rnd.struct, plain.struct) and np.array_equal(rnd.lesion, plain.lesion)
    assert np.array_equal(rnd.tissue, plain.tissue)
    assert rnd.findings == plain.findings and rnd.ehr == plain.ehr
    assert {k: v for k, v in rnd.meta.items() if k != "randomization"} == plain.meta
    assert "randomization" not in plain.meta
    domain = rnd.meta["randomization"]
    for plane, st in rnd.stacks.items():
        p, g, pg = domain["planes"][plane], st.geometry, plain.stacks[plane].geometry
        assert g.spacing[0] == p["inplane_mm"] and g.shape[0] == p["matrix"] and g.thickness == p["slice_mm"]
        assert g.obliquity_deg == pg.obliquity_deg  # same orientation draw, other resolution
        assert np.array_equal(st.labels, render_labels(rnd.struct, rnd.grid, g))  # labels follow the geometry
        assert st.sequence == plain.stacks[plane].sequence
        assert st.sigma == pytest.approx(plain.stacks[plane].sigma * p["noise_factor"])
        assert set(p["tissue_means"]) == set(T.TISSUE_NAMES.values())
    assert rnd.stacks["sagittal"].image.shape != plain.stacks["sagittal"].image.shape
    # every drawn value reaches case.json; the manifest row names the base map
    row = write_case(rnd, tmp_path)
    saved = json.loads((tmp_path / row["sagittal"]).parent.joinpath("case.json").read_text())
    assert saved["randomization"] == json.loads(json.dumps(domain))
    drawn = json.loads(json.dumps(domain))
    for p in drawn["planes"].values():
        del p["tissue_means"]  # computed at render time from the sequence; the rest is the parameter draw
    assert drawn == case_domain(0, RANDOM)
    assert saved["stacks"]["axial"]["inplane_mm"] == domain["planes"]["axial"]["inplane_mm"]
    assert row["base_map"] == "a"


def _ratio(st, label: int) -> float:
    """Median intensity of ``label`` over that of the femur (mostly marrow) in one stack."""
    return float(np.median(st.image[st.labels == label]) / np.median(st.image[st.labels == FEMUR]))


def test_tissue_intensities_vary_across_randomized_cases_more_than_physics():
    def spread(config, label):
        r = [_ratio(case(i, config).stacks["sagittal"], label) for i in range(3)]
        return max(r) / min(r)

    for label in (FEMORAL_CARTILAGE, MEDIAL_MENISCUS):
        assert spread(RANDOM, label) > 1.4 and spread(RANDOM, label) > spread(PLAIN, label), label
    assert spread(RANDOM, MEDIAL_MENISCUS) > 2.0
    # forcing inversion on case 0 (same draws otherwise) flips cartilage against marrow in the image
    inverted = generate_case(0, SynthConfig(**{**RANDOM.__dict__, "domain_ranges": DomainRanges(invert_rate=1.0)}))
    assert inverted.meta["randomization"]["inverted"] and not case(0, RANDOM).meta["randomization"]["inverted"]
    before, after = _ratio(case(0, RANDOM).stacks["sagittal"], FEMORAL_CARTILAGE), _ratio(inverted.stacks["sagittal"], FEMORAL_CARTILAGE)
    assert (before - 1) * (after - 1) < 0, (before, after)


def test_slice_profile_keeps_the_test_bed_shape():
    off3, w3 = slice_profile(3)
    off5, w5 = slice_profile(5)
    assert w3.sum() == pytest.approx(1) and w5.sum() == pytest.approx(1)
    assert off5[0] == off3[0] and w5[0] / w5[2] == pytest.approx(w3[0] / w3[1])
    assert profile_samples(3.0, 0.8) == 3 and profile_samples(2.0, 1.5) == 3 and profile_samples(5.0, 0.8) == 5
    for thickness in (2.0, 3.5, 5.0):  # samples no further apart than a working voxel (or 1 mm)
        for grid in (0.5, 0.8, 1.5):
            n = profile_samples(thickness, grid)
            assert n % 2 == 1 and (2 / 3) * thickness / (n - 1) <= max(grid, 1.0)


def test_cli_randomize_and_base_maps(tmp_path, capsys):
    out = tmp_path / "held_out"
    assert main(["synth", "--n", "2", "--out", str(out), "--seed", "2", "--working-mm", "1.5", "--quiet",
                 "--base-maps", "b", "--randomize", "--randomize-strength", "0.5", "--centers", "center_b"]) == 0
    assert "domain-randomised (strength 0.5)" in capsys.readouterr().out
    m = read_manifest(out / "manifest.csv")
    assert [r.extra["base_map"] for r in m] == ["b", "b"]
    for r in m:
        meta = json.loads(r.images["sagittal"].with_name("case.json").read_text())
        assert meta["base_map"] == "b" and meta["randomization"]["strength"] == 0.5
        assert "fibula" not in meta["annotated_classes"]  # map b: the image-only fibula stays unannotated
        for plane in ("sagittal", "coronal", "axial"):  # what preprocessing makes of a randomised stack
            img = sitk.ReadImage(str(r.images[plane]))
            assert detect_plane(img)[0] == plane and not is_near_isotropic_3d(img)
            assert img.GetSize()[2] >= 16 and img.GetSpacing()[0] == pytest.approx(meta["stacks"][plane]["inplane_mm"], rel=1e-6)  # NIfTI: float32
            arr, _ = preprocess(img, "released", plane, size=(64, 64))
            assert arr.shape == (16, 64, 64) and arr.min() == -1.0 and arr.max() == 1.0
    for bad, why in ((["--base-maps", "c"], "--base-maps: unknown c"),
                     (["--randomize-strength", "0.5"], "needs --randomize"),
                     (["--randomize", "--randomize-strength", "2"], "within 0..1")):
        assert main(["synth", "--n", "1", "--out", str(tmp_path / "x"), *bad]) == 2
        assert why in capsys.readouterr().err
