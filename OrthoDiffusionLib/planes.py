"""The three acquisition planes, defined once: ``PLANES`` (the fixed order every multi-plane array
uses: index 0 sagittal, 1 coronal, 2 axial) and the ``Plane`` enum with a one-line error, and a
"did you mean", for a misspelt value (as MONAI's ``look_up_option`` gives)."""

from __future__ import annotations

import difflib
from enum import Enum


class Plane(str, Enum):
    SAGITTAL = "sagittal"
    CORONAL = "coronal"
    AXIAL = "axial"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value, what: str = "plane") -> "Plane":
        """``value`` (a Plane or its name, any case) as a Plane; a ``UserError`` line otherwise."""
        if isinstance(value, cls):
            return value
        text = str(value).strip().lower()
        for p in cls:
            if p.value == text:
                return p
        return _unknown(what, value, [p.value for p in cls])


PLANES: tuple[str, str, str] = tuple(p.value for p in Plane)


def _unknown(what: str, value, choices: list[str]):
    from .errors import UserError

    close = difflib.get_close_matches(str(value).lower(), choices, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UserError(f"{what} '{value}' is not one of {', '.join(choices)}{hint}")


def look_up(value, choices, what: str) -> str:
    """``value`` when it is one of ``choices``; else one line naming them (and the closest)."""
    if value in choices:
        return value
    return _unknown(what, value, list(choices))
