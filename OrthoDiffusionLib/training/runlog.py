"""``log.csv`` of a pretraining run: one row per step (rank 0), appended as the run goes, cut back
to the checkpoint's step on ``--resume`` so a resumed run's log equals an uninterrupted one's."""

from __future__ import annotations

import csv
from pathlib import Path

from .. import csvsafe  # formula-safe cells in every CSV the tool writes

CSV_FIELDS = ["step", "loss", "lr", "grad_norm", "heldout_loss", "heldout_split", "time_s", "steps_per_s"]


def read_log(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_log(path: Path, rows: list[dict], rewrite: bool = False) -> None:
    """Append ``rows``; with ``rewrite`` replace the file (header + rows) atomically."""
    path = Path(path)
    if rewrite:
        from ..storage import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csvsafe.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
        return
    with open(path, "a", newline="", encoding="utf-8") as f:
        csvsafe.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore").writerows(rows)


def truncate_log(path: Path, step: int) -> None:
    """Keep the rows up to ``step`` (those written after a checkpoint belong to the lost run)."""
    write_log(path, [r for r in read_log(path) if int(r["step"]) <= step], rewrite=True)
