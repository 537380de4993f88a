"""Self-supervised pretraining of one plane's diffusion backbone (unconditional DDPM).

Objective as published: cosine schedule (T = 1000), uniform t, ε-prediction, MSE. AdamW (or Adam),
linear warm-up then constant learning rate, gradient clipping, EMA of the weights (the EMA is what
downstream uses and what gets exported). Optional: AMP (fp16/bf16 autocast, CUDA only), gradient
checkpointing, DDP through torchrun (NCCL on GPUs, gloo on CPU).

Reproducibility: every random draw of the loop (sample order, augmentation, t, ε) comes from
explicit generators seeded by (seed, rank); model initialisation from ``seed``. Checkpoints hold
weights, EMA, optimizer, the generators' and the global RNG states of every rank, so ``--resume``
continues with exactly the losses an uninterrupted run would have produced (bitwise on the CPU with
the same thread count and world size).

Layout of ``out``::

    log.csv                      step, loss, lr, grad_norm, heldout_loss, heldout_t*, time_s, steps_per_s
    loss.png                     training / held-out loss curves
    samples/step_XXXXXX.png      DDIM samples (central slice) from the EMA model + a real volume
    checkpoints/step_XXXXXX/     model.safetensors, ema.safetensors, optimizer.pt, rng.safetensors, state.json
    checkpoints/latest           name of the newest complete checkpoint
    backbone/<plane>.safetensors the EMA backbone (+ .json manifest with provenance)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import csvsafe  # formula-safe cells in every CSV the tool writes
from ..backbone.config import UNetConfig
from ..backbone.schedule import CosineSchedule
from ..backbone.unet import DiffusionUNet
from ..errors import CheckpointError, InputError
from ..storage import atomic_write_text, sha256_file
from . import distributed as dist_utils
from .data import Augment, BatchStream, load_plane_volumes
from .ema import EMA

CSV_FIELDS = ["step", "loss", "lr", "grad_norm", "heldout_loss", "heldout_split", "time_s", "steps_per_s"]
CKPT_FORMAT = "orthodiffusion-pretrain-checkpoint"


@dataclass
class TrainConfig:
    plane: str
    data: list = field(default_factory=list)
    out: str = "pretrain-out"
    steps: int = 1000
    batch_size: int = 2  # per process
    lr: float = 1e-4
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float = 1.0  # 0 = off
    ema_decay: float = 0.995
    ema_start: int = 0
    ema_every: int = 1
    seed: int = 0
    device: str = "auto"
    amp: str = "none"  # none | fp16 | bf16 (CUDA only)
    grad_checkpointing: bool = False
    ckpt_every: int = 100
    keep_checkpoints: int = 3
    eval_every: int = 50
    eval_timesteps: tuple = (50, 200, 500, 800)
    heldout: int = 1  # volumes held out for the evaluation loss (when at least 3 are available)
    sample_every: int = 0  # 0 = only at the end
    sample_steps: int = 10
    n_samples: int = 3
    preprocessing: str = "released"
    echoes: str = "all"
    reformat: bool = True
    augment: bool = True
    threads: int | None = None
    progress: bool = True
    resume: str | None = None  # None, "auto" (out/checkpoints/latest) or a checkpoint folder
    init: str | None = None  # continued pretraining: start from this backbone's weights (fresh optimizer, step 0)
    command: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["adam_betas"], d["eval_timesteps"] = list(self.adam_betas), list(self.eval_timesteps)
        d["data"] = [str(p) for p in self.data]
        return d


# -- RNG state helpers --------------------------------------------------------------------------

def _rank_seed(seed: int, rank: int, stream: int = 0) -> int:
    return (int(seed) * 1_000_003 + rank * 7919 + stream * 104_729) & 0x7FFF_FFFF_FFFF_FFFF


def _py_state():
    v, s, g = random.getstate()
    return [v, list(s), g]


def _np_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _set_py_state(st):
    random.setstate((st[0], tuple(st[1]), st[2]))


def _set_np_state(st):
    np.random.set_state((st[0], np.asarray(st[1], dtype=np.uint32), st[2], st[3], st[4]))


def _gather(obj, info):
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


# -- checkpoints ----------------------------------------------------------------------------------

def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:06d}"


def find_checkpoint(out: Path, resume: str) -> Path:
    if resume in ("auto", "latest", "1", "true"):
        latest = out / "checkpoints" / "latest"
        if not latest.is_file():
            raise InputError(f"--resume: no checkpoint in {out / 'checkpoints'} (no 'latest' pointer)")
        path = out / "checkpoints" / latest.read_text(encoding="utf-8").strip()
    else:
        path = Path(resume)
    if not (path / "state.json").is_file():
        raise InputError(f"--resume: {path} is not a complete pretraining checkpoint (no state.json)")
    return path


def _write_checkpoint(out: Path, step: int, raw_model, ema: EMA, opt, scaler, gens_all, states_all,
                      state: dict, keep: int) -> Path:
    from safetensors.torch import save_file

    ckroot = out / "checkpoints"
    ckroot.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(out, step)
    tmp = ckroot / f".tmp_{final.name}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in raw_model.state_dict().items()}, str(tmp / "model.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    rng = {}
    for r, g in enumerate(gens_all):
        for name, t in g.items():
            rng[f"rank{r}.{name}"] = t.contiguous()
    save_file(rng, str(tmp / "rng.safetensors"))
    state = dict(state, rank_states=states_all)
    state["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
    with open(tmp / "state.json", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    trash = None
    if final.exists():
        trash = ckroot / f".old_{final.name}_{os.getpid()}"
        os.replace(final, trash)
    os.replace(tmp, final)
    atomic_write_text(ckroot / "latest", final.name + "\n")
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    if keep > 0:
        done = sorted(p for p in ckroot.glob("step_*") if p.is_dir())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint_weights(path: Path, which: str = "ema") -> dict:
    from safetensors.torch import load_file

    f = Path(path) / f"{which}.safetensors"
    if not f.is_file():
        raise CheckpointError(f"{f} not found")
    return load_file(str(f))


# -- evaluation / plots ---------------------------------------------------------------------------

class HeldOut:
    """Denoising loss on fixed volumes at fixed t with fixed noise (comparable across steps and runs)."""

    def __init__(self, volumes: list[np.ndarray], timesteps, seed: int, split: str):
        self.split = split
        self.timesteps = tuple(int(t) for t in timesteps)
        g = torch.Generator().manual_seed(_rank_seed(seed, 0, 99))
        x0 = torch.stack([torch.from_numpy(v) for v in volumes])[:, None]
        self.x0 = x0.repeat_interleave(len(self.timesteps), 0)
        self.t = torch.tensor(list(self.timesteps) * len(volumes), dtype=torch.long)
        self.noise = torch.randn(self.x0.shape, generator=g)

    @torch.no_grad()
    def evaluate(self, model, schedule: CosineSchedule, device, max_batch: int = 4) -> dict:
        per = torch.zeros(len(self.t))
        for s in range(0, len(self.t), max_batch):
            x0, t, n = (a[s:s + max_batch].to(device) for a in (self.x0, self.t, self.noise))
            eps = model(schedule.q_sample(x0, t, n), t)
            per[s:s + max_batch] = ((eps.float() - n) ** 2).mean(dim=(1, 2, 3, 4)).cpu()
        out = {"heldout_loss": float(per.mean())}
        for ts in self.timesteps:
            out[f"heldout_t{ts}"] = float(per[self.t == ts].mean())
        return out


def save_samples_png(path: Path, model, schedule: CosineSchedule, shape, n: int, steps: int, seed: int,
                     device, real: np.ndarray | None, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..storage import atomic_path

    g = torch.Generator(device="cpu").manual_seed(_rank_seed(seed, 0, 77))
    noise = torch.randn((n, 1, *shape), generator=g)

    x = schedule.ddim_sample(model, steps=steps, device=device, noise=noise).cpu().numpy()
    cols = n + (1 if real is not None else 0)
    fig, axes = plt.subplots(1, cols, figsize=(2.4 * cols, 2.7))
    axes = np.atleast_1d(axes)
    mid = shape[0] // 2
    for i in range(n):
        axes[i].imshow(x[i, 0, mid], cmap="gray", vmin=-1, vmax=1)
        axes[i].set_title(f"sample {i + 1}", fontsize=8)
    if real is not None:
        axes[-1].imshow(real[mid], cmap="gray", vmin=-1, vmax=1)
        axes[-1].set_title("training volume", fontsize=8)
    for a in axes:
        a.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def read_log(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def plot_loss(log_csv: Path, png: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..storage import atomic_path

    rows = read_log(log_csv)
    steps = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    ev = [(int(r["step"]), float(r["heldout_loss"])) for r in rows if r.get("heldout_loss")]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    if len(loss):
        ax.plot(steps, loss, color="0.75", lw=0.8, label="train loss (per step)")
        k = max(1, min(25, len(loss) // 10))
        if k > 1:
            sm = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], sm, color="C0", lw=1.5, label=f"train loss ({k}-step mean)")
    if ev:
        split = rows[-1].get("heldout_split") or "held-out"
        ax.plot(*zip(*ev), "o-", color="C3", ms=3, label=f"{split} loss (EMA, fixed t and noise)")
    ax.set_xlabel("step")
    ax.set_ylabel("ε-MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return png


# -- the loop -------------------------------------------------------------------------------------

def _lr_at(cfg: TrainConfig, step: int) -> float:
    if cfg.warmup_steps > 0 and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    return cfg.lr


def _log(info, *msg):
    if info.is_main:
        print(*msg, file=sys.stderr, flush=True)


def run_pretraining(cfg: TrainConfig, model_config: UNetConfig, volumes=None) -> dict:
    """Train; return a summary with the per-step losses of this invocation (rank 0's view).

    ``volumes`` (list of [D, H, W] float arrays) bypasses file loading (used by tests and benches).
    ``cfg.threads`` sets torch's CPU threads for the run (restored afterwards).
    """
    previous_threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        return _run(cfg, model_config, volumes)
    finally:
        torch.set_num_threads(previous_threads)


def _run(cfg: TrainConfig, model_config: UNetConfig, volumes=None) -> dict:
    from ..device import resolve_device

    if cfg.plane not in ("sagittal", "coronal", "axial"):
        raise InputError(f"unknown plane {cfg.plane!r}")
    if cfg.optimizer not in ("adamw", "adam"):
        raise InputError(f"--optimizer must be adamw or adam, got {cfg.optimizer!r}")
    if cfg.init and not Path(cfg.init).is_file():  # before the (slow) data loading
        raise InputError(f"--init: backbone not found: {cfg.init}")
    device = resolve_device(cfg.device)
    info = dist_utils.init(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    amp = (cfg.amp or "none").lower()
    if amp not in ("none", "fp16", "bf16"):
        raise InputError(f"--amp must be none, fp16 or bf16, got {cfg.amp!r}")
    if amp != "none" and device.type != "cuda":
        _log(info, f"note: --amp {amp} ignored on the CPU; training in fp32 "
                   "(CPU autocast is not used: bf16 is ~100x slower without native BF16 support)")
        amp = "none"
    out = Path(cfg.out)
    if info.is_main:
        from ..ownership import claim_folder

        claim_folder(out, "pretrain")

    # data ------------------------------------------------------------------------------------
    shape = (model_config.depth_size, model_config.image_size, model_config.image_size)
    m = model_config.min_input_multiple
    if any(v % m for v in shape):
        raise InputError(f"model input {shape} must be divisible by {m} on every axis")
    if volumes is None:
        items = load_plane_volumes(cfg.data, cfg.plane, shape[0], shape[1:], cfg.preprocessing, cfg.echoes,
                                   cfg.reformat, log=lambda m: _log(info, m))
        arrays, names = [it.array for it in items], [it.name for it in items]
    else:
        arrays = [np.ascontiguousarray(v, dtype=np.float32) for v in volumes]
        names = [f"array{i}" for i in range(len(arrays))]
        if any(a.shape != shape for a in arrays):
            raise InputError(f"volumes must have shape {shape}")
    if cfg.heldout > 0 and len(arrays) >= 3:
        k = min(cfg.heldout, len(arrays) - 2)
        train_arrays, eval_arrays, split = arrays[:-k], arrays[-k:], "held-out"
        train_names, eval_names = names[:-k], names[-k:]
    else:
        train_arrays, eval_arrays, split = arrays, arrays[:1], "train"
        train_names, eval_names = names, names[:1]
    _log(info, f"{cfg.plane}: {len(train_arrays)} training volume(s), evaluation on {len(eval_arrays)} "
               f"({split}); input {shape}; world size {info.world_size}; device {device}")

    # model / optimisation -----------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    raw = DiffusionUNet(model_config, use_checkpoint=cfg.grad_checkpointing)
    init_record = None
    if cfg.init:  # before the EMA copy; a --resume below overwrites both with the checkpoint's weights
        init_record = load_init_weights(raw, cfg.init, model_config)
        _log(info, f"continued pretraining: initial weights from {cfg.init} (sha256 {init_record['sha256'][:12]}…)")
    raw = raw.to(device)
    ema = EMA(raw, cfg.ema_decay, cfg.ema_start, cfg.ema_every)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(raw.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    schedule = CosineSchedule(model_config.timesteps)
    augment = Augment(enabled=cfg.augment)
    stream = BatchStream(len(train_arrays), cfg.batch_size, cfg.seed, info.rank, info.world_size)
    gen = torch.Generator().manual_seed(_rank_seed(cfg.seed, info.rank))
    heldout = HeldOut(eval_arrays, cfg.eval_timesteps, cfg.seed, split) if info.is_main else None

    start_step, elapsed_before = 0, 0.0
    resume = cfg.resume
    if resume in ("auto", "latest") and not (out / "checkpoints" / "latest").is_file():
        _log(info, f"--resume: no checkpoint in {out / 'checkpoints'} yet; starting from step 0")
        resume = None
    if resume:
        ck = find_checkpoint(out, resume)
        state = json.loads((ck / "state.json").read_text(encoding="utf-8"))
        if state.get("model_config") != model_config.to_dict():
            raise CheckpointError(f"{ck}: the checkpoint was trained with another model config")
        from safetensors.torch import load_file

        raw.load_state_dict(load_file(str(ck / "model.safetensors"), device=str(device)))
        ema.load_state_dict(load_file(str(ck / "ema.safetensors"), device=str(device)))
        opt.load_state_dict(torch.load(ck / "optimizer.pt", map_location=device, weights_only=True))
        if scaler is not None and (ck / "scaler.pt").is_file():
            scaler.load_state_dict(torch.load(ck / "scaler.pt", weights_only=True))
        start_step, elapsed_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
        rng = load_file(str(ck / "rng.safetensors"))
        if int(state.get("world_size", 1)) == info.world_size:
            gen.set_state(rng[f"rank{info.rank}.loop"])
            torch.set_rng_state(rng[f"rank{info.rank}.torch_cpu"])
            if device.type == "cuda" and f"rank{info.rank}.cuda" in rng:
                torch.cuda.set_rng_state(rng[f"rank{info.rank}.cuda"])
            rs = state["rank_states"][info.rank]
            _set_py_state(rs["python"])
            _set_np_state(rs["numpy"])
        else:
            _log(info, f"warning: checkpoint world size {state.get('world_size')} != {info.world_size}; the run "
                       "continues but will not reproduce an uninterrupted run exactly")
            gen.manual_seed(_rank_seed(cfg.seed, info.rank, start_step))
        stream.skip(start_step)
        _log(info, f"resumed from {ck} at step {start_step}")
        if info.is_main:  # drop log rows written after the checkpoint
            rows = [r for r in read_log(out / "log.csv") if int(r["step"]) <= start_step]
            _write_csv(out / "log.csv", rows, rewrite=True)
    elif info.is_main:
        _write_csv(out / "log.csv", [], rewrite=True)
    model = dist_utils.wrap_ddp(raw, info, device)
    ema.model.to(device)

    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    losses: list[float] = []
    pbar = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm

        pbar = tqdm(total=cfg.steps, initial=start_step, desc=f"pretrain {cfg.plane}", unit="step",
                    mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    t_start, last_t, last_step = time.time(), time.time(), start_step
    step = start_step
    for step in range(start_step + 1, cfg.steps + 1):
        idx = stream.next()
        x0 = torch.stack([augment(torch.from_numpy(train_arrays[i]), cfg.plane, gen) for i in idx])[:, None]
        t = torch.randint(0, schedule.timesteps, (len(idx),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x0, t, noise = x0.to(device), t.to(device), noise.to(device)
        lr = _lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        with torch.autocast("cuda", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            eps = model(schedule.q_sample(x0, t, noise), t)
        loss = torch.nn.functional.mse_loss(eps.float(), noise)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        grad_norm = (torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip) if cfg.grad_clip > 0
                     else torch.sqrt(sum((p.grad.float() ** 2).sum() for p in raw.parameters() if p.grad is not None)))
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        ema.update(raw, step)
        loss_all = float(dist_utils.all_reduce_mean(loss.detach(), info))
        losses.append(loss_all)

        row = None
        if info.is_main:
            now = time.time()
            row = {"step": step, "loss": f"{loss_all:.8g}", "lr": f"{lr:.6g}", "grad_norm": f"{float(grad_norm):.5g}",
                   "heldout_loss": "", "heldout_split": "", "time_s": f"{elapsed_before + now - t_start:.2f}",
                   "steps_per_s": f"{(step - last_step) / max(now - last_t, 1e-9):.4f}"}
            last_t, last_step = now, step
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                ev = heldout.evaluate(ema.model, schedule, device)
                row["heldout_loss"], row["heldout_split"] = f"{ev['heldout_loss']:.6g}", heldout.split
                _log(info, f"step {step}: loss {loss_all:.4f}, {split} loss (EMA) {ev['heldout_loss']:.4f} "
                           + " ".join(f"t{ts}={ev[f'heldout_t{ts}']:.4f}" for ts in heldout.timesteps))
            _write_csv(out / "log.csv", [row])
            if pbar is not None:
                pbar.set_postfix(loss=f"{loss_all:.4f}", lr=f"{lr:.2g}", refresh=False)
                pbar.update(1)
            if cfg.sample_every and step % cfg.sample_every == 0 and step != cfg.steps:
                save_samples_png(out / "samples" / f"step_{step:06d}.png", ema.model, schedule, shape, cfg.n_samples,
                                 cfg.sample_steps, cfg.seed, device, train_arrays[0],
                                 f"{cfg.plane}, EMA step {step}, DDIM {cfg.sample_steps} steps, central slice")
        if cfg.ckpt_every and (step % cfg.ckpt_every == 0 or step == cfg.steps):
            gens = {"loop": gen.get_state(), "torch_cpu": torch.get_rng_state()}
            if device.type == "cuda":
                gens["cuda"] = torch.cuda.get_rng_state(device)
            gens_all = _gather(gens, info)
            states_all = _gather({"python": _py_state(), "numpy": _np_state()}, info)
            if info.is_main:
                state = {"format": CKPT_FORMAT, "step": step, "world_size": info.world_size, "seed": cfg.seed,
                         "elapsed_s": elapsed_before + time.time() - t_start, "epoch": stream.epoch,
                         "model_config": model_config.to_dict(), "train_config": cfg.to_dict(),
                         "torch": torch.__version__, "threads": torch.get_num_threads(),
                         "last_loss": loss_all}
                _write_checkpoint(out, step, raw, ema, opt, scaler, gens_all, states_all, state, cfg.keep_checkpoints)
            dist_utils.barrier(info)
    if pbar is not None:
        pbar.close()
    wall = time.time() - t_start
    summary = {"plane": cfg.plane, "start_step": start_step, "end_step": step, "losses": losses,
               "wall_s": wall, "elapsed_s": elapsed_before + wall, "world_size": info.world_size,
               "rank": info.rank, "train_volumes": train_names, "eval_volumes": eval_names, "eval_split": split,
               "steps_per_s": (step - start_step) / wall if wall > 0 else float("nan")}
    if info.is_main and (step > start_step or (start_step and cfg.steps == start_step)):  # == : re-export only
        title = f"{cfg.plane} pretraining ({model_config.num_channels} ch, {'x'.join(map(str, shape))})"
        plot_loss(out / "log.csv", out / "loss.png", title)
        if cfg.n_samples > 0:
            save_samples_png(out / "samples" / f"step_{step:06d}.png", ema.model, schedule, shape, cfg.n_samples,
                             cfg.sample_steps, cfg.seed, device, train_arrays[0],
                             f"{cfg.plane}, EMA step {step}, DDIM {cfg.sample_steps} steps, central slice")
        summary["init"] = init_record
        summary["backbone"] = str(export_backbone(ema.model, out / "backbone" / f"{cfg.plane}.safetensors", cfg,
                                                  summary, names))
    dist_utils.barrier(info)
    dist_utils.shutdown(info)
    return summary


def export_backbone(ema_model, path: Path, cfg: TrainConfig, summary: dict, names: list[str]) -> Path:
    from ..backbone.checkpoints import save_backbone

    cpu_model = DiffusionUNet(ema_model.config)
    cpu_model.load_state_dict({k: v.detach().cpu() for k, v in ema_model.state_dict().items()})
    provenance = {
        "kind": "self-supervised DDPM pretraining (EMA weights)", "plane": cfg.plane,
        "data": [str(d) for d in cfg.data], "volumes": names, "steps": summary["end_step"],
        "batch_size_per_process": cfg.batch_size, "world_size": summary["world_size"],
        "wall_time_s": round(summary["elapsed_s"], 1), "seed": cfg.seed, "command": cfg.command,
        "train_config": cfg.to_dict(),
    }
    if summary.get("init"):  # steps count from the initial weights; the earlier stage is in "init"
        provenance["init"] = summary["init"]
    return save_backbone(cpu_model, path, provenance=provenance)


def load_init_weights(model: DiffusionUNet, path: str | Path, model_config: UNetConfig) -> dict:
    """Load a backbone (ours or a published .pt, EMA weights) into ``model`` for continued pretraining.

    The architecture must equal ``model_config``; returns a record (path, sha256, steps, provenance
    command of the source) for the new backbone's provenance."""
    from ..backbone.checkpoints import load_backbone

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--init: backbone not found: {path}")
    source, info = load_backbone(path)
    if source.config.to_dict() != model_config.to_dict():
        raise InputError(f"--init: {path.name} has another architecture than --config "
                         f"({source.config.to_dict()} vs {model_config.to_dict()})")
    model.load_state_dict(source.state_dict(), strict=True)
    prov = info.get("provenance") or info.get("manifest", {}).get("provenance") or {}
    return {"path": str(path), "sha256": sha256_file(path), "steps": prov.get("steps"),
            "command": prov.get("command"), "data": prov.get("data")}


def _write_csv(path: Path, rows: list[dict], rewrite: bool = False) -> None:
    path = Path(path)
    if rewrite:
        from ..storage import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csvsafe.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
        return
    with open(path, "a", newline="", encoding="utf-8") as f:
        csvsafe.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore").writerows(rows)


def train_config_from(model_defaults: dict, **overrides) -> TrainConfig:
    """Build a TrainConfig from preset training defaults overridden by explicit (non-None) values."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in model_defaults.items() if k in known}
    values.update({k: v for k, v in overrides.items() if v is not None and k in known})
    return TrainConfig(**values)


__all__ = ["TrainConfig", "run_pretraining", "train_config_from", "plot_loss", "read_log", "find_checkpoint",
           "load_checkpoint_weights", "export_backbone", "load_init_weights"]
