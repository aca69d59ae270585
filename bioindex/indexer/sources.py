"""Where images come from. An item is a uri, how to read its bytes, and its metadata."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bioindex.errors import BioindexError
from bioindex.images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Item:
    uri: str
    path: str
    size: int
    mtime: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as handle:
            return handle.read()


@dataclass
class Scan:
    """What the sources hold now, and which stored uris they are responsible for."""

    items: list[Item]
    roots: list[str]  # folder prefixes (with trailing separator) and single-file uris


def scan_paths(paths: Sequence[str | os.PathLike[str]], metadata_file: str | None = None) -> Scan:
    """Walk folders (recursively) and single files; raise on missing paths or nothing found."""
    if not paths:
        raise BioindexError("no source given; name one or more folders or image files")
    sidecar = read_sidecar(metadata_file) if metadata_file else {}
    items: dict[str, Item] = {}
    roots: list[str] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise BioindexError(f"source {raw} does not exist")
        path = path.resolve()
        if path.is_dir():
            roots.append(str(path) + os.sep)
            for file in _walk(path):
                items.setdefault(str(file), _item(file, path, sidecar))
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            roots.append(str(path))
            items.setdefault(str(path), _item(path, path.parent, sidecar))
        else:
            raise BioindexError(f"source {raw} is not a folder or an image file")
    if not items:
        raise BioindexError(
            f"no images found in {', '.join(map(str, paths))} "
            f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return Scan(items=sorted(items.values(), key=lambda i: i.uri), roots=roots)


def covered(uri: str, roots: Sequence[str]) -> bool:
    return any(uri == root or (root.endswith(os.sep) and uri.startswith(root)) for root in roots)


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """A CSV/TSV of metadata keyed by its first column that names a file (relative path or name)."""
    file = Path(path)
    if not file.is_file():
        raise BioindexError(f"metadata file {path} does not exist")
    with open(file, newline="", encoding="utf-8-sig") as handle:
        dialect = "excel-tab" if file.suffix.lower() in (".tsv", ".txt") else "excel"
        reader = csv.DictReader(handle, dialect=dialect)
        key = next(
            (c for c in reader.fieldnames or [] if c.lower() in ("file", "filename", "path")), None
        )
        if key is None:
            raise BioindexError(f"metadata file {path} needs a 'file' or 'path' column")
        return {row[key]: {k: v for k, v in row.items() if k != key} for row in reader}


def _walk(root: Path) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(directory) / name


def _item(file: Path, root: Path, sidecar: dict[str, dict[str, Any]]) -> Item:
    stat = file.stat()
    relative = file.relative_to(root).as_posix()
    metadata = sidecar.get(relative) or sidecar.get(file.name) or {}
    return Item(
        uri=str(file),
        path=str(file),
        size=stat.st_size,
        mtime=stat.st_mtime,
        metadata=dict(metadata),
    )
