"""One indexing run: find what changed, embed it, commit in chunks, drop what vanished."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from bioindex.errors import BioindexError
from bioindex.images import JPEG2000_SUFFIXES, photo_facts_of
from bioindex.indexer import iiif
from bioindex.indexer.embed import (
    EmbeddedBatch,
    default_batch_size,
    default_workers,
    embed_items,
)
from bioindex.indexer.moves import Listings, commit_moves, find_moves
from bioindex.indexer.remote import (
    Downloads,
    Fetched,
    FetchPolicy,
    Getter,
    MediaCache,
    fetch,
)
from bioindex.indexer.sources import Covered, Item, Scan, occurrence_records
from bioindex.models import EmbeddingModel
from bioindex.store import Failure, Store
from bioindex.uris import suffix_of

log = logging.getLogger(__name__)


@dataclass
class IndexSummary:
    embedded: int = 0
    unchanged: int = 0
    updated: int = 0
    failed: int = 0
    deleted: int = 0
    moved: int = 0  # stored images found at a new path (indexer.moves): not embedded again
    known_bad: int = 0
    downloaded: int = 0
    occurrences: int = 0
    seconds: float = 0.0
    run_id: int = 0
    # Unchanged photos whose EXIF a run with --no-exif left unread (or removed), which a
    # run reading EXIF does not read again unless told (--reread-exif).
    exif_unread: int = 0

    def line(self) -> str:
        # A rate over nothing embedded ("0.0 images/s") reads as a fault.
        rate = f" ({self.embedded / max(self.seconds, 1e-9):.1f} images/s)" if self.embedded else ""
        records = f"{self.occurrences} occurrence records, " if self.occurrences else ""
        fetched = f", downloaded {self.downloaded}" if self.downloaded else ""
        fetched += f", metadata updated {self.updated}" if self.updated else ""
        fetched += f", moved {self.moved}" if self.moved else ""
        return (
            f"{records}embedded {self.embedded}, unchanged {self.unchanged}, "
            f"failed {self.failed}{self._failed_hint()}{fetched}, "
            f"deleted {self.deleted}{self._known_bad()} "
            f"in {self.seconds:.1f}s{rate}"
        )

    def _failed_hint(self) -> str:
        # Said once per line: the known-bad part names the same command.
        if not self.failed or self.known_bad:
            return ""
        return " (which: bioindex info --failures)"

    def _known_bad(self) -> str:
        if not self.known_bad:
            return ""
        return f", {self.known_bad} known-bad skipped (bioindex info --failures)"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    todo: list[Item]
    unchanged: int
    known_bad: int
    vanished: list[int]
    same_files: list[Item]  # embedded and unchanged: only their metadata may be new
    gone_failures: list[str]  # failed files that are no longer there


def plan(scan: Scan, store: Store, retry_failed: bool = False) -> Plan:
    """What to embed, what is unchanged, which failed files are still the same bytes,
    and which live images' files vanished."""
    known = store.known_files()
    failures = store.known_failures()
    failed = {} if retry_failed else failures
    todo: list[Item] = []
    same: list[Item] = []
    unchanged = known_bad = 0
    for item in scan.items:
        previous = known.get(item.uri)
        if item.remote:
            # A URL is fetched once: embedded or failed before means nothing to do now.
            if previous is not None and previous[3] == "live":
                unchanged += 1
                same.append(item)
            elif item.uri in failed:
                known_bad += 1
            else:
                todo.append(item)
            continue
        if failed.get(item.uri) == (item.size, item.mtime):
            known_bad += 1
        elif (
            previous is not None
            and previous[3] == "live"
            and previous[1] == item.size
            and previous[2] == item.mtime
        ):
            unchanged += 1
            same.append(item)
        else:
            todo.append(item)
    present = {item.uri for item in scan.items}
    covered = Covered(scan.roots)
    vanished = [
        image_id
        for uri, (image_id, _, _, status) in known.items()
        if status == "live" and uri not in present and covered(uri)
    ]
    # A failed file outside this scan that was there when it failed (it has a size) and is
    # gone now (its folder moved) is forgotten too: nothing is left to retry, and `info
    # --failures` would list it for ever. A manifest's row naming no file keeps its failure.
    listed = Listings()
    gone = [uri for uri, (size, _) in failures.items()
            if uri not in present and (covered(uri) or size is not None and listed.gone(uri))]
    return Plan(todo, unchanged, known_bad, vanished, same, gone)


