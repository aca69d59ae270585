"""The collection on disk.

    STORE/
      manifest.json        format version + the model identity the vectors came from
      catalog.duckdb       images (Darwin Core columns), failures, runs, meta
      embeddings/          shard-<generation>.npy: float16 [rows, dim], L2-normalised
      index.faiss          derived from the catalog + shards; rebuilt whenever stale
      index.json           which catalog generation index.faiss reflects

Commit order keeps every crash point recoverable: the shard file is written and renamed
first, then one DuckDB transaction inserts the rows that point at it and bumps the
generation. A shard that no row points to is an orphan from a killed run and is deleted on
the next writable open; an index whose generation lags the catalog's is rebuilt.

This module never imports torch.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from bioindex import faiss_index
from bioindex.errors import BioindexError
from bioindex.faiss_index import IndexSpec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CATALOG = "catalog.duckdb"
SHARD_DIR = "embeddings"
INDEX_FILE = "index.faiss"
INDEX_STATE = "index.json"

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "specific_epithet")

DWC_TEXT_COLUMNS = (
    "occurrence_id", "catalog_number", "institution_code", "collection_code",
    "basis_of_record", "scientific_name", "taxon_rank", *RANKS, "vernacular_name",
    "country_code", "event_date", "recorded_by", "license", "rights_holder", "creator",
)  # fmt: skip
DWC_FLOAT_COLUMNS = ("decimal_latitude", "decimal_longitude")
DWC_COLUMNS = DWC_TEXT_COLUMNS + DWC_FLOAT_COLUMNS

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS images (
    image_id BIGINT PRIMARY KEY,
    uri VARCHAR NOT NULL UNIQUE,
    status VARCHAR NOT NULL,
    size BIGINT,
    mtime DOUBLE,
    sha256 VARCHAR,
    width INTEGER,
    height INTEGER,
    shard VARCHAR,
    shard_row INTEGER,
    run_id INTEGER,
    indexed_at TIMESTAMP,
    {", ".join(f'"{c}" VARCHAR' for c in DWC_TEXT_COLUMNS)},
    {", ".join(f'"{c}" DOUBLE' for c in DWC_FLOAT_COLUMNS)},
    extra JSON
);
CREATE TABLE IF NOT EXISTS failures (
    uri VARCHAR NOT NULL, stage VARCHAR, error VARCHAR, run_id INTEGER, failed_at TIMESTAMP,
    size BIGINT, mtime DOUBLE
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY, started_at TIMESTAMP, finished_at TIMESTAMP,
    sources VARCHAR, embedded BIGINT, unchanged BIGINT, failed BIGINT, deleted BIGINT,
    seconds DOUBLE
);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS occurrences (
    core_id VARCHAR PRIMARY KEY,
    source VARCHAR,
    {", ".join(f'"{c}" VARCHAR' for c in DWC_TEXT_COLUMNS)},
    {", ".join(f'"{c}" DOUBLE' for c in DWC_FLOAT_COLUMNS)},
    extra JSON
);
"""


@dataclass(frozen=True)
class ImageRecord:
    """One embedded image on its way into the catalog."""

    uri: str
    size: int | None
    mtime: float | None
    sha256: str | None
    width: int | None
    height: int | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    uri: str
    stage: str
    error: str
    size: int | None = None
    mtime: float | None = None


def dwc_column(term: str) -> str:
    """catalogNumber, dwc:catalogNumber, catalog_number, CatalogNumber → catalog_number."""
    term = term.strip()
    term = term.rsplit("/", 1)[-1]  # full IRIs: http://rs.tdwg.org/dwc/terms/catalogNumber
    term = term.split(":", 1)[-1]
    term = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", term)
    return re.sub(r"[^0-9a-zA-Z]+", "_", term).strip("_").lower()


