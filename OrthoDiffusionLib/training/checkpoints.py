"""Checkpoints of a pretraining run (written atomically, restored exactly) and the two ways weights
leave or enter a run: the exported EMA backbone, and ``--init`` from an existing backbone.

A checkpoint folder ``checkpoints/step_XXXXXX/`` holds ``model.safetensors`` (raw weights),
``ema.safetensors``, ``optimizer.pt``, ``rng.safetensors`` (every rank's generators), optionally
``scaler.pt``, and ``state.json`` (step, world size, configs, Python/NumPy RNG states of every rank,
the sha256 of each file). It is written into a ``.tmp_*`` folder, fsynced and renamed in one
``os.replace``, then ``checkpoints/latest`` is rewritten atomically: a crash leaves the previous
complete checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..backbone.config import UNetConfig
from ..backbone.unet import DiffusionUNet
from ..errors import CheckpointError, InputError
from ..storage import atomic_write_text, sha256_file
from .ema import EMA
from .rng import set_numpy_state, set_python_state

CKPT_FORMAT = "orthodiffusion-pretrain-checkpoint"


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


def write_checkpoint(out: Path, step: int, raw_model, ema: EMA, opt, scaler, gens_all, states_all,
                     state: dict, keep: int) -> Path:
    """Write one checkpoint (rank 0); ``gens_all``/``states_all`` hold every rank's RNG states."""
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


def restore_checkpoint(ck: Path, model_config: UNetConfig, raw, ema: EMA, opt, scaler, device) -> dict:
    """Load weights, EMA, optimizer (and scaler) from ``ck``; return its state.json."""
    from safetensors.torch import load_file

    state = json.loads((ck / "state.json").read_text(encoding="utf-8"))
    if state.get("model_config") != model_config.to_dict():
        raise CheckpointError(f"{ck}: the checkpoint was trained with another model config")
    raw.load_state_dict(load_file(str(ck / "model.safetensors"), device=str(device)))
    ema.load_state_dict(load_file(str(ck / "ema.safetensors"), device=str(device)))
    opt.load_state_dict(torch.load(ck / "optimizer.pt", map_location=device, weights_only=True))
    if scaler is not None and (ck / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(ck / "scaler.pt", weights_only=True))
    return state


def restore_rng(ck: Path, state: dict, rank: int, gen: torch.Generator, device) -> None:
    """Put this rank's generators back where the checkpoint left them (same world size only)."""
    from safetensors.torch import load_file

    rng = load_file(str(ck / "rng.safetensors"))
    gen.set_state(rng[f"rank{rank}.loop"])
    torch.set_rng_state(rng[f"rank{rank}.torch_cpu"])
    if device.type == "cuda" and f"rank{rank}.cuda" in rng:
        torch.cuda.set_rng_state(rng[f"rank{rank}.cuda"])
    rs = state["rank_states"][rank]
    set_python_state(rs["python"])
    set_numpy_state(rs["numpy"])


def load_checkpoint_weights(path: Path, which: str = "ema") -> dict:
    from safetensors.torch import load_file

    f = Path(path) / f"{which}.safetensors"
    if not f.is_file():
        raise CheckpointError(f"{f} not found")
    return load_file(str(f))


def export_backbone(ema_model, path: Path, cfg, summary: dict, names: list[str]) -> Path:
    """The EMA weights as our backbone (.safetensors + .json manifest with the run's provenance)."""
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
