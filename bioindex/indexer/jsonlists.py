"""JSON files that list photos — SpeciesNet's instances and predictions, COCO Camera Traps —
read as a stream. LILA's COCO files run to gigabytes (Snapshot Serengeti lists 7M photos):
parsed whole, a million photos held 1.8 GB before a single one was listed. Here each
top-level list is read item by item (ijson, on yajl's C parser), once per list it needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import ijson
import numpy as np

from bioindex.errors import BioindexError
from bioindex.indexer import cococt, speciesnet

_BOM = b"\xef\xbb\xbf"
# Camera-trap files nest 4 levels; a stranger's file nesting 20,000 made ijson hold a
# prefix string per level (gigabytes from a 40 KB file; 200,000 levels killed the process).
MAX_DEPTH = 64
_CHUNK = 1 << 24
_STEPS = bytes(1 if c in b"[{" else 255 if c in b"]}" else 0 for c in range(256))
# The top-level lists that say what a file is; reading stops at the first one found.
_KINDS = {**dict.fromkeys(speciesnet.KINDS, "speciesnet"), "images": "coco"}


def listed(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(photo path, its metadata in Darwin Core terms) for each photo the file lists."""
    with _open(path) as file:
        depth = nesting_depth(file)
    if depth > MAX_DEPTH:
        raise BioindexError(f"{path} nests lists and objects {depth} levels deep (camera-trap "
                            f"files nest a few): not read")  # fmt: skip
    key = _first_list(path)
    if key is None:
        raise BioindexError(f"{path} is neither a SpeciesNet instances or predictions file "
                            f"nor a COCO Camera Traps file (a JSON object with an "
                            f"'instances', 'predictions' or 'images' list)")  # fmt: skip
    try:
        if _KINDS[key] == "speciesnet":
            yield from speciesnet.rows(key, items(path, key), path)
        else:
            yield from cococt.rows(lambda name: items(path, name), path)
    except (ijson.JSONError, UnicodeDecodeError, ValueError) as exc:
        raise _unreadable(path, exc) from None


def items(path: Path, key: str) -> Iterator[Any]:
    """Each item of the top-level list `key` (nothing when there is none)."""
    with _open(path) as file:
        yield from ijson.items(file, f"{key}.item", use_float=True)


def nesting_depth(file: BinaryIO, chunk: int | None = None) -> int:
    """How deep a JSON text nests lists and objects, brackets inside strings not counted,
    read a chunk at a time with numpy (1.7 s for 220 MB; parse events in Python took 6.6).
    Escapes are dropped first (each `\\\\` pair, then each `\\"`), so every quote left opens
    or closes a string; a run of backslashes at a chunk's end is carried over by parity."""
    depth, deepest, inside, carry = 0, 0, 0, b""
    while True:
        block = file.read(chunk or _CHUNK)
        data = carry + block
        if block:
            kept = data.rstrip(b"\\")
            carry, data = b"\\" * ((len(data) - len(kept)) % 2), kept
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
        if data:
            quotes = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord('"'))
            steps = np.frombuffer(data.translate(_STEPS), dtype=np.int8)
            at = np.flatnonzero(steps)
            outside = at[(np.searchsorted(quotes, at) + inside) % 2 == 0]
            if len(outside):
                run = depth + np.cumsum(steps[outside], dtype=np.int64)
                deepest, depth = max(deepest, int(run.max())), int(run[-1])
            inside = (inside + len(quotes)) % 2
        if not block:
            return deepest


def _first_list(path: Path) -> str | None:
    """The first top-level key naming a list that says what the file is, read from the
    head on (a COCO file puts its `images` after `info`; a file with none is read whole)."""
    try:
        with _open(path) as file:
            named = None
            for prefix, event, value in ijson.parse(file, use_float=True):
                if prefix == "" and event == "map_key":
                    named = value if value in _KINDS else None
                elif named is not None and prefix == named:
                    if event == "start_array":
                        return named
                    named = None
    except (ijson.JSONError, UnicodeDecodeError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    return None


def _open(path: Path) -> BinaryIO:
    try:
        file = open(path, "rb")  # noqa: SIM115 — handed back to the caller's `with`
    except OSError as exc:
        raise BioindexError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if file.read(len(_BOM)) != _BOM:  # Windows tools write a byte-order mark first
        file.seek(0)
    return file


def _unreadable(path: Path, exc: Exception) -> BioindexError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BioindexError(f"{path} cannot be read as JSON: {reason}")
