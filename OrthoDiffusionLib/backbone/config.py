"""Architecture configuration of the diffusion U-Net, in the published code's vocabulary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


def _parse_ints(value) -> tuple[int, ...]:
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(",") if v.strip())
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class UNetConfig:
    """Mirrors the published ``create_model`` arguments.

    ``attention_resolutions`` are *resolutions* as in the published code ("16" with image_size 256
    means attention where the feature map is 16 wide, i.e. at downsample factor 256 // 16 = 16).
    """

    image_size: int = 256
    depth_size: int = 16
    num_channels: int = 64
    num_res_blocks: int = 1
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 1
    num_head_channels: int = -1
    in_channels: int = 1
    out_channels: int = 1
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    norm_groups: int = 32  # published: always 32; smaller only for our CPU demo models
    timesteps: int = 1000
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", _parse_ints(self.channel_mult))
        object.__setattr__(self, "attention_resolutions", _parse_ints(self.attention_resolutions))
        for res in self.attention_resolutions:
            if res <= 0 or self.image_size % res:
                raise ValueError(f"attention resolution {res} does not divide image_size {self.image_size}")
        if self.resblock_updown:
            raise ValueError("resblock_updown=True is not used by the published models and is not supported")

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsample factors at which attention is used (the published code's internal form)."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.in_channels, self.depth_size, self.image_size, self.image_size)

    @property
    def min_input_multiple(self) -> int:
        """Each spatial size must be divisible by this (stride-2 downsampling on all axes)."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        known = {f.name for f in fields(cls)}
        data = dict(data)
        if "beta_schedule" in data and not str(data["beta_schedule"]).startswith("cosine"):
            raise ValueError(f"only the cosine schedule is supported, got {data['beta_schedule']}")
        extra = {k: v for k, v in data.items() if k not in known}
        kwargs = {k: v for k, v in data.items() if k in known and k != "extra"}
        return cls(**kwargs, extra=extra)

    @classmethod
    def released(cls) -> "UNetConfig":
        """The configuration of the published sagittal/coronal/axial backbones (34,524,545 params)."""
        return cls()
