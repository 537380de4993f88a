"""Label sets are data (``Resources/LabelSets/*.json``): findings (knee-8, ankle-4, shoulder-8)
and structures (knee-11). Every head is built for one label set and its manifest names it."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

from .errors import UserError
from .resources import resource_path


@dataclass(frozen=True)
class LabelSet:
    id: str
    kind: str  # "findings" or "structures"
    description: str
    labels: tuple = field(default_factory=tuple)  # tuple of dicts as stored

    @property
    def keys(self) -> list[str]:
        return [lab["key"] for lab in self.labels]

    @property
    def names(self) -> list[str]:
        return [lab["name"] for lab in self.labels]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def values(self) -> list[int]:
        """Label-map values (structures only; background 0 is implicit)."""
        return [int(lab["value"]) for lab in self.labels]

    def by_key(self, key: str) -> dict:
        for lab in self.labels:
            if lab["key"].lower() == key.lower():
                return lab
        raise UserError(f"label '{key}' is not in label set {self.id} (known: {', '.join(self.keys)})")


def available_label_sets() -> list[str]:
    return sorted(p.stem for p in resource_path("LabelSets").glob("*.json"))


@functools.lru_cache(maxsize=None)
def load_label_set(label_set_id: str) -> LabelSet:
    path = resource_path("LabelSets", f"{label_set_id}.json")
    if not path.is_file():
        raise UserError(f"unknown label set '{label_set_id}' (available: {', '.join(available_label_sets())})")
    data = json.loads(path.read_text(encoding="utf-8"))
    return LabelSet(id=data["id"], kind=data["kind"], description=data.get("description", ""),
                    labels=tuple(data["labels"]))
