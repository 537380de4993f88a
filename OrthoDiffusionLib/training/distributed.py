"""torch.distributed plumbing for ``torchrun``: process group, rank/world size, DDP wrapping.

Launch with ``torchrun --nproc_per_node=N -m OrthoDiffusionLib pretrain …`` (single node) or with
``--nnodes/--rdzv-backend c10d/--rdzv-endpoint`` (multi-node). Backend: NCCL on CUDA, gloo on CPU.
The torchrun environment is read by ``OrthoDiffusionLib.runtime.torchrun_env``; without it (or with
WORLD_SIZE 1) everything runs as a single process (rank 0 of 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..runtime import torchrun_env


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_kind: str) -> DistInfo:
    """Initialise the default process group when launched by torchrun with WORLD_SIZE > 1."""
    env = torchrun_env()
    if not env.launched:
        return DistInfo()
    import torch.distributed as dist

    backend = "nccl" if device_kind == "cuda" else "gloo"
    if device_kind == "cuda":
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(env.rank, env.local_rank, env.world, backend)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return value
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def gather_object(obj, info: DistInfo) -> list:
    """``obj`` of every rank, in rank order (a one-element list without torchrun)."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a wall-time budget ran out)."""
    if not info.enabled:
        return bool(flag)
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    import torch.distributed as dist

    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def wrap_ddp(model: torch.nn.Module, info: DistInfo, device: torch.device):
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if device.type == "cuda":
        return DDP(model, device_ids=[device.index], output_device=device.index)
    return DDP(model)


def shutdown(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
