"""Memory estimate of one ``predict`` case, made from image headers and the model config before
any pixel or weight is loaded, and compared with the memory the machine has available.

The estimate is a sum of the big allocations (bytes):

- ``process``      resident memory of this process now (Python, torch, SimpleITK already imported)
- ``weights``      the backbone and head files (float32 on the CPU)
- ``loading``      pixel data as stored + a float32 copy per plane (reformat / resampling)
- ``backbone``     activations of the first resolution level (the largest) × the batch, with the
                   temporaries of a ResBlock (≈5 tensors alive), plus the attention matrix
- ``segmentation`` class probabilities on the reference grid: ≈4 float32 copies per
                   segmentation plane (resample, compose, array, list) + 2 for the fusion

It is deliberately rough (within a factor of about two of the measured peak, see
docs/reliability.md); the point is to refuse a case that cannot fit with a clear message instead of
being killed by the out-of-memory killer. Research use only, not for clinical decisions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import ResourceError
from ..io.guards import DEFAULT_MAX_VOXELS, HeaderInfo, check_voxels, read_headers, reformat_view_voxels

from ..planes import PLANES
RESBLOCK_TENSORS = 5
SEG_COPIES_PER_PLANE = 4
FUSION_COPIES = 2
WINDOW_COPIES = 2  # sliding windows: the running weighted sum and the window being added, per seg plane
GB = 1e9


def _proc_kib(path: str, key: str) -> int | None:
    """The ``key:`` line of a /proc file, in bytes (its values are kiB); None when absent."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory_bytes() -> int | None:
    """Memory the OS can give us now (psutil when installed, else /proc/meminfo); None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return _proc_kib("/proc/meminfo", "MemAvailable")


def current_rss_bytes() -> int:
    """Resident set size of this process now (0 when the platform does not say)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return _proc_kib("/proc/self/status", "VmRSS") or 0


@dataclass
class MemoryEstimate:
    parts: dict = field(default_factory=dict)  # name -> bytes

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    def text(self) -> str:
        return ", ".join(f"{k} {v / GB:.2f} GB" for k, v in self.parts.items())


def _backbone_config(spec, plane: str) -> dict:
    side = spec.backbone_path(plane).with_suffix(".json")
    try:
        return json.loads(side.read_text(encoding="utf-8")).get("config", {})
    except (OSError, ValueError):
        return {}


def _activation_bytes(cfg: dict, spec, batch: int) -> int:
    depth = int(cfg.get("depth_size") or spec.input.get("depth", 16))
    size = int(cfg.get("image_size") or spec.input.get("height", 256))
    channels = int(cfg.get("num_channels", 64)) * int((cfg.get("channel_mult") or [1])[0])
    level0 = batch * channels * depth * size * size * 4
    resolution = max(1, min(cfg.get("attention_resolutions") or [size]))  # feature-map width with attention
    tokens = max(1, depth // max(1, size // resolution)) * resolution * resolution
    attention = batch * int(cfg.get("num_heads", 1) or 1) * tokens * tokens * 4
    return RESBLOCK_TENSORS * level0 + attention


def estimate_predict_memory(headers: list[HeaderInfo], spec, draws: int,
                            views: list[int] | None = None, windows: str | None = None) -> MemoryEstimate:
    """Estimate for one study given its image headers and the model spec (no weights loaded);
    ``views``: voxels of the reformatted views (``reformat_view_voxels``), each a float32 image and
    possibly the reference grid."""
    from ..labelsets import load_label_set

    n_classes = len(load_label_set((spec.label_sets or {}).get("structures", "knee-11")).labels) + 1  # + background
    planes = [p for p in PLANES if p in spec.planes]
    weights = sum(spec.backbone_path(p).stat().st_size for p in planes if spec.backbone_path(p).is_file())
    heads_dir = spec.shipped_heads
    weights += sum(f.stat().st_size for f in heads_dir.rglob("weights.safetensors")) if heads_dir.is_dir() else 0
    views = list(views or [])
    largest = max([h.voxels for h in headers] + views, default=0)
    n_planes = len(planes)
    loading = sum(h.stored_bytes for h in headers) + n_planes * largest * 4 + 4 * sum(views)
    batch = min(4, max(1, draws))
    backbone = max((_activation_bytes(_backbone_config(spec, p), spec, batch) for p in planes), default=0)
    seg_planes = [p for p in (spec.segmentation_planes or []) if p in planes]
    copies = SEG_COPIES_PER_PLANE + (WINDOW_COPIES if (windows or spec.segmentation_windows[0]) == "sliding" else 0)
    segmentation = largest * n_classes * 4 * (copies * len(seg_planes) + FUSION_COPIES) \
        if seg_planes else largest * 8
    return MemoryEstimate({"process": current_rss_bytes(), "weights": int(weights), "loading": int(loading),
                           "backbone": int(backbone), "segmentation": int(segmentation)})


def guard_predict(inputs, model: str, draws: int, max_voxels: int | None = DEFAULT_MAX_VOXELS,
                  max_memory_gb: float | None = None, available: int | None = None, log=print,
                  reformat: bool | None = None, windows: str | None = None) -> MemoryEstimate:
    """Refuse (ResourceError) a study above ``max_voxels`` per image or whose memory estimate is
    above what is available (or above ``max_memory_gb``); runs on headers only."""
    from ..models.catalogue import get_model

    headers = [h for p in inputs for h in read_headers(p)]
    views = reformat_view_voxels(headers, reformat)  # a reformat can need far more than the volume
    check_voxels(headers, max_voxels, views)
    spec = get_model(model)
    estimate = estimate_predict_memory(headers, spec, draws, views, windows)
    available = available if available is not None else available_memory_bytes()
    limits = [(v, why) for v, why in ((available, "is available on this machine"),
                                      (None if max_memory_gb is None else int(max_memory_gb * GB), "is allowed by --max-memory"))
              if v is not None]
    for limit, why in limits:
        if estimate.total > limit:
            raise ResourceError(
                f"this study needs an estimated {estimate.total / GB:.2f} GB of memory but only {limit / GB:.2f} GB "
                f"{why} (estimate: {estimate.text()}); close other programs, use --draws 1, give fewer or "
                "smaller series (crop or downsample), or run on a machine with more memory")
    log(f"  memory estimate {estimate.total / GB:.2f} GB"
        + (f" of {available / GB:.1f} GB available" if available else ""))
    return estimate
