"""Guided-diffusion style 3D U-Net with the published parameter layout.

Written for this project so that the published state dicts load without remapping and every named
block output matches the reference code to float precision. MONAI's ``DiffusionModelUNet`` builds
the same parameter count but upsamples with nearest neighbours (the reference uses trilinear) and
packs q/k/v in another order, so its decoder and attention outputs differ; see docs/backbone.md.

Block names (the contract users quote): ``in_0 …`` (encoder blocks, ``in_0`` is the input conv),
``mid_0``/``mid_1``/``mid_2`` (ResBlock, attention, ResBlock of the middle block), ``out_0 …``
(decoder blocks) and ``final`` (the predicted noise).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from .config import UNetConfig

BLOCK_ORDER_HELP = "in_0..in_N, mid_0, mid_1, mid_2, out_0..out_M, final"


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 1000) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin]; the published code uses max_period = 1000."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (as the reference does)."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def _onednn_ok() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that, for CPU float32 inference, always takes oneDNN.

    PyTorch picks its slow im2col path for a batch-1 conv whose N·C·D·H is small (a heuristic made
    for 2D), which is most convs of knee-demo and the low-resolution ones of the released backbone.
    oneDNN computes the same conv ~3x faster there: knee-demo's encoder pass 0.26 -> 0.04 s, the
    released one ~4 % faster (bench/README.md). Values agree to float rounding (~1e-7). Training
    (grad enabled) and single-channel inputs (slower in oneDNN) keep the stock path."""

    def forward(self, x):
        if (x.device.type == "cpu" and x.dtype == torch.float32 and self.groups == 1 and self.in_channels > 1
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and not torch.is_grad_enabled() and _onednn_ok()):
            return torch.mkldnn_convolution(x.contiguous(), self.weight, self.bias, list(self.padding),
                                            list(self.stride), list(self.dilation), 1)
        return super().forward(x)


