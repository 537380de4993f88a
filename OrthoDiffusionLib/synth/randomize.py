"""Domain randomisation on top of the MR physics (issues #14 item 4, #15 item 2).

Off by default (``SynthConfig.randomize``); the documented test bed never calls this module. When
on, each case draws, from its own two random streams (so anatomy, findings, sequences, geometry
and EHR draws stay those of the non-randomised case of the same seed and index):

* per stack, every base tissue's mean intensity independently (SynthSeg-like, Billot et al.
  2023), mixed with the physics intensity by a random weight; lesion tissues follow as the same
  blend of host towards fluid as in the physics model, so a finding keeps its "fluid in host"
  look; within-tissue variation is a smooth random texture scaled per tissue;
* per stack: in-plane resolution (matrix follows at the centre's field of view), slice
  thickness and gap, in-plane Gaussian blur, gamma, bias-field strength, noise level;
* per case: contrast inversion of all three stacks (a fraction of cases).

Every value is ``physics + S * (draw - physics)`` for strength ``S`` in 0..1 (log scale for the
noise factor and gamma; the intensity mix weight and inversion rate scale with ``S``), and the
uniform draws do not depend on ``S``: strength 0 gives the physics values (not bit for bit: the
randomised renderer differs in detail), strength 0.5 the same cases with half the spread.
Label maps are never touched; stack labels are resampled on the randomised stack geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from . import tissues as T
from .acquisition import StackGeometry, render_signal
from ..planes import PLANES

BASE_TISSUES = tuple(range(T.SKIN, T.CAPSULE + 1))  # air stays dark; lesion tissues are derived
TEXTURE_MM = 1.5  # correlation length of the within-tissue texture


@dataclass(frozen=True)
class DomainRanges:
    """Full ranges (strength 1) of the randomised quantities."""

    intensity_mix: float = 1.0            # max weight of the random tissue means vs the physics ones
    tissue_mean: tuple[float, float] = (0.05, 1.0)  # fraction of the stack's brightest physics tissue
    within_tissue_sd: float = 0.12        # max sd of the texture, same unit as tissue_mean
    bias_strength: tuple[float, float] = (0.0, 0.6)  # physics: 0.15-0.25 by centre
    noise_factor: tuple[float, float] = (0.5, 3.0)   # x physics noise sigma, log-uniform
    blur_mm: tuple[float, float] = (0.0, 1.2)        # in-plane Gaussian sigma
    inplane_mm: tuple[float, float] = (0.4, 1.0)
    # thickness + gap stays >= 2 mm and >= 2x in-plane, so preprocessing sees a 2D stack, never a
    # near-isotropic 3D volume to reformat; <= 6 mm keeps >= 17 slices over the 100-110 mm coverage
    slice_mm: tuple[float, float] = (2.0, 5.0)
    gap_mm: tuple[float, float] = (0.0, 1.0)
    gamma: tuple[float, float] = (0.6, 1.6)          # log-uniform
    invert_rate: float = 0.2                         # fraction of cases with inverted contrast


def _toward(physics: float, lo: float, hi: float, u: float, strength: float) -> float:
    return float(physics + strength * (lo + u * (hi - lo) - physics))


def _log_toward(lo: float, hi: float, u: float, strength: float) -> float:
    return float(np.exp(strength * (np.log(lo) + u * (np.log(hi) - np.log(lo)))))


def draw_domain(rng: np.random.Generator, center, strength: float = 1.0,
                ranges: DomainRanges = DomainRanges()) -> dict:
    """Every randomised parameter of one case (JSON-ready); ``center`` gives the physics values.

    The number and order of draws is fixed (inversion, then per plane 9 scalars and 2 per base
    tissue), so a parameter depends only on the stream, the strength and the centre.
    """
    s = float(strength)
    r = ranges
    out: dict = {"strength": s, "inverted": bool(rng.random() < s * r.invert_rate), "planes": {}}
    for plane in PLANES:
        u = rng.random(9)
        u_mean, u_sd = rng.random(len(BASE_TISSUES)), rng.random(len(BASE_TISSUES))
        inplane = _toward(center.inplane_mm, *r.inplane_mm, u[0], s)
        out["planes"][plane] = {
            "inplane_mm": inplane,
            "matrix": int(round(center.fov_mm / inplane)),  # field of view of the centre
            "slice_mm": _toward(center.slice_mm, *r.slice_mm, u[1], s),
            "gap_mm": _toward(center.gap_mm, *r.gap_mm, u[2], s),
            "blur_mm": _toward(0.0, *r.blur_mm, u[3], s),
            "gamma": _log_toward(*r.gamma, u[4], s),
            "bias_strength": _toward(center.bias_strength, *r.bias_strength, u[5], s),
            "noise_factor": _log_toward(*r.noise_factor, u[6], s),
            "intensity_mix": float(s * r.intensity_mix * u[7]),
            "random_means": {T.TISSUE_NAMES[t]: float(r.tissue_mean[0] + v * (r.tissue_mean[1] - r.tissue_mean[0]))
                             for t, v in zip(BASE_TISSUES, u_mean)},
            "within_tissue_sd": {T.TISSUE_NAMES[t]: float(s * r.within_tissue_sd * v)
                                 for t, v in zip(BASE_TISSUES, u_sd)},
        }
        # u[8] is spare (kept so a later parameter does not shift the per-tissue draws)
    return out


def reference_intensity(physics_lut: np.ndarray) -> float:
    """The stack's brightest base tissue (physics): the unit of the random means and textures."""
    return float(physics_lut[list(BASE_TISSUES)].max())


