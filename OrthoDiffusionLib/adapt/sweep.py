"""Timestep/block sweep (DDAE-style linear probes): which (t, block) gives each plane's backbone
its most linearly separable features for the findings of a labelled cohort.

Per plane, every case goes through ONE feature extraction: all timesteps in batched forward
passes that stop after the deepest requested block (``FeatureExtractor``), one seeded noise draw.
Each (t, block) activation is globally average-pooled to a C-vector, and a standardised
L2-logistic regression (``evaluation.probe.make_probe``) is fitted per finding:

- manifest with ``train`` rows and ``val`` (else ``test``) rows: fit on train, score on val/test;
- otherwise: patient-grouped, multi-label-stratified k-fold (``heads.stratify``), out-of-fold
  scores.

``--label-fraction`` keeps that stratified fraction of the training rows (of each training fold).
Score of a cell = macro AUROC over the findings with both classes among the scored rows. Best
setting per plane = the cell with the highest macro AUROC (ties: the earlier t, then the earlier
block in the order given). Outputs: ``sweep.csv`` (one row per plane × t × block),
``sweep.json``, ``sweep_heatmap.png`` (one panel per plane, rows t, columns blocks).
Research use only; scores on the synthetic test bed are not clinical performance.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np

from .. import csvsafe  # formula-safe cells in every CSV the tool writes

from ..planes import PLANES


def parse_list(text: str, cast=str, what: str = "value") -> list:
    from ..errors import UserError

    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise UserError(f"empty {what} list")
    try:
        out = [cast(s) for s in items]
    except ValueError:
        raise UserError(f"{what} list '{text}': every entry must be an integer") from None
    if len(set(out)) != len(out):
        raise UserError(f"{what} list '{text}' repeats an entry")
    return out


def pooled_plane_features(rows, plane: str, backbone, sha: str, timesteps, blocks, preprocessing: str,
                          seed: int = 0, device="cpu", cache=None, progress: bool = True):
    """(row indices with this plane, {(t, block): [n, C]} globally average-pooled features)."""
    from tqdm import tqdm

    from ..features import FeatureSpec
    from ..features.cohort import read_plane_image
    from ..features.plane import plane_features, prepare_plane

    fspec = FeatureSpec(timesteps=tuple(timesteps), blocks=tuple(blocks), seed=seed, n_draws=1,
                        preprocessing=preprocessing)
    idx, pooled = [], {(t, b): [] for t in timesteps for b in blocks}
    for i, row in enumerate(tqdm(rows, desc=f"features {plane}", unit="case", disable=not progress)):
        path = row.images.get(plane)
        if path is None:
            continue
        ready = prepare_plane(read_plane_image(path, plane), plane, backbone.config, preprocessing)
        feats = plane_features((backbone, sha), ready, fspec, cache, device)
        for key, value in feats.items():
            pooled[key].append(value[0].float().mean(dim=tuple(range(1, value[0].ndim))).numpy())
        idx.append(i)
    return np.array(idx, dtype=int), {k: np.stack(v) if v else np.zeros((0, 0)) for k, v in pooled.items()}


def _fit_predict(X_train, y_train, X_eval) -> np.ndarray | None:
    from ..evaluation.probe import make_probe

    known = ~np.isnan(y_train)
    y = y_train[known].astype(int)
    if len(np.unique(y)) < 2:
        return None
    return make_probe().fit(X_train[known], y).predict_proba(X_eval)[:, 1]


def probe_scores(X: np.ndarray, Y: np.ndarray, plan: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per-finding AUROC [K] (NaN where not scorable) of probes fitted/scored on ``plan`` =
    [(train indices, eval indices), ...] (one pair for a split, k pairs for out-of-fold)."""
    from ..evaluation.classification import auroc
    from threadpoolctl import threadpool_limits

    n, k = Y.shape
    scores = np.full(k, np.nan)
    for j in range(k):
        pred = np.full(n, np.nan)
        for train, ev in plan:
            with threadpool_limits(1):  # tiny problems: BLAS threads only add overhead
                p = _fit_predict(X[train], Y[train, j], X[ev])
            if p is not None:
                pred[ev] = p
        ok = ~np.isnan(pred) & ~np.isnan(Y[:, j])
        if ok.any() and len(np.unique(Y[ok, j])) == 2:
            scores[j] = auroc(Y[ok, j], pred[ok])
    return scores


def evaluation_plan(rows, Y: np.ndarray, label_fraction: float, folds: int, seed: int):
    """(protocol name, [(train idx, eval idx), ...]) over the given rows."""
    from ..errors import UserError
    from ..heads.stratify import label_fraction_subset, stratified_kfold

    def subset(train):
        if label_fraction >= 1.0 or len(train) == 0:
            return train
        return train[label_fraction_subset(Y[train], label_fraction, seed)]

    splits = np.array([r.split or "" for r in rows])
    train = np.flatnonzero(np.isin(splits, ["train", ""]))
    for name in ("val", "test"):
        ev = np.flatnonzero(splits == name)
        if len(ev) and len(train):
            return f"train→{name}", [(subset(train), ev)]
    if len(rows) < folds:
        raise UserError(f"{len(rows)} cases are too few for {folds}-fold probes; lower --folds or add cases")
    fold = stratified_kfold(Y, folds, seed, [r.patient_id for r in rows])
    return f"{folds}-fold out-of-fold", [(subset(np.flatnonzero(fold != f)), np.flatnonzero(fold == f))
                                        for f in range(folds)]


