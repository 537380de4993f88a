"""Anatomical template of a knee built from a real label map (once per map and process).

The shipped maps (``Resources/Anatomy``, two right knees, sagittal 3D DESS grid) label bones and
cartilage (map a also fibula and menisci). This module resamples a map onto an axis-aligned LPS
working grid (isotropic, default 0.8 mm), extends the femoral and tibial shafts by edge
replication, and adds what the maps lack, placed from bone geometry:

* cruciate ligaments as flat bands through the intercondylar notch: ACL from the medial wall of
  the lateral femoral condyle (posterior notch) to the anterior tibial eminence; PCL from the
  lateral wall of the medial condyle (anterior notch) to the posterior tibia ~1 cm below the
  plateau (Girgis FG et al., Clin Orthop 1975;106:216-231; typical ACL length 31-38 mm);
* MCL on the medial surface (joint line to ~5 cm below it), LCL cord from the lateral
  epicondyle to the fibular head; patellar and quadriceps tendons;
* for map b, menisci (wedge-shaped C rims on the tibial plateau periphery, 5-6 mm high at the
  periphery) and a fibula (image only: map b does not annotate it);
* cortex (outer 1.6 mm of each bone) vs fatty marrow, a physiologic joint-fluid film on the
  cartilage surfaces, posterior capsule, subcutaneous fat, skin, muscle, Hoffa / popliteal fat.

Coordinates: arrays are indexed (x, y, z) along LPS axes; the medial side of the right knee is
+x (towards the body midline, patient left).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..resources import resource_path
from . import tissues as T
from .shapes import Grid, band_mask, bbox_slices, ellipsoid_mask

BASE_MAPS = {"a": "knee_labels_a_10class.nrrd", "b": "knee_labels_b_7class.nrrd"}

# source map values
SRC_FEM_CART, SRC_MED_TIB_CART, SRC_LAT_TIB_CART, SRC_PAT_CART = 1, 2, 3, 4
SRC_FEMUR, SRC_TIBIA, SRC_PATELLA, SRC_FIBULA, SRC_LM, SRC_MM = 5, 6, 7, 8, 9, 10

# knee-11 structure values
FEMUR, TIBIA, PATELLA, FIBULA = 1, 2, 3, 4
FEM_CART, TIB_CART, PAT_CART, MED_MEN, LAT_MEN, ACL, PCL = 5, 6, 7, 8, 9, 10, 11
KNEE11_KEYS = ("femur", "tibia", "patella", "fibula", "femoral_cartilage", "tibial_cartilage",
               "patellar_cartilage", "medial_meniscus", "lateral_meniscus", "acl", "pcl")

_SRC_TO_K11 = {SRC_FEM_CART: FEM_CART, SRC_MED_TIB_CART: TIB_CART, SRC_LAT_TIB_CART: TIB_CART,
               SRC_PAT_CART: PAT_CART, SRC_FEMUR: FEMUR, SRC_TIBIA: TIBIA, SRC_PATELLA: PATELLA,
               SRC_FIBULA: FIBULA, SRC_LM: LAT_MEN, SRC_MM: MED_MEN}


@dataclass
class Template:
    """One knee's tissue and structure maps on the working grid, plus landmarks (mm, LPS)."""

    name: str
    grid: Grid
    tissue: np.ndarray          # uint8 tissue ids (tissues.py)
    struct: np.ndarray          # uint8 knee-11 values
    annotated: tuple[str, ...]  # knee-11 keys truly annotated
    medial_sign: float          # +1: medial is +x (right knee in LPS)
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # flat voxel indices


