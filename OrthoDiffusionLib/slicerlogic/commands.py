"""Command lines and environment of the CLI child process (argv and defaults come from the jobs)."""

from __future__ import annotations

import os

from ..jobs import FinetuneJob, PredictJob

CLI_MODULE = "OrthoDiffusionLib.cli.main"
DEVICES = {"auto": "auto", "cpu": "cpu", "gpu": "cuda"}  # GUI choice -> CLI --device


def cli_prefix(python: str) -> list:
    """``[python, -m, OrthoDiffusionLib.cli.main]``: in Slicer ``python`` is PythonSlicer."""
    return [str(python), "-m", CLI_MODULE]


def predict_command(python: str, job: PredictJob) -> list:
    job.validate()
    return cli_prefix(python) + job.to_argv()


def finetune_command(python: str, job: FinetuneJob) -> list:
    job.validate()
    return cli_prefix(python) + job.to_argv() + ["--quiet"]  # no tqdm bars in the log box


def rollback_command(python: str, model: str, version: str) -> list:
    return cli_prefix(python) + ["finetune", "--model", model, "--rollback", version]


def cli_device(choice: str) -> str:
    if choice not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {choice!r}")
    return DEVICES[choice]


def cli_environment(lib_parent: str, device_choice: str = "auto", base: dict | None = None) -> dict:
    """Variables to add to the child's environment.

    The library folder goes first on PYTHONPATH; ORTHODIFFUSION_HOME is passed on explicitly because
    Slicer may start children from its launch-time environment, which lacks a value set later
    (e.g. by the self-test); forced CPU hides the GPUs.
    """
    base = os.environ if base is None else base
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(lib_parent), base.get("PYTHONPATH", "")) if p),
           "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    if base.get("ORTHODIFFUSION_HOME"):
        env["ORTHODIFFUSION_HOME"] = base["ORTHODIFFUSION_HOME"]
    if device_choice == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env
