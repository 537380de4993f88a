"""Regenerate the file lists in OrthoDiffusion/CMakeLists.txt (run before committing).

    python scripts/update_cmake_lists.py          # rewrite the lists
    python scripts/update_cmake_lists.py --check  # exit 1 if they are stale

Lists every .py of OrthoDiffusionLib/ and every file under Resources/, as paths relative to the
repository root (the SOURCE_DIR of the library's ctkMacroCompilePythonScript call); files git
ignores are left out.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CMAKE = REPO / "OrthoDiffusion" / "CMakeLists.txt"
BLOCKS = {"SCRIPTS": "MODULE_PYTHON_SCRIPTS", "RESOURCES": "MODULE_PYTHON_RESOURCES"}


def _tracked(*folders: str) -> list[Path]:
    """Files git would commit (tracked or untracked-not-ignored); a plain walk without git."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", *folders], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
        files = [REPO / line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        files = [p for f in folders for p in (REPO / f).rglob("*") if p.is_file()]
    return sorted(p for p in files if p.is_file() and "__pycache__" not in p.parts
                  and not any(part.startswith(".") for part in p.relative_to(REPO).parts))


def expected() -> dict[str, list[str]]:
    """Paths relative to the repository root (the library target's SOURCE_DIR)."""
    scripts = [p for p in _tracked("OrthoDiffusionLib") if p.suffix == ".py"]
    resources = _tracked("Resources")
    rel = lambda p: p.relative_to(REPO).as_posix()  # noqa: E731
    return {"SCRIPTS": [rel(p) for p in scripts], "RESOURCES": [rel(p) for p in resources]}


def listed(text: str | None = None) -> dict[str, list[str]]:
    text = text if text is not None else CMAKE.read_text(encoding="utf-8")
    out = {}
    for block in BLOCKS:
        m = re.search(rf"# BEGIN GENERATED {block}[^\n]*\n(.*?)\s*# END GENERATED {block}", text, re.S)
        out[block] = [ln.strip() for ln in m.group(1).splitlines() if ln.strip()] if m else []
    return out


def render(text: str, lists: dict[str, list[str]]) -> str:
    for block, items in lists.items():
        body = "".join(f"  {item}\n" for item in items)
        text = re.sub(rf"(# BEGIN GENERATED {block}[^\n]*\n).*?(\s*# END GENERATED {block})",
                      lambda m: m.group(1) + body + m.group(2).lstrip("\n"), text, flags=re.S)
    return text


def main(argv: list[str]) -> int:
    want = expected()
    if "--check" in argv:
        stale = want != listed()
        print("OrthoDiffusion/CMakeLists.txt is stale: run scripts/update_cmake_lists.py" if stale else "ok")
        return int(stale)
    CMAKE.write_text(encoding="utf-8", data=render(CMAKE.read_text(encoding="utf-8"), want))
    print(f"wrote {CMAKE}: {len(want['SCRIPTS'])} scripts, {len(want['RESOURCES'])} resources")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
