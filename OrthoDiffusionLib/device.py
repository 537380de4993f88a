"""Pick the torch device the user asked for, falling back to the CPU with a warning."""

from __future__ import annotations

import warnings


def resolve_device(requested: str = "auto"):
    import torch

    requested = (requested or "auto").lower()
    if requested not in {"auto", "cpu", "cuda", "gpu"} and not requested.startswith("cuda:"):
        from .errors import UserError

        raise UserError(f"unknown device '{requested}': use auto, cpu or cuda")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if requested in {"auto", "gpu"} else requested)
    if requested != "auto":
        warnings.warn(f"device '{requested}' requested but no CUDA GPU is available; using the CPU")
    return torch.device("cpu")
