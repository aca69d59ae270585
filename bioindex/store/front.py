"""The store front: opening, creating, and the one place that orders every write.

    STORE/
      manifest.json        format version + the model identity (created once, O_EXCL)
      CURRENT              the latest committed generation
      snapshots/           one JSON file per generation: its files, with checksums
      catalog/             Parquet segments: images-*, failures-*, occurrences-*
      embeddings/          shard-<generation>.npy: float16 [rows, dim], L2-normalised
      index/               index-<generation>.faiss + .ids.npy (derived, rebuildable)
      writer.lock          flock of the one writer

Every write makes new files, fsyncs them, writes the next snapshot and switches CURRENT
(see snapshot.py): a crash at any point leaves the old generation or the new one. Readers
pin a generation and never wait for the writer; `refresh` moves them to the newest.

This package never imports torch.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bioindex import faiss_index, index_choice
from bioindex.errors import BioindexError
from bioindex.faiss_index import IndexSpec
from bioindex.store import files, legacy, shards, snapshot
from bioindex.store.catalog import Catalog
from bioindex.store.layout import (
    CATALOG_DIR,
    DATA_DIRS,
    INDEX_DIR,
    LOCK_FILE,
    MANIFEST,
    SHARD_DIR,
)
from bioindex.store.live_index import (
    HeldOut,
    IndexBuilder,
    LiveIndex,
    VectorSource,
    local_builder,
    structure,
)
from bioindex.store.lock import WriterLock
from bioindex.store.memory_rows import HeldRows
from bioindex.store.read_cache import ID_BYTES, ROWS, GenerationCache, cached_rows
from bioindex.store.records import (
    METADATA_COLUMNS,
    PHOTO_FACT_COLUMNS,
    Failure,
    ImageRecord,
    darwin_core_columns,
    failure_columns,
    image_columns,
    is_specimen,
    keep_unnamed,
    named_columns,
    texts,
    with_photo_facts,
    without_photo_facts,
)
from bioindex.store.snapshot import Snapshot
from bioindex.uris import file_gone

FORMAT_VERSION = snapshot.FORMAT_VERSION
# Compaction: once this many segments hold fewer than SMALL_SEGMENT rows each, they are
# merged into one (a run commits every few thousand images; readers should not have to
# open thousands of files).
COMPACT_AT = 16
SMALL_SEGMENT = 256 * 1024
OCCURRENCE_CHUNK = 50_000
# Photos whose file is looked for by `info` (one stat each: a second on a slow network
# share; enough to see that a folder was moved or a drive is not mounted).
FILES_CHECKED = 256
OCCURRENCE_MEMORY = "512MB"  # DuckDB's share while importing occurrences (it spills beyond)
log = logging.getLogger(__name__)


def fault(point: str) -> None:
    """Test hook: BIOINDEX_FAULT=<point> kills this process (SIGKILL) at that write point,
    BIOINDEX_FAULT=<point>:<n> at its n-th visit."""
    wanted = os.environ.get("BIOINDEX_FAULT")
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name != point:
        return
    visits = _FAULT_VISITS[point] = _FAULT_VISITS.get(point, 0) + 1
    if visits >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_FAULT_VISITS: dict[str, int] = {}


class Store:
    """An open store. Use `Store.create` / `Store.open`; close when done."""

    def __init__(self, root: Path, manifest: dict[str, Any], read_only: bool,
                 map_index: bool = False, lock: WriterLock | None = None):  # fmt: skip
        self.path = root
        self.manifest = manifest
        self.read_only = read_only
        self._lock = lock
        # One DuckDB connection per thread (a connection serves one statement at a time),
        # each pointed at the generation the store is at when that thread next reads.
        self._local = threading.local()
        self._catalogs: list[Catalog] = []
        self._catalogs_lock = threading.Lock()
        self._pin = snapshot.Pin(root) if read_only else None
        self._shards = shards.Shards(root, [])
        self._live = LiveIndex(root, lambda: self.catalog, self._shards,
                               mapped=map_index and read_only)  # fmt: skip
        self.builder: IndexBuilder = local_builder
        self._verified: set[str] = set()  # catalog files already checked against records
        self._rows = GenerationCache(ROWS)
        self._ids = GenerationCache(ID_BYTES, weigh=lambda ids: ids.nbytes)
        self._live_count: tuple[int, int] | None = None  # (generation, count)
        self._held = HeldRows(root)  # see hold_rows_in_memory
        self.snap: Snapshot = self._pin.latest() if self._pin else snapshot.read(
            root, snapshot.read_current(root))
        self._attach(self.snap)

    @property
    def catalog(self) -> Catalog:
        """This thread's catalog connection, at the store's generation."""
        catalog = getattr(self._local, "catalog", None)
        if catalog is None:
            catalog = Catalog(self.path)
            with self._catalogs_lock:
                self._catalogs.append(catalog)
            self._local.catalog = catalog
        snap = getattr(self, "snap", None)  # None only while __init__ reads the first one
        if snap is not None and catalog.snap is not snap:
            catalog.attach(snap)
        return catalog

    # ---- opening -------------------------------------------------------------------

    @classmethod
    def exists(cls, path: str | os.PathLike[str]) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def check_damaged(cls, path: str | os.PathLike[str]) -> None:
        """Raise the repair advice when `path` holds store data without a manifest."""
        if not cls.exists(path) and holds_store_data(Path(path)):
            read_manifest(Path(path))

    @classmethod
    def create(cls, path: str | os.PathLike[str], model: dict[str, Any],
               wait: bool | float = False) -> Store:  # fmt: skip
        """Make a new store, exclusively. When another run made it meanwhile with the same
        model, this opens it for writing; with another model it is refused."""
        root = Path(path)
        _check_new_store_dir(root)
        with files.disk_errors(root):
            root.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(root)
        lock.acquire(wait)
        try:
            if (root / MANIFEST).is_file():
                store = cls.open(root, lock=lock)
                _require_same_model(store, model)
                return store
            _check_new_store_dir(root)
            for name in DATA_DIRS:
                with files.disk_errors(root / name):
                    (root / name).mkdir(exist_ok=True)
            first = Snapshot(generation=0, model=model, created_at=_now_iso(),
                             index_spec=IndexSpec(kind="flat", dim=int(model["dim"])).to_json())
            snapshot.write(root, first)
            snapshot.switch(root, 0)
            manifest = {"format_version": FORMAT_VERSION, "created_at": first.created_at,
                        "model": model}  # fmt: skip
            # Last, and exclusive: a folder is a store from the moment it has a manifest.
            if not files.create_exclusive(root / MANIFEST, json.dumps(manifest, indent=2)):
                raise BioindexError(f"store {root} was created by another process meanwhile")
            return cls(root, manifest, read_only=False, lock=lock)
        except BaseException:
            if lock.held and not (root / MANIFEST).is_file():
                lock.release()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], read_only: bool = False,
             map_index: bool = False, wait: bool | float = False,
             lock: WriterLock | None = None) -> Store:  # fmt: skip
        """Open a store. Read-only stores read the latest generation and never wait for a
        writer; a writable one takes the writer lock (`wait` as in WriterLock.acquire).

        `map_index` (read-only only) maps the index file rather than reading it: a one-off
        query on a large store starts at once, but searches run slower than from memory,
        so long-lived readers (the server) leave it off."""
        root = Path(path)
        manifest = read_manifest(root)
        if manifest.get("format_version") == legacy.FORMAT_VERSION and lock is None:
            legacy.migrate(root, wait=True if wait is False else wait)
            with cls.open(root) as migrated:  # save the rebuilt index once, for readers
                migrated.index()
                migrated.save_index()
            manifest = read_manifest(root)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BioindexError(
                f"store {root} has format version {manifest.get('format_version')}, made by "
                f"a newer bioindex; this one reads {FORMAT_VERSION} (upgrade bioindex)"
            )
        if read_only:
            return cls(root, manifest, read_only=True, map_index=map_index)
        if lock is None:
            lock = WriterLock(root)
            lock.acquire(wait)
        try:
            store = cls(root, manifest, read_only=False, lock=lock)
            store._collect(leftovers=True)
        except BaseException:
            lock.release()
            raise
        return store

    def close(self, save_index: bool = True) -> None:
        """Release the store; a writer first saves an index it built or caught up (unless
        it stops on an error: nothing more is written then) and deletes what no
        generation lists any more."""
        if self._lock is not None and self._lock.held:
            try:
                if save_index:
                    self.save_index()
            except BioindexError as exc:  # a full disk must not turn a finished run red
                log.warning("the index was not saved (%s); readers rebuild it", exc)
            try:
                self._collect()
            except OSError as exc:
                log.warning("could not tidy old generations: %s", exc)
            self._lock.release()
        if self._pin is not None:
            self._pin.release()
        with self._catalogs_lock:
            for catalog in self._catalogs:
                catalog.close()
            self._catalogs.clear()
        self._local = threading.local()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self.close(save_index=kind is None)

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def dim(self) -> int:
        return int(self.model["dim"])

    def generation(self) -> int:
        return self.snap.generation

    def stale(self) -> bool:
        """Whether a newer generation is there to move to (one stat call)."""
        return self._pin is not None and self._pin.changed()

    def refresh(self) -> bool:
        """Move a reader to the newest generation, if there is one (one stat call when
        not). Returns whether it moved."""
        if self._pin is None or not self._pin.changed():
            return False
        self._live.remember_content()
        try:
            self._pin.move(self._attach)
        except BioindexError as exc:  # answering from the last sound generation beats failing
            log.warning("store %s: staying at generation %d: %s", self.path,
                        self.snap.generation, exc)  # fmt: skip
            return False
        if self._live.loaded:
            # Caught up now, not by the next search: a server's readers search side by
            # side, and two catching up one index at once broke it (a 500 under load).
            self.index()
        return True

    def _attach(self, snap: Snapshot) -> None:
        records = [*snap.images, *snap.occurrences, *([snap.failures] if snap.failures else [])]
        for record in records:
            if record["file"] in self._verified:
                continue
            wrong = files.problem(self.path / record["file"], record)
            if wrong:
                raise BioindexError(f"store {self.path}: catalog file {record['file']} is "
                                    f"{wrong}; run bioindex check --store {self.path} --repair")
            self._verified.add(record["file"])
        # Shards are read lazily (and then fully checked); a lost or cut one is named at once,
        # so no command reports a damaged store as fine (one stat call per new shard).
        for record in snap.shards:
            if record["file"] in self._verified:
                continue
            path = self.path / record["file"]
            size = path.stat().st_size if path.is_file() else None
            if size != record["size"]:
                wrong = "missing" if size is None else f"{size} bytes, expected {record['size']}"
                raise BioindexError(f"store {self.path}: vector shard {record['file']} is "
                                    f"{wrong}; run bioindex check --store {self.path} --repair")
            self._verified.add(record["file"])
        self.snap = snap
        self.catalog.attach(snap)
        self._shards.update(snap.shards)
        self._live.changed()

    # ---- catalog reads -------------------------------------------------------------

    def live_count(self) -> int:
        """Live images at this generation (counted once per generation: 5 ms at 1M)."""
        generation = self.snap.generation
        counted = self._live_count
        if counted is None or counted[0] != generation:
            counted = (generation, self.catalog.live_count())
            self._live_count = counted
        return counted[1]

    def known_files(self) -> dict[str, tuple[int, int | None, float | None, str]]:
        return self.catalog.known_files()

    def known_failures(self) -> dict[str, tuple[int | None, float | None]]:
        return self.catalog.known_failures()

    def rows(self, image_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        memory = self._held.current(self.snap)
        read = memory.rows if memory is not None else self.catalog.rows
        return cached_rows(self._rows, self.snap.generation, image_ids, read)

    def hold_rows_in_memory(self) -> bool:
        """Hold the image rows in memory from now on (for a long-lived reader: the server;
        see memory_rows.py), reloaded in the background after each move to a newer
        generation. Returns whether they are held (not past memory_rows.MAX_ROWS)."""
        return self._held.hold(self.snap)

    def failures(self) -> list[dict[str, Any]]:
        return self.catalog.failures()

    def ids_where(self, sql: str, params: Sequence[Any]) -> np.ndarray:
        """image_ids of live rows matching a predicate (search.filters); read-only."""
        generation, key = self.snap.generation, (sql, repr(list(params)))
        found = self._ids.get(generation, [key]).get(key)
        if found is None:
            found = self.catalog.ids_where(sql, params)
            found.setflags(write=False)  # shared by every caller until the next generation
            self._ids.put(generation, {key: found})
        return found

    def runs(self) -> list[dict[str, Any]]:
        return list(self.snap.runs)

    def next_run_id(self) -> int:
        return max((int(r["run_id"]) for r in self.snap.runs), default=0) + 1

    def vectors(self, image_ids: Sequence[int]) -> np.ndarray:
        """Stored vectors (float32) in the order asked for; unknown or deleted ids raise."""
        locations = self.catalog.locations(image_ids)
        missing = [i for i in image_ids if int(i) not in locations]
        if missing:
            raise BioindexError(f"no live image with image_id {missing[0]} in {self.path}")
        out = np.empty((len(image_ids), self.dim), dtype=np.float32)
        wanted: dict[str, tuple[list[int], list[int]]] = {}  # shard: (positions, rows)
        for position, image_id in enumerate(image_ids):
            shard, row = locations[int(image_id)]
            positions, rows = wanted.setdefault(shard, ([], []))
            positions.append(position)
            rows.append(row)
        # One gather a shard (a row at a time was 2 s of memmap indexing per 2M rows), each
        # mapped for this call only: kept mappings would hold every page a large sample
        # touched resident for the life of the store.
        for shard, (positions, rows) in wanted.items():
            out[positions] = self._shards.load(shard)[rows]
        return out

    def indexed_vectors(self, image_ids: Sequence[int]) -> np.ndarray:
        """Stored vectors (float32) of images the index holds, found by the index's own
        table of where each lives (`vectors` asks the catalog: 2.7 ms for 8 ids on a 200k
        store, most of a near-duplicate search); NaN rows for ids that are not live."""
        self.index()
        out = np.full((len(image_ids), self.dim), np.nan, dtype=np.float32)
        for shard, slots, rows in self._live.locate(np.asarray(image_ids, dtype=np.int64)):
            out[slots] = self._shards.load(shard)[rows]  # mapped for this call only (vectors)
        return out

    def iter_live_vectors(self, batch: int = 65536) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """(ids int64, vectors float32) for every live image, one shard at a time."""
        for shard, ids, rows in self.catalog.live_shards():
            data = self._shards.load(shard)
            for start in range(0, len(ids), batch):
                part = rows[start : start + batch]
                yield ids[start : start + batch], np.asarray(data[part], dtype=np.float32)

    def live_shard_files(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(shard path, live image_ids, their rows) for every shard, each verified."""
        out = []
        for shard, ids, rows in self.catalog.live_shards():
            self._shards.load(shard)
            out.append((str(self.path / SHARD_DIR / shard), ids, rows))
        return out

    def missing_files(self, sample: int = FILES_CHECKED) -> tuple[int, int]:
        """(checked, missing): of up to `sample` live images spread evenly over the store,
        how many have a file (or archive) gone from where it was indexed — a folder moved,
        a drive not mounted. URLs are not checked."""
        ids = np.sort(self.catalog.live_ids())
        if not len(ids):
            return 0, 0
        chosen = ids[np.unique(np.linspace(0, len(ids) - 1, min(sample, len(ids))).astype(int))]
        uris = [str(row["uri"]) for row in self.rows([int(i) for i in chosen]).values()]
        return len(uris), sum(file_gone(uri) for uri in uris)

    def info(self) -> dict[str, Any]:
        counts = self.catalog.status_counts()
        checked, missing = self.missing_files()
        filled = self.catalog.filled(["event_date", "decimal_latitude", "scientific_name",
                                      "vernacular_name"])  # fmt: skip
        runs = self.runs()
        index = self.index()
        spec = self.index_spec
        return {
            "store": str(self.path),
            "generation": self.snap.generation,
            "model": self.model.get("name"),
            "model_source": self.model.get("source"),
            "weights_sha256": self.model.get("weights_sha256"),
            "dim": self.dim,
            "preprocess": self.model.get("preprocess"),
            "images_live": counts.get("live", 0),
            "images_deleted": counts.get("deleted", 0),
            "images_lost": counts.get("lost", 0),
            # Photos moved or deleted since they were indexed (a sample: a stat each).
            "files_checked": checked,
            "files_missing": missing,
            "images_dated": filled["event_date"],  # given, or from the photo's EXIF
            "images_placed": filled["decimal_latitude"],  # with coordinates
            # What classify and search by name can learn from: a new user's first check
            # that --metadata was read (a plain folder has neither).
            "images_named": filled["scientific_name"],
            "images_common_named": filled["vernacular_name"],
            "failures": self.catalog.failure_count(),
            "occurrences": self.catalog.occurrence_count(),
            "index_kind": spec.kind,
            "index_ntotal": int(index.ntotal),
            "index_search": spec.search or None,
            "index_search_text": spec.search_text or None,
            "index_rerank": spec.rerank,
            "index_build": ({k: v for k, v in spec.built.items()
                             if k not in ("candidates", "text_tuning")} or None),
            "index_text_tuning": spec.built.get("text_tuning"),
            "index_choice": (index_choice.describe(spec.built["candidates"])
                             if spec.built.get("candidates") else None),
            "index_advice": self.index_advice() or None,
            "store_bytes": files.tree_size(self.path),
            # What a run covered is for later runs (pipeline._since_cleared); sources say it.
            "last_run": {k: v for k, v in runs[-1].items() if k != "roots"} if runs else None,
        }

    # ---- writes --------------------------------------------------------------------

    def commit(
        self,
        records: Sequence[ImageRecord],
        vectors: np.ndarray,
        failures: Sequence[Failure] = (),
        run_id: int | None = None,
        moved: Mapping[str, int] | None = None,
    ) -> list[int]:
        """Atomically add (or replace, by uri) embedded images and record failures.
        `moved`: new uri → the image_id of the stored image found there (indexer.moves);
        its row moves to the record, keeping its image_id (an exported archive's
        identifiers and a saved result's ids still name it)."""
        self._require_writable()
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(records), self.dim):
            raise BioindexError(
                f"vectors of shape {vectors.shape} do not fit {len(records)} images of dim "
                f"{self.dim} in {self.path}"
            )
        nxt = self.snap.next()
        existing: dict[str, tuple[int, str]] = {}
        ids: list[int] = []
        if records:
            shard = shards.write(self.path, nxt.generation, vectors)
            fault("after-shard")
            nxt.shards.append(shard)
            existing = self.catalog.ids_of_uris([r.uri for r in records])
            if moved:
                segment_of = {image_id: segment for segment, found
                              in self.catalog.segments_of_ids(list(moved.values())).items()
                              for image_id in found}  # fmt: skip
                existing.update({uri: (image_id, segment_of[image_id])
                                 for uri, image_id in moved.items() if image_id in segment_of})
            for record in records:
                if record.uri in existing:
                    ids.append(existing[record.uri][0])
                else:
                    ids.append(nxt.next_image_id)
                    nxt.next_image_id += 1
            # Replaced rows leave their old segments; the new rows form a segment of their own.
            by_segment: dict[str, list[int]] = {}
            for image_id, segment in existing.values():
                by_segment.setdefault(segment, []).append(image_id)
            self._rewrite_segments(nxt, by_segment, "drop")
            table = image_columns(records, ids, Path(shard["file"]).name, run_id)
            nxt.images.append(self._segment(nxt, "images", lambda p: self.catalog.write_images(
                table, p)))  # fmt: skip
            fault("after-segment")
            nxt.vectors_version += 1
        touched = [r.uri for r in records] + [f.uri for f in failures]
        # Only a store with failures on record can have some of these to clear.
        known = self.catalog.known_failures() if touched and self.snap.failures else {}
        if failures or any(uri in known for uri in touched):
            new = failure_columns(failures, run_id)
            nxt.failures = self._segment(nxt, "failures", lambda p: self.catalog.write_failures(
                new, touched, p))  # fmt: skip
        self._publish(nxt)
        if self._live.loaded and records:
            self._live.remove(i for i, _ in existing.values())
            # What the shard holds (float16), so a live index answers exactly as one rebuilt
            # from the shards does, whichever way a store got to the same images.
            self._live.add(np.asarray(ids, dtype=np.int64),
                           vectors.astype(np.float16).astype(np.float32))  # fmt: skip
            self._live.version = nxt.vectors_version
        self._maybe_compact(COMPACT_AT * 4)
        return ids

    def forget_failures(self, uris: Sequence[str]) -> int:
        """Drop failures of files that are gone."""
        self._require_writable()
        if not uris:
            return 0
        nxt = self.snap.next()
        nxt.failures = self._segment(nxt, "failures", lambda p: self.catalog.write_failures(
            failure_columns([], None), uris, p))  # fmt: skip
        self._publish(nxt)
        return len(uris)

    def mark_deleted(self, image_ids: Sequence[int], status: str = "deleted") -> int:
        """Soft-delete: rows stay (history), vectors leave the index and results at once.
        status 'lost' marks rows whose vectors are gone (the next index run re-embeds)."""
        self._require_writable()
        if not len(image_ids):
            return 0
        ids = list(map(int, image_ids))
        nxt = self.snap.next()
        self._rewrite_segments(nxt, self.catalog.segments_of_ids(ids), "delete", status=status)
        nxt.vectors_version += 1
        self._publish(nxt)
        if self._live.loaded:
            self._live.remove(ids)
            self._live.version = nxt.vectors_version
        return len(ids)

    def update_metadata(self, items: Sequence[tuple[str, dict[str, Any]]],
                        keep_photo_facts: bool = True) -> int:  # fmt: skip
        """New Darwin Core values for images already embedded, by uri (no re-embedding).
        Only rows whose values differ are rewritten; returns how many were. What an
        image's new metadata does not name keeps its value (records.keep_unnamed);
        `keep_photo_facts`: a date or place the new values leave empty is kept too."""
        self._require_writable()
        if not items:
            return 0
        columns = {"uri": texts([uri for uri, _ in items]),
                   **darwin_core_columns([m for _, m in items])}  # fmt: skip
        stored = self.catalog.stored_values(columns["uri"], METADATA_COLUMNS)
        columns = keep_unnamed(columns, named_columns([m for _, m in items]), stored)
        if keep_photo_facts:
            self._keep_photo_facts(columns, stored)
        changed = self.catalog.changed_metadata(columns)
        if not changed:
            return 0
        located = self.catalog.ids_of_uris(changed)
        by_segment: dict[str, list[int]] = {}
        for image_id, segment in located.values():
            by_segment.setdefault(segment, []).append(image_id)
        # A set, not np.isin: on object arrays numpy compares every pair (np.isin took
        # 1.2 s for 8,000 uris and grows with the square; benchmarks/metadata_update.py).
        wanted = set(changed)
        keep = np.fromiter((uri in wanted for uri in columns["uri"]), dtype=bool,
                           count=len(columns["uri"]))  # fmt: skip
        updates = {name: values[keep] for name, values in columns.items()}
        nxt = self.snap.next()
        self._rewrite_segments(nxt, by_segment, "update", updates=updates)
        fault("metadata-segment")
        self._publish(nxt)
        return len(changed)

    def fill_photo_facts(self, found: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """Dates and places read from photos already embedded (uri, images.photo_facts),
        written where a row has none and is not a specimen's; returns how many rows
        changed. For stores indexed before bioindex read EXIF."""
        return self._rewrite_photo_facts(found, with_photo_facts)

    def with_photo_fact_values(self, uris: Sequence[str]) -> list[str]:
        """Those of `uris` whose rows hold a date or a place (from their photos' EXIF or
        from metadata given before)."""
        stored = self.catalog.stored_values(texts(list(uris)), PHOTO_FACT_COLUMNS)
        return [uri for at, uri in enumerate(uris)
                if any(stored[name][at] is not None for name in PHOTO_FACT_COLUMNS)]

    def clear_photo_facts(self, found: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """Remove the dates and places that photos already embedded gave (uri, what its
        EXIF says now: images.photo_facts): a stored value equal to the photo's own is
        taken to be the photo's. For `--no-exif` on a store indexed with EXIF read, where a
        phone's GPS would place a rare species more exactly than the collection publishes;
        returns how many rows changed."""
        return self._rewrite_photo_facts(found, without_photo_facts)

    def _rewrite_photo_facts(
        self, found: Iterable[tuple[str, dict[str, Any]]],
        change: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
    ) -> int:  # fmt: skip
        """Each (uri, its photo's facts) row as stored, less its empty values, through
        `change`, written back where that changed it."""
        self._require_writable()
        found = [(uri, facts) for uri, facts in found if facts]
        if not found:
            return 0
        uris = texts([uri for uri, _ in found])
        stored = self.catalog.stored_values(uris, METADATA_COLUMNS)
        rows = []
        for at, (_, facts) in enumerate(found):
            row = {name: stored[name][at] for name in METADATA_COLUMNS if name != "extra"}
            row.update(json.loads(stored["extra"][at] or "{}"))
            rows.append(change({k: v for k, v in row.items() if v is not None}, facts))
        return self.update_metadata(list(zip(uris, rows)), keep_photo_facts=False)

    def _keep_photo_facts(self, columns: dict[str, np.ndarray],
                          stored: dict[str, list[Any]]) -> None:  # fmt: skip
        """A date or a place that new metadata leaves empty keeps the one the image has
        (from its photo's EXIF, or from metadata given before): a --metadata file of names
        alone erased every date a camera trap had stamped."""
        date = columns["event_date"]
        # A specimen's photo never gave them (records.with_photo_facts).
        observed = ~np.array([is_specimen(b) for b in columns["basis_of_record"]], dtype=bool)
        no_date = np.array([value is None for value in date], dtype=bool) & observed
        no_place = (np.isnan(columns["decimal_latitude"])
                    & np.isnan(columns["decimal_longitude"]) & observed)  # fmt: skip
        if not no_date.any() and not no_place.any():
            return
        columns["event_date"] = texts([old if empty else new for new, old, empty
                                       in zip(date, stored["event_date"], no_date)])
        for name in ("decimal_latitude", "decimal_longitude"):
            kept = np.array([np.nan if old is None else old for old in stored[name]])
            columns[name] = np.where(no_place, kept, columns[name])

    def upsert_occurrences(self, records: Iterable[dict[str, Any]],
                           source: str | None = None) -> int:  # fmt: skip
        """Occurrence (specimen) records, images or not, streamed into segments; the records
        of each source replace that source's earlier ones as a whole."""
        self._require_writable()
        with self.catalog.memory_limit(OCCURRENCE_MEMORY):
            return self._upsert_occurrences(records, source)

    def _upsert_occurrences(self, records: Iterable[dict[str, Any]],
                            source: str | None) -> int:  # fmt: skip
        nxt = self.snap.next()
        written: dict[str, list[dict[str, Any]]] = {}
        total = 0
        for chunk in _chunks(records, OCCURRENCE_CHUNK):
            by_source: dict[str, list[dict[str, Any]]] = {}
            for record in chunk:
                by_source.setdefault(str(record.get("source") or source or ""), []).append(record)
            for name, part in by_source.items():
                columns = _occurrence_columns(part)
                number = sum(len(parts) for parts in written.values())
                record = self._segment(nxt, f"occurrences-{number:06d}",
                                       lambda p, c=columns: self.catalog.write_occurrences(c, p))
                record["source"] = name
                written.setdefault(name, []).append(record)
                total += len(part)
        if not written:
            return 0
        for name, parts in written.items():
            names = [r["file"] for r in parts]
            if self.catalog.repeated_keys(names):
                # Ids that repeat (seen in the wild) must not merge records: the later ones
                # are keyed id#catalogNumber (or id#row).
                log.warning("%s: core ids repeat; such records are keyed id#catalogNumber", name)
                record = self._segment(nxt, "occurrences-k", lambda p, n=names:
                                       self.catalog.key_repeated_occurrences(n, p))
                for old in names:
                    (self.path / old).unlink(missing_ok=True)
                written[name] = [{**record, "source": name}]
        nxt.occurrences = [r for r in nxt.occurrences if r.get("source") not in written]
        nxt.occurrences += [r for parts in written.values() for r in parts]
        self._publish(nxt)
        return total

    def record_run(self, run_id: int, started_at: float, sources: Sequence[str],
                   exif: tuple[bool, bool, Sequence[str]] | None = None,
                   **counts: Any) -> None:  # fmt: skip
        """Keep a run's record. `exif`: (whether it read its photos' EXIF, whether it read
        that of photos already embedded too, the folder prefixes and files it covered)."""
        self._require_writable()
        nxt = self.snap.next()
        run = {
            "run_id": run_id, "started_at": _iso(started_at), "finished_at": _now_iso(),
            "sources": list(sources), "embedded": counts.get("embedded", 0),
            "unchanged": counts.get("unchanged", 0), "updated": counts.get("updated", 0),
            "failed": counts.get("failed", 0), "deleted": counts.get("deleted", 0),
            "seconds": round(time.time() - started_at, 2),
        }  # fmt: skip
        if exif is not None:
            run["exif"], run["reread_exif"], run["roots"] = exif[0], exif[1], list(exif[2])
        nxt.runs.append(run)
        self._publish(nxt)

    def embedding_runs(self, uris: Sequence[str]) -> list[int | None]:
        """The run that embedded each of `uris` (None where it is not stored)."""
        found = self.catalog.stored_values(texts(list(uris)), ["run_id"])["run_id"]
        return [None if run is None else int(run) for run in found]

    def compact(self, at_least: int = COMPACT_AT) -> bool:
        """Merge the small catalog segments into one when there are `at_least` of them
        (same rows, new generation); the end of every run calls this."""
        return self._maybe_compact(at_least)

    def _maybe_compact(self, at_least: int) -> bool:
        small = [r["file"] for r in self.snap.images if r["rows"] < SMALL_SEGMENT]
        if len(small) < at_least:
            return False
        nxt = self.snap.next()
        merged = self._segment(nxt, "images-c", lambda p: self.catalog.compact_images(small, p))
        fault("during-compaction")
        nxt.images = [r for r in nxt.images if r["file"] not in small] + [merged]
        self._publish(nxt)
        return True

    def _rewrite_segments(self, nxt: Snapshot, by_segment: dict[str, list[int]], how: str,
                          status: str = "deleted", updates: dict[str, np.ndarray] | None = None,
                          ) -> None:  # fmt: skip
        for number, (segment, ids) in enumerate(sorted(by_segment.items())):
            def write(path: Path, segment: str = segment, ids: list[int] = ids) -> int:
                if how == "drop":
                    return self.catalog.rewrite_images(segment, path, drop=ids)
                if how == "delete":
                    return self.catalog.rewrite_images(segment, path, delete=ids, status=status)
                return self.catalog.rewrite_images(segment, path, updates=updates)

            record = self._segment(nxt, f"images-r{number}", write)
            nxt.images = [r for r in nxt.images if r["file"] != segment]
            if record["rows"]:
                nxt.images.append(record)
            else:
                (self.path / record["file"]).unlink(missing_ok=True)

    def _segment(self, nxt: Snapshot, kind: str, write: Callable[[Path], int]) -> dict[str, Any]:
        """Write one catalog file of the next generation; returns its record."""
        name = f"{kind.split('-')[0]}-{nxt.generation:09d}{_suffix(kind)}.parquet"
        path = self.path / CATALOG_DIR / name
        rows = write(path)
        return {"file": f"{CATALOG_DIR}/{name}", "rows": rows, **files.identity(path)}

    def _publish(self, nxt: Snapshot) -> None:
        """The commit point: the next snapshot, then CURRENT."""
        nxt.created_at = _now_iso()
        snapshot.write(self.path, nxt)
        fault("before-switch")
        snapshot.switch(self.path, nxt.generation)
        self._attach(nxt)

    def _collect(self, leftovers: bool = False) -> None:
        """Delete generations no reader holds, and files no remaining generation lists.
        `leftovers`: also what a killed writer wrote past CURRENT. Nothing is deleted when
        the current generation's own files are not all there (run check instead)."""
        current = self.snap.generation
        missing = [r["file"] for r in self.snap.data_files()
                   if not (self.path / r["file"]).is_file()]  # fmt: skip
        if missing:
            log.warning("store %s is missing %s; run bioindex check --repair", self.path,
                        missing[0])  # fmt: skip
            return
        kept: set[str] = set()
        for generation in snapshot.generations(self.path):
            if generation == current:
                continue
            if generation > current and not leftovers:
                continue
            if generation < current and not snapshot.unpinned(self.path, generation):
                try:
                    kept |= snapshot.read(self.path, generation).file_names()
                except BioindexError:
                    pass
                continue
            snapshot.snapshot_path(self.path, generation).unlink(missing_ok=True)
        kept |= self.snap.file_names()
        for folder in (CATALOG_DIR, SHARD_DIR, INDEX_DIR):
            for file in (self.path / folder).glob("*"):
                name = f"{folder}/{file.name}"
                if name not in kept and file.is_file():
                    file.unlink(missing_ok=True)

    # ---- the FAISS index (derived) -------------------------------------------------

    @property
    def index_spec(self) -> IndexSpec:
        return IndexSpec.from_json(self.snap.index_spec, self.dim)

    def index(self) -> Any:
        """The FAISS index of this generation: the saved one when it is current and checks
        out, caught up from an older one, or rebuilt from the shards."""
        live, version = self._live, self.snap.vectors_version
        if live.loaded and live.version == version and live.spec_json is self.snap.index_spec:
            return live.index  # the common case, once per query: no spec is rebuilt
        spec = self.index_spec
        if live.loaded and live.spec.to_json() != spec.to_json():
            live.drop()  # build-index made another kind or tuning current
        if not live.loaded:
            if not live.load(self.snap.index, spec, version):
                live.install(*self._build_index(spec), version)
        if live.version != version:
            try:
                live.catch_up(version)
            except BioindexError as exc:
                log.warning("rebuilding the index (%s)", exc)
                live.drop()
                live.install(*self._build_index(spec), version)
        live.spec_json = self.snap.index_spec
        return live.index

    def save_index(self) -> None:
        """Persist the in-memory index as part of a new generation (end of a write run)."""
        if self.read_only or not self._live.loaded:
            return
        if self._live.spec.to_json() != self.snap.index_spec:
            self._live.drop()  # a build that did not land (it failed before its switch)
            return
        record = self.snap.index
        if record and record.get("vectors_version") == self._live.version and record.get(
                "structure") == structure(self.index_spec):  # fmt: skip
            return  # the saved file is already this index
        nxt = self.snap.next()
        self._live.content = None
        nxt.index = self._live.save(nxt.generation)
        fault("after-index-file")
        self._publish(nxt)

    def rebuild_index(self) -> Any:
        """Rebuild with the current kind and search settings (compacts deletions)."""
        self._require_writable()
        spec = self.index_spec
        self._live.drop()
        self._live.install(*self._build_index(spec), self.snap.vectors_version)
        self.save_index()
        return self._live.index

    def build_index(
        self,
        kind: str = "auto",
        memory: int = faiss_index.DEFAULT_MEMORY,
        target_recall: float = faiss_index.DEFAULT_TARGET_RECALL,
        rerank: bool | None = None,
        queries: int = faiss_index.TUNING_PROBES,
        progress: Callable[[int], None] | None = None,
        builder: IndexBuilder | None = None,
        exact_up_to: int = faiss_index.FLAT_MAX_NUMBERS,
        text_probes: Callable[[], np.ndarray | None] | None = None,
        tune_on: np.ndarray | None = None,
    ) -> IndexSpec:
        """Build the index of `kind` from the stored vectors, tune it to `target_recall`
        against exact search on held-out stored vectors, and make it, with its spec and
        measured recall and latency, a new generation (the file and its record switch
        together). `auto` keeps exact flat search up to `exact_up_to` stored numbers
        (vectors x dim); past that it measures the candidate kinds on samples of the
        store's own vectors and builds the fastest that meets the target within `memory`
        (bioindex.index_choice). `text_probes` gives text vectors like the store's text
        queries, asked for only when the index is approximate: text queries then get their
        own setting, tuned to the same target on them (IndexSpec.search_text).

        `tune_on`: vectors of pictures like the ones this store will be asked about, to
        measure and tune on instead of held-out stored vectors. A stored picture held out
        still has its burst or its other views in the index, and finds its neighbourhood
        through them: 300k frames in bursts of five tuned to recall 0.968 where frames of
        new events got 0.894 (docs/benchmarks.md)."""
        self._require_writable()
        self.check_build(kind, memory, target_recall, rerank)
        if tune_on is not None:
            tune_on = np.ascontiguousarray(tune_on, dtype=np.float32)
            if tune_on.ndim != 2 or tune_on.shape[1] != self.dim or not len(tune_on):
                raise BioindexError(f"vectors to tune on have shape {tune_on.shape}; this "
                                    f"store holds dim {self.dim}")  # fmt: skip
        if text_probes is not None:  # asked once: a model that cannot load warned twice
            text_probes = functools.cache(text_probes)
        began = time.perf_counter()
        n = self.live_count()
        candidates = None
        if self.measures_kinds(kind, exact_up_to):
            sample = self.vectors(self._sample_ids(min(n, index_choice.SAMPLE
                                                       + index_choice.QUERIES)))  # fmt: skip
            texts = text_probes() if text_probes is not None else None
            chosen, lists, measured = index_choice.choose(sample, n, memory, target_recall,
                                                          rerank, texts=texts,
                                                          queries=tune_on)  # fmt: skip
            spec = index_choice.Option(chosen, lists).spec(n, self.dim, memory, rerank)
            candidates = [m.to_json() for m in measured]
        else:
            spec = faiss_index.plan(kind, n, self.dim, memory, rerank)
        self._live.drop()
        # An approximate index is tuned on stored vectors held out of it until it is tuned
        # (see HeldOut), then they are added; exact search has nothing to tune.
        probe_ids = (self._sample_ids(min(queries, n // 10 if spec.kind != "flat" else n))
                     if tune_on is None else np.empty(0, dtype=np.int64))  # fmt: skip
        held = probe_ids[:0]
        if spec.kind != "flat" and len(probe_ids):  # with their copies (copies_of)
            held = np.union1d(probe_ids, faiss_index.copies_of(
                self.iter_live_vectors(), self.vectors(probe_ids), probe_ids))
        source = HeldOut(self, held)
        started = time.perf_counter()
        index, spec = self._build_index(spec, progress, builder, source)
        build_seconds = time.perf_counter() - started
        self._live.install(index, spec, self.snap.vectors_version)  # searchable while tuning
        spec = self._live.spec
        tuning = None
        if tune_on is not None:
            truth = faiss_index.exact_neighbours(self.iter_live_vectors, tune_on, 10)
            tuning = faiss_index.tune(index, spec, tune_on, truth, target_recall,
                                      fetch=self._live.rerank_fetch())  # fmt: skip
        elif len(probe_ids):
            probes = self.vectors(probe_ids)
            held_out = len(source.image_ids) > 0
            # A stored vector is its own nearest neighbour: one still in the index is left
            # out of both answers.
            exclude = None if held_out else probe_ids
            truth = faiss_index.exact_neighbours(source.iter_live_vectors, probes, 10,
                                                 exclude=exclude)  # fmt: skip
            tuning = faiss_index.tune(index, spec, probes, truth, target_recall,
                                      fetch=self._live.rerank_fetch(), exclude=exclude)  # fmt: skip
            if held_out:
                faiss_index.add(index, held, self.vectors(held))
                if progress:
                    progress(len(held))
        text_tuning = None
        if tuning is not None and not spec.exact and text_probes is not None:
            texts = text_probes()  # cached: the measured choice may have asked already
            if texts is not None and len(texts):
                text_tuning = self._tune_text(index, spec, texts, target_recall)
        spec.built = {
            "requested_kind": kind,
            "memory_budget": int(memory),
            "target_recall": target_recall,
            "ntotal": int(index.ntotal),
            "trained_on": faiss_index.training_size(spec, n),
            "build_seconds": round(build_seconds, 2),
            # The whole wait: measuring the kinds, building, tuning (build_seconds: the middle).
            "total_seconds": round(time.perf_counter() - began, 2),
            "built_at": _now_iso(),
            "tuned_on": "held-out stored vectors" if tune_on is None else "pictures given",
            **({k: v for k, v in vars(tuning).items() if k != "search"} if tuning else {}),
            **({"candidates": candidates} if candidates else {}),
            **({"text_tuning": {k: v for k, v in vars(text_tuning).items() if k != "search"}}
               if text_tuning else {}),
        }
        faiss_index.set_search(index, spec)
        nxt = self.snap.next()
        self._live.content = None
        nxt.index = self._live.save(nxt.generation)
        fault("after-index-file")
        spec.built["index_bytes"] = nxt.index["file"]["size"]
        nxt.index_spec = spec.to_json()
        self._publish(nxt)
        return spec

    def check_build(self, kind: str, memory: int = faiss_index.DEFAULT_MEMORY,
                    target_recall: float = 0.95, rerank: bool | None = None) -> None:  # fmt: skip
        """Raise BioindexError for an index this store cannot be given (a recall outside
        (0, 1], an unknown kind, too few vectors to train its lists), before any work."""
        if not 0.0 < target_recall <= 1.0:
            raise BioindexError(f"target recall must be in (0, 1], got {target_recall}")
        faiss_index.plan(kind, self.live_count(), self.dim, memory, rerank)

    def measures_kinds(self, kind: str, exact_up_to: int = faiss_index.FLAT_MAX_NUMBERS
                       ) -> bool:  # fmt: skip
        """Whether build_index(kind) measures the candidate kinds on samples first (`auto`
        past exact search's size)."""
        n = self.live_count()
        return kind == "auto" and n * self.dim > exact_up_to and n >= index_choice.MIN_VECTORS

    def _tune_text(self, index: Any, spec: IndexSpec, texts: np.ndarray, target: float
                   ) -> faiss_index.Tuning:  # fmt: skip
        """Tune `spec.search_text` on text vectors against exact search over every live
        vector (the index holds them all by now); the pictures' setting stays."""
        texts = np.ascontiguousarray(texts, dtype=np.float32)
        truth = faiss_index.exact_neighbours(self.iter_live_vectors, texts, 10)
        return faiss_index.tune_text(index, spec, texts, truth, target,
                                     fetch=self._live.rerank_fetch())  # fmt: skip

    def index_advice(self) -> list[str]:
        """Why a rebuild would pay now, if it would."""
        spec, index = self.index_spec, self.index()
        built, ntotal, advice = spec.built, int(index.ntotal), []
        trained_at = built.get("ntotal") or 0
        if spec.kind.startswith("ivf") and trained_at and ntotal > 4 * trained_at:
            advice.append(
                f"the IVF lists were trained when the index held {trained_at} vectors and it "
                f"now holds {ntotal}: bioindex build-index would re-balance them"
            )
        removed = self._live.removed
        if removed and len(removed) > 0.1 * max(ntotal, 1):
            advice.append(
                f"{len(removed)} deleted vectors are still in the {spec.kind} graph "
                "(filtered out of results): a rebuild would compact them"
            )
        superseded = self._live.superseded
        if superseded and spec.kind in faiss_index.EXACT_STORAGE:
            what = ("1 replaced image's old vector is" if len(superseded) == 1 else
                    f"{len(superseded)} replaced images' old vectors are")  # fmt: skip
            advice.append(f"{what} still in the {spec.kind} graph, so every search re-ranks "
                          "(about twice the time): a rebuild would drop them")
        if not spec.exact and built and not spec.search_text:
            advice.append("text queries search with the pictures' setting (this index was "
                          "built without text probes): bioindex build-index, with the "
                          "store's model at hand, would tune one for them")  # fmt: skip
        requested = built.get("requested_kind", "auto")
        live = self.live_count()
        if requested == "auto" and built.get("candidates"):
            if trained_at and live > 4 * trained_at and not spec.kind.startswith("ivf"):
                advice.append(f"the index kind was measured at {trained_at} vectors and the "
                              f"store holds {live}: bioindex build-index would measure again")
        elif requested == "auto":
            budget = built.get("memory_budget", faiss_index.DEFAULT_MEMORY)
            better = faiss_index.choose_kind(live, self.dim, budget)
            if better != spec.kind:
                advice.append(f"at {live} vectors auto would now pick {better} over {spec.kind}")
        return advice

    def search(
        self, queries: np.ndarray, k: int, only: np.ndarray | None = None, text: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product top-k: (scores [q, k], image_ids [q, k]); missing slots have id -1.

        `only` restricts the search to those image_ids, exactly: a flat index filters while
        it scans, an approximate one is bypassed for a brute-force pass over their vectors.
        `text`: the queries are text vectors, searched with the index's text setting.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise BioindexError(
                f"query vectors have shape {queries.shape}; this store holds dim {self.dim}"
            )
        self.index()
        return self._live.search(queries, k, only, text)

    def range_search(self, vectors: np.ndarray, radius: float) -> list[np.ndarray]:
        """For each vector, the ids whose stored vector scores at least `radius` with it
        (approximate on approximate kinds)."""
        self.index()
        return self._live.range_search(vectors, radius)

    def _build_index(self, spec: IndexSpec, progress: Callable[[int], None] | None = None,
                     builder: IndexBuilder | None = None,
                     source: VectorSource | None = None) -> tuple[Any, IndexSpec]:  # fmt: skip
        """A filled index and the spec it was built as (flat when too few vectors are left
        to train the spec's IVF lists)."""
        n = self.live_count()
        if spec.kind.startswith("ivf") and n < spec.nlist * faiss_index.MIN_POINTS_PER_LIST:
            # Too few vectors left to train those lists (say after mass deletion).
            spec = faiss_index.plan("flat", n, self.dim)
            self.snap.index_spec = spec.to_json()
        size = faiss_index.training_size(spec, n)
        # Held-out tuning vectors stay out of training too: k-means fitted to a probe puts a
        # centroid near it, and the tuning would see an easier query than users send.
        held = source.image_ids if isinstance(source, HeldOut) else None
        sample = self.vectors(self._sample_ids(size, exclude=held)) if size else None
        index = (builder or self.builder)(spec, sample, source or self, progress)
        faiss_index.set_search(index, spec)
        return index, spec

    def _sample_ids(self, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """n distinct live image_ids (less `exclude`), a fixed-seed random sample
        (reproducible builds)."""
        if n <= 0:
            return np.empty(0, dtype=np.int64)
        ids = np.sort(self.catalog.live_ids())
        if exclude is not None and len(exclude):
            ids = ids[~np.isin(ids, exclude)]
        rng = np.random.default_rng(0)
        return np.sort(rng.choice(ids, min(n, len(ids)), replace=False))

    def _require_writable(self) -> None:
        if self.read_only:
            raise BioindexError(f"store {self.path} is open read-only")


def read_manifest(root: Path) -> dict[str, Any]:
    if root.exists() and not root.is_dir():
        raise BioindexError(f"store path {root} exists and is not a directory")
    path = root / MANIFEST
    if not path.is_file():
        if holds_store_data(root):
            raise BioindexError(f"{root} holds bioindex data but no {MANIFEST}; run bioindex "
                                f"check --store {root} --repair")  # fmt: skip
        raise BioindexError(f"{root} is not a bioindex store (no {MANIFEST}); run bioindex index")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BioindexError(f"{path} is unreadable: {exc}") from exc


def holds_store_data(root: Path) -> bool:
    """Vectors or a catalog are there (whatever else is missing)."""
    if (root / legacy.CATALOG).exists():
        return True
    for folder, pattern in ((SHARD_DIR, "*.npy"), (CATALOG_DIR, "*.parquet")):
        if (root / folder).is_dir() and any((root / folder).glob(pattern)):
            return True
    return False


def _check_new_store_dir(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise BioindexError(f"store path {root} exists and is not a directory")
    if not root.is_dir() or (root / MANIFEST).is_file():
        return
    if holds_store_data(root):
        raise BioindexError(f"{root} holds bioindex data but no {MANIFEST}; it is never "
                            f"written over: run bioindex check --store {root} --repair")
    # What an interrupted create leaves behind (nothing of value) may be reused; the
    # manifest is named too, as another run creating the store may write it while this
    # looks (two racing runs with different models: the loser was told "not a bioindex
    # store" instead of which model made it).
    ours = {*DATA_DIRS, LOCK_FILE, snapshot.CURRENT, snapshot.CURRENT + files.TMP_SUFFIX,
            MANIFEST, MANIFEST + files.TMP_SUFFIX}  # fmt: skip
    if any(p.name not in ours for p in root.iterdir()):
        raise BioindexError(f"store path {root} is a non-empty folder that is not a bioindex "
                            f"store")  # fmt: skip


def _require_same_model(store: Store, model: dict[str, Any]) -> None:
    mine = store.model
    for key in ("weights_sha256", "dim", "preprocess"):
        if key in model and key in mine and model[key] != mine[key]:
            store.close()
            raise BioindexError(
                f"store {store.path} was made with model {mine.get('name')} (dim {mine.get('dim')},"
                f" {key} {str(mine[key])[:16]}); this run's model {model.get('name')} differs")


def _occurrence_columns(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    columns = {"core_id": texts([str(r["core_id"]) for r in records]),
               "source": texts([r.get("source") for r in records])}  # fmt: skip
    columns.update(darwin_core_columns(
        [{k: v for k, v in r.items() if k not in ("core_id", "source")} for r in records]))
    return columns


def _chunks(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _suffix(kind: str) -> str:
    head, _, tail = kind.partition("-")
    return f"-{tail}" if tail else ""


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _now_iso() -> str:
    return _iso(time.time())
