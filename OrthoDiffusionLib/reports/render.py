"""Render the report templates of ``Resources/Templates`` (Jinja2).

Every value is HTML-escaped (``autoescape=True`` for all templates, whatever their name), and a
name a template uses but the context lacks is an error, not an empty string (``StrictUndefined``).
Research use only, not for clinical decisions.
"""

from __future__ import annotations

import math
from functools import lru_cache

from .. import DISCLAIMER
from ..resources import resource_path


def fmt(v, digits: int = 3) -> str:
    """A metric for a table cell: ``n/a`` for a missing or NaN value."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def fmt_ci(v, lo, hi) -> str:
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]" if lo is not None else fmt(v)


@lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(resource_path("Templates"))), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals["disclaimer"] = DISCLAIMER
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
