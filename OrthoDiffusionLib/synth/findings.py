"""Knee-8 findings as local changes of the template's tissue and structure maps.

Every finding edits only voxels near its lesion and flags them in ``lesion`` (the mask the tests
use to check locality). Lesion tissues are blends towards fluid whose strength is set per case by
the lesion contrast (``tissues.tissue_table``); sizes scale with ``size_scale``. Patterns follow
standard MSK MRI teaching (e.g. Sanders TG et al., Radiographics 2000;20:S135-S151 for bone
bruise patterns; De Smet AA, AJR 2012;199:481-499 for meniscal tear signs):

* ACL: mid-substance / proximal discontinuity with fluid signal (torn voxels leave class acl),
  wavy high-signal remnant, pivot-shift bruises of the lateral femoral condyle (sulcus terminalis)
  and posterolateral tibial plateau.
* PCL: shorter gap with thick intrasubstance signal; optional anterior tibial (dashboard) bruise.
* MM / LM: oblique fluid-signal cleft in a horn (MM posterior horn most often) reaching the
  articular surface; cleft voxels leave the meniscus class.
* MCL / LCL: thickened ligament with intrasubstance signal and periligamentous oedema.
* PD: lateral patellar displacement with bruises of the medial patellar facet and the
  anterolateral femoral condyle, medial retinacular oedema, haemarthrosis where the patella was.
* EFFU: distended suprapatellar recess (depth 4-12 mm at difficulty 0.5); negatives keep 0-2.5 mm
  of fluid.

Per-finding difficulty ``d`` (``SynthConfig.finding_difficulty``, 0 easy .. 1 subtle) sets each
finding's size scale and severity range (``finding_size``, ``finding_severity``) and, for EFFU, the
minimum distension (``effusion_depth_mm``). At ``d = 0.5`` every formula gives exactly the values of
the generator before per-finding difficulty existed (size 0.95, severity uniform 0.15-1, EFFU depth
(4 + 8 s) x size).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import tissues as T
from .shapes import ellipsoid_mask, sphere_mask
from .template import LAT_MEN, MED_MEN, PAT_CART, PATELLA, FEMUR, TIBIA, Template

FINDING_KEYS = ("ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU")
SOFT = (T.FAT, T.MUSCLE, T.CAPSULE, T.FLUID, T.SOFT_OEDEMA)
SEVERITY_DRAW = (0.15, 1.0)  # the per-case uniform draw; finding_severity maps it by difficulty


def finding_size(difficulty: float) -> float:
    """Lesion size scale of a finding at ``difficulty``: 1.8 at 0, 0.95 at 0.5, 0.65 at 1 (piecewise
    linear; from 0.5 to 1 the formula of the earlier global knob, 1.25 - 0.6 d). The easy end is
    steeper because the baseline CNN sees each stack at ~2.5 mm in-plane (central 16 slices of
    3.3-4.8 mm), where lesions of a few millimetres barely register."""
    if difficulty < 0.5:
        return float(0.95 + 1.7 * (0.5 - difficulty))
    return float(np.clip(1.25 - 0.6 * difficulty, 0.4, 1.5))


def finding_severity(u: float, difficulty: float) -> float:
    """Map the case's uniform draw ``u`` in [0.15, 1) to the severity range of ``difficulty``:
    [0.15 + 0.6 (0.5 - d), 1 + 0.4 (0.5 - d)] clipped at 0, i.e. [0.45, 1.2] at d = 0,
    [0.15, 1.0] at d = 0.5 (``u`` itself, bit for bit) and [0, 0.8] at d = 1. Monotone in ``u``."""
    lo, hi = SEVERITY_DRAW
    t = (u - lo) / (hi - lo)
    return float(max(0.0, u + (0.5 - difficulty) * (0.6 - 0.2 * t)))


def effusion_depth_mm(severity: float, size: float, difficulty: float) -> float:
    """Suprapatellar recess depth of an effusion: (floor + 8 s) x size with floor 6 - 4 d mm
    (6 mm at d = 0, 4 mm at 0.5, 2 mm at 1). Negatives keep 0-2.5 mm of physiologic fluid, so
    positives and negatives are separated at low difficulty and overlap at high difficulty."""
    return float((4.0 + 2.0 * (1.0 - 2.0 * difficulty) + 8.0 * severity) * size)


class Lesions:
    """Mutable tissue/structure/lesion maps of one case in template space."""

    def __init__(self, tp: Template):
        self.tp = tp
        self.g = tp.grid
        self.tissue = tp.tissue.copy()
        self.struct = tp.struct.copy()
        self.lesion = np.zeros(tp.tissue.shape, bool)
        self.details: dict[str, dict] = {}

    # helpers -----------------------------------------------------------------------------
    def paint(self, sl, mask, tissue_id, struct_value=None):
        sub_t = self.tissue[sl]
        changed = mask & (sub_t != tissue_id)
        sub_t[mask] = tissue_id
        if struct_value is not None:
            sub_s = self.struct[sl]
            changed |= mask & (sub_s != struct_value)
            sub_s[mask] = struct_value
        self.lesion[sl] |= changed

    def world(self, flat_idx):
        return self.g.world(np.column_stack(np.unravel_index(flat_idx, self.g.shape)))

    def lm(self, key) -> np.ndarray:
        return self.tp.landmarks[key]

    def scalar(self, key) -> float:
        return float(self.tp.landmarks[key][0])

    def bruise(self, center, radius):
        sl, m, _ = sphere_mask(self.g, center, radius)
        self.paint(sl, m & (self.tissue[sl] == T.MARROW), T.MARROW_OEDEMA)

    # findings ----------------------------------------------------------------------------
    def cruciate_tear(self, key, rng, severity, size, t_range, gap_mm, bruises):
        idx = self.tp.parts[key.lower()]
        pts = self.world(idx)
        p0, p1 = self.lm(f"{key.lower()}_femoral"), self.lm(f"{key.lower()}_tibial")
        axis = p1 - p0
        length = np.linalg.norm(axis)
        t_mm = (pts - p0) @ (axis / length)
        vis = t_mm[(self.tissue.ravel()[idx] == T.LIGAMENT)]
        lo, hi = np.percentile(vis, [5, 95]) if len(vis) else (0.0, length)
        centre = lo + rng.uniform(*t_range) * (hi - lo)
        half = 0.5 * gap_mm * size
        flat_t = self.tissue.ravel()
        gap = idx[np.abs(t_mm - centre) < half]
        near = idx[(np.abs(t_mm - centre) >= half) & (np.abs(t_mm - centre) < half + 4.0 * size)]
        near = near[flat_t[near] == T.LIGAMENT]
        gap = gap[flat_t[gap] == T.LIGAMENT]
        self._paint_flat(near, T.LIGAMENT_OEDEMA, None)
        self._paint_flat(gap, T.TORN_LIGAMENT, 0)
        c = p0 + axis / length * centre
        sl, m, _ = sphere_mask(self.g, c, (4.0 + 2.0 * severity) * size)
        self.paint(sl, m & (self.tissue[sl] == T.FAT), T.SOFT_OEDEMA)
        for b_center, b_radius in bruises:
            self.bruise(b_center, b_radius)
        self.details[key] = {"gap_center_mm": float(centre), "gap_mm": float(2 * half),
                             "removed_voxels": int(len(gap))}

    def _paint_flat(self, flat_idx, tissue_id, struct_value):
        if len(flat_idx) == 0:
            return
        ft, fs, fl = self.tissue.ravel(), self.struct.ravel(), self.lesion.ravel()
        fl[flat_idx] = True
        ft[flat_idx] = tissue_id
        if struct_value is not None:
            fs[flat_idx] = struct_value

    def acl(self, rng, severity, size):
        s = self.tp.medial_sign
        lat = self.lm("lat_plateau")
        r = (4.0 + 5.0 * severity) * size
        bruises = []
        if rng.random() < 0.7:  # pivot-shift pattern
            fem_z = self._bone_surface_z(FEMUR, lat[0], lat[1] - 6.0, top=False)
            tib_z = self._bone_surface_z(TIBIA, lat[0] - 2.0 * s, lat[1] + 12.0, top=True)
            bruises = [((lat[0], lat[1] - 6.0, fem_z + 0.6 * r), r),
                       ((lat[0] - 2.0 * s, lat[1] + 12.0, tib_z - 0.6 * r), 0.8 * r)]
        self.cruciate_tear("ACL", rng, severity, size, (0.3, 0.7), 3.0 + 5.0 * severity, bruises)

    def pcl(self, rng, severity, size):
        bruises = []
        if rng.random() < 0.4:  # dashboard injury: anterior tibial bruise
            ya = self.scalar("y_ant_tibia")
            xc = self.scalar("x_c")
            z = self._bone_surface_z(TIBIA, xc, ya + 6.0, top=True)
            r = (4.0 + 4.0 * severity) * size
            bruises = [((xc, ya + 6.0, z - 0.6 * r), r)]
        self.cruciate_tear("PCL", rng, severity, size, (0.35, 0.7), 2.0 + 4.0 * severity, bruises)

    def _bone_surface_z(self, label, x, y, top: bool) -> float:
        i = np.clip(np.round(self.g.index((x, y, 0))).astype(int), 0, np.array(self.g.shape) - 1)
        col = np.flatnonzero(self.tp.struct[i[0], i[1], :] == label)
        if len(col) == 0:
            return self.scalar("z_tp")
        k = col.max() if top else col.min()
        return float(self.g.world((0, 0, k))[2])

    def meniscus_tear(self, key, rng, severity, size):
        label = MED_MEN if key == "MM" else LAT_MEN
        pos = np.flatnonzero(self.struct.ravel() == label)
        if len(pos) == 0:
            return
        pts = self.world(pos)
        cy = pts[:, 1].mean()
        p_post = 0.75 if key == "MM" else 0.5
        u = rng.random()
        region = "posterior_horn" if u < p_post else ("body" if u < p_post + 0.3 else "anterior_horn")
        if region == "posterior_horn":
            sel = pts[:, 1] > cy + 4.0
        elif region == "anterior_horn":
            sel = pts[:, 1] < cy - 4.0
        else:
            sel = np.abs(pts[:, 1] - cy) <= 6.0
        if sel.sum() < 10:
            sel = np.ones(len(pts), bool)
        centre = pts[sel].mean(0)
        phi = np.deg2rad(rng.uniform(25.0, 60.0)) * rng.choice([-1.0, 1.0])
        normal = np.array([0.0, np.sin(phi), np.cos(phi)])
        half_thick = max(0.55 * self.g.spacing, (0.5 + 0.5 * severity) * size)
        extent = (5.0 + 6.0 * severity) * size
        d = (pts - centre) @ normal
        r = np.linalg.norm((pts - centre) - np.outer(d, normal), axis=1)
        cleft = pos[sel & (np.abs(d) < half_thick) & (r < extent)]
        self._paint_flat(cleft, T.MENISCAL_CLEFT, 0)
        self.details[key] = {"region": region, "cleft_voxels": int(len(cleft)),
                             "angle_deg": float(np.rad2deg(phi))}

    def collateral(self, key, rng, severity, size):
        idx = self.tp.parts[key.lower()]
        if len(idx) == 0:
            return
        pts = self.world(idx)
        z_tp = self.scalar("z_tp")
        keep = pts[:, 2] > z_tp - 15.0 if key == "MCL" else np.ones(len(idx), bool)
        idx = idx[keep]
        ijk = np.column_stack(np.unravel_index(idx, self.g.shape))
        pad = int(np.ceil(8.0 / self.g.spacing))
        lo = np.maximum(ijk.min(0) - pad, 0)
        hi = np.minimum(ijk.max(0) + pad + 1, self.g.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        lig = np.zeros(tuple(hi - lo), bool)
        lig[tuple((ijk - lo).T)] = True
        thick = max(1, int(round((0.8 + 1.2 * severity) * size / self.g.spacing)))
        grown = ndimage.binary_dilation(lig, iterations=thick)
        halo = ndimage.binary_dilation(grown, iterations=max(2, int(round(3.0 * size / self.g.spacing))))
        sub_t = self.tissue[sl]
        soft = np.isin(sub_t, SOFT)
        self.paint(sl, halo & ~grown & soft, T.SOFT_OEDEMA)
        self.paint(sl, (grown & soft) | lig, T.LIGAMENT_OEDEMA)
        self.details[key] = {"thickening_voxels": thick}

    def patellar_dislocation(self, rng, severity, size):
        s = self.tp.medial_sign
        shift_mm = (3.0 + 6.0 * severity) * size
        shift = -s * shift_mm  # lateral
        n = int(round(shift / self.g.spacing))
        pc = self.lm("patella_center")
        sl, _, _ = ellipsoid_mask(self.g, pc, (40.0, 30.0, 40.0))
        sub_t, sub_s = self.tissue[sl], self.struct[sl]
        pat = np.isin(sub_s, (PATELLA, PAT_CART))
        new_pat = np.roll(pat, n, axis=0)
        moved_t, moved_s = np.roll(sub_t, n, axis=0), np.roll(sub_s, n, axis=0)
        vacated = pat & ~new_pat
        out_t, out_s = sub_t.copy(), sub_s.copy()
        out_t[vacated], out_s[vacated] = T.FLUID, 0
        out_t[new_pat], out_s[new_pat] = moved_t[new_pat], moved_s[new_pat]
        changed = (out_t != sub_t) | (out_s != sub_s)
        sub_t[...], sub_s[...] = out_t, out_s
        self.lesion[sl] |= changed
        r = (4.0 + 4.0 * severity) * size
        new_c = pc + np.array([shift, 0.0, 0.0])
        self.bruise(new_c + np.array([s * 8.0, 5.0, 0.0]), r)            # medial patellar facet
        ya, yp = self.scalar("y_ant_tibia"), self.scalar("y_post_tibia")
        lat_fc = (self.scalar("x_fem_lat") + s * 9.0, ya + 0.05 * (yp - ya), self.scalar("z_tp") + 14.0)
        self.bruise(lat_fc, r)                                            # anterolateral condyle
        sl2, m, _ = ellipsoid_mask(self.g, pc + np.array([s * 22.0, 4.0, 0.0]), (8.0, 10.0, 14.0))
        self.paint(sl2, m & np.isin(self.tissue[sl2], (T.FAT, T.MUSCLE)), T.SOFT_OEDEMA)
        self.details["PD"] = {"lateral_shift_mm": float(abs(n) * self.g.spacing)}

    def suprapatellar_fluid(self, depth_mm, rng):
        if depth_mm <= 0.3:
            return
        top = self.lm("patella_top")
        z = top[2] + 12.0
        i = np.round(self.g.index((top[0], 0, z))).astype(int)
        col = np.flatnonzero(self.tp.struct[i[0], :, min(i[2], self.g.shape[2] - 1)] == FEMUR)
        y_femur = float(self.g.world((0, col.min(), 0))[1]) if len(col) else top[1] + 12.0
        centre = (top[0], y_femur - 0.5 * depth_mm - 0.8, z)
        semi = (rng.uniform(17.0, 24.0), 0.5 * depth_mm, rng.uniform(13.0, 20.0) + depth_mm)
        sl, m, _ = ellipsoid_mask(self.g, centre, semi)
        self.paint(sl, m & np.isin(self.tissue[sl], (T.FAT, T.MUSCLE, T.CAPSULE, T.SOFT_OEDEMA)), T.FLUID)
        return semi


def inject(tp: Template, present: dict[str, bool], rngs: dict[str, np.random.Generator],
           severity: dict[str, float], size_scale: float | dict[str, float],
           difficulty: dict[str, float] | None = None) -> Lesions:
    """Apply the findings marked present; each finding draws only from its own ``rngs[key]``.

    ``size_scale``: one scale for every finding or one per finding key; ``difficulty`` (per key,
    default 0.5) only sets the effusion's minimum depth (``effusion_depth_mm``).
    """
    size = size_scale if isinstance(size_scale, dict) else {k: float(size_scale) for k in FINDING_KEYS}
    diff = {**{k: 0.5 for k in FINDING_KEYS}, **(difficulty or {})}
    les = Lesions(tp)
    eff_rng = rngs["EFFU"]
    physiologic = eff_rng.uniform(0.0, 2.5)
    les.suprapatellar_fluid(physiologic, eff_rng)
    les.lesion[...] = False  # physiologic fluid is anatomy, not a lesion
    if present.get("EFFU"):
        depth = effusion_depth_mm(severity["EFFU"], size["EFFU"], diff["EFFU"])
        semi = les.suprapatellar_fluid(depth, eff_rng)
        les.details["EFFU"] = {"depth_mm": float(depth), "semi_axes_mm": semi}
    if present.get("PD"):
        les.patellar_dislocation(rngs["PD"], severity["PD"], size["PD"])
    if present.get("ACL"):
        les.acl(rngs["ACL"], severity["ACL"], size["ACL"])
    if present.get("PCL"):
        les.pcl(rngs["PCL"], severity["PCL"], size["PCL"])
    for key in ("MM", "LM"):
        if present.get(key):
            les.meniscus_tear(key, rngs[key], severity[key], size[key])
    for key in ("MCL", "LCL"):
        if present.get(key):
            les.collateral(key, rngs[key], severity[key], size[key])
    return les