def tissue_means(physics_lut: np.ndarray, params: dict, inverted: bool, lesion_contrast: float) -> np.ndarray:
    """Per-tissue mean intensity (indexed by tissue id) of one randomised stack.

    ``physics_lut`` is the physics intensity per tissue; the random means are fractions of its
    brightest base tissue. Inversion mirrors the base tissues' range (air stays 0).
    """
    ref = reference_intensity(physics_lut)
    rand = np.zeros(T.N_TISSUES, np.float64)
    for t in BASE_TISSUES:
        rand[t] = params["random_means"][T.TISSUE_NAMES[t]] * ref
    for t, (host, wmax) in T.LESION_HOSTS.items():  # the physics blend weight, in intensity
        w = wmax * lesion_contrast
        rand[t] = (1 - w) * rand[host] + w * rand[T.FLUID]
    mix = params["intensity_mix"]
    means = (1 - mix) * physics_lut.astype(np.float64) + mix * rand
    if inverted:
        base = means[list(BASE_TISSUES)]
        means[1:] = base.max() + base.min() - means[1:]
    means[T.AIR] = 0.0
    return means


def texture_field(rng: np.random.Generator, shape, spacing_mm: float) -> np.ndarray:
    """Smooth zero-mean, unit-sd random field on the working grid (within-tissue variation)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), TEXTURE_MM / spacing_mm)
    field /= max(float(field.std()), 1e-6)
    return field


def textured_signal(tissue: np.ndarray, means: np.ndarray, params: dict, ref: float,
                    texture: np.ndarray) -> np.ndarray:
    """Working-grid signal: tissue means plus the per-tissue texture, never negative."""
    sd = np.zeros(T.N_TISSUES, np.float32)
    for t in BASE_TISSUES:
        sd[t] = params["within_tissue_sd"][T.TISSUE_NAMES[t]] * ref
    for t, (host, _) in T.LESION_HOSTS.items():
        sd[t] = sd[host]
    out = means.astype(np.float32)[tissue]
    out += sd[tissue] * texture
    return np.maximum(out, 0.0, out=out)


def blur_and_gamma(img: np.ndarray, params: dict, inplane_mm: float, ref: float) -> np.ndarray:
    """In-plane Gaussian blur, then ``ref * (img / ref) ** gamma`` (before bias and noise)."""
    sigma_px = params["blur_mm"] / inplane_mm
    if sigma_px > 0.05:
        img = ndimage.gaussian_filter(img, (sigma_px, sigma_px, 0.0))
    gamma = params["gamma"]
    if gamma != 1.0:
        img = (np.float32(ref) * (np.maximum(img, 0.0) / np.float32(ref)) ** np.float32(gamma)).astype(np.float32)
    return img


def profile_samples(thickness_mm: float, grid_mm: float) -> int:
    """Odd number of samples across the slice profile, about one per working voxel (>= 3), so
    thick randomised slices average what they cover instead of skipping thin structures."""
    n = int(np.ceil((2.0 / 3.0) * thickness_mm / max(grid_mm, 1.0))) + 1
    return max(3, n + (n + 1) % 2)


def render_randomized(tissue: np.ndarray, grid, geom: StackGeometry, physics_lut: np.ndarray, params: dict,
                      inverted: bool, lesion_contrast: float, texture: np.ndarray) -> np.ndarray:
    """One randomised stack before bias, motion and noise; records its ``tissue_means`` in ``params``."""
    means = tissue_means(physics_lut, params, inverted, lesion_contrast)
    params["tissue_means"] = {T.TISSUE_NAMES[t]: float(v) for t, v in enumerate(means)}  # intensity units
    ref = reference_intensity(physics_lut)
    img = render_signal(textured_signal(tissue, means, params, ref, texture), grid, geom,
                        samples=profile_samples(geom.thickness, grid.spacing))
    return blur_and_gamma(img, params, geom.spacing[0], ref)
