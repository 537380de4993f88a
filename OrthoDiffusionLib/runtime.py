"""The process the work runs in: CPU cores and torch threads per worker, the torchrun environment,
peak resident memory, and the per-stage timer behind the stage tags ``[loading] … [writing]``."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def threads_per_worker(workers: int, local_world: int = 1) -> int:
    """Torch threads for each of ``workers`` processes on each of ``local_world`` ranks of a node."""
    return max(1, cpu_cores() // max(1, workers * local_world))


@dataclass(frozen=True)
class TorchrunEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def launched(self) -> bool:
        return self.world > 1


def torchrun_env() -> TorchrunEnv:
    """RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE as torchrun sets them (0, 1, 0, 1 without)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)
    if world > 1 and not 0 <= rank < world:
        from .errors import UserError

        raise UserError(f"RANK={rank} is outside 0..WORLD_SIZE-1 ({world - 1})")
    return TorchrunEnv(rank, world, local_rank, local_world)


def peak_rss_mb() -> float | None:
    """The process's resident-memory high-water mark in MiB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil

            return round(psutil.Process().memory_info().peak_wset / (1024 * 1024), 1)
        except (ImportError, AttributeError):
            return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (1024 * 1024) if sys.platform == "darwin" else r / 1024, 1)


# The stage tags predict and fine-tune print, with the progress (percent) reached when each starts:
# the one list the Slicer module's progress bar reads (slicerlogic.progress).
STAGES = {"loading": 10, "preprocess": 20, "features": 40, "segment": 60, "finetune": 70, "diagnose": 80,
          "writing": 95}


class StageTimer:
    """Per-stage wall time and peak resident memory (the high-water mark after the stage); prints
    ``[stage] message`` when a stage starts (the Slicer module reads these tags for progress)."""

    def __init__(self, log=print):
        self.log, self.stages, self._t = log, {}, None

    def start(self, name: str, message: str = "") -> None:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; add it to runtime.STAGES (the module's progress bar reads it)")
        self._stop()
        self.log(f"[{name}] {message}".rstrip())
        self._t = (name, time.perf_counter())

    def _stop(self) -> None:
        if self._t:
            name, t0 = self._t
            prev = self.stages.get(name, {"seconds": 0.0})
            self.stages[name] = {"seconds": round(prev["seconds"] + time.perf_counter() - t0, 3),
                                 "peak_rss_mb": peak_rss_mb()}
            self._t = None

    def finish(self) -> dict:
        self._stop()
        return self.stages
