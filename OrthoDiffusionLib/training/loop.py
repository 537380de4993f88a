"""Self-supervised pretraining of one plane's diffusion backbone (unconditional DDPM): the loop.

Objective as published: cosine schedule (T = 1000), uniform t, ε-prediction, MSE. AdamW (or Adam),
linear warm-up then constant learning rate, gradient clipping, EMA of the weights (the EMA is what
downstream uses and what gets exported). Optional: min-SNR-γ loss weighting and a cosine learning
rate (``objective.py``), random crops of the training volumes (``data.RandomCrop``), channels-last
convolutions, a wall-time budget, AMP (fp16/bf16 autocast, CUDA only), gradient checkpointing, DDP
through torchrun (NCCL on GPUs, gloo on CPU).

Reproducibility: every random draw of the loop (sample order, augmentation, t, ε) comes from
explicit generators seeded by (seed, rank); model initialisation from ``seed``. Checkpoints hold
weights, EMA, optimizer, the generators' and the global RNG states of every rank, so ``--resume``
continues with exactly the losses an uninterrupted run would have produced (bitwise on the CPU with
the same thread count and world size).

Layout of ``out``::

    log.csv                      step, loss, lr, grad_norm, heldout_loss, heldout_split, time_s, steps_per_s
    loss.png                     training / held-out loss curves
    samples/step_XXXXXX.png      DDIM samples (central slice) from the EMA model + a real volume
    checkpoints/step_XXXXXX/     model.safetensors, ema.safetensors, optimizer.pt, rng.safetensors, state.json
    checkpoints/latest           name of the newest complete checkpoint
    backbone/<plane>.safetensors the EMA backbone (+ .json manifest with provenance)
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..backbone.config import UNetConfig
from ..backbone.schedule import CosineSchedule
from ..backbone.unet import DiffusionUNet
from ..errors import InputError
from . import distributed as dist_utils
from .checkpoints import (CKPT_FORMAT, export_backbone, find_checkpoint, load_init_weights, restore_checkpoint,
                          restore_rng, write_checkpoint)
from .config import TrainConfig, validate
from .data import Augment, BatchStream, RandomCrop, load_plane_volumes
from .ema import EMA
from .heldout import HeldOut
from .objective import diffusion_loss, lr_at
from .plots import plot_loss, save_samples_png
from .rng import numpy_state, python_state, rank_seed
from .runlog import truncate_log, write_log


def _log(info, *msg):
    if info.is_main:
        print(*msg, file=sys.stderr, flush=True)


@dataclass
class _Data:
    train: list[np.ndarray]
    evaluation: list[np.ndarray]
    split: str  # "held-out" or "train" (too few volumes to hold any out)
    train_names: list[str]
    eval_names: list[str]
    names: list[str]


def run_pretraining(cfg: TrainConfig, model_config: UNetConfig, volumes=None, names=None) -> dict:
    """Train; return a summary with the per-step losses of this invocation (rank 0's view).

    ``volumes`` (list of [D, H, W] float arrays, already preprocessed to the volume size) bypasses
    file loading (tests, benches, the GPU script); ``names`` labels them in the provenance.
    ``cfg.threads`` sets torch's CPU threads for the run (restored afterwards).
    """
    previous_threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        return _Run(cfg, model_config, volumes, names).train()
    finally:
        torch.set_num_threads(previous_threads)


def _device_and_amp(cfg: TrainConfig):
    from ..device import resolve_device

    device = resolve_device(cfg.device)
    info = dist_utils.init(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    amp = (cfg.amp or "none").lower()
    if amp != "none" and device.type != "cuda":
        _log(info, f"note: --amp {amp} ignored on the CPU; training in fp32 "
                   "(CPU autocast is not used: bf16 is ~100x slower without native BF16 support)")
        amp = "none"
    return device, info, amp


def _load_data(cfg: TrainConfig, shape: tuple, volumes, names, info) -> _Data:
    volume = tuple(cfg.volume_size or shape)
    if volumes is None:
        items = load_plane_volumes(cfg.data, cfg.plane, volume[0], volume[1:], cfg.preprocessing, cfg.echoes,
                                   cfg.reformat, log=lambda m: _log(info, m))
        arrays, names = [it.array for it in items], [it.name for it in items]
    else:
        arrays = [np.ascontiguousarray(v, dtype=np.float32) for v in volumes]
        names = list(names) if names is not None else [f"array{i}" for i in range(len(arrays))]
        if any(a.shape != volume for a in arrays):
            raise InputError(f"volumes must have shape {volume}")
    if cfg.heldout > 0 and len(arrays) >= 3:
        k = min(cfg.heldout, len(arrays) - 2)
        data = _Data(arrays[:-k], arrays[-k:], "held-out", names[:-k], names[-k:], names)
    else:
        data = _Data(arrays, arrays[:1], "train", names, names[:1], names)
    if volume != shape:  # the held-out loss is measured on what downstream sees: the whole model input
        data.evaluation = [_resized(a, shape) for a in data.evaluation]
    return data


def _resized(a: np.ndarray, shape: tuple) -> np.ndarray:
    x = torch.nn.functional.interpolate(torch.from_numpy(a)[None, None], size=shape, mode="trilinear",
                                        align_corners=False)
    return np.ascontiguousarray(x[0, 0].numpy(), dtype=np.float32)


class _Run:
    """One invocation of the loop: set-up (data, model, optimizer, resume), the steps, the end."""

    def __init__(self, cfg: TrainConfig, model_config: UNetConfig, volumes, names=None):
        self.cfg, self.model_config = cfg, model_config
        self.shape = (model_config.depth_size, model_config.image_size, model_config.image_size)
        validate(cfg, self.shape, model_config.min_input_multiple)
        self.device, self.info, self.amp = _device_and_amp(cfg)
        self.out = Path(cfg.out)
        if self.info.is_main:
            from ..ownership import claim_folder

            claim_folder(self.out, "pretrain")
        self.data = _load_data(cfg, self.shape, volumes, names, self.info)
        crop = f", random crops {tuple(cfg.crop)}" if cfg.crop else ""
        _log(self.info, f"{cfg.plane}: {len(self.data.train)} training volume(s), evaluation on "
                        f"{len(self.data.evaluation)} ({self.data.split}); input {self.shape}{crop}; "
                        f"world size {self.info.world_size}; device {self.device}")
        self._build_model()
        self.start_step, self.elapsed_before = self._resume_or_start()
        self.model = dist_utils.wrap_ddp(self.raw, self.info, self.device)
        self.ema.model.to(self.device)

    # -- set-up ---------------------------------------------------------------------------------
    def _build_model(self) -> None:
        cfg, info = self.cfg, self.info
        torch.manual_seed(cfg.seed)
        raw = DiffusionUNet(self.model_config, use_checkpoint=cfg.grad_checkpointing)
        self.init_record = None
        if cfg.init:  # before the EMA copy; a --resume overwrites both with the checkpoint's weights
            self.init_record = load_init_weights(raw, cfg.init, self.model_config)
            _log(info, f"continued pretraining: initial weights from {cfg.init} "
                       f"(sha256 {self.init_record['sha256'][:12]}…)")
        self.raw = raw.to(self.device)
        if cfg.channels_last:  # before the EMA copy and the optimizer, so both see the same tensors
            self.raw = self.raw.to(memory_format=torch.channels_last_3d)
        self.ema = EMA(self.raw, cfg.ema_decay, cfg.ema_start, cfg.ema_every)
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.opt = opt_cls(self.raw.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.schedule = CosineSchedule(self.model_config.timesteps)
        self.augment = Augment(enabled=cfg.augment)
        self.crop = RandomCrop(tuple(cfg.crop)) if cfg.crop else None
        # on a GPU the training volumes live there (crop and augmentation run on the device with the
        # loop generator's CPU draws); on the CPU they are the arrays themselves
        self.store = [torch.from_numpy(a) for a in self.data.train]
        if self.device.type == "cuda":
            self.store = [v.to(self.device) for v in self.store]
        self.stream = BatchStream(len(self.data.train), cfg.batch_size, cfg.seed, info.rank, info.world_size)
        self.gen = torch.Generator().manual_seed(rank_seed(cfg.seed, info.rank))
        self.heldout = (HeldOut(self.data.evaluation, cfg.eval_timesteps, cfg.seed, self.data.split)
                        if info.is_main else None)

    def _resume_or_start(self) -> tuple[int, float]:
        cfg, info, out = self.cfg, self.info, self.out
        resume = cfg.resume
        if resume in ("auto", "latest") and not (out / "checkpoints" / "latest").is_file():
            _log(info, f"--resume: no checkpoint in {out / 'checkpoints'} yet; starting from step 0")
            resume = None
        if not resume:
            if info.is_main:
                write_log(out / "log.csv", [], rewrite=True)
            return 0, 0.0
        ck = find_checkpoint(out, resume)
        state = restore_checkpoint(ck, self.model_config, self.raw, self.ema, self.opt, self.scaler, self.device)
        start_step, elapsed_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
        if int(state.get("world_size", 1)) == info.world_size:
            restore_rng(ck, state, info.rank, self.gen, self.device)
        else:
            _log(info, f"warning: checkpoint world size {state.get('world_size')} != {info.world_size}; the run "
                       "continues but will not reproduce an uninterrupted run exactly")
            self.gen.manual_seed(rank_seed(cfg.seed, info.rank, start_step))
        self.stream.skip(start_step)
        _log(info, f"resumed from {ck} at step {start_step}")
        if info.is_main:  # drop log rows written after the checkpoint
            truncate_log(out / "log.csv", start_step)
        return start_step, elapsed_before

    # -- one step ---------------------------------------------------------------------------------
    def _sample(self, i: int) -> torch.Tensor:
        x = self.store[i]
        if self.crop is not None:  # crop first: the augmentation then works on the smaller tensor
            x = self.crop(x, self.gen)
        return self.augment(x, self.cfg.plane, self.gen)

    def _batch(self):
        idx = self.stream.next()
        x0 = torch.stack([self._sample(i) for i in idx])[:, None]
        t = torch.randint(0, self.schedule.timesteps, (len(idx),), generator=self.gen)
        noise = torch.randn(x0.shape, generator=self.gen)
        x0, t, noise = x0.to(self.device), t.to(self.device), noise.to(self.device)
        if self.cfg.channels_last:
            x0, noise = (v.contiguous(memory_format=torch.channels_last_3d) for v in (x0, noise))
        return x0, t, noise

    def _step(self, step: int) -> tuple[float, float, float]:
        """One optimizer step → (loss averaged over ranks, lr, gradient norm)."""
        cfg, raw = self.cfg, self.raw
        x0, t, noise = self._batch()
        lr = lr_at(cfg, step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.train()
        autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.amp)
        with torch.autocast("cuda", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            eps = self.model(self.schedule.q_sample(x0, t, noise), t)
        loss = diffusion_loss(eps, noise, t, self.schedule, cfg.loss_weighting, cfg.min_snr_gamma)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        grad_norm = (torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip) if cfg.grad_clip > 0
                     else torch.sqrt(sum((p.grad.float() ** 2).sum() for p in raw.parameters() if p.grad is not None)))
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.ema.update(raw, step)
        return float(dist_utils.all_reduce_mean(loss.detach(), self.info)), lr, float(grad_norm)

    def _record(self, step: int, loss: float, lr: float, grad_norm: float, last: bool) -> None:
        """Rank 0: the log row, the held-out loss, the progress bar and the sample PNG of this step."""
        cfg, now = self.cfg, time.time()
        row = {"step": step, "loss": f"{loss:.8g}", "lr": f"{lr:.6g}", "grad_norm": f"{grad_norm:.5g}",
               "heldout_loss": "", "heldout_split": "", "time_s": f"{self.elapsed_before + now - self.t_start:.2f}",
               "steps_per_s": f"{(step - self.last_step) / max(now - self.last_t, 1e-9):.4f}"}
        self.last_t, self.last_step = now, step
        if cfg.eval_every and (step % cfg.eval_every == 0 or last):
            ev = self.heldout.evaluate(self.ema.model, self.schedule, self.device)
            row["heldout_loss"], row["heldout_split"] = f"{ev['heldout_loss']:.6g}", self.heldout.split
            _log(self.info, f"step {step}: loss {loss:.4f}, {self.data.split} loss (EMA) {ev['heldout_loss']:.4f} "
                            + " ".join(f"t{ts}={ev[f'heldout_t{ts}']:.4f}" for ts in self.heldout.timesteps))
        write_log(self.out / "log.csv", [row])
        if self.pbar is not None:
            self.pbar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2g}", refresh=False)
            self.pbar.update(1)
        if cfg.sample_every and step % cfg.sample_every == 0 and not last:
            self._samples(step)

    def _samples(self, step: int) -> None:
        cfg = self.cfg
        save_samples_png(self.out / "samples" / f"step_{step:06d}.png", self.ema.model, self.schedule, self.shape,
                         cfg.n_samples, cfg.sample_steps, cfg.seed, self.device, self.data.train[0],
                         f"{cfg.plane}, EMA step {step}, DDIM {cfg.sample_steps} steps, central slice")

    def _checkpoint(self, step: int, loss: float) -> None:
        cfg, info, device = self.cfg, self.info, self.device
        gens = {"loop": self.gen.get_state(), "torch_cpu": torch.get_rng_state()}
        if device.type == "cuda":
            gens["cuda"] = torch.cuda.get_rng_state(device)
        gens_all = dist_utils.gather_object(gens, info)
        states_all = dist_utils.gather_object({"python": python_state(), "numpy": numpy_state()}, info)
        if info.is_main:
            state = {"format": CKPT_FORMAT, "step": step, "world_size": info.world_size, "seed": cfg.seed,
                     "elapsed_s": self.elapsed_before + time.time() - self.t_start, "epoch": self.stream.epoch,
                     "model_config": self.model_config.to_dict(), "train_config": cfg.to_dict(),
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "last_loss": loss}
            write_checkpoint(self.out, step, self.raw, self.ema, self.opt, self.scaler, gens_all, states_all, state,
                             cfg.keep_checkpoints)
        dist_utils.barrier(info)

    # -- the loop -----------------------------------------------------------------------------
    def train(self) -> dict:
        cfg, info = self.cfg, self.info
        losses: list[float] = []
        self.pbar = None
        if info.is_main and cfg.progress:
            from tqdm import tqdm

            self.pbar = tqdm(total=cfg.steps, initial=self.start_step, desc=f"pretrain {cfg.plane}", unit="step",
                             mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        self.t_start = self.last_t = time.time()
        self.last_step = step = self.start_step
        for step in range(self.start_step + 1, cfg.steps + 1):
            loss, lr, grad_norm = self._step(step)
            losses.append(loss)
            last = step == cfg.steps or self._out_of_time()
            if info.is_main:
                self._record(step, loss, lr, grad_norm, last)
            if cfg.ckpt_every and (step % cfg.ckpt_every == 0 or last):
                self._checkpoint(step, loss)
            if last:
                break
        if self.pbar is not None:
            self.pbar.close()
        return self._finish(step, losses)

    def _out_of_time(self) -> bool:
        """The wall-time budget is spent (rank 0's clock decides for every rank)."""
        if self.cfg.max_wall_s is None:
            return False
        spent = self.info.is_main and time.time() - self.t_start >= self.cfg.max_wall_s
        return dist_utils.any_rank(spent, self.info, self.device)

    def _finish(self, step: int, losses: list[float]) -> dict:
        cfg, info, start_step = self.cfg, self.info, self.start_step
        wall = time.time() - self.t_start
        summary = {"plane": cfg.plane, "start_step": start_step, "end_step": step, "losses": losses,
                   "wall_s": wall, "elapsed_s": self.elapsed_before + wall, "world_size": info.world_size,
                   "rank": info.rank, "train_volumes": self.data.train_names, "eval_volumes": self.data.eval_names,
                   "eval_split": self.data.split, "stopped_by": "steps" if step == cfg.steps else "max_wall_s",
                   "steps_per_s": (step - start_step) / wall if wall > 0 else float("nan")}
        if info.is_main and (step > start_step or (start_step and cfg.steps == start_step)):  # == : re-export only
            mc = self.model_config
            title = f"{cfg.plane} pretraining ({mc.num_channels} ch, {'x'.join(map(str, self.shape))})"
            plot_loss(self.out / "log.csv", self.out / "loss.png", title)
            if cfg.n_samples > 0:
                self._samples(step)
            summary["init"] = self.init_record
            summary["backbone"] = str(export_backbone(self.ema.model, self.out / "backbone" / f"{cfg.plane}.safetensors",
                                                      cfg, summary, self.data.names))
        dist_utils.barrier(info)
        dist_utils.shutdown(info)
        return summary
