"""Signal equations, sequences and center (vendor) profiles of the synthetic test bed.

Signal models (magnitude, arbitrary units, per tissue):

* 2D turbo spin echo (PD, PD-FS, T2-FS, T1): ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)``
  (long echo-train effects ignored; TE is the effective TE).
* DESS-like: the balanced steady state of Scheffler K, "On the transient phase of balanced SSFP
  sequences", MRM 2003;49:781-783 (eq. for TR << T2):
  ``S = PD sin(a) / (1 + cos(a) + (1 - cos(a)) T1/T2) exp(-TE/T2*)``, water excitation. It gives
  DESS's bright fluid / intermediate cartilage contrast; it is not a DESS echo-pair model.
* Fat saturation / water excitation keeps ``1 - ff (1 - residual)`` of a tissue's signal;
  ``residual`` (0.05-0.12) is the centre's fat-suppression imperfection.
* Vendor contrast: a monotonic power law ``S' = S_ref (S / S_ref)^gamma`` per centre (scanner
  post-processing differences), applied before noise.

Field strength: relaxation values at 1.5 or 3 T come from ``tissues.py``; SNR at 3 T is
1.8 x SNR at 1.5 T (1.6-2 x in practice, e.g. Gold GE et al., AJR 2004;183:343-351).
SNR is defined as mean muscle signal / noise sigma (Rician noise added in the image domain).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import tissues as T

SEQUENCES = ("PD", "PD-FS", "T2-FS", "T1", "DESS")

# default (TR ms range, TE ms range, flip deg, fat suppressed)
_SEQ_DEFAULTS = {
    "PD": ((2500.0, 3500.0), (25.0, 35.0), 90.0, False),
    "PD-FS": ((2500.0, 3500.0), (25.0, 35.0), 90.0, True),
    "T2-FS": ((3000.0, 4500.0), (55.0, 75.0), 90.0, True),
    "T1": ((450.0, 650.0), (9.0, 14.0), 90.0, False),
    "DESS": ((15.0, 20.0), (4.5, 6.0), 27.0, True),
}
SNR_3T_FACTOR = 1.8


@dataclass(frozen=True)
class Sequence:
    name: str
    tr: float
    te: float
    flip_deg: float
    fat_sat: bool
    fs_residual: float = 0.08


def sample_sequence(name: str, rng: np.random.Generator, center: "CenterProfile") -> Sequence:
    if name not in _SEQ_DEFAULTS:
        raise ValueError(f"unknown sequence {name!r} (known: {', '.join(SEQUENCES)})")
    (tr_lo, tr_hi), (te_lo, te_hi), flip, fs = _SEQ_DEFAULTS[name]
    te_shift = center.te_shift_ms if name in ("PD", "PD-FS", "T2-FS") else 0.0
    return Sequence(name=name, tr=float(rng.uniform(tr_lo, tr_hi)),
                    te=float(rng.uniform(te_lo, te_hi) + te_shift), flip_deg=flip, fat_sat=fs,
                    fs_residual=center.fs_residual)


def tissue_signal(props: T.Relaxation, seq: Sequence) -> float:
    if props.pd <= 0:
        return 0.0
    if seq.name == "DESS":
        a = np.deg2rad(seq.flip_deg)
        s = props.pd * np.sin(a) / (1 + np.cos(a) + (1 - np.cos(a)) * props.t1 / props.t2)
        s *= np.exp(-seq.te / props.t2s)
        s *= 4.0  # bring the SSFP level near the TSE range
    else:
        s = props.pd * (1 - np.exp(-seq.tr / props.t1)) * np.exp(-seq.te / props.t2)
    if seq.fat_sat:
        s *= 1.0 - props.ff * (1.0 - seq.fs_residual)
    return float(s)


def signal_lut(table: list[T.Relaxation], seq: Sequence, gamma: float = 1.0,
               s_ref: float = 0.3) -> np.ndarray:
    """Noise-free signal per tissue id (float32), vendor power law applied."""
    lut = np.array([tissue_signal(p, seq) for p in table], np.float64)
    lut = s_ref * (np.maximum(lut, 0) / s_ref) ** gamma
    return lut.astype(np.float32)


@dataclass(frozen=True)
class CenterProfile:
    """A site: vendor-like contrast, geometry, field-strength mix and noise."""

    name: str
    vendor: str
    p_3t: float
    inplane_mm: float
    matrix: int
    slice_mm: float
    gap_mm: float
    snr_1p5: float
    protocol: dict = field(default_factory=dict)  # plane -> sequence name
    fs_residual: float = 0.08
    te_shift_ms: float = 0.0
    gamma: float = 1.0
    bias_strength: float = 0.15
    motion_prob: float = 0.05

    @property
    def fov_mm(self) -> float:
        return self.inplane_mm * self.matrix


CENTERS: dict[str, CenterProfile] = {
    "center_a": CenterProfile("center_a", "vendor_s", p_3t=0.7, inplane_mm=0.625, matrix=256,
                              slice_mm=3.0, gap_mm=0.3, snr_1p5=16.0,
                              protocol={"sagittal": "PD-FS", "coronal": "PD-FS", "axial": "PD-FS"},
                              fs_residual=0.06, gamma=1.0, bias_strength=0.15, motion_prob=0.05),
    "center_b": CenterProfile("center_b", "vendor_g", p_3t=0.3, inplane_mm=0.7, matrix=224,
                              slice_mm=4.0, gap_mm=0.8, snr_1p5=14.0,
                              protocol={"sagittal": "PD-FS", "coronal": "T1", "axial": "T2-FS"},
                              fs_residual=0.10, te_shift_ms=5.0, gamma=0.9, bias_strength=0.25,
                              motion_prob=0.10),
    "center_c": CenterProfile("center_c", "vendor_p", p_3t=0.5, inplane_mm=0.65, matrix=240,
                              slice_mm=3.5, gap_mm=0.35, snr_1p5=18.0,
                              protocol={"sagittal": "PD-FS", "coronal": "PD", "axial": "PD-FS"},
                              fs_residual=0.12, te_shift_ms=-3.0, gamma=1.1, bias_strength=0.20,
                              motion_prob=0.08),
}


def get_center(name: str) -> CenterProfile:
    if name not in CENTERS:
        raise ValueError(f"unknown center {name!r} (known: {', '.join(CENTERS)})")
    return CENTERS[name]
