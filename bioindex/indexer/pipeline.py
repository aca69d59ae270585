"""One indexing run: find what changed, embed it, commit in chunks, drop what vanished."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from bioindex.indexer.embed import embed_items
from bioindex.indexer.sources import Item, Scan, covered
from bioindex.models import EmbeddingModel
from bioindex.store import Failure, ImageRecord, Store


@dataclass
class IndexSummary:
    embedded: int = 0
    unchanged: int = 0
    failed: int = 0
    deleted: int = 0
    known_bad: int = 0
    seconds: float = 0.0
    run_id: int = 0

    def line(self) -> str:
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        return (
            f"embedded {self.embedded}, unchanged {self.unchanged}, failed {self.failed}, "
            f"deleted {self.deleted}{self._known_bad()} "
            f"in {self.seconds:.1f}s ({rate:.1f} images/s)"
        )

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


def plan(scan: Scan, store: Store) -> Plan:
    """What to embed, what is unchanged, which failed files are still the same bytes,
    and which live images' files vanished."""
    known = store.known_files()
    failed = store.known_failures()
    todo: list[Item] = []
    unchanged = known_bad = 0
    for item in scan.items:
        previous = known.get(item.uri)
        if failed.get(item.uri) == (item.size, item.mtime):
            known_bad += 1
        elif (
            previous is not None
            and previous[3] == "live"
            and previous[1] == item.size
            and previous[2] == item.mtime
        ):
            unchanged += 1
        else:
            todo.append(item)
    present = {item.uri for item in scan.items}
    vanished = [
        image_id
        for uri, (image_id, _, _, status) in known.items()
        if status == "live" and uri not in present and covered(uri, scan.roots)
    ]
    return Plan(todo, unchanged, known_bad, vanished)


def run_index(
    store: Store,
    model: EmbeddingModel,
    scan: Scan,
    *,
    batch_size: int,
    workers: int,
    commit_every: int = 2048,
    progress: bool = True,
    fast_decode: bool = False,
) -> IndexSummary:
    started = time.time()
    run_id = store.next_run_id()
    work = plan(scan, store)
    todo = work.todo
    summary = IndexSummary(unchanged=work.unchanged, known_bad=work.known_bad, run_id=run_id)
    store.index()  # load (or rebuild) before writing so it follows every commit
    summary.deleted = store.mark_deleted(work.vanished)

    pending_records: list[ImageRecord] = []
    pending_vectors: list[np.ndarray] = []
    pending_failures: list[Failure] = []

    def flush() -> None:
        if not pending_records and not pending_failures:
            return
        vectors = (
            np.concatenate(pending_vectors)
            if pending_vectors
            else np.zeros((0, store.dim), np.float32)
        )
        store.commit(pending_records, vectors, pending_failures, run_id=run_id)
        # A file that used to embed but no longer decodes must not keep its stale vector.
        stale = _live_ids_of(store, [f.uri for f in pending_failures])
        summary.deleted += store.mark_deleted(stale)
        pending_records.clear()
        pending_vectors.clear()
        pending_failures.clear()

    bar = tqdm(
        total=len(todo), unit="img", desc="embedding", disable=not progress or None, smoothing=0.1
    )
    try:
        for batch in embed_items(
            todo, model, batch_size=batch_size, workers=workers, fast_decode=fast_decode
        ):
            pending_records.extend(batch.records)
            pending_vectors.append(batch.vectors)
            pending_failures.extend(batch.failures)
            summary.embedded += len(batch.records)
            summary.failed += len(batch.failures)
            bar.update(len(batch.records) + len(batch.failures))
            if len(pending_records) + len(pending_failures) >= commit_every:
                flush()
        flush()
    finally:
        bar.close()
    store.save_index()
    summary.seconds = time.time() - started
    store.record_run(
        run_id,
        started,
        scan.roots,
        embedded=summary.embedded,
        unchanged=summary.unchanged,
        failed=summary.failed,
        deleted=summary.deleted,
    )
    return summary


def _live_ids_of(store: Store, uris: Sequence[str]) -> list[int]:
    if not uris:
        return []
    rows = store.con.execute(
        "SELECT image_id FROM images WHERE status='live' AND uri IN (SELECT unnest(?))",
        [list(uris)],
    ).fetchall()
    return [r[0] for r in rows]