def best_cells(table: list[dict], timesteps, blocks) -> dict:
    """plane -> the row with the highest macro AUROC (ties: earlier t, then earlier block)."""
    best = {}
    for r in table:
        if not np.isfinite(r["macro_auroc"]):
            continue
        key = (-r["macro_auroc"], timesteps.index(r["timestep"]), blocks.index(r["block"]))
        if r["plane"] not in best or key < best[r["plane"]][0]:
            best[r["plane"]] = (key, r)
    return {p: v[1] for p, v in best.items()}


def write_heatmap(table: list[dict], planes, timesteps, blocks, best: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import DISCLAIMER
    from ..storage import atomic_path

    grids = {p: np.full((len(timesteps), len(blocks)), np.nan) for p in planes}
    for r in table:
        grids[r["plane"]][timesteps.index(r["timestep"]), blocks.index(r["block"])] = r["macro_auroc"]
    values = np.concatenate([g.ravel() for g in grids.values()])
    finite = values[np.isfinite(values)]
    lo = min(0.5, float(finite.min())) if finite.size else 0.0
    hi = max(lo + 0.05, float(finite.max())) if finite.size else 1.0
    fig, axes = plt.subplots(1, len(planes), figsize=(1.5 + (0.8 * len(blocks) + 0.6) * len(planes),
                                                      1.9 + 0.45 * len(timesteps)), squeeze=False, layout="constrained")
    for n, (ax, plane) in enumerate(zip(axes[0], planes)):
        im = ax.imshow(grids[plane], cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
        ax.set_xticks(range(len(blocks)), blocks, rotation=45, ha="right")
        ax.set_yticks(range(len(timesteps)), [str(t) for t in timesteps] if n == 0 else [])
        ax.set_xlabel("block")
        if n == 0:
            ax.set_ylabel("timestep t")
        for i in range(len(timesteps)):
            for j in range(len(blocks)):
                v = grids[plane][i, j]
                ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if np.isnan(v) or v < (lo + hi) / 2 else "black")
        b = best.get(plane)
        if b is not None:
            ax.add_patch(plt.Rectangle((blocks.index(b["block"]) - 0.5, timesteps.index(b["timestep"]) - 0.5), 1, 1,
                                       fill=False, edgecolor="red", linewidth=2))
        ax.set_title(plane + (f"\nbest t={b['timestep']} {b['block']}" if b else ""), fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="macro AUROC\n(linear probe)", shrink=0.9)
    fig.suptitle(f"Timestep × block sweep\n{DISCLAIMER}", fontsize=8)
    layout = json.dumps({"panels": list(planes), "rows_timesteps": list(timesteps), "cols_blocks": list(blocks)})
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                    metadata={"Title": "OrthoDiffusion timestep/block sweep", "Description": DISCLAIMER,
                              "Layout": layout})
    plt.close(fig)
    return path


