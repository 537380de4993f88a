"""Per-structure segmentation metrics (Dice, HD95 via MONAI) with explicit empty-mask handling.

Per case and structure the status is one of:

* ``ok``                  both masks non-empty: MONAI Dice and HD95 (95th percentile, in spacing units)
* ``both empty``          Dice 1, HD95 0
* ``empty prediction``    ground truth present, nothing predicted: Dice 0, HD95 NaN
* ``empty ground truth``  something predicted where nothing is annotated: Dice 0, HD95 NaN
* ``not annotated``       the structure is not annotated in this case: Dice and HD95 NaN, excluded
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import InputError
from . import _vectorised as vx

STATUSES = ("ok", "both empty", "empty prediction", "empty ground truth", "not annotated")


def resolve_structures(structures) -> list[tuple[str, int]]:
    """(name, label value) pairs from a LabelSet, a {name: value} dict, (name, value) pairs or ints."""
    if hasattr(structures, "values") and hasattr(structures, "keys") and hasattr(structures, "labels"):
        return list(zip(structures.keys, structures.values))  # OrthoDiffusionLib.labelsets.LabelSet
    if isinstance(structures, dict):
        return [(str(k), int(v)) for k, v in structures.items()]
    out = []
    for item in structures:
        if isinstance(item, (tuple, list)):
            out.append((str(item[0]), int(item[1])))
        else:
            out.append((str(int(item)), int(item)))
    if not out:
        raise InputError("no structures to evaluate")
    return out


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _crop(pm: np.ndarray, gm: np.ndarray):
    """Crop both masks to the bounding box of their union plus one voxel (metrics unchanged)."""
    union = pm | gm
    sl = []
    for ax in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != ax)
        hit = np.flatnonzero(union.any(axis=other))
        sl.append(slice(max(hit[0] - 1, 0), min(hit[-1] + 2, union.shape[ax])))
    sl = tuple(sl)
    return pm[sl], gm[sl]


def monai_dice_hd95(pred_mask, gt_mask, spacing=None) -> tuple[float, float]:
    """MONAI ``compute_dice`` and ``compute_hausdorff_distance(percentile=95)`` of two binary masks."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    p = torch.as_tensor(np.ascontiguousarray(pred_mask), dtype=torch.float32)[None, None]
    g = torch.as_tensor(np.ascontiguousarray(gt_mask), dtype=torch.float32)[None, None]
    dice = compute_dice(p, g, include_background=True, ignore_empty=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        hd = compute_hausdorff_distance(p, g, include_background=True, percentile=95,
                                        spacing=None if spacing is None else [float(s) for s in spacing])
    return float(dice.reshape(-1)[0]), float(hd.reshape(-1)[0])


def segmentation_case_metrics(pred, gt, structures, spacing=None, annotated=None, case_id=None) -> list[dict]:
    """Dice / HD95 / status per structure for one case.

    ``pred`` and ``gt`` are integer label maps of the same shape; ``spacing`` is the voxel size per
    axis (HD95 is then in those units, e.g. mm); ``annotated`` lists the structure names or values
    annotated in this case (None: all).
    """
    pred = _to_numpy(pred)
    gt = _to_numpy(gt)
    if pred.shape != gt.shape:
        raise InputError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    if spacing is not None and len(spacing) != gt.ndim:
        raise InputError(f"spacing has {len(spacing)} values for a {gt.ndim}-D image")
    pairs = resolve_structures(structures)
    ann = None if annotated is None else {str(a) for a in annotated}
    rows = []
    for name, value in pairs:
        row = {"case_id": case_id, "structure": name, "value": value}
        if ann is not None and name not in ann and str(value) not in ann:
            row.update(dice=float("nan"), hd95=float("nan"), status="not annotated")
        else:
            pm, gm = pred == value, gt == value
            has_p, has_g = bool(pm.any()), bool(gm.any())
            if has_p and has_g:
                d, h = monai_dice_hd95(*_crop(pm, gm), spacing=spacing)
                row.update(dice=d, hd95=h, status="ok")
            elif not has_p and not has_g:
                row.update(dice=1.0, hd95=0.0, status="both empty")
            else:
                row.update(dice=0.0, hd95=float("nan"),
                           status="empty prediction" if has_g else "empty ground truth")
        rows.append(row)
    return rows


def summarize_segmentation(per_case: list[dict], n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """Per-structure Dice / HD95 summaries with bootstrap CIs (over cases) of the mean Dice,
    and the mean over structures (macro Dice) with a joint case-level bootstrap CI."""
    names = list(dict.fromkeys(r["structure"] for r in per_case))
    cases = list(dict.fromkeys(r["case_id"] for r in per_case))
    dice = np.full((len(cases), len(names)), np.nan)
    hd = np.full_like(dice, np.nan)
    status = np.full(dice.shape, "not annotated", dtype=object)
    ci_, si_ = {c: i for i, c in enumerate(cases)}, {s: j for j, s in enumerate(names)}
    for r in per_case:
        i, j = ci_[r["case_id"]], si_[r["structure"]]
        if r["status"] != "not annotated":
            dice[i, j], hd[i, j] = r["dice"], r["hd95"]
        status[i, j] = r["status"]
    rng = np.random.default_rng([int(seed), 30_000])
    idx = rng.integers(0, len(cases), size=(int(n_boot), len(cases))) if n_boot > 0 and cases else None
    per_structure = []
    boot_means = []
    for j, name in enumerate(names):
        d = dice[:, j]
        ok = ~np.isnan(d)
        h = hd[:, j][ok]
        h = h[np.isfinite(h)]
        row = {"structure": name, "n_cases": int(ok.sum())}
        for s in STATUSES:
            row[f"n_{s.replace(' ', '_')}"] = int(np.sum(status[:, j] == s))
        row.update(dice_mean=_nanstat(np.mean, d[ok]), dice_sd=_nanstat(lambda x: np.std(x, ddof=1), d[ok], 2),
                   dice_median=_nanstat(np.median, d[ok]), dice_ci_low=float("nan"), dice_ci_high=float("nan"),
                   hd95_mean=_nanstat(np.mean, h), hd95_median=_nanstat(np.median, h), hd95_n=int(h.size))
        if idx is not None and ok.any():
            samples = _nanmean_rows(d[idx])
            boot_means.append(samples)
            row["dice_ci_low"], row["dice_ci_high"] = vx.percentile_ci(samples, ci)
        per_structure.append(row)
    macro = {"value": _nanstat(np.mean, np.array([r["dice_mean"] for r in per_structure])),
             "ci_low": float("nan"), "ci_high": float("nan")}
    if boot_means:
        macro["ci_low"], macro["ci_high"] = vx.percentile_ci(_nanmean_rows(np.stack(boot_means, axis=1)), ci)
    return {"structures": names, "n_cases": len(cases), "n_boot": int(n_boot), "seed": int(seed),
            "ci_level": float(ci), "per_structure": per_structure, "macro_dice": macro, "per_case": per_case}


def evaluate_segmentation(cases, structures, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """``cases``: iterable of dicts with ``pred``, ``gt`` and optional ``case_id``, ``spacing``,
    ``annotated``. Returns :func:`summarize_segmentation` of all per-case rows."""
    rows = []
    for i, case in enumerate(cases):
        rows += segmentation_case_metrics(case["pred"], case["gt"], structures, spacing=case.get("spacing"),
                                          annotated=case.get("annotated"), case_id=case.get("case_id", f"case_{i}"))
    return summarize_segmentation(rows, n_boot=n_boot, seed=seed, ci=ci)


def _nanstat(fn, x: np.ndarray, min_n: int = 1) -> float:
    return float(fn(x)) if x.size >= min_n else float("nan")


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=-1)


def label_dice(pred, target, values, keys, count: str = "target") -> dict:
    """Dice per structure of label maps [N, ...] (or one map), the one rule used while fitting and
    fine-tuning (``evaluate`` adds HD95, statuses and CIs):

    - voxels where ``target`` < 0 are unlabelled and left out;
    - a structure is scored in a case when the target has it (``count="target"``) or when the
      target or the prediction has it (``count="either"``: a structure the annotator deleted but
      the heads still predict scores 0); otherwise that case does not score it;
    - per structure: the mean over the cases that score it (None when none does); ``mean_dice``:
      the mean over the structures with a value.
    """
    if count not in ("target", "either"):
        raise ValueError(f"count must be 'target' or 'either', got {count!r}")
    pred, target = _to_numpy(pred), _to_numpy(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    if pred.ndim == 3:
        pred, target = pred[None], target[None]
    out = {}
    for v, key in zip(values, keys):
        scores = []
        for a, b in zip(pred, target):
            valid = b >= 0
            pa, pb = (a == v) & valid, (b == v) & valid
            n_pred, n_target = int(pa.sum()), int(pb.sum())
            if n_target > 0 or (count == "either" and n_pred > 0):
                scores.append(2.0 * float((pa & pb).sum()) / (n_pred + n_target))
        out[key] = float(np.mean(scores)) if scores else None
    vals = [x for x in out.values() if x is not None]
    return {"dice": out, "mean_dice": float(np.mean(vals)) if vals else None, "n": int(len(pred))}
