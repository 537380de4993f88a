"""The Extensions Index entry and the extension metadata in CMakeLists.txt agree and are valid."""

from __future__ import annotations

import json
import re

import jsonschema

from conftest import REPO

ENTRY = REPO / "docs" / "extensions-index" / "OrthoDiffusion.json"
SCHEMA = REPO / "Testing" / "Data" / "slicer-extension-catalog-entry-schema-v1.0.2.json"
RAW = "https://raw.githubusercontent.com/orthodiffusion/SlicerOrthoDiffusion/main/"


def _cmake_sets() -> dict:
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    return dict(re.findall(r'^set\((EXTENSION_\w+) "([^"]*)"\)', text, re.M))


def test_entry_follows_the_index_schema():
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(schema).validate(entry)
    assert entry["$schema"].split("#")[0].endswith(SCHEMA.name)


def test_entry_matches_the_cmake_metadata_and_the_index_rules():
    entry, meta = json.loads(ENTRY.read_text(encoding="utf-8")), _cmake_sets()
    project = re.search(r"^project\((\w+)\)", (REPO / "CMakeLists.txt").read_text(encoding="utf-8"), re.M).group(1)
    assert ENTRY.stem == project == "OrthoDiffusion" and not project.lower().startswith("slicer")
    assert entry["category"] == meta["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == [d for d in meta["EXTENSION_DEPENDS"].split() if d != "NA"]
    repo_name = entry["scm_url"].rstrip("/").split("/")[-1].removesuffix(".git")
    assert entry["scm_url"].startswith("https://") and repo_name.startswith("Slicer")
    assert meta["EXTENSION_HOMEPAGE"].startswith(entry["scm_url"].removesuffix(".git"))
    assert "not for clinical decisions" in meta["EXTENSION_DESCRIPTION"]


def test_icon_and_screenshot_urls_name_files_that_exist():
    meta = _cmake_sets()
    urls = [meta["EXTENSION_ICONURL"], *meta["EXTENSION_SCREENSHOTURLS"].split()]
    for url in urls:
        assert url.startswith(RAW), url
        assert (REPO / url[len(RAW):]).is_file(), f"{url} points at a file that is not in the repository"
