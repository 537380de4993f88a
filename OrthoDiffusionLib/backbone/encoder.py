"""Stage-I fine-tuned encoder weights: which backbone blocks a fine-tune may change, the file that
holds only those blocks' tensors, and the sha256 that names the effective (fine-tuned) backbone.

The file is a delta on the published backbone: ``encoder_<plane>.safetensors`` with the state-dict
entries of the unfrozen blocks (keys as in the backbone) and metadata naming the base backbone's
sha256 and the blocks. Applying it to any other backbone is refused. The effective backbone's id is
derived from the base sha256 and the file's sha256, so the feature cache, provenance and head
checks all tell a fine-tuned encoder from the frozen one. Research use only, not for clinical decisions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .unet import DiffusionUNet, timestep_embedding

ENCODER_FORMAT = "orthodiffusion-encoder/1"


def block_module(model: DiffusionUNet, name: str) -> nn.Module:
    """The module whose output is block ``name`` (encoder and middle blocks only)."""
    kind, _, index = name.partition("_")
    if kind == "in":
        return model.input_blocks[int(index)]
    if kind == "mid":
        return model.middle_block[int(index)]
    raise ValueError(f"block '{name}' is not an encoder or middle block")


def trainable_blocks(model: DiffusionUNet, feature_block: str, unfreeze: int) -> list[str]:
    """The last ``unfreeze`` blocks up to and including ``feature_block``, in forward order.
    Decoder blocks are refused: they need the encoder's skip tensors, and the feature path stops
    before them."""
    names = model.block_names
    stop = model.block_index(feature_block)
    encoder_and_mid = len(model.input_blocks) + len(model.middle_block)
    if stop >= encoder_and_mid:
        raise ValueError(f"feature block '{feature_block}' is in the decoder; fine-tuning the backbone needs an "
                         f"encoder or middle feature block (in_*, mid_*)")
    if not 1 <= unfreeze <= stop + 1:
        raise ValueError(f"--unfreeze must be between 1 and {stop + 1} for feature block '{feature_block}', "
                         f"got {unfreeze}")
    return names[stop + 1 - unfreeze:stop + 1]


def _prefix(name: str) -> str:
    kind, _, index = name.partition("_")
    return f"{'input_blocks' if kind == 'in' else 'middle_block'}.{index}."


def block_state(model: DiffusionUNet, blocks) -> dict[str, torch.Tensor]:
    """State-dict entries (backbone keys) of ``blocks``."""
    prefixes = tuple(_prefix(b) for b in blocks)
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}


def save_encoder(model: DiffusionUNet, blocks, path, base_sha256: str) -> Path:
    """Write the tensors of ``blocks`` to ``path``; the caller records the file's sha256."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in block_state(model, blocks).items()}
    save_file(tensors, str(path), metadata={"format": ENCODER_FORMAT, "base_sha256": base_sha256,
                                            "blocks": json.dumps(list(blocks))})
    return Path(path)


def read_encoder(path) -> tuple[dict, dict]:
    """(tensors, metadata with ``blocks`` as a list) of an encoder file."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{Path(path).name}: unreadable encoder file ({exc})") from None
    if meta.get("format") != ENCODER_FORMAT:
        raise CheckpointError(f"{Path(path).name} is not a fine-tuned encoder file ({ENCODER_FORMAT})")
    meta["blocks"] = json.loads(meta.get("blocks") or "[]")
    return tensors, meta


def apply_encoder(model: DiffusionUNet, path, base_sha256: str) -> list[str]:
    """Load the encoder file at ``path`` into ``model`` (in place; the published backbone whose
    sha256 is ``base_sha256``). Returns the blocks it replaced."""
    tensors, meta = read_encoder(path)
    if meta.get("base_sha256") != base_sha256:
        raise CheckpointError(f"{Path(path).name} was fine-tuned from another backbone (sha256 "
                              f"{str(meta.get('base_sha256'))[:12]}… vs {base_sha256[:12]}…)")
    expected = block_state(model, meta["blocks"])
    if set(tensors) != set(expected):
        odd = sorted(set(tensors) ^ set(expected))[:4]
        raise CheckpointError(f"{Path(path).name} does not match blocks {meta['blocks']} of this backbone: {odd}")
    with torch.no_grad():
        for key, value in tensors.items():
            if value.shape != expected[key].shape:
                raise CheckpointError(f"{Path(path).name}: {key} has shape {tuple(value.shape)}, the backbone "
                                      f"{tuple(expected[key].shape)}")
            expected[key].copy_(value)  # in place: the backbone keeps its own (aligned) storage
    return list(meta["blocks"])


def effective_sha256(base_sha256: str, encoder_file_sha256: str) -> str:
    """The id of backbone + fine-tuned encoder file (what feature-cache keys and provenance use)."""
    return hashlib.sha256(f"{ENCODER_FORMAT}|{base_sha256}|{encoder_file_sha256}".encode()).hexdigest()


def time_embedding(model: DiffusionUNet, t: int) -> torch.Tensor:
    """[1, emb] embedding of timestep ``t`` (the frozen time_embed; fixed per feature spec)."""
    device = next(model.parameters()).device
    return model.time_embed(timestep_embedding(torch.tensor([int(t)], device=device), model.config.num_channels))


def run_blocks(model: DiffusionUNet, h: torch.Tensor, emb: torch.Tensor, blocks) -> torch.Tensor:
    """Run the encoder/middle ``blocks`` (consecutive, forward order) on ``h``."""
    for name in blocks:
        h = block_module(model, name)(h, emb.expand(len(h), -1))
    return h


def blocks_before(model: DiffusionUNet, first: str) -> list[str]:
    """Every block that runs before ``first`` (the frozen prefix of a fine-tune)."""
    return model.block_names[:model.block_index(first)]
