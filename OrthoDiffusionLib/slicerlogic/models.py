"""The model selector's entries from the catalogue API (shipped, user-installed and imported)."""

from __future__ import annotations

from dataclasses import dataclass

from ..models.catalogue import list_models


@dataclass(frozen=True)
class ModelChoice:
    id: str
    label: str
    source: str          # shipped | user | imported
    usable: bool         # False for imported backbones that still need `orthodiffusion fit`
    note: str = ""


def _source(spec) -> str:
    return "imported" if spec.entry.get("imported") else spec.source


def model_choices() -> list:
    """One entry per model id as ``get_model`` resolves it (a user model shadows a shipped one)."""
    out = []
    for spec in list_models():
        # current.json, not HeadStore: importing the heads pulls in torch, which the GUI may not have yet
        has_heads = any((d / "current.json").is_file() for d in (spec.user_heads, spec.shipped_heads))
        usable = has_heads or not spec.entry.get("needs_heads")
        source = _source(spec)
        note = "" if usable else "needs heads: run `orthodiffusion fit` first"
        label = f"{spec.entry.get('name') or spec.id} [{spec.id} {spec.version}, {source}]"
        out.append(ModelChoice(id=spec.id, label=label + (f" ({note})" if note else ""), source=source,
                               usable=usable, note=note))
    return out