def run_sweep(manifest_path, model: str, timesteps, blocks, out, label_fraction: float = 1.0, folds: int = 5,
              seed: int = 0, planes=None, device="cpu", cache=None, progress: bool = True) -> dict:
    from .. import DISCLAIMER
    from ..io.manifest import read_manifest
    from ..errors import UserError
    from ..storage import atomic_write_json, atomic_write_text
    from ..models.catalogue import get_model
    from ..models.loading import load_backbones

    t0 = time.perf_counter()
    if not 0 < label_fraction <= 1:
        raise UserError(f"--label-fraction must be in (0, 1], got {label_fraction}")
    if folds < 2:
        raise UserError(f"--folds must be ≥ 2, got {folds}")
    manifest = read_manifest(manifest_path)
    keys = manifest.finding_keys()
    if not keys:
        raise UserError(f"{manifest.path}: no finding columns ({manifest.label_set}); the sweep needs labels")
    spec = get_model(model)
    planes = [p for p in (planes or PLANES) if p in spec.planes]
    if not planes:
        raise UserError(f"model '{spec.id}' has none of the requested planes (it has {', '.join(spec.planes)})")
    backbones = load_backbones(spec, planes, device=device)
    for plane, (m, _) in backbones.items():
        for b in blocks:
            try:
                m.block_index(b)
            except ValueError as exc:
                raise UserError(f"--blocks: {exc}") from None
        bad = [t for t in timesteps if not 0 <= t < m.config.timesteps]
        if bad:
            raise UserError(f"--timesteps {bad}: the {plane} backbone has t in [0, {m.config.timesteps - 1}]")
    Y_all = np.array([[np.nan if r.findings.get(k) is None else float(r.findings[k]) for k in keys]
                      for r in manifest.rows])
    table, protocols = [], {}
    for plane in planes:
        model_, sha = backbones[plane]
        idx, pooled = pooled_plane_features(manifest.rows, plane, model_, sha, timesteps, blocks, spec.preprocessing,
                                            seed, device, cache, progress)
        if len(idx) == 0:
            continue
        rows = [manifest.rows[i] for i in idx]
        Y = Y_all[idx]
        protocol, plan = evaluation_plan(rows, Y, label_fraction, folds, seed)
        protocols[plane] = protocol
        for t in timesteps:
            for b in blocks:
                per = probe_scores(pooled[(t, b)], Y, plan)
                scored = np.isfinite(per)
                table.append({"plane": plane, "timestep": int(t), "block": b,
                              "macro_auroc": float(np.mean(per[scored])) if scored.any() else float("nan"),
                              "n_findings_scored": int(scored.sum()), "n_cases": int(len(idx)),
                              "n_train": int(len(np.unique(np.concatenate([tr for tr, _ in plan])))),
                              "n_eval": int(len(np.unique(np.concatenate([ev for _, ev in plan])))),
                              "protocol": protocol, "channels": int(pooled[(t, b)].shape[1]),
                              **{f"auroc_{k}": float(v) for k, v in zip(keys, per)}})
    if not table:
        raise UserError(f"{manifest.path}: no case has an image of the planes {', '.join(planes)}")
    best = best_cells(table, list(timesteps), list(blocks))
    from ..ownership import claim_folder

    out = claim_folder(out, "sweep")
    buf = io.StringIO()
    buf.write(f"# {DISCLAIMER} Linear-probe macro AUROC per plane, timestep and block.\n")
    w = csvsafe.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
    w.writeheader()
    for r in table:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    write_heatmap(table, [p for p in planes if any(r["plane"] == p for r in table)], list(timesteps), list(blocks),
                  best, out / "sweep_heatmap.png")
    result = {"disclaimer": DISCLAIMER, "model": {"id": spec.id, "version": spec.version},
              "backbones": {p: sha for p, (_, sha) in backbones.items()}, "manifest": str(manifest.path),
              "findings": keys, "timesteps": list(timesteps), "blocks": list(blocks), "label_fraction": label_fraction,
              "folds": folds, "seed": seed, "protocol": protocols,
              "best": {p: {"timestep": r["timestep"], "block": r["block"], "macro_auroc": r["macro_auroc"]}
                       for p, r in best.items()},
              "current": {p: dict(spec.planes[p]) for p in planes},
              "table": table, "seconds": round(time.perf_counter() - t0, 2)}
    atomic_write_json(out / "sweep.json", result)
    return result


def write_best_config(model: str, best: dict, sweep_json: Path) -> Path:
    """Write the best (t, block) per plane into the user's copy of the model config and return its
    path. A shipped model gets a user copy in ``$ORTHODIFFUSION_HOME/models/<id>/model.json`` whose
    backbone paths point at the shipped files (the install tree is never written); a user/folder
    model's ``model.json`` is updated after a dated backup. The heads fitted on the old setting no
    longer match: the entry is marked ``needs_heads`` until ``orthodiffusion fit`` is run."""
    import copy

    from ..errors import UserError
    from ..storage import atomic_write_json, read_json
    from ..models.catalogue import MODEL_FILE, get_model, shipped_catalogue_path, user_models_dir, validate_entry

    spec = get_model(model)
    entry = copy.deepcopy(spec.entry)
    shipped_root = shipped_catalogue_path().parent.resolve()
    if spec.source == "shipped":
        dest = user_models_dir() / spec.id
        entry.pop("path", None)
        for plane, p in entry["planes"].items():
            p["backbone"] = str(spec.backbone_path(plane))
        entry["files"] = [{**f, "path": str(spec.root / f["path"])} for f in entry.get("files", [])
                          if not f["path"].startswith(f"{spec.heads}/")]  # shipped heads do not fit the new setting
        entry["heads"] = "heads"
        entry["derived_from"] = {"id": spec.id, "version": spec.version, "source": "shipped"}
    else:
        dest = spec.root
        if shipped_root in (dest.resolve(), *dest.resolve().parents):
            raise UserError(f"{dest} is inside the installed catalogue; it is never written")
    previous = {p: {"timestep": v["timestep"], "block": v["block"]} for p, v in entry["planes"].items()}
    changed = False
    for plane, b in best.items():
        if plane in entry["planes"]:
            changed |= (entry["planes"][plane]["timestep"], entry["planes"][plane]["block"]) != (b["timestep"], b["block"])
            entry["planes"][plane]["timestep"], entry["planes"][plane]["block"] = int(b["timestep"]), b["block"]
    entry["needs_heads"] = bool(changed or entry.get("needs_heads", False))
    entry.setdefault("sweeps", []).append({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": str(sweep_json),
                                           "previous": previous, "written": best})
    validate_entry(entry)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / MODEL_FILE
    if target.is_file():  # keep what was there
        atomic_write_json(dest / f"model.before-sweep-{time.strftime('%Y%m%dT%H%M%S')}.json", read_json(target))
    atomic_write_json(target, entry)
    return target