def _facts_of(items: Sequence[Item], cache: MediaCache | None = None,
              ) -> Iterator[tuple[str, dict[str, Any]]]:  # fmt: skip
    """(uri, the photo's EXIF date and place) of each item whose bytes still read: a local
    file, or a download the store's media cache (`cache`) still holds — nothing is fetched
    again for it."""
    for item in items:
        try:
            if not item.remote:
                yield item.uri, photo_facts_of(item.read_bytes())
            elif cache is not None and (kept := cache.cached(item.uri)) is not None:
                yield item.uri, photo_facts_of(kept.read_bytes())
        except OSError as exc:  # gone since the scan: the next run sees it
            log.info("EXIF of %s not read: %s", item.uri, exc)


def run_index(
    store: Store,
    model: EmbeddingModel | Callable[[], EmbeddingModel],
    scan: Scan,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    commit_every: int = 2048,
    progress: bool = True,
    fast_decode: bool = False,
    fetch_policy: FetchPolicy | None = None,
    retry_failed: bool = False,
    engine: str = "local",
    ray_options: dict | None = None,
    gpu_decode: bool | None = None,
    photo_facts: bool = True,
    reread_exif: bool = False,
) -> IndexSummary:
    """Embed what changed, committing every `commit_every` images; `engine` 'ray' runs
    decode and embed on a Ray cluster (see indexer.ray_engine) with `ray_options`.
    `photo_facts`: take a photo's date and place from its EXIF where its metadata has none
    (False: and remove those that earlier runs took from the unchanged photos);
    `reread_exif`: also for the unchanged photos (embedded before bioindex read EXIF).

    `model` may be a call that loads it: it is made only when there is something to embed,
    so a rerun over unchanged files never loads (or imports) the model. Batch size and
    workers default to what suits the model's device."""
    started = time.time()
    run_id = store.next_run_id()
    summary = IndexSummary(run_id=run_id)
    for archive in scan.archives:
        summary.occurrences += store.upsert_occurrences(occurrence_records(archive), archive)
    work = plan(scan, store, retry_failed)
    summary.unchanged, summary.known_bad = work.unchanged, work.known_bad
    # A rerun with new or corrected metadata updates those rows without re-embedding; an
    # image with no metadata now keeps what it had (a rerun without --metadata clears nothing).
    summary.updated = store.update_metadata(
        [(item.uri, item.metadata) for item in work.same_files if item.metadata],
        keep_photo_facts=photo_facts)  # fmt: skip
    if reread_exif and photo_facts:
        summary.updated += store.fill_photo_facts(_facts_of(work.same_files))
    elif photo_facts:  # said, so that a run reading EXIF is not taken to have read theirs
        summary.exif_unread = sum(bool(c) for c in _exif_cleared(
            store, [item.uri for item in work.same_files]))  # fmt: skip
    if not photo_facts:  # what earlier runs took from these photos goes too
        bare = [item.uri for item in work.same_files if not item.metadata]
        held = set(store.with_photo_fact_values(_since_cleared(store, bare)))
        summary.updated += store.clear_photo_facts(
            _facts_of([item for item in work.same_files if item.uri in held],
                      MediaCache(store.path / "media-cache")))
    store.index()  # load (or rebuild) before writing so it follows every commit
    # Before the vanished rows are deleted: a folder renamed under the scanned one vanishes
    # at the old path and appears at the new.
    moves = find_moves(store, work.todo)
    moved = {move.image_id for move in moves}
    summary.deleted = store.mark_deleted([i for i in work.vanished if i not in moved])
    store.forget_failures(work.gone_failures)
    summary.moved = commit_moves(store, moves)
    arrived = {move.item.uri for move in moves}
    todo = [item for item in work.todo if item.uri not in arrived]
    known = store.known_failures()
    early_failures = [Failure(uri, stage, error) for uri, stage, error in scan.failures
                      if uri not in known]  # fmt: skip
    if early_failures:
        store.commit([], np.zeros((0, store.dim), np.float32), early_failures, run_id=run_id)
        summary.failed += len(early_failures)

    def commit(chunk: list[EmbeddedBatch]) -> None:
        vectors = np.concatenate([b.vectors for b in chunk])
        failures = [f for b in chunk for f in b.failures]
        store.commit([r for b in chunk for r in b.records], vectors, failures, run_id=run_id)
        # A file that used to embed but no longer decodes must not keep its stale vector.
        stale = _live_ids_of(store, [f.uri for f in failures])
        summary.deleted += store.mark_deleted(stale)

    if engine not in ("local", "ray"):
        raise BioindexError(f"unknown engine {engine!r}; choose local or ray")
    masters = 0 if fast_decode else sum(suffix_of(i.uri) in JPEG2000_SUFFIXES for i in todo)
    if masters:
        log.warning("%s decoded whole, ~45x a JPEG's time each; --fast-decode reads "
                    "JPEG 2000 at a lower resolution level, ~9x faster (embeddings within "
                    "cosine 0.99)", "1 JPEG 2000 file is" if masters == 1
                    else f"{masters} JPEG 2000 files are")  # fmt: skip
    if todo:
        model = model if isinstance(model, EmbeddingModel) else model()
        batch_size = batch_size or default_batch_size(model.device)
        workers = default_workers(model.device) if workers is None else workers
    bar = tqdm(
        total=len(todo), unit="img", desc="embedding", disable=not progress or None, smoothing=0.1
    )

    def embed(items: list[Item]) -> Iterable[EmbeddedBatch]:
        if engine == "ray":
            from bioindex.indexer import ray_engine

            return ray_engine.embed_items(items, model, batch_size=batch_size,
                                          commit_every=commit_every, fast_decode=fast_decode,
                                          **(ray_options or {}))  # fmt: skip
        return embed_items(items, model, batch_size=batch_size, workers=workers,
                           fast_decode=fast_decode, gpu_decode=gpu_decode)  # fmt: skip

    cache = MediaCache(store.path / "media-cache")
    cache.sweep()
    downloads = Downloads([i.uri for i in todo if i.remote], cache,
                          fetch_policy or FetchPolicy(),
                          get=_getter(todo, int(store.model.get("image_size") or 224)))
    batches = _batches(todo, downloads, embed, commit_every, summary, store.dim)
    writer = Writer(commit)
    chunk: list[EmbeddedBatch] = []
    size = 0
    try:
        for batch in batches:
            if not photo_facts:
                batch = replace(batch, records=[replace(r, facts={}) for r in batch.records])
            chunk.append(batch)
            size += len(batch.records) + len(batch.failures)
            summary.embedded += len(batch.records)
            summary.failed += len(batch.failures)
            bar.update(len(batch.records) + len(batch.failures))
            if size >= commit_every:
                writer.put(chunk)
                chunk, size = [], 0
    finally:
        downloads.close()
        bar.close()
        # What was embedded is committed even when the run stops early (Ctrl-C included),
        # so the next run starts after it.
        writer.close(chunk)
        cache.sweep()
    store.compact()
    store.save_index()
    summary.seconds = time.time() - started
    store.record_run(
        run_id,
        started,
        scan.sources or scan.roots,
        embedded=summary.embedded,
        unchanged=summary.unchanged,
        updated=summary.updated,
        failed=summary.failed,
        deleted=summary.deleted,
        exif=(photo_facts, reread_exif and photo_facts, scan.roots),
    )
    return summary


