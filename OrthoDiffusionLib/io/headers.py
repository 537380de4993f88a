"""What a NRRD or MetaImage header makes ITK read, checked before ITK opens anything.

A detached header names its voxel data in another file (NRRD ``data file:`` / ``datafile:``,
MetaImage ``ElementDataFile``), as one name, a ``LIST`` of names or a printf-style pattern with a
range. ITK follows any of them: an absolute path, ``../``, a symbolic link, ``/etc/passwd`` (read
as "voxels") or ``/dev/stdin`` (blocks forever). The rule here: **every data file is a regular file
in the header's own folder** (a plain name, no folder part, no ``..``, no absolute path, no link
that leaves the folder, never a device, pipe or folder). ``data_files`` returns them, so the
provenance hash (``source_sha256``) covers the voxels and not only the header.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import InputError
from .paths import itk_path, shown

HEADER_LIMIT = 1 << 20  # bytes; a header (with its LIST of names) longer than this is not an image header
MAX_DATA_FILES = 10_000  # a LIST or pattern naming more files is refused (no volume has that many slices)
OWN_OUTPUT_KEY = "OrthoDiffusion_Disclaimer"  # written into every image the tool saves (results.py)
_PATTERN = re.compile(r"^[^%]*%[-+ 0#]*\d*[diu][^%]*$")  # exactly one integer conversion


@dataclass(frozen=True)
class HeaderRefs:
    format: str                   # "nrrd" or "metaimage"
    names: tuple[str, ...]        # data file names as written in the header (empty: data inside the file)
    patterns: tuple[str, ...]     # printf-style templates (their matches in the folder are data files too)
    own_output: bool = False      # the header carries the key the tool writes into its outputs
    segmentation: bool = False    # a Slicer segmentation (Segment0_* keys)


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEADER_LIMIT + 1)


def _text_lines(head: bytes, stop_at_blank: bool) -> list[str]:
    """Header lines (Latin-1, so any byte decodes); NRRD ends at the first blank line."""
    end = len(head)
    if stop_at_blank:
        for sep in (b"\n\n", b"\r\n\r\n"):
            i = head.find(sep)
            if i >= 0:
                end = min(end, i)
    text = head[:end].decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _where(path: Path) -> str:
    return shown(path)


def _list_names(path: Path, head: bytes, rest: list[str]) -> tuple[str, ...]:
    """The file names after a ``LIST`` line: the rest of the header file, one per line."""
    if len(head) > HEADER_LIMIT:
        raise InputError(f"{_where(path)}: the LIST of data files is longer than {HEADER_LIMIT >> 20} MB; "
                         "fix the header")
    names = tuple(n.strip() for n in rest if n.strip())
    if not names:
        raise InputError(f"{_where(path)}: the header's data file LIST is followed by no file names; fix the header")
    return names


def _range_names(path: Path, template: str, numbers: list[str]) -> tuple[str, ...]:
    """Names a printf-style ``template min max step`` expands to (bounded, step never 0)."""
    if not _PATTERN.match(template):
        raise InputError(f"{_where(path)}: the data file pattern {template!r} is not a name with one integer "
                         "field (e.g. slice%03d.raw); write the data into one file next to the header")
    try:
        lo, hi, step = (int(v) for v in numbers[:3])
    except ValueError:
        raise InputError(f"{_where(path)}: the data file pattern {template!r} needs an integer "
                         "min, max and step") from None
    count = 0 if step == 0 else (hi - lo) // step + 1
    if step == 0 or count < 1 or count > MAX_DATA_FILES:
        raise InputError(f"{_where(path)}: the data file range {lo} {hi} {step} of {template!r} is empty, endless "
                         f"or above {MAX_DATA_FILES:,} files; fix the header")
    return tuple(template % (lo + k * step) for k in range(count))


def _nrrd_refs(path: Path, head: bytes) -> HeaderRefs:
    lines = _text_lines(head, stop_at_blank=True)
    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    own = seg = False
    for i, line in enumerate(lines[1:], start=1):
        if line.startswith("#") or not line.strip():
            continue
        if ":=" in line:  # key:=value pairs (metadata)
            key = line.split(":=", 1)[0].strip()
            own |= key == OWN_OUTPUT_KEY
            seg |= key.startswith("Segment0_")
            continue
        field, sep, value = line.partition(":")
        if not sep or field.lower().replace(" ", "") != "datafile":
            continue
        value = value.strip()
        words = value.split()
        if words and words[0].upper() == "LIST":  # the remaining header lines are the names
            names = _list_names(path, head, lines[i + 1:])
        elif words and "%" in words[0] and len(words) in (4, 5):
            patterns = (words[0],)
            names = _range_names(path, words[0], words[1:4])
        else:
            names = (value,)
        break
    return HeaderRefs("nrrd", names, patterns, own, seg)


def _looks_like_metaimage(head: bytes) -> bool:
    first = head[:200].lstrip().split(b"\n", 1)[0]
    return bool(re.match(rb"^[A-Za-z][A-Za-z0-9_]*\s*=", first)) and b"ElementDataFile" in head[:HEADER_LIMIT]


def _metaimage_refs(path: Path, head: bytes) -> HeaderRefs:
    lines = _text_lines(head, stop_at_blank=False)
    dims: list[str] = []
    for i, line in enumerate(lines):
        key, sep, value = line.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "dimsize":
            dims = value.split()
        if not sep or key != "elementdatafile":
            continue
        words = value.split()
        if not words:
            raise InputError(f"{_where(path)}: ElementDataFile names no data file; fix the header")
        if words[0].upper() == "LOCAL":
            return HeaderRefs("metaimage", (), ())
        if words[0].upper() == "LIST":
            return HeaderRefs("metaimage", _list_names(path, head, lines[i + 1:]), ())
        if "%" in words[0]:
            # MetaIO's defaults when the range is left out: 1 .. the last DimSize, step 1
            numbers = words[1:4] + ["1", dims[-1] if dims else "1", "1"][len(words) - 1:]
            return HeaderRefs("metaimage", _range_names(path, words[0], numbers), (words[0],))
        return HeaderRefs("metaimage", (value,), ())
    return HeaderRefs("metaimage", (), ())


def header_refs(path: str | os.PathLike) -> HeaderRefs | None:
    """What a NRRD / MetaImage file refers to (by content, whatever its name); None for other formats."""
    path = Path(path)
    head = _read_head(path)
    if head.startswith(b"NRRD000"):
        return _nrrd_refs(path, head)
    if _looks_like_metaimage(head):
        return _metaimage_refs(path, head)
    return None


def _check_name(header: Path, name: str) -> None:
    where = _where(header)
    if "\x00" in name or not name.strip():
        raise InputError(f"{where}: the header names an empty or invalid data file; fix the header")
    posix = name.replace("\\", "/")
    if posix.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", posix):
        raise InputError(f"{where}: the header names a data file by an absolute path ({name!r}); data files must "
                         "lie next to the header: copy the file there and write its bare name")
    parts = PurePosixPath(posix).parts
    if ".." in parts or len(parts) != 1:
        raise InputError(f"{where}: the header names a data file outside its own folder ({name!r}); data files "
                         "must lie next to the header: copy the file there and write its bare name")


def _check_file(header: Path, name: str) -> Path:
    """The data file ``name`` next to ``header``: a regular file whose real path stays in that folder."""
    target = header.parent / PurePosixPath(name.replace("\\", "/")).name
    where = _where(header)
    itk_path(target, "data file")
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        raise InputError(f"{where}: its data file {shown(target.name)} is missing; copy it next to the header") from None
    if stat.S_ISLNK(st.st_mode):
        real = Path(os.path.realpath(target))
        if real.parent != Path(os.path.realpath(header.parent)):
            raise InputError(f"{where}: its data file {shown(target.name)} is a link to {shown(real)}, outside the "
                             "header's folder; copy the data next to the header instead of linking")
        try:
            st = os.stat(target)
        except OSError:
            raise InputError(f"{where}: its data file {shown(target.name)} is a broken link; copy the data "
                             "next to the header") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{where}: its data file {shown(target.name)} is not a regular file (a device, pipe or "
                         "folder); give the header of a volume stored in files")
    return target


def data_files(path: str | os.PathLike) -> list[Path]:
    """The detached data files of a NRRD / MetaImage header, each checked (empty when the data are
    inside the file or the format is another); one-line ``InputError`` for any breach of the rule."""
    path = Path(path)
    refs = header_refs(path)
    if refs is None:
        return []
    if len(refs.names) > MAX_DATA_FILES:
        raise InputError(f"{_where(path)}: the header lists {len(refs.names):,} data files (above "
                         f"{MAX_DATA_FILES:,}); fix the header")
    for name in refs.names + refs.patterns:
        _check_name(path, name)
    files = [_check_file(path, n) for n in dict.fromkeys(refs.names)]
    for template in refs.patterns:  # any file the pattern could reach, not only the declared range
        head, _, tail = re.sub(r"%[-+ 0#]*\d*[diu]", "\0", template).partition("\0")
        match = re.compile(re.escape(head) + r"-?\d+" + re.escape(tail) + r"\Z")
        for entry in sorted(os.listdir(path.parent or ".")):
            if match.match(entry) and path.parent / entry not in files:
                files.append(_check_file(path, entry))
    return files


def source_sha256(path: str | os.PathLike) -> str:
    """sha256 of an image file (as ``sha256sum`` gives it); for a detached header, sha256 over the
    header and every data file (each name, a NUL, its bytes), so changed voxels change the digest."""
    files = data_files(path)
    h = hashlib.sha256()
    for f in [Path(path), *files]:
        if files:
            h.update(f"{f.name}\0".encode("utf-8", "surrogateescape"))
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
