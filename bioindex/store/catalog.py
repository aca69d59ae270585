"""The catalog: every SQL statement bioindex runs lives in this class.

The catalog of one generation is a set of immutable Parquet segments (images, failures,
occurrences) listed in its snapshot. A Catalog is an in-memory DuckDB connection whose
views `images`, `failures` and `occurrences` read exactly those files, so any number of
processes read a store while one writes new segments beside them. The same views are what
`bioindex sql` runs user queries on.

Writes never change a file: `write_*` produce new segment files, `rewrite_images` a
changed copy of one segment; the store front decides which files the next generation lists.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from bioindex.errors import BioindexError
from bioindex.store import files
from bioindex.store.records import (
    DWC_COLUMNS,
    FAILURE_COLUMNS,
    IMAGE_COLUMNS,
    METADATA_COLUMNS,
    OCCURRENCE_COLUMNS,
)
from bioindex.store.snapshot import Snapshot

TAXON_COLUMNS = (
    'kingdom, phylum, "class", "order", family, genus, specific_epithet, vernacular_name, '
    "scientific_name"
)
# What a photo shares with near-copies of it: the frames one camera-trap trigger took (its
# eventID, as COCO Camera Traps' seq_id is kept, with the name: a burst may hold two
# species), else the photos of one specimen (its occurrence), else its bytes. Such photos
# are not independent: one cannot be held out to test on while another is learnt from.
EVENT_ID = "nullif(trim(json_extract_string(extra, '$.eventID')), '')"
GROUP_KEY = (
    f"coalesce('event ' || {EVENT_ID} || ' ' || coalesce(scientific_name, vernacular_name, ''), "
    "'occurrence ' || nullif(trim(occurrence_id), ''), 'bytes ' || sha256, "
    "'image ' || image_id)"
)
_TABLES = {"images": IMAGE_COLUMNS, "failures": FAILURE_COLUMNS,
           "occurrences": OCCURRENCE_COLUMNS}  # fmt: skip
INT64_RANGE = (-(2**63), 2**63 - 1)
_INLINE_IDS = 2000  # id lists up to this long are inlined so Parquet statistics prune


def _releasing_ids(method: Callable[..., Any]) -> Callable[..., Any]:
    """Unregister the id arrays a method's statement registered, however it ends."""

    @functools.wraps(method)
    def wrapper(self: Catalog, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            self._forget_ids()

    return wrapper


# EXPLAIN ANALYZE runs the statement it explains; plain EXPLAIN does not, but is checked
# the same way.
_EXPLAIN = re.compile(r"\s*explain(?:\s+analyze)?\s+(.*)", re.IGNORECASE | re.DOTALL)


def read_only_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise unless `sql` is one statement that only reads: a SELECT (WITH, SHOW, DESCRIBE,
    SUMMARIZE and VALUES are SELECTs to DuckDB) or an EXPLAIN of one. Other statements
    write where the views cannot stop them: COPY and EXPORT to any file (the store's own
    Parquet segments too), ATTACH, INSTALL, CREATE."""
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise BioindexError(f"give one read-only statement, not {len(statements)}")
    statement = statements[0]
    if statement.type == duckdb.StatementType.EXPLAIN:
        explained = _EXPLAIN.fullmatch(statement.query)
        inner = con.extract_statements(explained.group(1)) if explained else []
        if len(inner) == 1 and inner[0].type == duckdb.StatementType.SELECT:
            return
    elif statement.type == duckdb.StatementType.SELECT:
        return
    raise BioindexError(f"the catalog is read-only: a {statement.type.name} statement is not run "
                        f"here (SELECT, WITH, SHOW, DESCRIBE or EXPLAIN SELECT are)")


class Catalog:
    """DuckDB over one generation's catalog files. Not shared between threads at once."""

    def __init__(self, root: Path):
        self.root = root
        self.con = duckdb.connect(":memory:")
        # What does not fit the memory limit (large imports) spills here.
        self._run(f"SET temp_directory={_quote(str(root / '.duckdb-tmp'))}")
        for option in ("enable_object_cache", "parquet_metadata_cache"):
            try:  # Parquet footers read once per file, not once per query
                self._run(f"SET {option}=true")
            except duckdb.Error:
                pass
        # Kept out of the main schema, so that SHOW TABLES in `bioindex sql` lists the
        # catalog's three views only.
        self._run("CREATE SCHEMA internal")
        for table, columns in _TABLES.items():
            self._run(f"CREATE TABLE internal.empty_{table} ({_ddl(columns)})")
        self.files: dict[str, list[str]] = {}
        self.snap: Snapshot | None = None  # the generation the views read
        self._registered: list[str] = []  # id arrays registered for the statement in hand

    def close(self) -> None:
        self.con.close()

    # ---- which generation ------------------------------------------------------------

    def attach(self, snap: Snapshot) -> None:
        """Point the views at `snap`'s files."""
        lists = {
            "images": [r["file"] for r in snap.images],
            "failures": [snap.failures["file"]] if snap.failures else [],
            "occurrences": [r["file"] for r in snap.occurrences],
        }
        for table, names in lists.items():
            if self.files.get(table) == names:
                continue
            self._run(f"CREATE OR REPLACE VIEW {table} AS {self._source(table, names)}")
            self.files[table] = names
        self.snap = snap

    def _source(self, table: str, names: Sequence[str]) -> str:
        if not names:
            return f"SELECT * FROM internal.empty_{table}"
        return f"SELECT * FROM read_parquet({_paths(self.root, names)})"

    def view_sql(self) -> str:
        """CREATE VIEW statements for the DuckDB CLI, with absolute paths."""
        out = []
        for table in _TABLES:
            names = self.files.get(table, [])
            body = (f"SELECT * FROM read_parquet({_paths(self.root, names)})" if names
                    else f"SELECT {_null_columns(_TABLES[table])} WHERE false")  # fmt: skip
            out.append(f"CREATE OR REPLACE VIEW {table} AS {body};")
        return "\n".join(out)

    # ---- reads -------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple]]:
        """A user's SQL on the views: (column names, rows). One statement that only reads
        (read_only_statement)."""
        try:
            read_only_statement(self.con, sql)
            result = self.con.execute(sql, list(params))
        except duckdb.Error as exc:
            raise BioindexError(f"SQL error: {str(exc).splitlines()[0]}") from exc
        if result.description is None:
            return [], []
        return [d[0] for d in result.description], result.fetchall()

    def live_count(self) -> int:
        return self._one("SELECT count(*) FROM images WHERE status='live'")

    def status_counts(self) -> dict[str, int]:
        return dict(self.con.execute("SELECT status, count(*) FROM images GROUP BY status")
                    .fetchall())  # fmt: skip

    def filled(self, columns: Sequence[str]) -> dict[str, int]:
        """How many live images have a value in each of `columns` (Darwin Core names)."""
        known = [c for c in columns if c in METADATA_COLUMNS]
        if not known:
            return {}
        counted = ", ".join(f'count("{c}")' for c in known)  # names from a fixed list
        counts = self.con.execute(
            f"SELECT {counted} FROM images WHERE status='live'").fetchall()[0]
        return dict(zip(known, (int(n) for n in counts)))

    def failure_count(self) -> int:
        return self._one("SELECT count(*) FROM failures")

    def occurrence_count(self) -> int:
        return self._one("SELECT count(*) FROM occurrences")

    def known_files(self) -> dict[str, tuple[int, int | None, float | None, str]]:
        """uri → (image_id, size, mtime, status) for every image ever committed."""
        rows = self.con.execute("SELECT uri, image_id, size, mtime, status FROM images").fetchall()
        return {uri: (image_id, size, mtime, status) for uri, image_id, size, mtime, status in rows}

    def live_files_of_sizes(self, sizes: Sequence[int]) -> list[tuple[int, str, int, str]]:
        """(image_id, uri, size, sha256) of the live images of these sizes in bytes."""
        if not len(sizes):
            return []
        return self.con.execute(
            "SELECT image_id, uri, size, sha256 FROM images WHERE status='live' "
            "AND size IN (SELECT unnest(?))", [list(map(int, sizes))]
        ).fetchall()  # fmt: skip

    def known_failures(self) -> dict[str, tuple[int | None, float | None]]:
        """uri → (size, mtime) of files that failed and have not succeeded since."""
        rows = self.con.execute("SELECT uri, size, mtime FROM failures").fetchall()
        return {uri: (size, mtime) for uri, size, mtime in rows}

    def failures(self) -> list[dict[str, Any]]:
        return self._dicts("SELECT uri, stage, error, run_id FROM failures ORDER BY uri")

    @_releasing_ids
    def rows(self, image_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Catalog rows by image_id, with NULL columns left out and `extra` parsed."""
        if not len(image_ids):
            return {}
        out: dict[int, dict[str, Any]] = {}
        found = self._dicts(f"SELECT * FROM images WHERE image_id IN {self._ids(image_ids)}")
        for row in found:
            row = shown_row(row)
            out[int(row["image_id"])] = row
        return out

    @_releasing_ids
    def locations(self, image_ids: Sequence[int]) -> dict[int, tuple[str, int]]:
        """image_id → (shard, row) of the live ones among `image_ids`."""
        if not len(image_ids):
            return {}
        found = self.con.execute(
            "SELECT image_id, shard, shard_row FROM images "
            f"WHERE status='live' AND image_id IN {self._ids(image_ids)}"
        ).fetchall()
        return {int(i): (s, int(r)) for i, s, r in found}

    def live_shards(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(shard name, live image_ids, their rows in the shard) for every shard."""
        names = self._shard_names()
        found = self.con.execute(
            "SELECT CAST(dense_rank() OVER (ORDER BY shard) - 1 AS INTEGER) AS code, image_id, "
            "shard_row FROM images WHERE status='live' ORDER BY shard, shard_row"
        ).fetchnumpy()  # shard names as small ints: millions of Python strings would not be
        codes = np.asarray(found["code"], dtype=np.int32)
        ids = np.asarray(found["image_id"], dtype=np.int64)
        rows = np.asarray(found["shard_row"], dtype=np.int64)
        if not len(ids):
            return
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        ends = np.r_[starts[1:], len(ids)]
        for start, end in zip(starts, ends):
            yield names[codes[start]], ids[start:end], rows[start:end]

    def _shard_names(self) -> list[str]:
        return [str(r[0]) for r in self.con.execute(
            "SELECT DISTINCT shard FROM images WHERE status='live' ORDER BY shard").fetchall()]

    def live_locations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """(live ids sorted, shard code per id, row per id, shard names by code)."""
        names = self._shard_names()
        found = self.con.execute(
            "SELECT image_id, CAST(dense_rank() OVER (ORDER BY shard) - 1 AS INTEGER) AS code,"
            " shard_row FROM images WHERE status='live' ORDER BY image_id"
        ).fetchnumpy()  # fmt: skip
        return (np.asarray(found["image_id"], np.int64), np.asarray(found["code"], np.int32),
                np.asarray(found["shard_row"], np.int64), names)  # fmt: skip

    def live_ids(self) -> np.ndarray:
        found = self.con.execute("SELECT image_id FROM images WHERE status='live'").fetchnumpy()
        return np.asarray(found["image_id"], dtype=np.int64)

    def ids_where(self, sql: str, params: Sequence[Any]) -> np.ndarray:
        """image_ids of live rows matching a parameterised predicate (see search.filters)."""
        result = self.con.execute(
            f"SELECT image_id FROM images WHERE status='live' AND ({sql})", list(params)
        ).fetchnumpy()
        return np.asarray(result["image_id"], dtype=np.int64)

    def rows_digest(self, sql: str, params: Sequence[Any]) -> str:
        """A digest of the live rows matching a predicate, by their image_id, bytes (sha256)
        and taxon columns: equal while the same images, unchanged, carry the same names."""
        count, digest = self.con.execute(
            f"SELECT count(*), coalesce(bit_xor(hash(image_id, sha256, {TAXON_COLUMNS})), 0) "
            f"FROM images WHERE status='live' AND ({sql})", list(params)
        ).fetchall()[0]  # fmt: skip
        return f"{count}:{digest}"

    def live_ids_of_uris(self, uris: Sequence[str]) -> list[int]:
        return list(self.live_ids_by_uri(uris).values())

    def live_ids_by_uri(self, uris: Sequence[str]) -> dict[str, int]:
        if not uris:
            return {}
        rows = self.con.execute(
            "SELECT uri, image_id FROM images WHERE status='live' AND uri IN (SELECT unnest(?))",
            [list(uris)],
        ).fetchall()
        return {uri: int(image_id) for uri, image_id in rows}

    def live_ids_in_shards(self, names: Sequence[str]) -> list[int]:
        if not names:
            return []
        return [r[0] for r in self.con.execute(
            "SELECT image_id FROM images WHERE status='live' AND shard IN (SELECT unnest(?))",
            [list(names)]).fetchall()]  # fmt: skip

    def taxon_rows(self, occurrences: bool = False) -> list[tuple]:
        """Distinct taxon rows (TAXON_COLUMNS) of the live images, or of the occurrence
        records."""
        where = "occurrences" if occurrences else "images WHERE status='live'"
        return self.con.execute(f"SELECT DISTINCT {TAXON_COLUMNS} FROM {where}").fetchall()

    def taxon_row_counts(self) -> list[tuple]:
        """(TAXON_COLUMNS…, live images) for each distinct taxon row of the live images."""
        return self.con.execute(
            f"SELECT {TAXON_COLUMNS}, count(*) FROM images WHERE status='live' GROUP BY ALL"
        ).fetchall()

    def common_names(self) -> list[str]:
        """The distinct common names (vernacular_name) of the live images, as written, the
        most used spelling first."""
        return [r[0] for r in self.con.execute(
            "SELECT trim(vernacular_name) AS name FROM images WHERE status='live' "
            "AND trim(coalesce(vernacular_name, '')) <> '' GROUP BY name "
            "ORDER BY count(*) DESC, name").fetchall()]  # fmt: skip

    def taxon_rows_where(self, sql: str, params: Sequence[Any],
                         images_only: bool = False) -> list[tuple]:  # fmt: skip
        """Distinct taxon rows (TAXON_COLUMNS) of live images and occurrence records that
        match a predicate over Darwin Core columns (where a taxon is recorded);
        `images_only`: the predicate names an image's own columns (its path), so occurrence
        records without images are not asked."""
        images = f"SELECT DISTINCT {TAXON_COLUMNS} FROM images WHERE status='live' AND ({sql})"
        if images_only:
            return self.con.execute(images, list(params)).fetchall()
        return self.con.execute(
            f"{images} UNION SELECT DISTINCT {TAXON_COLUMNS} FROM occurrences WHERE ({sql})",
            [*params, *params],
        ).fetchall()

    @_releasing_ids
    def photo_groups(self, image_ids: Sequence[int]) -> list[str]:
        """Each image's group (GROUP_KEY), in the order asked."""
        if not len(image_ids):
            return []
        found = dict(self.con.execute(
            f"SELECT image_id, {GROUP_KEY} FROM images WHERE image_id IN {self._ids(image_ids)}"
        ).fetchall())  # fmt: skip
        return [found.get(int(i), f"image {int(i)}") for i in image_ids]

    @_releasing_ids
    def events_of(self, image_ids: Sequence[int]) -> dict[int, str]:
        """image_id → its eventID (a camera trap's burst), for the asked images that have one."""
        if not len(image_ids):
            return {}
        return dict(self.con.execute(
            f"SELECT image_id, {EVENT_ID} FROM images "
            f"WHERE image_id IN {self._ids(image_ids)} AND {EVENT_ID} IS NOT NULL"
        ).fetchall())  # fmt: skip

    @_releasing_ids
    def timed_rows(self, image_ids: Sequence[int] | None = None
                   ) -> list[tuple[int, str, str, str]]:  # fmt: skip
        """(image_id, uri, event_date, name) of the asked live images (None: all of them)
        with no eventID whose eventDate gives the time to the second (a camera's EXIF stamp;
        a date alone says nothing of which trigger took it); name: the scientific name,
        else the common name, else ''."""
        if image_ids is not None and not len(image_ids):
            return []
        asked = "" if image_ids is None else f"AND image_id IN {self._ids(image_ids)} "
        return self.con.execute(
            f"SELECT image_id, uri, event_date, "
            f"coalesce(scientific_name, vernacular_name, '') FROM images "
            f"WHERE status='live' {asked}AND {EVENT_ID} IS NULL "
            f"AND regexp_matches(event_date, '^\\d{{4}}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d')"
        ).fetchall()  # fmt: skip

    @_releasing_ids
    def group_mates(self, image_ids: Sequence[int]) -> dict[int, list[int]]:
        """image_id → the other live images of its group (GROUP_KEY), for each asked one
        that has any."""
        if not len(image_ids):
            return {}
        return dict(self.con.execute(
            f"WITH grouped AS (SELECT image_id, {GROUP_KEY} AS grp FROM images "
            f"WHERE status='live') "
            f"SELECT asked.image_id, list(mate.image_id ORDER BY mate.image_id) "
            f"FROM grouped asked JOIN grouped mate ON asked.grp = mate.grp "
            f"AND mate.image_id <> asked.image_id "
            f"WHERE asked.image_id IN {self._ids(image_ids)} GROUP BY asked.image_id"
        ).fetchall())  # fmt: skip

    def groups_digest(self, sql: str, params: Sequence[Any]) -> str:
        """A digest of the live rows matching a predicate by their group (GROUP_KEY, and
        the time a burst by the clock is told by)."""
        count, digest = self.con.execute(
            f"SELECT count(*), coalesce(bit_xor(hash(image_id, {GROUP_KEY}, event_date)), 0) "
            f"FROM images WHERE status='live' AND ({sql})", list(params)
        ).fetchall()[0]  # fmt: skip
        return f"{count}:{digest}"

    @_releasing_ids
    def taxa_of(self, image_ids: Sequence[int]) -> dict[int, tuple]:
        """image_id → (kingdom … scientific_name), the columns of TAXON_COLUMNS."""
        if not len(image_ids):
            return {}
        return {r[0]: r[1:] for r in self.con.execute(
            f"SELECT image_id, {TAXON_COLUMNS} FROM images "
            f"WHERE image_id IN {self._ids(image_ids)}"
        ).fetchall()}  # fmt: skip

    def same_bytes(self) -> list[tuple[str, list[int]]]:
        """(sha256, image_ids) for every set of live images with identical bytes."""
        return self.con.execute(
            "SELECT sha256, list(image_id ORDER BY image_id) FROM images "
            "WHERE status='live' AND sha256 IS NOT NULL GROUP BY sha256 HAVING count(*) > 1"
        ).fetchall()

    # ---- what a writer needs to know ------------------------------------------------------

    def ids_of_uris(self, uris: Sequence[str]) -> dict[str, tuple[int, str]]:
        """uri → (image_id, segment file) for the uris already in the catalog."""
        if not uris or not self.files.get("images"):
            return {}
        self.con.register("_asked", {"uri": np.asarray(list(uris), dtype=object)})
        try:
            found = self.con.execute(
                f"SELECT i.uri, i.image_id, i.filename FROM read_parquet("
                f"{_paths(self.root, self.files['images'])}, filename=true) i "
                "SEMI JOIN _asked a ON i.uri = a.uri"
            ).fetchall()
        finally:
            self.con.unregister("_asked")
        return {uri: (int(i), _relative(self.root, f)) for uri, i, f in found}

    def stored_values(self, uris: np.ndarray, names: Sequence[str]) -> dict[str, list[Any]]:
        """Each column of `names` as stored for each of `uris`, in their order (None where
        the uri is not in the catalog or the value is empty)."""
        out: dict[str, list[Any]] = {name: [None] * len(uris) for name in names}
        if not len(uris) or not self.files.get("images"):
            return out
        self.con.register("_asked", {"uri": uris, "_at": np.arange(len(uris), dtype=np.int64)})
        try:
            picked = ", ".join(f'i."{name}"' for name in names)
            found = self.con.execute(
                f"SELECT a._at, {picked} FROM _asked a JOIN images i ON i.uri = a.uri"
            ).fetchall()
        finally:
            self.con.unregister("_asked")
        for at, *values in found:
            for name, value in zip(names, values):
                out[name][at] = value
        return out

    def segments_of_ids(self, image_ids: Sequence[int]) -> dict[str, list[int]]:
        """segment file → which of `image_ids` it holds."""
        if not len(image_ids) or not self.files.get("images"):
            return {}
        self.con.register("_asked", {"image_id": np.asarray(image_ids, dtype=np.int64)})
        try:
            found = self.con.execute(
                f"SELECT i.filename, list(i.image_id) FROM read_parquet("
                f"{_paths(self.root, self.files['images'])}, filename=true) i "
                "SEMI JOIN _asked a ON i.image_id = a.image_id GROUP BY i.filename"
            ).fetchall()
        finally:
            self.con.unregister("_asked")
        return {_relative(self.root, f): list(ids) for f, ids in found}

    def changed_metadata(self, columns: dict[str, np.ndarray]) -> list[str]:
        """The uris (of `columns["uri"]`) whose stored Darwin Core values differ from these."""
        if not len(columns["uri"]):
            return []
        self.con.register("_incoming", columns)
        try:
            differs = " OR ".join(f'n."{c}" IS DISTINCT FROM CAST(i."{c}" AS {_type(c)})'
                                  for c in METADATA_COLUMNS)  # fmt: skip
            incoming = self._typed("_incoming", IMAGE_COLUMNS, ["uri", *METADATA_COLUMNS])
            found = self.con.execute(
                f"SELECT n.uri FROM {incoming} n JOIN images i ON i.uri = n.uri WHERE {differs}"
            ).fetchall()
        finally:
            self.con.unregister("_incoming")
        return [r[0] for r in found]

    # ---- a format-1 catalog (one DuckDB file), read once to migrate it -----------------

    def open_legacy(self, path: Path) -> dict[str, Any]:
        """Attach a format-1 catalog.duckdb read-only; returns what migration needs."""
        try:
            self._run(f"ATTACH {_quote(str(path))} AS legacy (READ_ONLY)")
        except duckdb.Error as exc:
            raise BioindexError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
        runs = self._dicts("SELECT * FROM legacy.runs ORDER BY run_id")
        for run in runs:
            try:
                run["sources"] = json.loads(run.get("sources") or "[]")
            except ValueError:
                run["sources"] = [run.get("sources")]
        return {
            "generation": int(self._one(
                "SELECT coalesce(max(value::BIGINT), 0) FROM legacy.meta WHERE key='generation'")),
            "next_image_id": int(self._one(
                "SELECT coalesce(max(image_id), 0) + 1 FROM legacy.images")),
            "shards": [r[0] for r in self.con.execute(
                "SELECT DISTINCT shard FROM legacy.images WHERE shard IS NOT NULL ORDER BY 1"
            ).fetchall()],
            "runs": runs,
        }  # fmt: skip

    def export_legacy(self, table: str, path: Path) -> int:
        """A format-1 table's rows as one segment, typed as this format's columns."""
        select = ", ".join(f'CAST("{n}" AS {t}) AS "{n}"' for n, t in _TABLES[table])
        return self._copy(f"SELECT {select} FROM legacy.{table}", path)

    def close_legacy(self) -> None:
        self._run("DETACH legacy")

    # ---- exports -----------------------------------------------------------------------

    def extra_keys(self) -> list[str]:
        """Every key of the `extra` JSON of live images and occurrence records."""
        found = self.con.execute(
            "SELECT DISTINCT unnest(json_keys(extra)) FROM (SELECT extra FROM images WHERE "
            "status='live' AND extra IS NOT NULL UNION ALL SELECT extra FROM occurrences "
            "WHERE extra IS NOT NULL)").fetchall()  # fmt: skip
        return sorted(str(row[0]) for row in found)

    def export_occurrences(self, image_ids: np.ndarray | None,
                           batch: int = 4096) -> Iterator[list[dict[str, Any]]]:  # fmt: skip
        """Occurrence rows for an export, a batch at a time: the catalog's own records
        (those the chosen images belong to, when `image_ids` is given), then one per
        occurrence of chosen images that have no record (a plain folder's images each
        become one, keyed `bioindex:image:<image_id>`)."""
        columns = ", ".join(f'"{c}"' for c in DWC_COLUMNS if c != "occurrence_id")
        chosen = "status='live'"
        try:
            if image_ids is not None:
                self.con.register("_export_ids", {"image_id": np.asarray(image_ids, np.int64)})
                chosen += " AND image_id IN (SELECT image_id FROM _export_ids)"
            linked = ("" if image_ids is None else
                      f" WHERE occurrence_id IN (SELECT occurrence_id FROM images WHERE {chosen})")
            yield from self._batches(
                f"SELECT DISTINCT ON (occurrence_id) occurrence_id, {columns}, extra "
                f"FROM occurrences{linked} ORDER BY occurrence_id", batch)  # fmt: skip
            yield from self._batches(
                f"SELECT DISTINCT ON (oid) oid AS occurrence_id, {columns}, extra FROM "
                f"(SELECT *, coalesce(occurrence_id, 'bioindex:image:' || image_id) AS oid "
                f"FROM images WHERE {chosen} AND (occurrence_id IS NULL OR occurrence_id NOT "
                f"IN (SELECT occurrence_id FROM occurrences WHERE occurrence_id IS NOT NULL))) "
                f"ORDER BY oid", batch)  # fmt: skip
        finally:
            if image_ids is not None:
                self.con.unregister("_export_ids")

    def export_media(self, image_ids: np.ndarray | None,
                     batch: int = 4096) -> Iterator[list[dict[str, Any]]]:  # fmt: skip
        """Live images (uri, occurrence key, licence, rights holder, creator, size) in
        image_id order, a batch at a time."""
        chosen = "status='live'"
        try:
            if image_ids is not None:
                self.con.register("_export_ids", {"image_id": np.asarray(image_ids, np.int64)})
                chosen += " AND image_id IN (SELECT image_id FROM _export_ids)"
            yield from self._batches(
                "SELECT image_id, uri, coalesce(occurrence_id, 'bioindex:image:' || image_id) "
                "AS occurrence_id, license, rights_holder, creator, width, height, sha256, extra "
                f"FROM images WHERE {chosen} ORDER BY image_id", batch)  # fmt: skip
        finally:
            if image_ids is not None:
                self.con.unregister("_export_ids")

    @_releasing_ids
    def key_columns(self, image_ids: Sequence[int]) -> dict[str, list[Any]]:
        """uri, occurrence_id, catalog_number and scientific_name of `image_ids`, in their
        order (the columns an embeddings export carries beside each vector)."""
        names = ("uri", "occurrence_id", "catalog_number", "scientific_name")
        found = self.con.execute(
            f"SELECT image_id, {', '.join(names)} FROM images "
            f"WHERE image_id IN {self._ids(image_ids)}").fetchall()  # fmt: skip
        by_id = {int(row[0]): row[1:] for row in found}
        return {name: [by_id.get(int(i), (None,) * len(names))[n] for i in image_ids]
                for n, name in enumerate(names)}  # fmt: skip

    def _batches(self, sql: str, batch: int) -> Iterator[list[dict[str, Any]]]:
        """A statement's rows as dicts, fetched `batch` at a time (nothing else may run on
        this connection until the last batch is taken)."""
        result = self.con.execute(sql)
        names = [d[0] for d in result.description]
        while rows := result.fetchmany(batch):
            yield [dict(zip(names, values)) for values in rows]

    # ---- writes (new files only) -----------------------------------------------------------

    def write_images(self, columns: dict[str, np.ndarray], path: Path) -> int:
        """A new images segment from record columns; indexed_at is now."""
        self.con.register("_incoming", columns)
        try:
            select = self._typed("_incoming", IMAGE_COLUMNS, [*columns, "indexed_at"],
                                 defaults={"indexed_at": "now()"})  # fmt: skip
            return self._copy(f"SELECT * FROM {select} ORDER BY image_id", path)
        finally:
            self.con.unregister("_incoming")

    @_releasing_ids
    def rewrite_images(self, segment: str, path: Path, *, drop: Sequence[int] = (),
                       delete: Sequence[int] = (), status: str = "deleted",
                       updates: dict[str, np.ndarray] | None = None) -> int:  # fmt: skip
        """A copy of `segment` without the rows `drop`, with rows `delete` set to `status`,
        and with the metadata of the rows whose uri is in `updates` replaced."""
        source = f"read_parquet({_paths(self.root, [segment])})"
        where = f"WHERE image_id NOT IN {self._ids(drop)}" if len(drop) else ""
        status_sql = (f"CASE WHEN i.image_id IN {self._ids(delete)} THEN '{status}' "
                      "ELSE i.status END" if len(delete) else "i.status")  # fmt: skip
        replaced = [f"{status_sql} AS status"]
        join = ""
        if updates is not None:
            self.con.register("_updates", updates)
            typed = self._typed("_updates", IMAGE_COLUMNS, ["uri", *METADATA_COLUMNS])
            join = f"LEFT JOIN {typed} u ON u.uri = i.uri"
            replaced += [f'CASE WHEN u.uri IS NULL THEN i."{c}" ELSE u."{c}" END AS "{c}"'
                         for c in METADATA_COLUMNS]  # fmt: skip
        try:
            return self._copy(
                f"SELECT i.* REPLACE ({', '.join(replaced)}) FROM (SELECT * FROM {source} "
                f"{where}) i {join} ORDER BY i.image_id", path)  # fmt: skip
        finally:
            if updates is not None:
                self.con.unregister("_updates")

    def compact_images(self, segments: Sequence[str], path: Path) -> int:
        return self._copy(f"SELECT * FROM read_parquet({_paths(self.root, segments)}) "
                          "ORDER BY image_id", path)  # fmt: skip

    def write_failures(self, new: dict[str, np.ndarray], drop_uris: Sequence[str],
                       path: Path) -> int:  # fmt: skip
        """The failures table less `drop_uris`, plus `new` (failed now)."""
        self.con.register("_new", new)
        self.con.register("_drop", {"uri": np.asarray(list(drop_uris), dtype=object)})
        try:
            typed = self._typed("_new", FAILURE_COLUMNS, [*new, "failed_at"],
                                defaults={"failed_at": "now()"})  # fmt: skip
            return self._copy(
                "SELECT * FROM failures f WHERE f.uri NOT IN (SELECT uri FROM _drop) "
                f"UNION ALL SELECT * FROM {typed}", path)  # fmt: skip
        finally:
            self.con.unregister("_new")
            self.con.unregister("_drop")

    def write_occurrences(self, columns: dict[str, np.ndarray], path: Path) -> int:
        self.con.register("_incoming", columns)
        try:
            return self._copy(
                f"SELECT * FROM {self._typed('_incoming', OCCURRENCE_COLUMNS, list(columns))}",
                path)  # fmt: skip
        finally:
            self.con.unregister("_incoming")

    @contextlib.contextmanager
    def memory_limit(self, limit: str) -> Iterator[None]:
        """Hold DuckDB to `limit` (spilling to disk beyond it) for a bulk job."""
        self._run(f"SET memory_limit={_quote(limit)}")
        try:
            yield
        finally:
            self._run("RESET memory_limit")

    def repeated_keys(self, segments: Sequence[str]) -> bool:
        return bool(self._one(
            f"SELECT count(*) > count(DISTINCT core_id) FROM read_parquet("
            f"{_paths(self.root, segments)})"))  # fmt: skip

    def key_repeated_occurrences(self, segments: Sequence[str], path: Path) -> int:
        """One segment of `segments` (in order) where the second and later records of a core
        id are keyed id#catalogNumber, or id#row-number without one."""
        source = f"read_parquet({_paths(self.root, segments)}, filename=true, file_row_number=true)"
        numbered = (f"SELECT *, row_number() OVER (ORDER BY filename, file_row_number) - 1 "
                    f"AS _row FROM {source}")  # fmt: skip
        return self._copy(
            "SELECT * EXCLUDE (filename, file_row_number, _row, _nth) REPLACE ("
            "CASE WHEN _nth > 1 THEN core_id || '#' || coalesce(catalog_number, "
            "CAST(_row AS VARCHAR)) ELSE core_id END AS core_id) FROM (SELECT *, row_number() "
            f"OVER (PARTITION BY core_id ORDER BY _row) AS _nth FROM ({numbered})) ORDER BY _row",
            path)  # fmt: skip

    # ---- internals ---------------------------------------------------------------------

    def _copy(self, select: str, path: Path) -> int:
        """Write a query's rows to a Parquet file, durably; returns the row count."""
        tmp = path.with_name(path.name + files.TMP_SUFFIX)
        with files.disk_errors(path):
            try:
                self._run(f"COPY ({select}) TO {_quote(str(tmp))} (FORMAT parquet)")
            except duckdb.IOException as exc:
                tmp.unlink(missing_ok=True)
                raise OSError(_errno_of(exc), str(exc).splitlines()[0]) from exc
            files.fsync_path(tmp)
            files.publish(tmp, path)
        return self._one(f"SELECT count(*) FROM read_parquet({_quote(str(path))})")

    def _typed(self, relation: str, columns: Sequence[tuple[str, str]], present: Sequence[str],
               defaults: dict[str, str] | None = None) -> str:  # fmt: skip
        """A subquery with every column of `columns`, cast, NULL where not `present`."""
        defaults = defaults or {}
        parts = []
        for name, kind in columns:
            if name in defaults:
                value = defaults[name]
            elif name in present:
                value = f'"{name}"'
            else:
                value = "NULL"
            parts.append(f'CAST({value} AS {kind}) AS "{name}"')
        return f"(SELECT {', '.join(parts)} FROM {relation})"

    def _run(self, sql: str) -> None:
        """A statement whose result nobody reads (DuckDB wants every result consumed)."""
        self.con.execute(sql).fetchall()

    def _ids(self, image_ids: Sequence[int]) -> str:
        """An IN list: inlined when short (Parquet statistics then prune), else a registered
        array (a SQL text of 100,000s of numbers costs the parser more than the query).
        Numbers no BIGINT holds name no image and are left out (DuckDB would refuse the
        statement: a fuzzed /api/thumbnails/2^128 was a 500)."""
        if not isinstance(image_ids, np.ndarray):
            image_ids = [i for i in image_ids if INT64_RANGE[0] <= int(i) <= INT64_RANGE[1]]
        if len(image_ids) <= _INLINE_IDS:
            return _inline(image_ids)
        name = f"_ids_{len(self._registered)}"
        self.con.register(name, {"image_id": np.asarray(image_ids, dtype=np.int64)})
        self._registered.append(name)
        return f"(SELECT image_id FROM {name})"

    def _forget_ids(self) -> None:
        while self._registered:
            self.con.unregister(self._registered.pop())

    def _one(self, sql: str) -> Any:
        return self.con.execute(sql).fetchall()[0][0]

    def _dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        result = self.con.execute(sql, list(params))
        names = [d[0] for d in result.description]
        return [dict(zip(names, values)) for values in result.fetchall()]


def _ddl(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f'"{n}" {t}' for n, t in columns)


def _null_columns(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in columns)


def _type(column: str) -> str:
    return dict(IMAGE_COLUMNS)[column]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def shown_row(row: dict[str, Any]) -> dict[str, Any]:
    """A catalog row as readers get it: NULL columns left out, `extra` parsed."""
    row = {k: v for k, v in row.items() if v is not None}
    if isinstance(row.get("extra"), str):
        row["extra"] = json.loads(row["extra"])
    return row


def _paths(root: Path, names: Sequence[str]) -> str:
    return "[" + ", ".join(_quote(str(root / n)) for n in names) + "]"


def _relative(root: Path, filename: str) -> str:
    return os.path.relpath(filename, root)


def _inline(values: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(v)) for v in values) + ")" if len(values) else "(NULL)"


def _errno_of(exc: Exception) -> int:
    import errno

    text = str(exc)
    if "No space left" in text:
        return errno.ENOSPC
    if "Permission denied" in text:
        return errno.EACCES
    if "Read-only file system" in text:
        return errno.EROFS
    return errno.EIO
