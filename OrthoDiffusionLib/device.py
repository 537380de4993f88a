"""Pick the torch device the user asked for, falling back to the CPU with a warning."""

from __future__ import annotations

import warnings
from enum import Enum


class Device(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    @classmethod
    def parse(cls, value: str | None, what: str = "device") -> str:
        """The device text ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``gpu`` means ``cuda``); one line
        with a "did you mean" otherwise."""
        from .planes import look_up

        text = (value or "auto").strip().lower()
        if text == "gpu":
            return cls.CUDA.value
        if text.startswith("cuda:") and text[5:].isdigit():
            return text
        return look_up(text, [d.value for d in cls], what)


def resolve_device(requested: str = "auto"):
    import torch

    requested = Device.parse(requested)
    if requested == Device.CPU:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if requested == Device.AUTO else requested)
    if requested != Device.AUTO:
        warnings.warn(f"device '{requested}' requested but no CUDA GPU is available; using the CPU")
    return torch.device("cpu")