def split_metadata(metadata: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Darwin Core columns the catalog knows, and everything else (for `extra`)."""
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in metadata.items():
        if value is None or (isinstance(value, str) and value == ""):
            continue
        column = dwc_column(key)
        if column in DWC_COLUMNS:
            known[column] = value
        else:
            extra[key] = value
    return fill_ranks(known), extra


_BINOMIAL = re.compile(r"^([A-Z][a-z]+)\s+([a-z][a-z-]+)\b")


def fill_ranks(known: dict[str, Any]) -> dict[str, Any]:
    """Genus and specific epithet from a binomial scientificName when those columns are
    empty. Nothing above genus is ever filled: a name alone does not say its family."""
    match = _BINOMIAL.match(str(known.get("scientific_name", "")))
    if match and not known.get("genus") and not known.get("specific_epithet"):
        known["genus"], known["specific_epithet"] = match.group(1), match.group(2)
    return known


class Store:
    """An open store. Use `Store.create` / `Store.open`; close when done."""

    def __init__(self, path: Path, manifest: dict[str, Any], con: Any, read_only: bool,
                 map_index: bool = False):  # fmt: skip
        self.path = path
        self.manifest = manifest
        self.con = con
        self.read_only = read_only
        self.map_index = map_index and read_only
        self._index: Any = None
        self._gpu_index: Any = None  # a GPU copy for plain searches, when faiss-gpu can
        self._removed: set[int] = set()  # deleted ids the index cannot drop (HNSW)
        self._located: Any = None
        self._shards: dict[str, np.ndarray] = {}

    # ---- opening -------------------------------------------------------------------

    @classmethod
    def exists(cls, path: str | os.PathLike[str]) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def create(cls, path: str | os.PathLike[str], model: dict[str, Any]) -> Store:
        root = Path(path)
        _check_store_dir(root, creating=True)
        root.mkdir(parents=True, exist_ok=True)
        (root / SHARD_DIR).mkdir(exist_ok=True)
        con = duckdb.connect(str(root / CATALOG))
        con.execute(_SCHEMA)
        con.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_at": _now_iso(),
            "model": model,
            "index": IndexSpec(kind="flat", dim=int(model["dim"])).to_json(),
        }
        # The manifest is written last: a store without one is not a store yet.
        _atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2))
        return cls(root, manifest, con, read_only=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str], read_only: bool = False,
             map_index: bool = False) -> Store:  # fmt: skip
        """Open a store. `map_index` (read-only only) maps the index file rather than
        reading it: a one-off query on a large store starts at once, but searches run
        slower than from memory, so long-lived readers (the server) leave it off."""
        root = Path(path)
        _check_store_dir(root, creating=False)
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise BioindexError(f"{root / MANIFEST} is unreadable: {exc}") from exc
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BioindexError(
                f"store {root} has format version {manifest.get('format_version')}, "
                f"this bioindex reads {FORMAT_VERSION}"
            )
        try:
            con = duckdb.connect(str(root / CATALOG), read_only=read_only)
        except duckdb.Error as exc:
            raise BioindexError(
                f"cannot open {root / CATALOG}: {str(exc).splitlines()[0]}"
            ) from exc
        store = cls(root, manifest, con, read_only=read_only, map_index=map_index)
        if not read_only:
            con.execute(_SCHEMA)
            store._remove_orphan_shards()
        return store

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def dim(self) -> int:
        return int(self.model["dim"])

    # ---- catalog reads -------------------------------------------------------------

    def generation(self) -> int:
        return int(self.con.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    def live_count(self) -> int:
        return self.con.execute("SELECT count(*) FROM images WHERE status='live'").fetchone()[0]

    def known_files(self) -> dict[str, tuple[int, int | None, float | None, str]]:
        """uri → (image_id, size, mtime, status) for every image ever committed."""
        rows = self.con.execute("SELECT uri, image_id, size, mtime, status FROM images").fetchall()
        return {uri: (image_id, size, mtime, status) for uri, image_id, size, mtime, status in rows}

    def known_failures(self) -> dict[str, tuple[int | None, float | None]]:
        """uri → (size, mtime) of files that failed and have not succeeded since."""
        rows = self.con.execute("SELECT uri, size, mtime FROM failures").fetchall()
        return {uri: (size, mtime) for uri, size, mtime in rows}

    def rows(self, image_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Catalog rows by image_id, with NULL columns left out and `extra` parsed."""
        if not len(image_ids):
            return {}
        result = self.con.execute(
            "SELECT * FROM images WHERE image_id IN (SELECT unnest(?))", [list(map(int, image_ids))]
        )
        names = [d[0] for d in result.description]
        out: dict[int, dict[str, Any]] = {}
        for values in result.fetchall():
            row = {k: v for k, v in zip(names, values) if v is not None}
            if isinstance(row.get("extra"), str):
                row["extra"] = json.loads(row["extra"])
            out[int(row["image_id"])] = row
        return out

    def failures(self) -> list[dict[str, Any]]:
        result = self.con.execute("SELECT uri, stage, error, run_id FROM failures ORDER BY uri")
        names = [d[0] for d in result.description]
        return [dict(zip(names, values)) for values in result.fetchall()]

    def vectors(self, image_ids: Sequence[int]) -> np.ndarray:
        """Stored vectors (float32) in the order asked for; unknown or deleted ids raise."""
        locations = dict(
            (int(i), (s, r))
            for i, s, r in self.con.execute(
                "SELECT image_id, shard, shard_row FROM images "
                "WHERE status='live' AND image_id IN (SELECT unnest(?))",
                [list(map(int, image_ids))],
            ).fetchall()
        )
        missing = [i for i in image_ids if int(i) not in locations]
        if missing:
            raise BioindexError(f"no live image with image_id {missing[0]} in {self.path}")
        out = np.empty((len(image_ids), self.dim), dtype=np.float32)
        shards: dict[str, np.ndarray] = {}
        for position, image_id in enumerate(image_ids):
            shard, row = locations[int(image_id)]
            if shard not in shards:
                shards[shard] = self._load_shard(shard)
            out[position] = shards[shard][row]
        return out

    def iter_live_vectors(self, batch: int = 65536) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """(ids int64, vectors float32) for every live image, one shard at a time."""
        for shard, ids, rows in self.live_shards():
            data = self._load_shard(shard)
            for start in range(0, len(ids), batch):
                part = rows[start : start + batch]
                yield ids[start : start + batch], np.asarray(data[part], dtype=np.float32)

    def live_shards(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(shard file name, live image_ids, their rows in the shard) for every shard."""
        shard_names = [
            r[0]
            for r in self.con.execute(
                "SELECT DISTINCT shard FROM images WHERE status='live' ORDER BY shard"
            ).fetchall()
        ]
        for shard in shard_names:
            found = self.con.execute(
                "SELECT image_id, shard_row FROM images WHERE status='live' AND shard=? "
                "ORDER BY shard_row",
                [shard],
            ).fetchnumpy()
            yield (shard, np.asarray(found["image_id"], dtype=np.int64),
                   np.asarray(found["shard_row"], dtype=np.int64))  # fmt: skip

    def runs(self) -> list[dict[str, Any]]:
        result = self.con.execute("SELECT * FROM runs ORDER BY run_id")
        names = [d[0] for d in result.description]
        return [dict(zip(names, values)) for values in result.fetchall()]

    def info(self) -> dict[str, Any]:
        counts = dict(
            self.con.execute("SELECT status, count(*) FROM images GROUP BY status").fetchall()
        )
        runs = self.runs()
        index = self.index()
        return {
            "store": str(self.path),
            "model": self.model.get("name"),
            "model_source": self.model.get("source"),
            "weights_sha256": self.model.get("weights_sha256"),
            "dim": self.dim,
            "preprocess": self.model.get("preprocess"),
            "images_live": counts.get("live", 0),
            "images_deleted": counts.get("deleted", 0),
            "failures": self.con.execute("SELECT count(*) FROM failures").fetchone()[0],
            "occurrences": self.con.execute("SELECT count(*) FROM occurrences").fetchone()[0],
            "index_kind": self.index_spec.kind,
            "index_ntotal": int(index.ntotal),
            "index_search": self.index_spec.search or None,
            "index_rerank": self.index_spec.rerank,
            "index_build": self.index_spec.built or None,
            "index_advice": self.index_advice() or None,
            "store_bytes": _tree_size(self.path),
            "last_run": runs[-1] if runs else None,
        }

    # ---- writes --------------------------------------------------------------------

    def next_run_id(self) -> int:
        return self.con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs").fetchone()[0]

    def commit(
        self,
        records: Sequence[ImageRecord],
        vectors: np.ndarray,
        failures: Sequence[Failure] = (),
        run_id: int | None = None,
    ) -> list[int]:
        """Atomically add (or replace, by uri) embedded images and record failures."""
        self._require_writable()
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(records), self.dim):
            raise BioindexError(
                f"vectors of shape {vectors.shape} do not fit {len(records)} images of dim "
                f"{self.dim} in {self.path}"
            )
        generation = self.generation() + 1
        shard = None
        if records:
            shard = f"shard-{generation:09d}.npy"
            _atomic_save_npy(self.path / SHARD_DIR / shard, vectors.astype(np.float16))

        uris = [r.uri for r in records]
        existing = (
            dict(
                self.con.execute(
                    "SELECT uri, image_id FROM images WHERE uri IN (SELECT unnest(?))", [uris]
                ).fetchall()
            )
            if records
            else {}
        )
        next_id = self.con.execute("SELECT coalesce(max(image_id), 0) + 1 FROM images").fetchone()[
            0
        ]
        ids: list[int] = []
        for record in records:
            if record.uri in existing:
                ids.append(int(existing[record.uri]))
            else:
                ids.append(int(next_id))
                next_id += 1

        table = self._records_table(records, ids, shard, run_id)
        with self._transaction(generation):
            if existing:
                self.con.execute(
                    "DELETE FROM images WHERE image_id IN (SELECT unnest(?))",
                    [list(map(int, existing.values()))],
                )
            if records:
                self.con.register("incoming", table)
                self.con.execute(
                    f"INSERT INTO images ({', '.join(_quoted(table))}) SELECT * FROM incoming"
                )
                self.con.unregister("incoming")
            touched = uris + [f.uri for f in failures]
            if touched:
                self.con.execute("DELETE FROM failures WHERE uri IN (SELECT unnest(?))", [touched])
            if failures:
                self.con.executemany(
                    "INSERT INTO failures VALUES (?, ?, ?, ?, now(), ?, ?)",
                    [(f.uri, f.stage, f.error, run_id, f.size, f.mtime) for f in failures],
                )
        if self._index is not None:
            index_ids = np.asarray(ids, dtype=np.int64)
            if existing:
                self._remove_from_index(existing.values())
            if len(index_ids):
                self._index.add_with_ids(vectors, index_ids)
                # An id deleted before and back now (same uri) must not stay filtered out.
                self._removed.difference_update(ids)
            self._index_generation = generation
        return ids

    def mark_deleted(self, image_ids: Sequence[int]) -> int:
        """Soft-delete: rows stay (history), vectors leave the index and results at once."""
        self._require_writable()
        if not len(image_ids):
            return 0
        ids = list(map(int, image_ids))
        generation = self.generation() + 1
        with self._transaction(generation):
            self.con.execute(
                "UPDATE images SET status='deleted' WHERE image_id IN (SELECT unnest(?))", [ids]
            )
        if self._index is not None:
            self._remove_from_index(ids)
            self._index_generation = generation
        return len(ids)

    def upsert_occurrences(self, records: Sequence[dict[str, Any]]) -> int:
        """Occurrence (specimen) records, images or not, keyed by the archive's core id."""
        self._require_writable()
        if not records:
            return 0
        by_id = {str(r["core_id"]): r for r in records}
        columns = {
            "core_id": _texts(list(by_id)),
            "source": _texts([_text(r.get("source")) for r in by_id.values()]),
        }
        columns.update(_darwin_core_columns(
            [{k: v for k, v in r.items() if k not in ("core_id", "source")}
             for r in by_id.values()]
        ))  # fmt: skip
        with self._transaction(self.generation()):
            self.con.execute("DELETE FROM occurrences WHERE core_id IN (SELECT unnest(?))",
                             [list(by_id)])  # fmt: skip
            self.con.register("incoming_occurrences", columns)
            self.con.execute(
                f"INSERT INTO occurrences ({', '.join(_quoted(columns))}) "
                "SELECT * FROM incoming_occurrences"
            )
            self.con.unregister("incoming_occurrences")
        return len(by_id)

    @contextlib.contextmanager
    def _transaction(self, generation: int) -> Iterator[None]:
        """One DuckDB transaction that also moves the catalog to `generation`."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
            self.con.execute("UPDATE meta SET value=? WHERE key='generation'", [str(generation)])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self._gpu_index = None  # any GPU copy of the index is now stale
        self._located = None

    def record_run(self, run_id: int, started_at: float, sources: Sequence[str], **counts: Any):
        self._require_writable()
        self.con.execute(
            "INSERT INTO runs VALUES (?, to_timestamp(?), now(), ?, ?, ?, ?, ?, ?)",
            [
                run_id, started_at, json.dumps(list(sources)), counts.get("embedded", 0),
                counts.get("unchanged", 0), counts.get("failed", 0), counts.get("deleted", 0),
                time.time() - started_at,
            ],
        )  # fmt: skip

    # ---- the FAISS index (derived) -------------------------------------------------

    @property
    def index_spec(self) -> IndexSpec:
        return IndexSpec.from_json(self.manifest.get("index", {}), self.dim)

    def index(self) -> Any:
        """The FAISS index, loaded from disk when current, rebuilt from shards when not.

        A read-only store maps the index file instead of reading it where FAISS can (IVF
        lists, flat codes), so one query on a large store does not read the whole file."""
        if self._index is not None:
            return self._index
        generation = self.generation()
        state = _read_json(self.path / INDEX_STATE)
        index_path = self.path / INDEX_FILE
        if (
            state.get("generation") == generation
            and index_path.is_file()
            # A file without it predates the check (written before structure was recorded).
            and state.get("structure", self._index_structure()) == self._index_structure()
        ):
            index = faiss_index.read(str(index_path), self.index_spec.kind, self.map_index)
            self._removed = set(state.get("removed", []))
        else:
            index = self._build_index(self.index_spec)
            self._removed = set()
            if not self.read_only:
                self._write_index(index, generation)
        faiss_index.set_search(index, self.index_spec)
        self._index = index
        self._index_generation = generation
        return index

    def save_index(self) -> None:
        """Persist the in-memory index (call at the end of a write run)."""
        if self._index is not None and not self.read_only:
            self._write_index(self._index, self._index_generation)

    def rebuild_index(self) -> Any:
        """Rebuild with the current kind and search settings (compacts deletions)."""
        self._require_writable()
        self._drop_index()
        index = self._build_index(self.index_spec)
        self._install_index(index)
        return index

    def build_index(
        self,
        kind: str = "auto",
        memory: int = faiss_index.DEFAULT_MEMORY,
        target_recall: float = faiss_index.DEFAULT_TARGET_RECALL,
        rerank: bool | None = None,
        queries: int = 500,
        progress: Callable[[int], None] | None = None,
        engine: str = "local",
        address: str | None = None,
    ) -> IndexSpec:
        """Build the index of `kind` (auto picks by size, dim and memory budget) from the
        stored vectors, tune it to `target_recall` against exact search on held-out stored
        vectors, and record the spec with the measured recall and latency in the manifest.

        engine='ray' adds the shards in parallel Ray tasks (each fills a copy of the trained,
        empty index from the shard files, which must be readable where the tasks run) and
        merges their inverted lists; HNSW graphs cannot be merged and are built locally."""
        self._require_writable()
        if not 0.0 < target_recall <= 1.0:
            raise BioindexError(f"target recall must be in (0, 1], got {target_recall}")
        n = self.live_count()
        spec = faiss_index.plan(kind, n, self.dim, memory, rerank)
        self._drop_index()
        started = time.perf_counter()
        index = self._build_index(spec, progress, engine, address)
        build_seconds = time.perf_counter() - started
        self._index, self._removed = index, set()  # searchable while tuning
        probe_ids = self._sample_ids(min(queries, n))
        tuning = None
        if len(probe_ids):
            probes = self.vectors(probe_ids)
            # A stored vector is its own nearest neighbour; leaving it out of both answers
            # makes it a held-out query against the other n-1.
            truth = faiss_index.exact_neighbours(
                self.iter_live_vectors(), probes, 10, exclude=probe_ids
            )
            tuning = faiss_index.tune(index, spec, probes, truth, target_recall,
                                      fetch=self._fetch, exclude=probe_ids)  # fmt: skip
        spec.built = {
            "requested_kind": kind,
            "memory_budget": int(memory),
            "target_recall": target_recall,
            "ntotal": int(index.ntotal),
            "trained_on": faiss_index.training_size(spec, n),
            "build_seconds": round(build_seconds, 2),
            "built_at": _now_iso(),
            **({k: v for k, v in vars(tuning).items() if k != "search"} if tuning else {}),
        }
        # The spec goes into the manifest before the index file is written, so index.json
        # records the new structure: a crash before the manifest reaches the disk leaves a
        # file whose structure the old manifest does not match, and it is rebuilt.
        self.manifest["index"] = spec.to_json()
        self._install_index(index)
        # Measured from the written file: serializing in memory would double the peak.
        spec.built["index_bytes"] = (self.path / INDEX_FILE).stat().st_size
        self.manifest["index"] = spec.to_json()
        _atomic_write_text(self.path / MANIFEST, json.dumps(self.manifest, indent=2))
        return spec

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
        if self._removed and len(self._removed) > 0.1 * max(ntotal, 1):
            advice.append(
                f"{len(self._removed)} deleted vectors are still in the {spec.kind} graph "
                "(filtered out of results): a rebuild would compact them"
            )
        requested = built.get("requested_kind", "auto")
        if requested == "auto":
            live = self.live_count()
            budget = built.get("memory_budget", faiss_index.DEFAULT_MEMORY)
            better = faiss_index.choose_kind(live, self.dim, budget)
            if better != spec.kind:
                advice.append(f"at {live} vectors auto would now pick {better} over {spec.kind}")
        return advice

    def search(
        self, queries: np.ndarray, k: int, only: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product top-k: (scores [q, k], image_ids [q, k]); missing slots have id -1.

        `only` restricts the search to those image_ids, exactly: a flat index filters while
        it scans, an approximate one is bypassed for a brute-force pass over their vectors.
        """
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise BioindexError(
                f"query vectors have shape {queries.shape}; this store holds dim {self.dim}"
            )
        index, spec = self.index(), self.index_spec
        k = max(1, min(k, int(index.ntotal))) if index.ntotal else 1
        if only is not None and not spec.exact:
            return self._search_subset(queries, k, np.asarray(only, dtype=np.int64))
        selector = None
        if only is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(only, dtype=np.int64))
        elif self._removed:
            removed = np.fromiter(self._removed, dtype=np.int64)
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(removed))
        if selector is None and spec.exact:
            return self._plain_searcher().search(queries, k)
        return faiss_index.search(index, spec, queries, k, selector, fetch=self._fetch)

    def range_search(self, vectors: np.ndarray, radius: float) -> list[np.ndarray]:
        """For each vector, the ids whose stored vector scores at least `radius` with it
        (approximate on approximate kinds)."""
        limits, _, found = self.index().range_search(
            np.ascontiguousarray(vectors, dtype=np.float32), radius
        )
        out = [found[limits[i] : limits[i + 1]] for i in range(len(vectors))]
        if self._removed:
            removed = np.fromiter(self._removed, dtype=np.int64)
            out = [ids[~np.isin(ids, removed)] for ids in out]
        return out

    def ids_where(self, sql: str, params: Sequence[Any]) -> np.ndarray:
        """image_ids of live rows matching a parameterised predicate (see search.filters)."""
        result = self.con.execute(
            f"SELECT image_id FROM images WHERE status='live' AND ({sql})", list(params)
        ).fetchnumpy()
        return np.asarray(result["image_id"], dtype=np.int64)

    def _plain_searcher(self) -> Any:
        """The GPU copy of the index when faiss-gpu and a GPU are there and it pays, else the
        CPU index. Filtered (IDSelector) and range searches always use the CPU index."""
        index = self._index
        if index.ntotal < GPU_MIN_VECTORS or os.environ.get("BIOINDEX_FAISS_GPU") == "0":
            return index
        if self._gpu_index is None:
            copy = _to_gpu(index)
            self._gpu_index = False if copy is None else copy
        return index if self._gpu_index is False else self._gpu_index

    def _build_index(self, spec: IndexSpec, progress: Callable[[int], None] | None = None,
                     engine: str = "local", address: str | None = None) -> Any:  # fmt: skip
        n = self.live_count()
        if spec.kind.startswith("ivf") and n < spec.nlist * faiss_index.MIN_POINTS_PER_LIST:
            # Too few vectors left to train those lists (say after mass deletion).
            spec = faiss_index.plan("flat", n, self.dim)
            self.manifest["index"] = spec.to_json()
            if not self.read_only:
                _atomic_write_text(self.path / MANIFEST, json.dumps(self.manifest, indent=2))
        size = faiss_index.training_size(spec, n)
        sample = self.vectors(self._sample_ids(size)) if size else None
        if engine == "ray" and faiss_index.mergeable(spec):
            from bioindex.indexer import ray_engine

            parts = [(str(self.path / SHARD_DIR / shard), ids, rows)
                     for shard, ids, rows in self.live_shards()]  # fmt: skip
            index = ray_engine.build_index(spec, sample, parts, progress, address)
        elif engine in ("local", "ray"):
            index = faiss_index.build(spec, sample, self.iter_live_vectors(), progress)
        else:
            raise BioindexError(f"unknown engine {engine!r}; choose local or ray")
        faiss_index.set_search(index, spec)
        return index

    def _install_index(self, index: Any) -> None:
        self._index, self._removed = index, set()
        self._index_generation = self.generation()
        self.save_index()

    def _drop_index(self) -> None:
        self._gpu_index = None
        self._index = None
        self._removed = set()
        self._index_generation = -1

    def _remove_from_index(self, ids: Sequence[int]) -> None:
        """Take ids out of the live index; kinds that cannot (HNSW) filter them instead."""
        array = np.asarray(list(ids), dtype=np.int64)
        try:
            self._index.remove_ids(array)
        except RuntimeError:
            self._removed.update(int(i) for i in array)

    def _sample_ids(self, n: int) -> np.ndarray:
        """n distinct live image_ids, a fixed-seed random sample (reproducible builds)."""
        if n <= 0:
            return np.empty(0, dtype=np.int64)
        ids = np.asarray(
            self.con.execute("SELECT image_id FROM images WHERE status='live'").fetchnumpy()[
                "image_id"
            ],
            dtype=np.int64,
        )
        rng = np.random.default_rng(0)
        return np.sort(rng.choice(ids, min(n, len(ids)), replace=False))

    def _locations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """(sorted live ids, shard number, row) and shard names; every write drops them."""
        if self._located is None:
            # Shard names as small ints in SQL: millions of Python strings would not be.
            names = [r[0] for r in self.con.execute(
                "SELECT DISTINCT shard FROM images WHERE status='live' ORDER BY shard"
            ).fetchall()]  # fmt: skip
            found = self.con.execute(
                "SELECT image_id, CAST(dense_rank() OVER (ORDER BY shard) - 1 AS INTEGER) AS code,"
                " shard_row FROM images WHERE status='live' ORDER BY image_id"
            ).fetchnumpy()
            self._located = (
                np.asarray(found["image_id"], np.int64), np.asarray(found["code"], np.int32),
                np.asarray(found["shard_row"], np.int64), [str(n) for n in names],
            )  # fmt: skip
        return self._located

    def _fetch(self, image_ids: np.ndarray) -> np.ndarray:
        """Stored vectors for re-ranking; rows of ids that are not live are NaN."""
        ids, codes, rows, names = self._locations()
        image_ids = np.asarray(image_ids, dtype=np.int64)
        out = np.full((len(image_ids), self.dim), np.nan, dtype=np.float32)
        if not len(ids):
            return out
        at = np.minimum(np.searchsorted(ids, image_ids), len(ids) - 1)
        live = ids[at] == image_ids
        for code in np.unique(codes[at[live]]):
            mine = live & (codes[at] == code)
            out[mine] = self._shard(names[code])[rows[at[mine]]]
        return out

    def _search_subset(self, queries: np.ndarray, k: int, only: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        only = np.unique(only)
        vectors = self._fetch(only)
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

    def _write_index(self, index: Any, generation: int) -> None:
        import faiss

        tmp = self.path / (INDEX_FILE + ".tmp")
        faiss.write_index(index, str(tmp))
        _fsync_file(tmp)
        os.replace(tmp, self.path / INDEX_FILE)
        # index.json is written after the index it describes; a crash between the two
        # leaves an older generation on record, which only costs a rebuild.
        _atomic_write_text(
            self.path / INDEX_STATE,
            json.dumps({"generation": generation, "ntotal": int(index.ntotal),
                        "removed": sorted(self._removed),
                        "structure": self._index_structure()}),
        )  # fmt: skip

    def _index_structure(self) -> dict[str, Any]:
        """What an index file must have been built as to serve the manifest's spec."""
        spec = self.index_spec
        return {"kind": spec.kind, "dim": spec.dim, "nlist": spec.nlist, "pq_m": spec.pq_m}

    # ---- internals -----------------------------------------------------------------

    def _require_writable(self) -> None:
        if self.read_only:
            raise BioindexError(f"store {self.path} is open read-only")

    def _load_shard(self, name: str) -> np.ndarray:
        return np.load(self.path / SHARD_DIR / name, mmap_mode="r")

    def _shard(self, name: str) -> np.ndarray:
        """A shard kept mapped for the life of the store (shards never change once written),
        for random row reads: without MADV_RANDOM each 1 KB row read faults in the kernel's
        readahead window (128 KB), and re-ranking over a 10 GB store maps gigabytes."""
        if name not in self._shards:
            shard = self._load_shard(name)
            mapping = getattr(shard, "_mmap", None)
            if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
                mapping.madvise(mmap.MADV_RANDOM)
            self._shards[name] = shard
        return self._shards[name]

    def _remove_orphan_shards(self) -> None:
        referenced = {
            r[0] for r in self.con.execute("SELECT DISTINCT shard FROM images").fetchall()
        }
        for file in (self.path / SHARD_DIR).glob("*"):
            if file.name not in referenced:
                file.unlink(missing_ok=True)

    def _records_table(
        self, records: Sequence[ImageRecord], ids: list[int], shard: str | None, run_id: int | None
    ) -> dict[str, np.ndarray]:
        n = len(records)
        table = {
            "image_id": np.asarray(ids, dtype=np.int64),
            "uri": _texts([r.uri for r in records]),
            "status": _texts(["live"] * n),
            "size": _numbers([r.size for r in records]),
            "mtime": _numbers([r.mtime for r in records]),
            "sha256": _texts([r.sha256 for r in records]),
            "width": _numbers([r.width for r in records]),
            "height": _numbers([r.height for r in records]),
            "shard": _texts([shard] * n),
            "shard_row": np.arange(n, dtype=np.int64),
            "run_id": _numbers([run_id] * n),
        }
        table.update(_darwin_core_columns([r.metadata for r in records]))
        return table


GPU_MIN_VECTORS = 50_000  # below this a CPU flat search beats the copy to the GPU


def _to_gpu(index: Any) -> Any:
    """A GPU copy of a CPU index, or None when faiss-gpu or a GPU is missing or it fails."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return None
    try:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    except Exception:  # an index type the GPU build cannot hold: stay on the CPU
        return None


def _darwin_core_columns(metadatas: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Catalog columns (Darwin Core + `extra` JSON) for rows of free-form metadata."""
    split = [split_metadata(metadata) for metadata in metadatas]
    # Most columns of most chunks are empty (a folder of photos has no metadata at all):
    # those are filled whole rather than looked up row by row.
    present = set().union(*(known for known, _ in split))
    empty = np.full(len(split), None, dtype=object)
    columns: dict[str, np.ndarray] = {}
    for column in DWC_TEXT_COLUMNS:
        columns[column] = (_texts([_text(known.get(column)) for known, _ in split])
                           if column in present else empty)  # fmt: skip
    for column in DWC_FLOAT_COLUMNS:
        columns[column] = (_numbers([_float(known.get(column)) for known, _ in split])
                           if column in present else np.full(len(split), np.nan))  # fmt: skip
    columns["extra"] = _texts([json.dumps(extra, default=str) if extra else None
                               for _, extra in split])  # fmt: skip
    return columns


# Rows reach DuckDB as a dict of NumPy arrays (its NumPy scan), not as an Arrow table:
# pyarrow's first array imports pandas when that is installed, 0.25-0.5 s that the last
# commit of every run waited for (apache/arrow#34994).


def _texts(values: list[str | None]) -> np.ndarray:
    """Text column: str and None in an object array, which the scan reads as VARCHAR."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _numbers(values: Sequence[float | None]) -> np.ndarray:
    """Numeric column, None as NaN, which the scan reads as NULL; the INSERT casts it to the
    column's type (integers are exact below 2**53). Typed, because the scan would guess an
    object column's type from a sample of its rows."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _check_store_dir(root: Path, creating: bool) -> None:
    if root.exists() and not root.is_dir():
        raise BioindexError(f"store path {root} exists and is not a directory")
    if creating:
        # Our own files without a manifest are what an interrupted create leaves behind.
        ours = {CATALOG, CATALOG + ".wal", SHARD_DIR, MANIFEST + ".tmp"}
        foreign = [p for p in root.iterdir() if p.name not in ours] if root.is_dir() else []
        if foreign and not (root / MANIFEST).exists():
            raise BioindexError(
                f"store path {root} is a non-empty folder that is not a bioindex store"
            )
        return
    if not (root / MANIFEST).is_file():
        raise BioindexError(f"{root} is not a bioindex store (no {MANIFEST}); run bioindex index")


def _quoted(names: Iterable[str]) -> list[str]:
    return [f'"{n}"' for n in names]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _tree_size(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