def _zeroed(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


class ResBlock(nn.Module):
    def __init__(self, channels, emb_channels, out_channels=None, dropout=0.0, groups=32,
                 use_scale_shift_norm=False, use_checkpoint=False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(GroupNorm32(groups, channels), nn.SiLU(),
                                       Conv3d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(),
                                        nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        _zeroed(Conv3d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else Conv3d(channels, out_channels, 1)

    def _forward(self, x, emb):
        e_vec = self.emb_layers(emb)
        if not (torch.is_grad_enabled() or self.training or self.use_scale_shift_norm):
            # Inference: the same arithmetic with SiLU and the embedding add done in place, which
            # saves one full-resolution temporary per step (identical values).
            h = self.in_layers[2](F.silu(self.in_layers[0](x), inplace=True))
            h.add_(e_vec.type(h.dtype)[..., None, None, None])
            h = self.out_layers[3](F.silu(self.out_layers[0](h), inplace=True))
            return self.skip_connection(x) + h
        h = self.in_layers(x)
        e = e_vec.type(h.dtype)[..., None, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h

    def forward(self, x, emb):
        if self.use_checkpoint and torch.is_grad_enabled():
            return grad_checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)


class AttentionBlock(nn.Module):
    """Self-attention over all voxels. q/k/v are packed per head ("legacy" order) unless
    ``new_order``; computed with scaled_dot_product_attention, which never materialises the full
    attention matrix on CPU."""

    def __init__(self, channels, num_heads=1, num_head_channels=-1, groups=32, new_order=False,
                 use_checkpoint=False):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.new_order = new_order
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        b, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        if self.new_order:
            q, k, v = (z.reshape(b * self.num_heads, ch, length) for z in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * self.num_heads, 3 * ch, length).split(ch, dim=1)
        # [B·H, ch, T] → [B·H, 1, T, ch] contiguous: the 4-D layout for which the CPU flash kernel
        # is chosen (memory linear in T); other layouts fall back to materialising T×T.
        q, k, v = (z.transpose(1, 2).unsqueeze(1).contiguous() for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return out.squeeze(1).transpose(1, 2).reshape(b, -1, length)

    def _forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self._attend(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)

    def forward(self, x, emb=None):
        if self.use_checkpoint and torch.is_grad_enabled():
            return grad_checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class Downsample(nn.Module):
    """Stride-2 conv on all three axes (the published 3D variant)."""

    def __init__(self, channels):
        super().__init__()
        self.op = Conv3d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, emb=None):
        return self.op(x)


class Upsample(nn.Module):
    """Trilinear ×2 on all axes, then a 3×3×3 conv (the published 3D variant)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = Conv3d(channels, channels, 3, padding=1)

    def forward(self, x, emb=None):
        x = F.interpolate(x, size=tuple(s * 2 for s in x.shape[2:]), mode="trilinear")
        return self.conv(x)


class EmbedSequential(nn.Sequential):
    """Passes the timestep embedding to every child (children ignore it when they don't use it)."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb)
        return x


class _InputConv(nn.Conv3d):
    def forward(self, x, emb=None):  # noqa: D401 - signature shared with blocks
        return super().forward(x)


class DiffusionUNet(nn.Module):
    """The denoiser ε_θ(x_t, t). Parameter names equal the published ``denoise_fn.*`` keys."""

    def __init__(self, config: UNetConfig, use_checkpoint: bool = False):
        super().__init__()
        self.config = cfg = config
        mc, g = cfg.num_channels, cfg.norm_groups
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(cin, cout=None):
            return ResBlock(cin, emb_dim, cout, cfg.dropout, g, cfg.use_scale_shift_norm, use_checkpoint)

        def attn(ch, heads):
            return AttentionBlock(ch, heads, cfg.num_head_channels, g, cfg.use_new_attention_order, use_checkpoint)

        ch = input_ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([EmbedSequential(_InputConv(cfg.in_channels, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(res(ch), attn(ch, cfg.num_heads), res(ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, cfg.num_heads))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(g, ch), nn.SiLU(), _zeroed(Conv3d(input_ch, cfg.out_channels, 3, padding=1)))

    # -- block names -------------------------------------------------------------------------
    @property
    def block_names(self) -> list[str]:
        return ([f"in_{i}" for i in range(len(self.input_blocks))] + ["mid_0", "mid_1", "mid_2"]
                + [f"out_{i}" for i in range(len(self.output_blocks))] + ["final"])

    def block_index(self, name: str) -> int:
        names = self.block_names
        if name not in names:
            n_in, n_out = len(self.input_blocks), len(self.output_blocks)
            raise ValueError(f"unknown block '{name}'; this backbone has in_0..in_{n_in - 1}, mid_0..mid_2, "
                             f"out_0..out_{n_out - 1}, final")
        return names.index(name)

    def check_input_shape(self, shape) -> None:
        m = self.config.min_input_multiple
        if any(s % m for s in shape[-3:]):
            raise ValueError(f"input spatial size {tuple(shape[-3:])} must be divisible by {m} on every axis")

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, taps=None, stop_after: str | None = None):
        """Predict ε. With ``taps`` (block names) return ``(final_or_None, {name: activation})``;
        the pass stops after the deepest requested block, so no decoder runs when only encoder or
        middle blocks are asked for."""
        taps = list(taps) if taps is not None else None
        if taps is not None and stop_after is None:
            stop_after = max(taps, key=self.block_index) if taps else "final"
        stop = self.block_index(stop_after) if stop_after else len(self.block_names) - 1
        wanted = set(taps or [])
        got: dict[str, torch.Tensor] = {}
        k = 0

        def keep(name, value):
            nonlocal k
            if name in wanted:
                got[name] = value
            k += 1
            return k > stop

        emb = self.time_embed(timestep_embedding(t, self.config.num_channels))
        # Skip tensors are only needed by the decoder; when the pass stops before it, dropping
        # them frees the full-resolution activations (about 0.5 GB at 16×256×256).
        need_skips = stop >= len(self.input_blocks) + len(self.middle_block)
        h, skips = x, []
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb)
            if need_skips:
                skips.append(h)
            if keep(f"in_{i}", h):
                return None, got
        for i, block in enumerate(self.middle_block):
            h = block(h, emb)
            if keep(f"mid_{i}", h):
                return None, got
        for i, block in enumerate(self.output_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if keep(f"out_{i}", h):
                return None, got
        final = self.out(h)
        if taps is None:
            return final
        keep("final", final)
        return final, got
