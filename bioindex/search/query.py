"""Nearest-neighbour queries over a store, returned as ranked catalog rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bioindex.errors import BioindexError
from bioindex.store import Store

# Catalog columns worth showing next to a hit, in this order, when present.
SUMMARY_COLUMNS = (
    "scientific_name", "vernacular_name", "catalog_number", "institution_code",
    "occurrence_id", "country_code", "event_date", "license", "rights_holder",
)  # fmt: skip


@dataclass
class Hit:
    rank: int
    score: float
    image_id: int
    uri: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "score": round(self.score, 6),
            "image_id": self.image_id,
            "uri": self.uri,
            **self.metadata,
        }


def check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise BioindexError(f"k must be a whole number of at least 1, got {k!r}")
    return k


def search_vector(
    store: Store, query: np.ndarray, k: int, exclude: set[int] | None = None
) -> list[Hit]:
    """Top-k live images by cosine to one unit query vector."""
    check_k(k)
    query = np.asarray(query, dtype=np.float32).reshape(1, -1)
    exclude = exclude or set()
    scores, ids = store.search(query, k + len(exclude))
    pairs = [
        (float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0 and int(i) not in exclude
    ][:k]
    rows = store.rows([i for _, i in pairs])
    hits = []
    for rank, (score, image_id) in enumerate(pairs, start=1):
        row = rows.get(image_id)
        if row is None:  # the index and catalog disagree: never show a ghost
            continue
        metadata = {c: row[c] for c in SUMMARY_COLUMNS if c in row}
        hits.append(Hit(rank, score, image_id, row["uri"], metadata))
    return hits
