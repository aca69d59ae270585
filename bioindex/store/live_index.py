"""The live FAISS index of an open store: loaded, caught up, searched, saved.

The index is derived from the catalog and the shards. A saved index file records the
vectors_version it was built at and, beside it, which (image_id, shard) pairs it holds; a
reader whose store has moved on adds and removes just the difference, so a server follows a
growing store without rebuilding. A file that fails its check is rebuilt, never used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bioindex import faiss_index
from bioindex.errors import BioindexError
from bioindex.faiss_index import IndexSpec
from bioindex.store import files
from bioindex.store.catalog import Catalog
from bioindex.store.layout import INDEX_DIR
from bioindex.store.locations import MISSING, Locations, runs
from bioindex.store.shards import Shards, widen

GPU_MIN_VECTORS = 50_000  # below this a CPU flat search beats the copy to the GPU
log = logging.getLogger(__name__)


class VectorSource(Protocol):
    """What an index builder reads the stored vectors from (the Store)."""

    def iter_live_vectors(self, batch: int = 65536) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        ...

    def live_shard_files(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        ...


# (spec, training sample, the vectors, progress) → a filled index. The local builder is
# below; the Ray engine hands the store its own (bioindex.indexer.ray_engine.RayBuilder).
IndexBuilder = Callable[[IndexSpec, "np.ndarray | None", VectorSource,
                         "Callable[[int], None] | None"], Any]  # fmt: skip


class HeldOut:
    """A VectorSource less some image_ids: the index is built without them so that they can
    tune it as queries it has never seen, then they are added (#18). Stored vectors used as
    queries of an index that holds them find their own neighbourhood too easily (an HNSW
    node is linked to its neighbours): at 40k hard vectors an efSearch that gave probes
    recall 0.977 gave unseen queries 0.953."""

    def __init__(self, source: VectorSource, image_ids: np.ndarray):
        self.source = source
        self.image_ids = np.sort(np.asarray(image_ids, dtype=np.int64))

    def _keep(self, ids: np.ndarray) -> np.ndarray:
        return ~np.isin(ids, self.image_ids, assume_unique=False)

    def iter_live_vectors(self, batch: int = 65536) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        for ids, vectors in self.source.iter_live_vectors(batch):
            keep = self._keep(ids)
            if keep.any():
                yield ids[keep], vectors[keep]

    def live_shard_files(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        out = []
        for path, ids, rows in self.source.live_shard_files():
            keep = self._keep(ids)
            out.append((path, ids[keep], rows[keep]))
        return out


def local_builder(spec: IndexSpec, sample: np.ndarray | None, source: VectorSource,
                  progress: Callable[[int], None] | None = None) -> Any:  # fmt: skip
    return faiss_index.build(spec, sample, source.iter_live_vectors(), progress)


def shard_number(name: str) -> int:
    return int(Path(name).stem.split("-")[-1])


class LiveIndex:
    """One FAISS index and what it holds, following the generation a store is at."""

    def __init__(self, root: Path, catalog: Callable[[], Catalog], shards: Shards,
                 mapped: bool = False):  # fmt: skip
        self.root = root
        self._catalog = catalog  # the calling thread's catalog (see Store.catalog)
        self.shards = shards
        self.mapped = mapped
        self.index: Any = None
        self.spec: IndexSpec | None = None
        self.version = -1  # the vectors_version the in-memory index reflects
        self.removed: set[int] = set()  # deleted ids the index cannot drop (HNSW)
        # Ids added again while such an index still held their old vector, once per old
        # vector left in it (an index saved before this was kept had none: else its id
        # list check failed and it was rebuilt).
        self.superseded: list[int] = []
        # (sorted image_ids, shard numbers) held; None: the attached catalog's live set
        self.content: tuple[np.ndarray, np.ndarray] | None = None
        self._gpu: Any = None
        self._located: Locations | None = None
        self._mapped = False  # the index views its file (read-only)
        self.spec_json: Any = None  # the snapshot's spec object this index was checked against

    @property
    def catalog(self) -> Catalog:
        return self._catalog()

    @property
    def loaded(self) -> bool:
        return self.index is not None

    def drop(self) -> None:
        self.index, self.spec, self.version, self.content = None, None, -1, None
        self.removed, self._gpu, self._located, self._mapped = set(), None, None, False
        self.superseded = []

    def changed(self) -> None:
        """The catalog moved to another generation: cached lookups are stale."""
        self._gpu, self._located = None, None

    def remember_content(self) -> None:
        """Before the catalog moves on: write down what the index holds now."""
        if self.loaded and self.content is None:
            self.content = self._live_pairs()

    # ---- getting current -------------------------------------------------------------

    def load(self, record: dict[str, Any] | None, spec: IndexSpec, version: int) -> bool:
        """Read the saved index file when it checks out; False when there is none to use.
        A file behind `version` is read into memory even when mapping is asked for: FAISS
        cannot add to or remove from a mapped index (it aborts the process)."""
        if not record or not record.get("file"):
            return False
        if record.get("structure") != structure(spec):
            return False
        path = self.root / record["file"]["file"]
        wrong = files.problem(path, record["file"])
        ids_path = self.root / record["ids"]["file"] if record.get("ids") else None
        if wrong is None and ids_path is not None:
            wrong = files.problem(ids_path, record["ids"])
        if wrong is not None:
            log.warning("index file %s is %s: rebuilding it", record["file"]["file"], wrong)
            return False
        try:
            mapped = self.mapped and int(record["vectors_version"]) == version
            index = faiss_index.read(str(path), spec.kind, mapped)
            pairs = np.load(ids_path) if ids_path is not None else None
        except (RuntimeError, OSError, ValueError) as exc:
            log.warning("index file %s is unreadable (%s): rebuilding it", path.name, exc)
            return False
        superseded = list(record.get("superseded", []))
        stale = len(record.get("removed", [])) + len(superseded)
        if pairs is not None and len(pairs) != index.ntotal - stale:
            log.warning("index file %s does not match its id list: rebuilding it", path.name)
            return False
        faiss_index.set_search(index, spec)
        self.index, self.spec, self.version = index, spec, int(record["vectors_version"])
        self._mapped = mapped
        self.removed = set(record.get("removed", []))
        self.superseded = superseded
        self.content = (pairs[:, 0].copy(), pairs[:, 1].copy()) if pairs is not None else None
        self._gpu, self._located = None, None
        return True

    def install(self, index: Any, spec: IndexSpec, version: int) -> None:
        """A freshly built index of the attached catalog's live set."""
        faiss_index.set_search(index, spec)
        self.index, self.spec, self.version = index, spec, version
        self.removed, self.content, self._gpu, self._located = set(), None, None, None
        self.superseded, self._mapped = [], False

    def catch_up(self, version: int) -> None:
        """Add and remove what differs between what the index holds and the live set."""
        if self.content is None:
            raise BioindexError("index content unknown; cannot catch up")  # a bug, not input
        old_ids, old_shards = self.content
        if self._mapped:
            # A mapped index cannot change, and a clone still views the mapping: a copy
            # through serialisation owns its memory (the file may be gone by now).
            import faiss

            self.index = faiss.deserialize_index(faiss.serialize_index(self.index))
            faiss_index.set_search(self.index, self.spec)
            self._mapped = False
        ids, codes, rows, names = self.catalog.live_locations()
        numbers = np.asarray([shard_number(n) for n in names], dtype=np.int64)
        shard_of = numbers[codes] if len(ids) else np.empty(0, np.int64)
        keep_old = _matched(old_ids, old_shards, ids, shard_of)
        keep_new = _matched(ids, shard_of, old_ids, old_shards)
        self.remove(old_ids[~keep_old])
        add = np.flatnonzero(~keep_new)
        if len(add):
            vectors = np.empty((len(add), self.spec.dim), dtype=np.float32)
            for code in np.unique(codes[add]):
                mine = codes[add] == code
                vectors[mine] = self.shards.load(names[code])[rows[add[mine]]]
            self.add(ids[add], vectors)
        log.info("index caught up: +%d -%d", len(add), int((~keep_old).sum()))
        self.version, self.content = version, None

    # ---- following a writer --------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            faiss_index.add(self.index, ids, vectors)
            # An id deleted before and back now (same uri) must not stay filtered out; its old
            # vector, where the index could not drop it, is now found under it too.
            back = [int(i) for i in ids if int(i) in self.removed]
            self.superseded.extend(back)
            self.removed.difference_update(back)
        self._gpu, self._located, self.content = None, None, None

    def remove(self, ids: Iterable[int]) -> None:
        """Take ids out; kinds that cannot (HNSW, fast-scan PQ) filter them instead."""
        array = np.asarray(list(ids), dtype=np.int64)
        if not len(array):
            return
        if faiss_index.removable(self.spec):
            self.index.remove_ids(array)
        else:
            self.removed.update(int(i) for i in array)
        self._gpu, self._located, self.content = None, None, None

    # ---- saving --------------------------------------------------------------------------

    def save(self, generation: int) -> dict[str, Any]:
        """Write the index and its id list under names of `generation`; returns the record
        for the snapshot. The index must reflect the attached catalog's live set."""
        import faiss

        folder = self.root / INDEX_DIR
        folder.mkdir(exist_ok=True)
        path = folder / f"index-{generation:09d}.faiss"
        tmp = path.with_name(path.name + files.TMP_SUFFIX)
        with files.disk_errors(path):
            try:
                faiss.write_index(self.index, str(tmp))
            except RuntimeError as exc:
                tmp.unlink(missing_ok=True)
                raise OSError(28 if "No space" in str(exc) else 5, str(exc)) from exc
            files.fsync_path(tmp)
            files.publish(tmp, path)
        ids, shard_numbers = self.content if self.content is not None else self._live_pairs()
        ids_path = folder / f"index-{generation:09d}.ids.npy"
        files.save_npy(ids_path, np.stack([ids, shard_numbers], axis=1).astype(np.int64))
        return {
            "file": {"file": f"{INDEX_DIR}/{path.name}", **files.identity(path, full=False)},
            "ids": {"file": f"{INDEX_DIR}/{ids_path.name}", **files.identity(ids_path)},
            "vectors_version": self.version,
            "ntotal": int(self.index.ntotal),
            "removed": sorted(self.removed),
            "superseded": sorted(self.superseded),
            "structure": structure(self.spec),
        }

    # ---- searching -----------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, only: np.ndarray | None = None,
               text: bool = False) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        import faiss

        index, spec = self.index, self.spec
        k = max(1, min(k, int(index.ntotal))) if index.ntotal else 1
        if only is not None and not spec.exact:
            return self._search_subset(queries, k, np.asarray(only, dtype=np.int64))
        selector = None
        if only is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(only, dtype=np.int64))
        elif self.removed:
            removed = np.fromiter(self.removed, dtype=np.int64)
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(removed))
        if selector is None and spec.exact:
            searcher = self._plain_searcher()
            if searcher is index and 0 < len(queries) < faiss_index.FLAT_FEW_QUERIES:
                return faiss_index.flat_search_few(index, queries, k)
            return searcher.search(queries, k)
        return faiss_index.search(index, spec, queries, k, selector, fetch=self.rerank_fetch(),
                                  text=text)  # fmt: skip

    def rerank_fetch(self) -> Any:
        """`fetch` where searches re-rank (faiss_index.reranks), else None."""
        return self.fetch if faiss_index.reranks(self.spec, bool(self.superseded)) else None

    def range_search(self, vectors: np.ndarray, radius: float) -> list[np.ndarray]:
        limits, _, found = faiss_index.range_search(self.index, vectors, radius)
        out = [found[limits[i] : limits[i + 1]] for i in range(len(vectors))]
        if self.removed:
            removed = np.fromiter(self.removed, dtype=np.int64)
            out = [ids[~np.isin(ids, removed)] for ids in out]
        return out

    def fetch(self, image_ids: np.ndarray) -> np.ndarray:
        """Stored vectors for re-ranking; rows of ids that are not live are NaN."""
        # Gathered as the shards hold them, straight into one float16 array where the
        # shards come in the ids' order, and widened once: 0.09 ms for a re-rank's 80
        # rows from 8 shards of a 1M store, where a gather per shard scattered into place
        # and faiss's float16 decoder took 0.12 (benchmarks/search_overheads.py).
        where = self.locations()
        codes, rows = where.find(image_ids)
        half = np.zeros((len(codes), self.spec.dim), dtype=np.float16)
        order, found = runs(codes)
        for code, start, end in found:
            if code == MISSING:
                continue
            shard = self.shards.get(where.names[code])
            if order is None:
                half[start:end] = shard[rows[start:end]]
            else:
                slots = order[start:end]
                half[slots] = shard[rows[slots]]
        vectors = widen(half)
        vectors[codes == MISSING] = np.nan
        return vectors

    def locations(self) -> Locations:
        if self._located is None:
            self._located = Locations(*self.catalog.live_locations())
        return self._located

    def locate(self, image_ids: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Where the live ones of `image_ids` are stored: (shard name, their positions in
        image_ids, their rows in the shard) for each shard holding any."""
        where = self.locations()
        codes, rows = where.find(image_ids)
        order, found = runs(codes)
        out = []
        for code, start, end in found:
            if code != MISSING:
                slots = np.arange(start, end) if order is None else order[start:end]
                out.append((where.names[code], slots, rows[slots]))
        return out

    def _search_subset(self, queries: np.ndarray, k: int, only: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        only = np.unique(only)
        vectors = self.fetch(only)
        keep = ~np.isnan(vectors[:, 0])
        only, vectors = only[keep], vectors[keep]
        scores = queries @ vectors.T
        k_out = min(k, len(only))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k_out]
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        out_scores[:, :k_out] = np.take_along_axis(scores, order, axis=1)
        out_ids[:, :k_out] = only[order]
        return out_scores, out_ids

    def _plain_searcher(self) -> Any:
        """The GPU copy of the index when faiss-gpu and a GPU are there and it pays, else the
        CPU index. Filtered (IDSelector) and range searches always use the CPU index."""
        index = self.index
        if index.ntotal < GPU_MIN_VECTORS or os.environ.get("BIOINDEX_FAISS_GPU") == "0":
            return index
        if self._gpu is None:
            copy = to_gpu(index)
            self._gpu = False if copy is None else copy
        return index if self._gpu is False else self._gpu

    def _live_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        ids, codes, _, names = self.catalog.live_locations()
        numbers = np.asarray([shard_number(n) for n in names], dtype=np.int64)
        return ids, (numbers[codes] if len(ids) else np.empty(0, np.int64))


def structure(spec: IndexSpec) -> dict[str, Any]:
    """What an index file must have been built as to serve a spec."""
    return {"kind": spec.kind, "dim": spec.dim, "nlist": spec.nlist, "pq_m": spec.pq_m}


def to_gpu(index: Any) -> Any:
    """A GPU copy of a CPU index, or None when faiss-gpu or a GPU is missing or it fails."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return None
    try:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    except Exception:  # an index type the GPU build cannot hold: stay on the CPU
        return None


def _matched(ids: np.ndarray, shards: np.ndarray, other_ids: np.ndarray,
             other_shards: np.ndarray) -> np.ndarray:  # fmt: skip
    """Which (id, shard) pairs of the first sorted set are in the second sorted set."""
    if not len(other_ids) or not len(ids):
        return np.zeros(len(ids), dtype=bool)
    at = np.minimum(np.searchsorted(other_ids, ids), len(other_ids) - 1)
    return (other_ids[at] == ids) & (other_shards[at] == shards)

