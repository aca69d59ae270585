"""Generations: each committed state of a store is one immutable snapshot file.

    snapshots/000000042.json   every data file of generation 42 with its size and checksums,
                               the model, the index spec and record, counters and runs
    CURRENT                    the number of the latest committed generation

A writer writes and fsyncs the data files, then the snapshot, then replaces CURRENT: a crash
at any point leaves CURRENT naming a complete generation. Readers pin the generation they
read with a shared flock on its snapshot file; the writer deletes an old generation's files
only when it can take that lock exclusively, so a file never vanishes under a reader.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bioindex.errors import BioindexError
from bioindex.store import files
from bioindex.store.layout import CURRENT, SNAPSHOT_DIR

FORMAT_VERSION = 2


@dataclass
class Snapshot:
    generation: int
    model: dict[str, Any]
    index_spec: dict[str, Any]
    # Bumped whenever the set of live (image_id, vector) pairs changes; an index built at
    # one vectors_version is current for every generation with the same number.
    vectors_version: int = 0
    next_image_id: int = 1
    images: list[dict[str, Any]] = field(default_factory=list)  # catalog segments
    shards: list[dict[str, Any]] = field(default_factory=list)  # vector shards
    failures: dict[str, Any] | None = None
    occurrences: list[dict[str, Any]] = field(default_factory=list)  # each has "source"
    runs: list[dict[str, Any]] = field(default_factory=list)
    index: dict[str, Any] | None = None  # the saved index file and what it holds
    created_at: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def next(self) -> Snapshot:
        """A copy to build the next generation in."""
        out = copy.deepcopy(self)
        out.generation = self.generation + 1
        return out

    def data_files(self) -> list[dict[str, Any]]:
        """Every file record of this generation (catalog, shards, index)."""
        records = [*self.images, *self.shards, *self.occurrences]
        if self.failures:
            records.append(self.failures)
        if self.index:
            records += [r for r in (self.index.get("file"), self.index.get("ids")) if r]
        return records

    def file_names(self) -> set[str]:
        return {r["file"] for r in self.data_files()}


def snapshot_path(root: Path, generation: int) -> Path:
    return root / SNAPSHOT_DIR / f"{generation:09d}.json"


def read_current(root: Path) -> int:
    try:
        text = (root / CURRENT).read_text().strip()
    except FileNotFoundError:
        raise BioindexError(f"store {root} has no {CURRENT} file (damaged); run bioindex "
                            f"check --store {root} --repair") from None  # fmt: skip
    if not text.isdigit():
        raise BioindexError(f"store {root}: {CURRENT} is damaged ({text[:20]!r}); run "
                            f"bioindex check --store {root} --repair")  # fmt: skip
    return int(text)


def read(root: Path, generation: int) -> Snapshot:
    path = snapshot_path(root, generation)
    try:
        return Snapshot.from_json(path.read_text())
    except FileNotFoundError:
        raise BioindexError(f"store {root}: generation {generation} ({path.name}) is missing; "
                            f"run bioindex check --store {root} --repair") from None  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise BioindexError(f"store {root}: {path.name} is damaged ({exc}); run bioindex "
                            f"check --store {root} --repair") from None  # fmt: skip


def generations(root: Path) -> list[int]:
    """Every generation with a snapshot file, oldest first."""
    folder = root / SNAPSHOT_DIR
    if not folder.is_dir():
        return []
    return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())


def write(root: Path, snap: Snapshot) -> None:
    """Write a snapshot file (not yet current)."""
    files.write_text(snapshot_path(root, snap.generation), snap.to_json())


def switch(root: Path, generation: int) -> None:
    """Make `generation` the current one: the commit point of every write."""
    files.write_text(root / CURRENT, f"{generation}\n")


class Pin:
    """A reader's hold on one generation: a shared flock on its snapshot file."""

    def __init__(self, root: Path):
        self.root = root
        self.snapshot: Snapshot | None = None
        self._fd: int | None = None
        self._marker: tuple[int, int] | None = None

    def latest(self) -> Snapshot:
        """Pin the current generation (retrying when a writer moves on meanwhile)."""
        for _ in range(100):
            marker = current_marker(self.root)
            generation = read_current(self.root)
            path = snapshot_path(self.root, generation)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                if read_current(self.root) != generation:
                    continue  # a writer switched and collected it between our two reads
                raise BioindexError(f"store {self.root}: generation {generation} is missing; "
                                    f"run bioindex check --store {self.root} --repair") from None
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.fstat(fd).st_nlink == 0:  # collected before we locked it
                os.close(fd)
                continue
            try:
                snap = read(self.root, generation)
            except BaseException:
                os.close(fd)
                raise
            self.release()
            self._fd, self.snapshot, self._marker = fd, snap, marker
            return snap
        raise BioindexError(f"store {self.root} changes too fast to read")

    def move(self, attach: Callable[[Snapshot], None]) -> None:
        """Pin the current generation and hand it to `attach`. When it cannot be read or
        attach refuses it (BioindexError: a damaged file), the generation held before stays
        held — a reader answers from it still, and its files must outlive a writer's
        collection — and this one counts as seen, so that it is not tried again before
        the next switch."""
        seen = current_marker(self.root)
        held = (self._fd, self.snapshot, self._marker)
        self._fd = None  # open until the new generation is attached
        try:
            attach(self.latest())
        except BaseException as exc:
            self.release()
            self._fd, self.snapshot, self._marker = held
            if isinstance(exc, BioindexError):
                self._marker = seen
            raise
        if held[0] is not None:
            os.close(held[0])

    def changed(self) -> bool:
        """Whether a newer generation may be current (one stat call)."""
        return current_marker(self.root) != self._marker

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def current_marker(root: Path) -> tuple[int, int]:
    """What identifies the CURRENT file's version: it is replaced by rename on every switch."""
    try:
        stat = os.stat(root / CURRENT)
    except FileNotFoundError:
        return (0, 0)
    return (stat.st_ino, stat.st_mtime_ns)


def unpinned(root: Path, generation: int) -> bool:
    """Try to take a generation for deletion: True (and its snapshot file gone) when no
    reader holds it."""
    path = snapshot_path(root, generation)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)