def _read_base(name: str, spacing: float):
    import SimpleITK as sitk

    img = sitk.ReadImage(str(resource_path("Anatomy", BASE_MAPS[name])))
    arr = sitk.GetArrayFromImage(img)
    nz = np.argwhere(arr > 0)
    lo_idx, hi_idx = nz.min(0)[::-1], nz.max(0)[::-1]
    corners = np.array([[a, b, c] for a in (lo_idx[0], hi_idx[0]) for b in (lo_idx[1], hi_idx[1])
                        for c in (lo_idx[2], hi_idx[2])], float)
    pts = np.array([img.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    lo, hi = pts.min(0), pts.max(0)
    # margins: 25 mm left/right, 22 mm anterior, 48 mm posterior (popliteal fossa), 22 mm S-I
    lo = lo - np.array([25.0, 22.0, 22.0])
    hi = hi + np.array([25.0, 48.0, 22.0])
    shape = tuple(int(np.ceil((hi[a] - lo[a]) / spacing)) + 1 for a in range(3))
    ref = sitk.Image([int(s) for s in shape], sitk.sitkUInt8)
    ref.SetSpacing([spacing] * 3)
    ref.SetOrigin(lo.tolist())
    res = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    src = sitk.GetArrayFromImage(res).transpose(2, 1, 0).copy()
    # S-I coverage of the source map: replicate the extreme covered slices (shafts continue)
    z_cov = np.flatnonzero((src == SRC_FEMUR).any(axis=(0, 1)) | (src == SRC_TIBIA).any(axis=(0, 1)))
    z0, z1 = int(z_cov.min()) + 1, int(z_cov.max()) - 1
    src[:, :, :z0] = src[:, :, z0:z0 + 1]
    src[:, :, z1 + 1:] = src[:, :, z1:z1 + 1]
    return src, Grid(shape=shape, origin=tuple(lo.tolist()), spacing=spacing)


def _centroid(grid: Grid, mask: np.ndarray) -> np.ndarray:
    return grid.world(np.argwhere(mask).mean(0))


def _world_of(grid: Grid, mask: np.ndarray) -> np.ndarray:
    return grid.world(np.argwhere(mask))


@functools.lru_cache(maxsize=4)
def load_template(name: str = "a", spacing: float = 0.8) -> Template:
    """Build (and cache per process) the template of base map ``name`` ('a' or 'b')."""
    src, grid = _read_base(name, spacing)
    struct = np.zeros(src.shape, np.uint8)
    for s, k in _SRC_TO_K11.items():
        struct[src == s] = k
    has_menisci = bool((src == SRC_MM).any())
    has_fibula = bool((src == SRC_FIBULA).any())
    lm = _landmarks(grid, src, struct)
    tissue = np.zeros(src.shape, np.uint8)
    parts: dict[str, np.ndarray] = {}

    if not has_fibula:
        fib = _synthetic_fibula(grid, struct, lm)
        struct_bone_extra = fib  # image-only bone
    else:
        struct_bone_extra = np.zeros(src.shape, bool)
    if not has_menisci:
        _synthetic_menisci(grid, struct, lm)

    bone = np.isin(struct, (FEMUR, TIBIA, PATELLA, FIBULA)) | struct_bone_extra
    cart = np.isin(struct, (FEM_CART, TIB_CART, PAT_CART))
    men = np.isin(struct, (MED_MEN, LAT_MEN))
    hard = bone | cart | men
    lm["fibula_head"] = _fibular_head(grid, bone & ~np.isin(struct, (FEMUR, TIBIA, PATELLA)), lm)

    _body(grid, tissue, hard, lm)
    marrow = np.zeros_like(bone)
    for lab_mask in (struct == FEMUR, struct == TIBIA, struct == PATELLA,
                     (struct == FIBULA) | struct_bone_extra):
        marrow |= ndimage.binary_erosion(lab_mask, iterations=2)
    tissue[bone] = T.CORTEX
    tissue[marrow] = T.MARROW
    tissue[cart] = T.CARTILAGE
    tissue[men] = T.MENISCUS
    soft = ~hard & (tissue != T.AIR) & (tissue != T.SKIN)
    near_cart = ndimage.binary_dilation(cart, iterations=max(1, int(round(1.2 / spacing))))
    tissue[near_cart & soft] = T.FLUID
    _capsule(grid, tissue, hard, lm)

    for key, (p0, p1, wdir, hw, ht, lab) in _ligament_geometry(lm).items():
        sl, mask, _ = band_mask(grid, p0, p1, wdir, hw, ht)
        mask = mask & ~hard[sl]  # ligaments never overwrite bone, cartilage or menisci
        sub_t = tissue[sl]
        sub_t[mask] = T.TENDON if key.endswith("tendon") else T.LIGAMENT
        if lab is not None:
            struct[sl][mask] = lab
        parts[key] = _flat(grid, sl, mask)
    mcl = _mcl_mask(grid, hard, lm)
    tissue[mcl] = T.LIGAMENT
    parts["mcl"] = np.flatnonzero(mcl)
    annotated = tuple(k for k in KNEE11_KEYS if k != "fibula" or has_fibula)
    return Template(name=name, grid=grid, tissue=tissue, struct=struct, annotated=annotated,
                    medial_sign=float(lm.pop("medial_sign")[0]), landmarks=lm, parts=parts)


def _flat(grid: Grid, sl, mask) -> np.ndarray:
    idx = np.nonzero(mask)
    full = tuple(idx[a] + sl[a].start for a in range(3))
    return np.ravel_multi_index(full, grid.shape)


def _landmarks(grid: Grid, src: np.ndarray, struct: np.ndarray) -> dict[str, np.ndarray]:
    med = _centroid(grid, src == SRC_MED_TIB_CART)
    lat = _centroid(grid, src == SRC_LAT_TIB_CART)
    tib_cart = _world_of(grid, struct == TIB_CART)
    z_tp = float(np.median(tib_cart[:, 2]))
    sign = 1.0 if med[0] > lat[0] else -1.0
    x_c = 0.5 * (med[0] + lat[0])
    tib = _world_of(grid, struct == TIBIA)
    plateau = tib[(tib[:, 2] > z_tp - 14) & (tib[:, 2] < z_tp - 2)]
    y_ant, y_post = np.percentile(plateau[:, 1], [1, 99])
    fem = _world_of(grid, struct == FEMUR)
    cond = fem[(fem[:, 2] > z_tp + 4) & (fem[:, 2] < z_tp + 25)]
    y_post_f = float(np.percentile(cond[:, 1], 99))
    pat = _world_of(grid, struct == PATELLA)
    return {
        "medial_sign": np.array([sign]), "z_tp": np.array([z_tp]), "x_c": np.array([x_c]),
        "y_ant_tibia": np.array([y_ant]), "y_post_tibia": np.array([y_post]),
        "y_post_femur": np.array([y_post_f]),
        "med_plateau": med, "lat_plateau": lat,
        "knee_center": np.array([x_c, 0.5 * (y_ant + y_post), z_tp + 5.0]),
        "patella_center": pat.mean(0), "patella_top": pat[pat[:, 2].argmax()],
        "patella_bottom": pat[pat[:, 2].argmin()],
        "patella_ymin": np.array([pat[:, 1].min()]),
        "x_lat_tibia": np.array([tib[(tib[:, 2] > z_tp - 20)][:, 0].min() if sign > 0
                                 else tib[(tib[:, 2] > z_tp - 20)][:, 0].max()]),
        "x_fem_med": np.array([cond[:, 0].max() if sign > 0 else cond[:, 0].min()]),
        "x_fem_lat": np.array([cond[:, 0].min() if sign > 0 else cond[:, 0].max()]),
        "_tib_points": tib[tib[:, 2] > z_tp - 40], "_fem_points": cond,
    }


def _top_of(points: np.ndarray, x: float, y: float, r: float = 2.5) -> float:
    sel = points[(np.abs(points[:, 0] - x) < r) & (np.abs(points[:, 1] - y) < r)]
    return float(sel[:, 2].max()) if len(sel) else float("nan")


def _ligament_geometry(lm) -> dict:
    s = float(lm["medial_sign"][0])
    x_c, z_tp = float(lm["x_c"][0]), float(lm["z_tp"][0])
    ya, yp = float(lm["y_ant_tibia"][0]), float(lm["y_post_tibia"][0])
    depth = yp - ya
    tib = lm["_tib_points"]
    # ACL: tibial footprint anterior to the eminence, femoral on the lateral condyle's medial wall
    acl_t = np.array([x_c + 1.0 * s, ya + 0.33 * depth, 0.0])
    acl_t[2] = _top_of(tib, acl_t[0], acl_t[1]) - 2.0
    acl_f = np.array([x_c - 7.0 * s, float(lm["y_post_femur"][0]) - 11.0, z_tp + 27.0])
    # PCL: femoral on the medial condyle's lateral wall (anterior notch), tibial posterior facet
    pcl_f = np.array([x_c + 7.0 * s, ya + 0.50 * depth, z_tp + 27.0])
    pcl_t = np.array([x_c, yp + 1.0, z_tp - 11.0])
    lm["acl_femoral"], lm["acl_tibial"] = acl_f, acl_t
    lm["pcl_femoral"], lm["pcl_tibial"] = pcl_f, pcl_t
    # LCL: lateral epicondyle to fibular head
    fh = lm["fibula_head"]
    lcl_f = np.array([float(lm["x_fem_lat"][0]) + 1.0 * s, ya + 0.62 * depth, z_tp + 22.0])
    lcl_t = np.array([fh[0] - 3.0 * s, fh[1], fh[2] + 2.0])
    # tendons
    pb, pt = lm["patella_bottom"], lm["patella_top"]
    y_front = float(lm["patella_ymin"][0])
    tub_z = z_tp - 27.0
    tub = tib[(np.abs(tib[:, 2] - tub_z) < 1.5) & (np.abs(tib[:, 0] - pb[0]) < 6)]
    tub_y = float(tub[:, 1].min()) if len(tub) else ya
    pat_t0 = np.array([pb[0], pb[1] - 1.5, pb[2] + 3.0])
    pat_t1 = np.array([pb[0] - 2.0 * s, tub_y + 2.0, tub_z])
    quad0 = np.array([pt[0], y_front + 5.0, pt[2] - 4.0])
    quad1 = np.array([pt[0] + 3.0 * s, y_front + 14.0, pt[2] + 60.0])
    X = (1.0, 0.0, 0.0)
    Y = (0.0, 1.0, 0.0)
    return {
        "acl": (acl_f, acl_t, Y, 4.5, 3.2, ACL),
        "pcl": (pcl_f, pcl_t, Y, 5.5, 4.0, PCL),
        "lcl": (lcl_f, lcl_t, Y, 2.6, 2.0, None),
        "patellar_tendon": (pat_t0, pat_t1, X, 12.0, 2.6, None),
        "quadriceps_tendon": (quad0, quad1, X, 13.0, 3.2, None),
    }


def _mcl_mask(grid: Grid, hard: np.ndarray, lm) -> np.ndarray:
    """Band on the medial surface: 1-3.5 mm outside the most medial hard tissue of each row."""
    s = float(lm["medial_sign"][0])
    z_tp = float(lm["z_tp"][0])
    ya, yp = float(lm["y_ant_tibia"][0]), float(lm["y_post_tibia"][0])
    yc = ya + 0.55 * (yp - ya)
    sl = bbox_slices(grid, (grid.origin[0], yc - 6.0, z_tp - 55.0),
                     (grid.origin[0] + grid.spacing * grid.shape[0], yc + 6.0, z_tp + 30.0))
    sub = hard[sl]
    nx = sub.shape[0]
    any_ = sub.any(axis=0)
    if s > 0:
        edge = nx - 1 - np.argmax(sub[::-1], axis=0)
    else:
        edge = np.argmax(sub, axis=0)
    ix = np.arange(nx)[:, None, None]
    off = s * (ix - edge[None]) * grid.spacing
    band = (off >= 0.8) & (off <= 3.6) & any_[None]
    out = np.zeros(grid.shape, bool)
    out[sl] = band
    return out


def _synthetic_fibula(grid: Grid, struct: np.ndarray, lm) -> np.ndarray:
    """Posterolateral fibula (head + shaft) for maps without one; image-only."""
    s = float(lm["medial_sign"][0])
    z_tp = float(lm["z_tp"][0])
    yp = float(lm["y_post_tibia"][0])
    head = np.array([float(lm["x_lat_tibia"][0]) + 7.0 * s, yp - 10.0, z_tp - 22.0])
    out = np.zeros(grid.shape, bool)
    sl, m, _ = ellipsoid_mask(grid, head, (10.0, 10.0, 11.0))
    out[sl] |= m
    bottom = head + np.array([1.5 * s, -2.0, -120.0])
    sl, m, _ = band_mask(grid, head, bottom, (1, 0, 0), 6.5, 6.5)
    out[sl] |= m
    out &= ~np.isin(struct, (TIBIA, TIB_CART))
    out = ndimage.binary_opening(out, iterations=1)
    return out


def _fibular_head(grid: Grid, fib: np.ndarray, lm) -> np.ndarray:
    pts = _world_of(grid, fib)
    z_tp = float(lm["z_tp"][0])
    pts = pts[pts[:, 2] > z_tp - 60]
    top = pts[:, 2].max()
    head = pts[pts[:, 2] > top - 8]
    s = float(lm["medial_sign"][0])
    lateral_x = head[:, 0].min() if s > 0 else head[:, 0].max()
    return np.array([lateral_x, head[:, 1].mean(), top - 4.0])


def _synthetic_menisci(grid: Grid, struct: np.ndarray, lm) -> None:
    """C-shaped wedges on the periphery of each tibial plateau (map b has no menisci)."""
    s = float(lm["medial_sign"][0])
    x_c = float(lm["x_c"][0])
    sp = grid.spacing
    xs, ys, zs = grid.axes()
    tib_cart = struct == TIB_CART
    tibia_or_cart = tib_cart | (struct == TIBIA)
    femoral = np.isin(struct, (FEMUR, FEM_CART))
    top = np.where(tibia_or_cart.any(2), tibia_or_cart.shape[2] - 1 - np.argmax(tibia_or_cart[:, :, ::-1], axis=2), -1)
    for label, side in ((MED_MEN, +1), (LAT_MEN, -1)):
        on_side = (s * side * (xs - x_c) > 2.0)[:, None]
        foot = tib_cart.any(2) & on_side
        if not foot.any():
            continue
        d_in = ndimage.distance_transform_edt(foot) * sp
        d_out = ndimage.distance_transform_edt(~foot) * sp
        width = 9.0 if label == MED_MEN else 8.0
        ring = (d_out <= 2.5) & (d_in <= width) & ~((d_out == 0) & (d_in == 0))
        ring &= (top >= 0)
        # open the C towards the notch (horns attach near the eminence)
        fy = np.nonzero(foot)[1]
        y0, y1 = ys[fy.min()], ys[fy.max()]
        yc, half = 0.5 * (y0 + y1), 0.5 * (y1 - y0)
        fx = xs[np.nonzero(foot)[0]]
        xc_comp = fx.mean()
        notch_side = (s * side * (xs - xc_comp) < 0)[:, None]
        ring &= ~(notch_side & (np.abs(ys - yc) < 0.35 * half)[None, :])
        frac = np.clip((width - d_in) / (width + 2.5), 0, 1)
        height = np.where(d_out > 0, 6.0, 6.0 * frac)  # mm; wedge thins towards the free edge
        ix, iy = np.nonzero(ring)
        for i, j in zip(ix, iy):
            k0 = top[i, j] + 1
            k1 = min(struct.shape[2], k0 + int(round(height[i, j] / sp)))
            col = struct[i, j, k0:k1]
            free = (col == 0) & ~femoral[i, j, k0:k1]
            # stop at the first femoral voxel (the meniscus is squeezed, never inside the condyle)
            hit = np.flatnonzero(~free)
            n = hit[0] if len(hit) else len(col)
            col[:n] = label


def _body(grid: Grid, tissue: np.ndarray, hard: np.ndarray, lm) -> None:
    """Leg outline (ellipse per axial slice around the bones), skin, fat, muscle, fat pads."""
    xs, ys, zs = grid.axes()
    any_x = hard.any(axis=1)  # (x, z)
    any_y = hard.any(axis=0)  # (y, z)
    big = 1e6

    def extent(mask2d, coords, fn):
        vals = np.where(mask2d, coords[:, None], fn * big)
        return vals.min(0) if fn > 0 else vals.max(0)

    xmin, xmax = extent(any_x, xs, +1), extent(any_x, xs, -1)
    ymin, ymax = extent(any_y, ys, +1), extent(any_y, ys, -1)
    win = int(round(20.0 / grid.spacing))
    xmin = ndimage.minimum_filter1d(xmin, win)
    ymin = ndimage.minimum_filter1d(ymin, win)
    xmax = ndimage.maximum_filter1d(xmax, win)
    ymax = ndimage.maximum_filter1d(ymax, win)
    sig = 8.0 / grid.spacing
    xmin, xmax, ymin, ymax = (ndimage.gaussian_filter1d(v, sig, mode="nearest") for v in (xmin, xmax, ymin, ymax))
    x0 = 0.5 * (xmin + xmax)
    ax = 0.5 * (xmax - xmin) + 14.0
    yf, yb = ymin - 9.0, ymax + 32.0
    y0, ay = 0.5 * (yf + yb), 0.5 * (yb - yf)
    dx = xs[:, None, None] - x0[None, None, :]
    dy = ys[None, :, None] - y0[None, None, :]
    r = np.sqrt((dx / ax) ** 2 + (dy / ay) ** 2)
    dist = np.sqrt(dx ** 2 + dy ** 2)
    depth = np.where(r > 1e-6, dist * (1.0 / np.maximum(r, 1e-6) - 1.0), big)
    inside = r <= 1.0
    tissue[inside] = T.MUSCLE
    tissue[inside & (depth < 6.5)] = T.FAT
    tissue[inside & (depth < 1.6)] = T.SKIN
    z_tp, x_c = float(lm["z_tp"][0]), float(lm["x_c"][0])
    ya, yp = float(lm["y_ant_tibia"][0]), float(lm["y_post_tibia"][0])
    deep = inside & (depth >= 1.6) & ~hard
    pt, pymin = lm["patella_top"], float(lm["patella_ymin"][0])
    pads = (
        ((x_c, ya - 3.0, z_tp + 7.0), (20.0, 12.0, 14.0)),                  # Hoffa (infrapatellar)
        ((pt[0], pymin + 20.0, pt[2] + 8.0), (18.0, 8.0, 14.0)),            # suprapatellar fat pad
        ((x_c, yp + 20.0, z_tp + 8.0), (13.0, 16.0, 42.0)),                 # popliteal fossa
    )
    for center, semi in pads:
        sl, m, _ = ellipsoid_mask(grid, center, semi)
        sub = tissue[sl]
        sub[m & deep[sl]] = T.FAT
    lm["body_axes"] = np.stack([x0, ax, y0, ay])  # per z


def _capsule(grid: Grid, tissue: np.ndarray, hard: np.ndarray, lm) -> None:
    z_tp = float(lm["z_tp"][0])
    ya, yp = float(lm["y_ant_tibia"][0]), float(lm["y_post_tibia"][0])
    sl = bbox_slices(grid, (grid.origin[0], ya + 0.5 * (yp - ya), z_tp - 10),
                     (grid.origin[0] + grid.spacing * grid.shape[0], yp + 30, z_tp + 35))
    d = ndimage.distance_transform_edt(~hard[sl]) * grid.spacing
    sub = tissue[sl]
    shell = (d > 4.5) & (d <= 5.7) & np.isin(sub, (T.FAT, T.MUSCLE))
    sub[shell] = T.CAPSULE
