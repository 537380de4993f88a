"""One JSON-serialisable config object per job; the CLI, the Slicer module and the Python API
build the same object (``from_dict`` validates, ``to_dict`` records it in outputs)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields

from .errors import UserError

from .device import Device
from .planes import Plane
TASKS = ("diagnosis", "segmentation", "all")


def _from_dict(cls, data: dict):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    obj = cls(**data)
    obj.validate()
    return obj


@dataclass
class FitJob:
    manifest: str
    model: str = "knee-demo"
    task: str = "all"
    label_fraction: float = 1.0
    folds: int = 5
    seed: int = 0
    out: str | None = None               # head store; default: the model's user store
    cache: str | None = None             # feature cache; default: per-user cache
    device: str = "auto"
    seg_plane: str = "sagittal"
    max_epochs: int = 200
    seg_epochs: int = 45                 # the time/Dice trade-off chosen in bench/README.md ("Heads fitting")
    parent: str | None = None            # recorded parent version; default: the store's current
    replay: int = 48                     # training cases kept in the version for fine-tune replay (0: none)
    threads: int | None = None           # CPU budget (expert worker processes, decoder threads); None: all cores
    finetune_backbone: bool = False      # Stage I: train each plane's encoder with the task's head first
    unfreeze: int = 3                    # Stage I: trainable blocks up to the feature block (3: mid_0..mid_2)
    finetune_epochs: int = 20            # Stage I: at most this many epochs (early stopping)

    def validate(self) -> None:
        if self.finetune_backbone and self.task == "all":
            raise UserError("--finetune-backbone trains the encoders with one task's head: give --task diagnosis "
                            "or --task segmentation")
        if self.unfreeze < 1:
            raise UserError(f"--unfreeze must be ≥ 1, got {self.unfreeze}")
        if not 1 <= self.finetune_epochs <= 1000:
            raise UserError(f"--finetune-epochs must be between 1 and 1000, got {self.finetune_epochs}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be ≥ 1, got {self.threads}")
        if self.replay < 0:
            raise UserError(f"--replay must be ≥ 0, got {self.replay}")
        if self.task not in TASKS:
            raise UserError(f"--task must be one of {', '.join(TASKS)}, got '{self.task}'")
        if not 0 < self.label_fraction <= 1:
            raise UserError(f"--label-fraction must be in (0, 1], got {self.label_fraction}")
        if self.folds < 2:
            raise UserError(f"--folds must be ≥ 2, got {self.folds}")
        self.seg_plane = Plane.parse(self.seg_plane, "segmentation plane").value

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FitJob":
        return _from_dict(cls, data)


@dataclass
class PredictJob:
    inputs: list = field(default_factory=list)   # study paths whose planes are detected (positional / --volume)
    planes: dict = field(default_factory=dict)   # plane -> path given for that plane (--sagittal ..., a manifest row)
    out: str = "orthodiffusion-output"
    model: str = "knee-demo"
    device: str = "auto"
    draws: int | None = None             # noise draws per plane; None: the model's default (catalogue)
    seed: int = 0
    reference: str | None = None        # reference plane; default sagittal, else the first present
    ehr: dict | None = None
    reformat: bool | None = None
    echo: int | None = None
    heads_version: str | None = None
    cache: str | None = None
    no_cache: bool = False
    case_id: str | None = None
    max_voxels: int | None = 512 ** 3    # per image, checked on headers before loading (None: no limit)
    max_memory_gb: float | None = None   # refuse when the memory estimate is above this (and above free RAM)
    windows: str | None = None           # segmentation windows: central | sliding; None: the model's (catalogue)

    def validate(self) -> None:
        if self.max_voxels is not None and self.max_voxels < 1:
            raise UserError(f"--max-voxels must be ≥ 1, got {self.max_voxels}")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise UserError(f"--max-memory must be > 0 GB, got {self.max_memory_gb}")
        if not self.inputs and not self.planes:
            raise UserError("no input: give a DICOM folder, up to three NIfTI/NRRD files or one 3D volume")
        self.planes = {Plane.parse(p, "plane").value: str(v) for p, v in self.planes.items() if v is not None}
        if self.draws is not None and not 1 <= self.draws <= 32:
            raise UserError(f"--draws must be between 1 and 32, got {self.draws}")
        if self.reference is not None:
            self.reference = Plane.parse(self.reference, "--reference").value
        Device.parse(self.device, "--device")
        if self.windows is not None:
            from .planes import look_up

            look_up(self.windows, ("central", "sliding"), "--windows")
        if self.out:
            from .io.paths import itk_path

            itk_path(self.out, "--out")  # SimpleITK would abort the process when writing the images there

    def to_dict(self) -> dict:
        return asdict(self)

    def to_argv(self) -> list:
        """``orthodiffusion`` arguments that rebuild this job (``cli.predict.job_from_args``);
        only fields that differ from the defaults are written, so the CLI's defaults apply."""
        given = [a for plane, path in self.planes.items() for a in (f"--{plane}", str(path))]
        return ["predict", *self.inputs, *given, *job_argv(self, PREDICT_FLAGS, skip=("inputs", "planes"))]

    @property
    def all_inputs(self) -> list:
        """Every input path, given-plane ones first (what the guards and provenance look at)."""
        return [*self.planes.values(), *self.inputs]

    @classmethod
    def from_dict(cls, data: dict) -> "PredictJob":
        return _from_dict(cls, data)


