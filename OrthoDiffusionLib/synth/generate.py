"""Synthetic knee cohort: one case = anatomy + findings + contrast + three 2D stacks + EHR.

Determinism: every case draws from ``numpy.random.SeedSequence(seed, spawn_key=(index, stream))``
with one stream per component (meta, anatomy, sequences, geometry, bias, noise, motion, EHR and
one per finding), so a case depends only on (seed, index) - not on worker count or order - and
switching one finding on or off leaves every other random draw unchanged. Domain randomisation
(``randomize``, off by default) draws from two streams of its own (domain, texture), so a
randomised case has the anatomy, findings, sequences and EHR of the plain case of the same seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import tissues as T
from .acquisition import (PLANES, StackGeometry, add_rician, bias_field, motion_ringing,
                          render_labels, render_signal, sample_geometry)
from .contrast import CENTERS, SNR_3T_FACTOR, Sequence, get_center, sample_sequence, signal_lut
from .deform import pack, sample_spatial, unpack, warp_packed
from .ehr import sample_ehr, sample_findings
from .findings import FINDING_KEYS, SEVERITY_DRAW, finding_severity, finding_size, inject
from .randomize import DomainRanges, draw_domain, render_randomized, texture_field
from .shapes import Grid
from .template import BASE_MAPS, load_template

INTENSITY_GAIN = 2000.0  # fixed signal -> int16 scale (content independent)
SPLITS = ("train", "val", "test")
_STREAMS = {"meta": 0, "anatomy": 1, "sequence": 2, "geometry": 3, "bias": 4, "noise": 5,
            "motion": 6, "ehr": 7, "domain": 8, "texture": 9}

# Calibrated per-finding difficulty (issue #3; docs/testbed.md "Difficulty",
# scripts/calibrate_difficulty.py): chosen so that the from-scratch 3D CNN baseline trained on
# 100 labelled cases lands near AUROC 0.65-0.9 per label. Setting every value to 0.5 (with
# difficulty 0.5) reproduces the generator before this knob existed.
DEFAULT_FINDING_DIFFICULTY = {"ACL": 0.0, "PCL": 0.0, "MM": 0.0, "LM": 0.0, "MCL": 0.1, "LCL": 0.0,
                              "PD": 0.55, "EFFU": 0.4}


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator (defaults = the documented test bed)."""

    seed: int = 0
    centers: tuple[str, ...] = tuple(CENTERS)
    prevalence: dict = field(default_factory=lambda: {k: 0.25 for k in FINDING_KEYS})
    difficulty: float = 0.5          # 0 easy (big, bright lesions, high SNR) .. 1 subtle
    # per finding key, 0..1: lesion size + severity range of that finding (contrast and SNR stay
    # global); a key left out follows ``difficulty``
    finding_difficulty: dict = field(default_factory=lambda: dict(DEFAULT_FINDING_DIFFICULTY))
    working_mm: float = 0.8          # isotropic working / reference grid spacing
    base_maps: tuple[str, ...] = ("a", "b")
    motion: bool = True
    bias: bool = True
    missing_rate: float = 0.04
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    snr_scale: float = 1.0           # extra SNR multiplier (tests)
    protocol: dict | None = None     # plane -> sequence name, overrides the centre's protocol
    # domain randomisation (synth/randomize.py): off keeps the documented test bed bit for bit
    randomize: bool = False
    randomize_strength: float = 1.0  # 0 (physics values) .. 1 (full ranges)
    domain_ranges: DomainRanges = DomainRanges()

    def __post_init__(self):
        bad = [k for k in self.finding_difficulty if k not in FINDING_KEYS]
        if bad:
            raise ValueError(f"finding_difficulty: unknown finding {bad[0]!r} (known: {', '.join(FINDING_KEYS)})")
        out = [k for k, v in self.finding_difficulty.items() if not 0.0 <= float(v) <= 1.0]
        if out:
            raise ValueError(f"finding_difficulty[{out[0]!r}] must be within 0..1")
        if not 0.0 <= float(self.randomize_strength) <= 1.0:
            raise ValueError("randomize_strength must be within 0..1")
        unknown = [b for b in self.base_maps if b not in BASE_MAPS]
        if unknown or not self.base_maps:
            raise ValueError(f"base_maps: unknown {unknown[0]!r} (known: {', '.join(BASE_MAPS)})" if unknown
                             else "base_maps: give at least one of " + ", ".join(BASE_MAPS))

    def difficulty_of(self, key: str) -> float:
        """Difficulty of finding ``key``: its ``finding_difficulty`` entry, else ``difficulty``."""
        return float(self.finding_difficulty.get(key, self.difficulty))

    @property
    def finding_difficulties(self) -> dict[str, float]:
        return {k: self.difficulty_of(k) for k in FINDING_KEYS}

    @property
    def lesion_contrast(self) -> float:
        return float(np.clip(1.0 - 0.7 * self.difficulty, 0.05, 1.0))

    @property
    def lesion_size(self) -> float:
        """Size scale at the global ``difficulty`` (findings use ``finding_size`` of their own)."""
        return finding_size(self.difficulty)

    @property
    def snr_factor(self) -> float:
        return float(np.clip(1.4 - 0.8 * self.difficulty, 0.3, 2.0)) * self.snr_scale


@dataclass
class Stack:
    geometry: StackGeometry
    sequence: Sequence
    image: np.ndarray      # float32, intensity units (signal x INTENSITY_GAIN)
    labels: np.ndarray     # uint8 knee-11
    sigma: float           # noise sigma in intensity units
    snr: float             # requested SNR (muscle / sigma)
    motion: bool


@dataclass
class Case:
    index: int
    study_id: str
    patient_id: str
    grid: Grid
    tissue: np.ndarray     # case-grid tissue ids
    struct: np.ndarray     # case-grid knee-11 labels (the 3D reference)
    lesion: np.ndarray     # case-grid lesion mask
    stacks: dict[str, Stack]
    findings: dict[str, int]
    ehr: dict
    meta: dict


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index), int(stream))))


def study_ids(seed: int, index: int) -> tuple[str, str]:
    return f"SYN{seed}-{index:05d}", f"SYN{seed}-P{index:05d}"


def _base_and_center(meta_rng: np.random.Generator, config: SynthConfig):
    base = config.base_maps[int(meta_rng.integers(len(config.base_maps)))]
    return base, get_center(config.centers[int(meta_rng.integers(len(config.centers)))])


def case_domain(index: int, config: SynthConfig) -> dict:
    """The randomisation parameters case ``index`` draws (what ``case.json`` records, without the
    per-stack ``tissue_means``, which need the rendered sequence), in microseconds, no rendering."""
    _, center = _base_and_center(_rng(config.seed, index, _STREAMS["meta"]), config)
    return draw_domain(_rng(config.seed, index, _STREAMS["domain"]), center, config.randomize_strength,
                       config.domain_ranges)


