"""The embedded sample knee as a SampleData source, and the knee terminology file."""

from __future__ import annotations

from ..resources import resource_path, sample_knee_path
from ..storage import sha256_file

SAMPLE_CATEGORY = "OrthoDiffusion"
SAMPLE_NAME = "OrthoDiffusionKnee"
TERMINOLOGY_FILE = ("Terminology", "knee-11.term.json")


def sample_data_source() -> dict:
    """Keyword arguments for ``SampleData.SampleDataLogic.registerCustomSampleDataSource``.

    The file ships with the extension, so the URI is a local ``file://`` one (SampleData fetches it
    with urllib like any download) and the checksum is that file's sha256.
    """
    path = sample_knee_path()
    return {"category": SAMPLE_CATEGORY, "sampleName": SAMPLE_NAME, "uris": path.as_uri(), "fileNames": path.name,
            "nodeNames": SAMPLE_NAME, "checksums": f"SHA256:{sha256_file(path)}",
            "thumbnailFileName": str(resource_path("Icons", "OrthoDiffusion.png"))}


def terminology_path():
    return resource_path(*TERMINOLOGY_FILE)


def load_terminology(terminologies_logic) -> str:
    """Load ``knee-11.term.json`` into the Terminologies logic; returns the context name it registered."""
    name = terminologies_logic.LoadTerminologyFromFile(str(terminology_path()))
    if not name:
        raise RuntimeError(f"Terminologies refused {terminology_path()}")
    return name
