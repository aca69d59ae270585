"""Nearest-neighbour queries over a store, returned as ranked catalog rows."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bioindex.errors import BioindexError
from bioindex.search.filters import Filter
from bioindex.store import Store
from bioindex.uris import file_gone

# Catalog columns worth showing next to a hit, in this order, when present.
SUMMARY_COLUMNS = (
    "scientific_name", "vernacular_name", "catalog_number", "institution_code",
    "occurrence_id", "country_code", "event_date", "license", "rights_holder",
)  # fmt: skip
# A filter matching at most this share of the store is searched exactly over its id set;
# broader ones over-fetch from the whole index and drop what does not match.
SELECTIVE_SHARE = 0.05
SELECTIVE_MIN = 4096


@dataclass
class Hit:
    rank: int
    score: float
    image_id: int
    uri: str
    metadata: dict[str, Any] = field(default_factory=dict)
    why: str | None = None
    path: str | None = None  # the uri relative to the folder it was indexed from
    missing: bool = False  # its file (or archive) is gone from where it was indexed

    def to_dict(self) -> dict[str, Any]:
        data = {"rank": self.rank, "score": round(self.score, 6), "image_id": self.image_id}
        if self.why:
            data["match"] = self.why
        gone = {"file_missing": True} if self.missing else {}
        return {**data, "path": self.path or self.uri, "uri": self.uri, **gone, **self.metadata}


def check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise BioindexError(f"k must be a whole number of at least 1, got {k!r}")
    return k


def nearest(
    store: Store,
    query: np.ndarray,
    k: int,
    exclude: set[int] | None = None,
    where: Filter | None = None,
    text: bool = False,
) -> list[tuple[float, int]]:
    """(score, image_id) of the top-k live images, honouring exclusions and filters;
    `text`: the query is a text vector (searched with the index's text setting)."""
    query = np.asarray(query, dtype=np.float32).reshape(1, -1)
    return nearest_many(store, query, k, [exclude or set()], where, text)[0]


def nearest_many(
    store: Store,
    queries: np.ndarray,
    k: int,
    excludes: list[set[int]] | None = None,
    where: Filter | None = None,
    text: bool = False,
) -> list[list[tuple[float, int]]]:
    """nearest() of each row of `queries` (each with its own exclusions), searched
    together: a flat store's scan is then one matrix product for the batch, not one per
    query. A broad filter over-fetches from the whole index and drops what does not
    match; a query left short is asked again, four times as deep."""
    check_k(k)
    queries = np.asarray(queries, dtype=np.float32)
    excludes = excludes if excludes is not None else [set() for _ in range(len(queries))]
    extra = max((len(e) for e in excludes), default=0)
    total = int(store.index().ntotal)
    if total == 0 or not len(queries):
        return [[] for _ in range(len(queries))]
    if not where:
        scores, ids = store.search(queries, k + extra, text=text)
        return [_pairs(scores[i], ids[i], e)[:k] for i, e in enumerate(excludes)]
    allowed = store.ids_where(where.sql, where.params)
    if len(allowed) == 0:
        return [[] for _ in range(len(queries))]
    if len(allowed) <= max(SELECTIVE_MIN, SELECTIVE_SHARE * total):
        scores, ids = store.search(queries, min(k + extra, len(allowed)), only=allowed)
        return [_pairs(scores[i], ids[i], e)[:k] for i, e in enumerate(excludes)]
    found: list[list[tuple[float, int]]] = [[] for _ in range(len(queries))]
    pending = np.arange(len(queries))
    fetch = k * 2 * math.ceil(total / len(allowed)) + extra
    while len(pending):
        scores, ids = store.search(queries[pending], min(fetch, total), text=text)
        keep = np.isin(ids, allowed)
        short = []
        for row, i in enumerate(pending):
            pairs = _pairs(scores[row][keep[row]], ids[row][keep[row]], excludes[i])
            if len(pairs) >= k or fetch >= total:
                found[i] = pairs[:k]
            else:
                short.append(i)
        pending, fetch = np.asarray(short, dtype=np.int64), fetch * 4
    return found


def _pairs(scores: np.ndarray, ids: np.ndarray, exclude: set[int]) -> list[tuple[float, int]]:
    """One query's (score, id) pairs, empty slots and `exclude` dropped."""
    # Stored float16 vectors can have a norm a hair over 1 (a picture scored 1.00003
    # against itself); a cosine is never shown above 1.
    return [(min(float(s), 1.0), int(i)) for s, i in zip(scores, ids)
            if i >= 0 and int(i) not in exclude]  # fmt: skip


def to_hits(store: Store, pairs: list[tuple[float, int]], why: str | None = None,
            start: int = 1) -> list[Hit]:  # fmt: skip
    rows = store.rows([i for _, i in pairs])
    roots = source_roots(store.runs())
    hits = []
    for score, image_id in pairs:
        row = rows.get(image_id)
        if row is None:  # the index and catalog disagree: never show a ghost
            continue
        metadata = {c: row[c] for c in SUMMARY_COLUMNS if row.get(c) not in (None, "")}
        link = occurrence_url(row)
        if link:
            metadata["occurrence_url"] = link
        hits.append(Hit(start + len(hits), score, image_id, row["uri"], metadata, why,
                        display_path(row["uri"], roots), file_gone(row["uri"])))  # fmt: skip
    return hits


def occurrence_url(row: dict[str, Any]) -> str | None:
    """Where a record can be read on the web: its dcterms:references, an occurrenceID that
    is a URL (CETAF stable identifiers are), or its GBIF occurrence page (gbifID)."""
    extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
    for candidate in (extra.get("references"), row.get("occurrence_id")):
        if isinstance(candidate, str) and candidate.startswith(("https://", "http://")):
            return candidate
    key = str(extra.get("gbifID") or "").strip()
    return f"https://www.gbif.org/occurrence/{key}" if key.isdigit() else None


def source_roots(runs: list[dict[str, Any]]) -> tuple[str, ...]:
    """The folders the store's runs read from (a file's own folder), deepest first."""
    sources = dict.fromkeys(str(s) for run in runs for s in run.get("sources") or ())
    return _roots(tuple(sources))


@functools.lru_cache(maxsize=64)
def _roots(sources: tuple[str, ...]) -> tuple[str, ...]:
    # Cached: every search shows paths, and a server must not stat each source every time.
    roots = set()
    for source in sources:
        if "://" in source:
            continue
        path = os.path.abspath(source)
        roots.add(path if os.path.isdir(path) or not os.path.splitext(path)[1]
                  else os.path.dirname(path))  # fmt: skip
    return tuple(sorted(roots, key=len, reverse=True))


def display_path(uri: str, roots: tuple[str, ...]) -> str:
    """`uri` from the folder it was indexed from, that folder's name first
    ("photos/birds/a.jpg" for /data/photos/birds/a.jpg); other uris as they are."""
    for root in roots:
        if uri.startswith(root.rstrip(os.sep) + os.sep):
            parent = os.path.dirname(root.rstrip(os.sep))
            return os.path.relpath(uri, parent) if parent else uri
    return uri


def search_vector(
    store: Store,
    query: np.ndarray,
    k: int,
    exclude: set[int] | None = None,
    where: Filter | None = None,
    text: bool = False,
) -> list[Hit]:
    """Top-k live images by cosine to one unit query vector (`text`: a text vector)."""
    return to_hits(store, nearest(store, query, k, exclude, where, text))


def group_by_occurrence(hits: list[Hit], k: int) -> list[Hit]:
    """One row per specimen (occurrence_id; images without one stand alone), best image
    first, with how many of the hits belong to it; re-ranked, at most k."""
    groups: dict[str, Hit] = {}
    counts: dict[str, int] = {}
    for hit in hits:
        key = str(hit.metadata.get("occurrence_id") or f"image:{hit.image_id}")
        counts[key] = counts.get(key, 0) + 1
        groups.setdefault(key, hit)
    out = []
    for rank, (key, hit) in enumerate(list(groups.items())[:k], start=1):
        metadata = {**hit.metadata, "images": counts[key]}
        out.append(Hit(rank, hit.score, hit.image_id, hit.uri, metadata, hit.why, hit.path,
                       hit.missing))  # fmt: skip
    return out
