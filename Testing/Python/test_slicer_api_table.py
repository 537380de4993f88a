"""Every slicer.* / qt.* / ctk.* / SampleData.* use of OrthoDiffusion.py exists in the Slicer release
it can run on: the module's MINIMUM_SLICER, or the version its ``if slicerVersion() >= (X, Y):``
guard guarantees. Presence and parameters per release come from Testing/Data/slicer_api_table.json,
read from Slicer's source at v5.8.0, v5.10.0 and v5.12.3 (scripts/build_slicer_api_table.py)."""

from __future__ import annotations

import ast
import json

import pytest

import slicer_api
from conftest import REPO

MODULE = REPO / "OrthoDiffusion" / "OrthoDiffusion.py"
TABLE = json.loads((REPO / "Testing" / "Data" / "slicer_api_table.json").read_text(encoding="utf-8"))
SOURCE = MODULE.read_text(encoding="utf-8")
MINIMUM = slicer_api.minimum_version(ast.parse(SOURCE))
USES = slicer_api.collect(SOURCE)


def _version(tag: str) -> tuple:
    return tuple(int(x) for x in tag.lstrip("v").split(".")[:2])


def first_release_with(symbol: str, keywords: tuple) -> tuple | None:
    """(major, minor) of the first checked tag that has the symbol and takes these keywords."""
    for tag in TABLE["tags"]:
        entry = TABLE["symbols"][symbol]["tags"][tag]
        if not entry["present"]:
            continue
        params = entry.get("params")
        if params is None or entry.get("var_keyword") or set(keywords) <= set(params):
            return _version(tag)
    return None


def test_the_table_lists_exactly_the_modules_uses():
    used = {u.symbol for u in USES}
    assert used, "no Slicer API found: the collector is broken"
    assert used - set(TABLE["symbols"]) == set(), "run scripts/build_slicer_api_table.py <Slicer git dir>"
    assert set(TABLE["symbols"]) - used == set(), "stale entries: rebuild the table"


def test_declared_minimum_is_a_checked_release_and_documented():
    assert MINIMUM in {_version(t) for t in TABLE["tags"]}
    docs = (REPO / "docs" / "slicer.md").read_text(encoding="utf-8")
    assert f"Slicer {MINIMUM[0]}.{MINIMUM[1]}" in docs


@pytest.mark.parametrize("use", USES, ids=lambda u: f"{u.symbol}@{u.line}")
def test_each_use_exists_where_it_runs(use):
    needed_by = use.guard or MINIMUM
    first = first_release_with(use.symbol, use.keywords)
    assert first is not None, f"{use.symbol}({', '.join(use.keywords)}) is in none of {TABLE['tags']}"
    assert first <= needed_by, (f"line {use.line}: {use.symbol}({', '.join(use.keywords)}) first appears in "
                                f"{first}, but this line runs on Slicer {needed_by}: guard it with "
                                f"`if slicerVersion() >= {first}:`")


def test_version_guarded_features_are_the_known_ones():
    """The two launch/install paths and the SampleData category exist only from 5.12."""
    guarded = {u.symbol for u in USES if u.guard}
    assert {"slicer.util.launchConsoleProcess", "slicer.packaging.pip_ensure",
            "SampleData.SampleDataLogic.registerCustomSampleDataCategory"} <= guarded
    assert first_release_with("slicer.util.launchConsoleProcess", ("blocking", "logCallback")) == (5, 12)
    assert first_release_with("slicer.util.launchConsoleProcess", ()) == (5, 8)
    assert first_release_with("slicer.packaging.pip_ensure", ()) == (5, 12)
