"""Photos that moved: a folder renamed, a drive mounted at another path, a collection copied
to a new disk and the old one retired. Indexed again at their new paths, every photo was
embedded again and the store held it twice — the old row pointing at a file that no longer
exists, and showing in every search beside the new one.

A new file is the stored image it was when a live row's file is gone (its path, or for an
archive member its archive, no longer exists) and the two have the same size and bytes
(sha256): the row moves to the new path with its vector and its metadata (what the new
scan gives for the file wins), and nothing is embedded. A copy — the old file still there —
is a new image, as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from bioindex.indexer.sources import Item
from bioindex.store import ImageRecord, Store
from bioindex.store.records import DWC_COLUMNS
from bioindex.uris import is_remote, member_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Move:
    item: Item  # the file at its new place
    image_id: int  # the stored image it is


def find_moves(store: Store, todo: Sequence[Item]) -> list[Move]:
    """Which of `todo` (files the store does not know by path) are stored images whose
    files are gone. Only files of a size some gone row has are read (for their sha256)."""
    local = [item for item in todo if not item.remote and item.size]
    if not local:
        return []
    gone: dict[tuple[int, str], int] = {}
    present = Listings()
    for image_id, uri, size, sha256 in store.catalog.live_files_of_sizes(
            sorted({int(item.size) for item in local})):  # fmt: skip
        if sha256 and present.gone(uri):
            gone.setdefault((int(size), sha256), int(image_id))
    sizes = {size for size, _ in gone}
    candidates = [item for item in local if item.size in sizes]
    # A path the catalog has a row for (deleted, lost, or changed since) is that row's.
    known = store.catalog.ids_of_uris([item.uri for item in candidates]) if candidates else {}
    moves: list[Move] = []
    for item in candidates:
        if item.uri in known:
            continue
        try:
            digest = hashlib.sha256(item.read_bytes()).hexdigest()
        except OSError as exc:  # unreadable now: the embedding stage says why
            log.info("%s not compared with the store's missing files: %s", item.uri, exc)
            continue
        image_id = gone.pop((int(item.size), digest), None)
        if image_id is not None:
            moves.append(Move(item, image_id))
    return moves


def commit_moves(store: Store, moves: Sequence[Move], chunk: int = 2048) -> int:
    """Each moved image's row at its new path, with its image_id, stored vector and metadata
    (the new scan's for the file over it), in one commit with the old row's removal (a run
    killed between them cannot leave both), and the run that embedded it (what its photo's
    EXIF was read by: pipeline._exif_cleared). `chunk` images a commit, as embedded ones
    are: a whole collection may have moved."""
    for start in range(0, len(moves), chunk):
        part = moves[start : start + chunk]
        rows = store.rows([move.image_id for move in part])
        by_run: dict[int | None, list[Move]] = {}
        for move in part:
            by_run.setdefault(rows[move.image_id].get("run_id"), []).append(move)
        for run_id, moving in by_run.items():
            records = [_record(move, rows[move.image_id]) for move in moving]
            store.commit(records, store.vectors([move.image_id for move in moving]),
                         run_id=run_id, moved={m.item.uri: m.image_id for m in moving})
    return len(moves)


def _record(move: Move, row: dict) -> ImageRecord:
    return ImageRecord(move.item.uri, move.item.size, move.item.mtime, row.get("sha256"),
                       row.get("width"), row.get("height"),
                       {**_metadata(row), **move.item.metadata})  # fmt: skip


def _metadata(row: dict) -> dict:
    """A stored row's Darwin Core values and its other terms, as a record carries them."""
    extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
    return {**extra, **{column: row[column] for column in DWC_COLUMNS if column in row}}


class Listings:
    """Whether stored files are gone, each folder listed once: the stored rows of the new
    files' sizes can be most of a large store, and a stat of each on a network share takes
    minutes where one listing of each folder takes seconds."""

    def __init__(self) -> None:
        self.names: dict[str, set[str] | None] = {}  # folder → its names; None: no folder

    def gone(self, uri: str) -> bool:
        """Whether a stored local file no longer exists (for an archive member,
        `archive#name`: its archive); never for a URL."""
        if is_remote(uri) or self._exists(uri):
            return False
        member = member_of(uri)
        return member is None or not self._exists(member[0])

    def _exists(self, path: str) -> bool:
        folder, name = os.path.split(path)
        if folder not in self.names:
            try:
                self.names[folder] = set(os.listdir(folder or "."))
            except OSError:  # gone, or not a folder (a path through an archive's name)
                self.names[folder] = None
        listed = self.names[folder]
        return listed is not None and name in listed
