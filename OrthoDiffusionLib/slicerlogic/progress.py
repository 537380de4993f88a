"""Progress from the CLI's stage tags (``[features] ...``) for the progress bar and status label."""

from __future__ import annotations

import re

from ..runtime import STAGES  # stage -> percent reached when it starts (predict and finetune share them)

_TAG = re.compile(r"^\[([a-z]+)\]")


def parse_progress(line: str) -> tuple | None:
    """``(percent, stage)`` when the line opens with a known stage tag, else None."""
    m = _TAG.match(line.strip())
    if m and m.group(1) in STAGES:
        return STAGES[m.group(1)], m.group(1)
    return None


class ProgressTracker:
    """Percent and stage of one process run; never moves backwards (make one per run)."""

    def __init__(self):
        self.percent, self.stage = 0, "starting"

    def feed(self, line: str) -> bool:
        found = parse_progress(line)
        if found is None or found[0] < self.percent:
            return False
        self.percent, self.stage = found
        return True

    def finish(self, return_code: int) -> None:
        self.percent, self.stage = (100, "done") if return_code == 0 else (self.percent, "failed"
                                                                             if return_code > 0 else "cancelled")
