"""The one place a matplotlib figure becomes a PNG: an Agg canvas without pyplot state, the title
on top, the research-use disclaimer as its footer and in the PNG "Description" field, written
atomically. Used by evaluation, the HTML reports and the pretraining pictures."""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import DISCLAIMER
from .storage import atomic_write_bytes


def new_figure(figsize: tuple) -> Figure:
    """A figure on its own Agg canvas: no pyplot state, safe in threads and without a display."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure, title: str, dpi: int = 110, metadata: dict | None = None) -> bytes:
    """The PNG of ``fig`` with ``title`` on top, the disclaimer as its footer and in its metadata
    (``metadata``: more PNG text fields, e.g. a layout that a reader of the figure needs)."""
    fig.suptitle(title, fontsize=12)
    fig.text(0.5, 0.005, DISCLAIMER, ha="center", va="bottom", fontsize=8, style="italic", color="#444444")
    fig.tight_layout(rect=(0, 0.03, 1, 0.96))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={**(metadata or {}), "Title": title, "Description": DISCLAIMER})
    return buf.getvalue()


def save_figure(fig: Figure, path, title: str, dpi: int = 110, metadata: dict | None = None) -> None:
    atomic_write_bytes(path, figure_png(fig, title, dpi, metadata))