def _since_cleared(store: Store, uris: Sequence[str]) -> list[str]:
    """Of `uris`, those whose photo may have given its row a date or a place since a run
    without EXIF last cleared them. Else every rerun with --no-exif read each photo whose
    row holds a date a metadata file gave: a museum's whole collection, every night."""
    return [uri for uri, cleared in zip(uris, _exif_cleared(store, uris)) if not cleared]


def _exif_cleared(store: Store, uris: Sequence[str]) -> list[bool | None]:
    """Per uri: whether a run without EXIF covered it after the last run that read its
    photo's EXIF (embedded it reading EXIF, or re-read it). Runs recorded before runs said
    so are taken to have read it; None where the run that embedded it is unknown."""
    runs = store.runs()
    clearing = [(int(r["run_id"]), Covered(r["roots"])) for r in runs if r.get("exif") is False]
    if not clearing:
        return [False] * len(uris)
    reading = {int(r["run_id"]) for r in runs if r.get("exif", True)}
    rereads = [(int(r["run_id"]), Covered(r["roots"])) for r in runs if r.get("reread_exif")]
    cleared: list[bool | None] = []
    for uri, run in zip(uris, store.embedding_runs(uris)):
        if run is None:
            cleared.append(None)
            continue
        took = max([run if run in reading else 0, *(i for i, c in rereads if c(uri))])
        cleared.append(max((i for i, c in clearing if c(uri)), default=0) > took)
    return cleared