def generate_case(index: int, config: SynthConfig = SynthConfig(), *,
                  force_findings: dict[str, int] | None = None,
                  noise_seed: int | None = None) -> Case:
    """Generate case ``index`` of the cohort defined by ``config`` (in memory).

    ``force_findings`` overrides the sampled findings (keys of knee-8); ``noise_seed`` replaces
    the noise stream only (two calls differing only in it give a noise-only difference image).
    """
    seed = config.seed
    meta_rng = _rng(seed, index, _STREAMS["meta"])
    base, center = _base_and_center(meta_rng, config)
    field_t = 3.0 if meta_rng.random() < center.p_3t else 1.5
    findings = sample_findings(meta_rng, config.prevalence)
    split_u = meta_rng.random()
    if force_findings:
        for k, v in force_findings.items():
            if k not in FINDING_KEYS:
                raise ValueError(f"unknown finding {k!r}")
            findings[k] = int(v)
    f_rngs = {k: _rng(seed, index, 10 + i) for i, k in enumerate(FINDING_KEYS)}
    f_diff = config.finding_difficulties
    severity = {k: finding_severity(float(f_rngs[k].uniform(*SEVERITY_DRAW)), f_diff[k]) for k in FINDING_KEYS}
    f_size = {k: finding_size(f_diff[k]) for k in FINDING_KEYS}

    tp = load_template(base, config.working_mm)
    les = inject(tp, {k: bool(v) for k, v in findings.items()}, f_rngs, severity, f_size, f_diff)
    spatial = sample_spatial(_rng(seed, index, _STREAMS["anatomy"]))
    center_mm = tp.landmarks["knee_center"]
    packed = warp_packed(pack(les.tissue, les.struct, les.lesion), tp.grid, center_mm, spatial)
    del les.tissue, les.struct
    tissue, struct, lesion = unpack(packed)
    del packed

    table = T.tissue_table(field_t, config.lesion_contrast)
    seq_rng = _rng(seed, index, _STREAMS["sequence"])
    geo_rng = _rng(seed, index, _STREAMS["geometry"])
    bias_rng = _rng(seed, index, _STREAMS["bias"])
    noise_rng = (np.random.default_rng(noise_seed) if noise_seed is not None
                 else _rng(seed, index, _STREAMS["noise"]))
    motion_rng = _rng(seed, index, _STREAMS["motion"])
    snr = center.snr_1p5 * (SNR_3T_FACTOR if field_t > 2 else 1.0) * config.snr_factor
    domain = texture = None
    if config.randomize:
        domain = case_domain(index, config)
        texture = texture_field(_rng(seed, index, _STREAMS["texture"]), tissue.shape, tp.grid.spacing)
    stacks: dict[str, Stack] = {}
    for plane in PLANES:
        seq_name = (config.protocol or center.protocol).get(plane, center.protocol[plane])
        seq = sample_sequence(seq_name, seq_rng, center)
        lut = signal_lut(table, seq, gamma=center.gamma) * np.float32(INTENSITY_GAIN)
        sigma = float(lut[T.MUSCLE]) / snr
        if domain is None:
            geom = sample_geometry(plane, center_mm, center.inplane_mm, center.matrix, center.slice_mm,
                                   center.gap_mm, geo_rng)
            img = render_signal(lut[tissue], tp.grid, geom)
            bias_strength = center.bias_strength
        else:
            p = domain["planes"][plane]
            geom = sample_geometry(plane, center_mm, p["inplane_mm"], p["matrix"], p["slice_mm"], p["gap_mm"], geo_rng)
            img = render_randomized(tissue, tp.grid, geom, lut, p, domain["inverted"], config.lesion_contrast,
                                    texture)
            bias_strength, sigma = p["bias_strength"], sigma * p["noise_factor"]
        bias = bias_field(geom, center_mm, bias_strength, bias_rng)
        if config.bias:
            img *= bias
        moved = bool(motion_rng.random() < center.motion_prob)
        if config.motion and moved:
            img = motion_ringing(img, motion_rng)
        img = add_rician(img, sigma, noise_rng)
        stacks[plane] = Stack(geom, seq, img, render_labels(struct, tp.grid, geom), sigma,
                              snr if domain is None else snr / p["noise_factor"], bool(config.motion and moved))
    ehr = sample_ehr(_rng(seed, index, _STREAMS["ehr"]), findings, config.missing_rate)
    fr = np.cumsum(config.split_fractions) / np.sum(config.split_fractions)
    split = SPLITS[int(np.searchsorted(fr, split_u, side="right"))] if split_u < fr[-1] else SPLITS[-1]
    sid, pid = study_ids(seed, index)
    meta = {
        "base_map": base, "side": "left" if spatial.mirror else "right", "center": center.name,
        "vendor": center.vendor, "field_strength": field_t, "split": split,
        "annotated_classes": list(tp.annotated), "severity": severity,
        "lesion_contrast": config.lesion_contrast, "lesion_size": config.lesion_size,
        "difficulty": config.difficulty, "finding_difficulty": f_diff, "finding_size": f_size,
        "finding_details": les.details,
        "spatial": {"rotation_deg": spatial.rotation_deg, "scale": spatial.scale,
                    "anisotropy": spatial.anisotropy, "mirror": spatial.mirror,
                    "elastic_mm": spatial.elastic_mm},
    }
    if domain is not None:  # absent otherwise: plain cases keep their case.json byte for byte
        meta["randomization"] = domain
    return Case(index, sid, pid, tp.grid, tissue, struct, lesion, stacks, findings, ehr, meta)


