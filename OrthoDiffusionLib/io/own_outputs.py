"""The tool's own outputs are not scans: recognise them so they are never read as input images.

A label map (``labels.nrrd``), a segmentation (``*.seg.nrrd``), an uncertainty or evidence map
read as an "MR volume" gives confident nonsense; and a study folder that holds an earlier result
folder would otherwise offer the old ``labels.nrrd`` next to the scan (the larger one wins a plane).
Recognised by name, by the folder they sit in (a result folder: ``result.json`` written by the tool,
or the output marker) and by content (the disclaimer key the tool writes into every image header).
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import DISCLAIMER
from ..errors import InputError

from ..ownership import MARKER  # noqa: E402  (the output marker of every folder the tool writes)
RESULT_INDEX = "result.json"
OUTPUT_IMAGE_NAMES = ("labels.nrrd", "uncertainty.nrrd")


def is_result_folder(folder: str | os.PathLike) -> bool:
    """A folder the tool wrote: it carries the output marker or the tool's ``result.json``."""
    folder = Path(folder)
    if (folder / MARKER).is_file():
        return True
    index = folder / RESULT_INDEX
    try:
        if not index.is_file() or index.stat().st_size > (1 << 22):
            return False
        with open(index, "rb") as f:
            return DISCLAIMER.encode() in f.read()
    except OSError:
        return False


def output_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` is one of the tool's outputs (a short phrase), or None when it is not."""
    from .headers import header_refs

    path = Path(path)
    name = path.name.lower()
    if name.endswith(".seg.nrrd"):
        return "is a segmentation (.seg.nrrd), not a scan"
    if is_result_folder(path.parent):
        return f"lies in a result folder of orthodiffusion ({path.parent.name}/{RESULT_INDEX}), not a scan"
    if name in OUTPUT_IMAGE_NAMES or (name.startswith("evidence_") and name.endswith(".nrrd")):
        return f"is an output of orthodiffusion ({path.name}), not a scan"
    try:
        refs = header_refs(path)
    except (OSError, ValueError, InputError):  # an unreadable or hostile header is reported by its reader
        return None
    if refs is not None and refs.own_output:
        return "was written by orthodiffusion (its header carries the tool's disclaimer), not a scan"
    if refs is not None and refs.segmentation:
        return "is a segmentation (its header has Segment0_* fields), not a scan"
    return None