class Writer:
    """Runs `write` on each chunk, in order, on a thread of its own, so the model never
    waits for DuckDB, the shard files or FAISS. One chunk waits while one is written."""

    def __init__(self, write: Callable[[Any], None]):
        self._write = write
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._reported = False
        self._thread = threading.Thread(target=self._run, name="bioindex-writer", daemon=True)
        self._thread.start()

    def put(self, chunk: Any) -> None:
        """Queue a chunk; raises the error of an earlier write."""
        self._raise()
        self._queue.put(chunk)

    def close(self, last: Any = None) -> None:
        """Write what is queued and `last` (when given), stop the thread, and raise a
        write's error if any."""
        # A second Ctrl-C must not close the store under a commit in progress (it gave
        # "connection is busy" tracebacks): the queued commits finish, then it is raised.
        interrupted: KeyboardInterrupt | None = None
        for item in ([last] if last else []) + [None]:
            while True:
                try:
                    self._queue.put(item)
                    break
                except KeyboardInterrupt as exc:
                    interrupted = exc
        while self._thread.is_alive():
            try:
                self._thread.join()
            except KeyboardInterrupt as exc:
                interrupted = exc
                log.warning("finishing the commits in progress; they take a moment")
        self._raise()
        if interrupted is not None:
            raise interrupted

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # after a failed write nothing later may land (commits are ordered)
            try:
                self._write(chunk)
            except BaseException as exc:  # handed to the main thread
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error


def _live_ids_of(store: Store, uris: Sequence[str]) -> list[int]:
    return store.catalog.live_ids_of_uris(uris)


def _getter(todo: list[Item], image_size: int) -> Getter:
    """Plain URLs are fetched as they are; IIIF canvases and manifests through the Image
    API, at a size for a model whose input is `image_size` pixels."""
    via = {item.uri: item.fetch_via for item in todo if item.remote and item.fetch_via}

    def get(url: str, cache: MediaCache, policy: FetchPolicy) -> Fetched:
        if url in via:
            return iiif.fetch_item(url, via[url], cache, policy, image_size)
        return fetch(url, cache, policy)

    return get


def _batches(todo: list[Item], downloads: Downloads,
             embed: Callable[[list[Item]], Iterable[EmbeddedBatch]], wave: int,
             summary: IndexSummary, dim: int) -> Iterator[EmbeddedBatch]:  # fmt: skip
    """The local files' batches first, then each wave of downloads as it arrives (the
    downloads run meanwhile): a slow or dead server delays only its own files."""
    local = [item for item in todo if not item.remote]
    if local:
        yield from embed(local)
    remote = {item.uri: item for item in todo if item.remote}
    for fetched in downloads.waves(size=wave):
        ready, failures = [], []
        for result in fetched:
            item = remote[result.url]
            if result.path is None:
                failures.append(Failure(item.uri, "download", result.error or "download failed"))
                continue
            summary.downloaded += result.downloaded
            stat = result.path.stat()
            ready.append(replace(item, path=str(result.path), size=stat.st_size,
                                 mtime=stat.st_mtime,
                                 metadata={**result.metadata, **item.metadata}))  # fmt: skip
        if failures:
            yield EmbeddedBatch([], np.zeros((0, dim), np.float32), failures)
        if ready:
            yield from embed(ready)