@dataclass
class FinetuneJob:
    model: str = "knee-demo"
    corrections: str | None = None       # corrections store; default: the per-user one
    cases: list = field(default_factory=list)  # case ids to use (default: every case; latest entry each)
    replay: int = 16                     # replay-sample cases mixed in (0: none)
    replay_weight: float = 0.1           # weight of the replay (distillation) loss against the corrections'
    epochs: int = 40                     # optimiser steps; each sees every corrected case + a few replay cases
    seed: int = 0
    lr: float = 1e-2                     # output layers only (decoder classifier, expert linears, gate)
    device: str = "cpu"
    cache: str | None = None             # feature cache; default: the one the prediction used
    accept_worse: bool = False           # make the new version current even when it is worse than its parent

    def validate(self) -> None:
        if self.replay < 0:
            raise UserError(f"--replay must be ≥ 0, got {self.replay}")
        if not 0 <= self.replay_weight <= 100:
            raise UserError(f"--replay-weight must be between 0 and 100, got {self.replay_weight}")
        if not 1 <= self.epochs <= 1000:
            raise UserError(f"--epochs must be between 1 and 1000, got {self.epochs}")
        if not 0 < self.lr < 1:
            raise UserError(f"--lr must be in (0, 1), got {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_argv(self) -> list:
        """``orthodiffusion`` arguments that rebuild this job (``cli.finetune.job_from_args``)."""
        return ["finetune", *job_argv(self, FINETUNE_FLAGS)]

    @classmethod
    def from_dict(cls, data: dict) -> "FinetuneJob":
        return _from_dict(cls, data)


# Job field -> CLI flag (the CLI parsers in cli/predict.py and cli/finetune.py own the spelling).
PREDICT_FLAGS = {"out": "--out", "model": "--model", "device": "--device", "draws": "--draws", "seed": "--seed",
                 "reference": "--reference", "ehr": "--ehr", "reformat": ("--reformat", "--no-reformat"),
                 "echo": "--echo", "heads_version": "--heads-version", "cache": "--cache", "no_cache": "--no-cache",
                 "case_id": "--case-id", "max_voxels": "--max-voxels", "max_memory_gb": "--max-memory", "windows": "--windows"}
FINETUNE_FLAGS = {"model": "--model", "corrections": "--corrections", "cases": "--case", "replay": "--replay",
                  "replay_weight": "--replay-weight", "epochs": "--epochs", "seed": "--seed", "lr": "--lr",
                  "device": "--device", "cache": "--cache", "accept_worse": "--accept-worse"}


# ---------------------------------------------------------------------------------------------
# job -> command line (the jobs' ``to_argv``): one place that turns a job back into CLI arguments

def _default(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def _ehr_text(record: dict) -> str:
    parts = []
    for key, value in record.items():
        if value is None or value == "":
            continue
        text = f"{value:g}" if isinstance(value, float) else str(value)
        if any(c in text for c in ",="):
            raise ValueError(f"EHR value {key}={text!r} cannot be passed as KEY=VALUE")
        parts.append(f"{key}={text}")
    return ",".join(parts)


def job_argv(job, flags: dict, skip: tuple = ()) -> list:
    """Flags for every field whose value differs from the field's default.

    ``flags``: field -> flag; a ``(on, off)`` pair for an optional bool; lists repeat the flag;
    bools with one flag are store_true switches. A value the CLI cannot express raises ValueError.
    """
    argv = []
    for f in fields(job):
        if f.name in skip:
            continue
        value = getattr(job, f.name)
        if value == _default(f) and f.name != "out":  # --out is required by the CLI
            continue
        if f.name not in flags:
            raise ValueError(f"{type(job).__name__}.{f.name}={value!r} has no CLI flag")
        flag = flags[f.name]
        if isinstance(flag, tuple):
            if value is not None:
                argv.append(flag[0] if value else flag[1])
        elif isinstance(value, bool):
            if value:
                argv.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        elif value is None:
            raise ValueError(f"{type(job).__name__}.{f.name}=None cannot be given on the command line")
        elif isinstance(value, dict):
            text = _ehr_text(value)
            if text:
                argv += [flag, text]
        else:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv
