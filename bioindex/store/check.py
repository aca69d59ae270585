"""`bioindex check`: what is wrong with a store, one line each, and `--repair` to mend it.

Derived parts (the index) are rebuilt. Lost vectors (a shard missing, truncated or
replaced) mark their rows 'lost', and the next `bioindex index` re-embeds those images.
A lost catalog segment drops its rows; the next `index` finds their files new and embeds
them again. The manifest and CURRENT are rewritten from the newest readable generation.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from bioindex.errors import BioindexError
from bioindex.store import files, snapshot
from bioindex.store.front import Store, holds_store_data
from bioindex.store.layout import MANIFEST
from bioindex.store.lock import WriterLock
from bioindex.store.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    generation: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check(root: Path, full: bool = False) -> Report:
    """Verify the manifest, the current generation and every file it lists (sizes and
    fingerprints; checksums with `full`). The generation is pinned as a reader pins it: a
    writer that moves on meanwhile keeps its files until the check is done."""
    report = Report()
    if not root.is_dir():
        raise BioindexError(f"no bioindex store at {root}")
    if not (root / MANIFEST).is_file():
        if not holds_store_data(root):
            raise BioindexError(f"{root} is not a bioindex store (no {MANIFEST})")
        report.problems.append(f"{MANIFEST}: missing")
    pin = snapshot.Pin(root)
    try:
        try:
            snap = pin.latest()
        except BioindexError as exc:
            report.problems.append(str(exc).split(";")[0])
            return report
        report.generation = snap.generation
        for record in snap.data_files():
            wrong = files.problem(root / record["file"], record, full)
            if wrong:
                report.problems.append(f"{record['file']}: {wrong}")
    finally:
        pin.release()
    return report


def repair(root: Path, full: bool = True, wait: bool | float = True) -> Report:
    """Mend what `check` finds; returns what was found and what was done."""
    report = check(root, full)
    if report.ok:
        return report
    lock = WriterLock(root)
    lock.acquire(wait)
    try:
        snap, base = _newest_readable(root)
        nxt = snap.next()
        nxt.generation = max(snapshot.generations(root)) + 1
        lost_shards = []
        for kind in ("images", "shards", "occurrences"):
            kept = []
            for record in getattr(nxt, kind):
                wrong = files.problem(root / record["file"], record, full)
                if wrong:
                    report.repaired.append(f"{record['file']} ({wrong}): dropped" + (
                        "; its images are re-embedded by the next bioindex index"
                        if kind != "occurrences" else "; rerun the archive to restore them"))
                    if kind == "shards":
                        lost_shards.append(Path(record["file"]).name)
                    if kind in ("images", "shards"):
                        nxt.vectors_version += 1
                else:
                    kept.append(record)
            setattr(nxt, kind, kept)
        if nxt.failures and files.problem(root / nxt.failures["file"], nxt.failures, full):
            report.repaired.append(f"{nxt.failures['file']}: dropped (failed files are retried)")
            nxt.failures = None
        if nxt.index:
            nxt.index = None
            report.repaired.append("index: rebuilt")
        snapshot.write(root, nxt)
        snapshot.switch(root, nxt.generation)
        if base != "current":
            report.repaired.append(f"{snapshot.CURRENT}: now generation {nxt.generation} "
                                   f"(from the {base})")  # fmt: skip
        if not (root / MANIFEST).is_file():
            manifest = {"format_version": snapshot.FORMAT_VERSION, "model": snap.model,
                        "created_at": snap.created_at}  # fmt: skip
            files.write_text(root / MANIFEST, json.dumps(manifest, indent=2))
            report.repaired.append(f"{MANIFEST}: rewritten from generation {snap.generation}")
        with Store.open(root, lock=lock) as store:
            lost = store.catalog.live_ids_in_shards(lost_shards)
            if lost:
                store.mark_deleted(lost, status="lost")
                report.repaired.append(f"{len(lost)} images whose vectors were lost are marked "
                                       "for re-embedding")  # fmt: skip
            store.index()
            store.save_index()
        report.generation = nxt.generation
    finally:
        lock.release()
    return report


def _newest_readable(root: Path) -> tuple[Snapshot, str]:
    """The current generation, or when it cannot be read, the newest one that can."""
    try:
        return snapshot.read(root, snapshot.read_current(root)), "current"
    except BioindexError:
        pass
    for generation in reversed(snapshot.generations(root)):
        try:
            return snapshot.read(root, generation), f"newest readable generation {generation}"
        except BioindexError:
            continue
    raise BioindexError(f"store {root} has no readable generation left; index the sources "
                        f"into a new store")  # fmt: skip