def _write_image(arr: np.ndarray, path: Path, spacing, origin, direction) -> None:
    import SimpleITK as sitk

    from ..storage import atomic_path

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), True, 1)  # fast gzip level: noise does not compress anyway


def write_case(case: Case, out_dir: str | os.PathLike) -> dict:
    """Write the case's NIfTI files and sidecar JSON; return its manifest row (relative paths)."""
    from ..storage import atomic_write_json

    out = Path(out_dir)
    rel = Path("cases") / case.study_id
    folder = out / rel
    folder.mkdir(parents=True, exist_ok=True)
    row: dict = {"study_id": case.study_id, "patient_id": case.patient_id}
    stacks_meta = {}
    for plane, st in case.stacks.items():
        g = st.geometry
        img = np.clip(np.rint(st.image), 0, 32767).astype(np.int16)
        _write_image(img, folder / f"{plane}.nii.gz", g.spacing, g.origin, g.direction)
        _write_image(st.labels, folder / f"labels_{plane}.nii.gz", g.spacing, g.origin, g.direction)
        row[plane] = str(rel / f"{plane}.nii.gz")
        row[f"labels_{plane}"] = str(rel / f"labels_{plane}.nii.gz")
        stacks_meta[plane] = {
            "sequence": st.sequence.name, "tr_ms": st.sequence.tr, "te_ms": st.sequence.te,
            "flip_deg": st.sequence.flip_deg, "fat_suppressed": st.sequence.fat_sat,
            "inplane_mm": g.spacing[0], "matrix": g.shape[0], "n_slices": g.shape[2],
            "slice_thickness_mm": g.thickness, "gap_mm": g.gap,
            "obliquity_deg": g.obliquity_deg, "snr_muscle": st.snr, "noise_sigma": st.sigma,
            "motion_ringing": st.motion,
        }
    gr = case.grid
    _write_image(case.struct, folder / "labels_reference.nii.gz", (gr.spacing,) * 3, gr.origin, np.eye(3))
    row["labels_reference"] = str(rel / "labels_reference.nii.gz")
    row.update({k: case.findings[k] for k in FINDING_KEYS})
    row.update(case.ehr)
    m = case.meta
    row.update({"center": m["center"], "field_strength": m["field_strength"], "vendor": m["vendor"],
                "annotated_classes": ";".join(m["annotated_classes"]), "split": m["split"],
                "side": m["side"], "base_map": m["base_map"]})
    atomic_write_json(folder / "case.json", {"study_id": case.study_id, "findings": case.findings,
                                             "ehr": case.ehr, "stacks": stacks_meta, **m,
                                             "disclaimer": "synthetic test bed, not clinical data"})
    return row


def _work(args) -> dict:
    index, config, out_dir = args
    return write_case(generate_case(index, config), out_dir)


def _init_worker() -> None:
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except Exception:  # pragma: no cover
        pass


def synthesize_cohort(n: int, out_dir: str | os.PathLike, config: SynthConfig = SynthConfig(),
                      workers: int = 1, progress: bool = True) -> Path:
    """Generate ``n`` cases into ``out_dir`` and write ``out_dir/manifest.csv``; return its path.

    Cases are independent (seeded from (seed, index)), so the output does not depend on
    ``workers``. Runs in a ``ProcessPoolExecutor`` when ``workers > 1``.
    """
    from tqdm import tqdm

    from ..io.manifest import write_manifest

    from ..ownership import claim_folder

    out = claim_folder(out_dir, "synth")
    for name in config.base_maps:  # build once in the parent; forked workers inherit the cache
        load_template(name, config.working_mm)
    jobs = [(i, config, out) for i in range(n)]
    rows: list[dict] = []
    bar = tqdm(total=n, desc="synth", unit="case", disable=not progress)
    if workers <= 1:
        _init_worker()
        for job in jobs:
            rows.append(_work(job))
            bar.update()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as ex:
            futures = [ex.submit(_work, job) for job in jobs]
            for fut in as_completed(futures):
                rows.append(fut.result())
                bar.update()
    bar.close()
    rows.sort(key=lambda r: r["study_id"])
    return write_manifest(rows, out / "manifest.csv", label_set="knee-8")


def config_with(config: SynthConfig, **kw) -> SynthConfig:
    return replace(config, **kw)
