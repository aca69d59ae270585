"""Near-duplicate groups: identical bytes (sha256) first, then vectors closer than a threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bioindex.errors import BioindexError
from bioindex.search.query import display_path, source_roots
from bioindex.store import Store


@dataclass
class DuplicateMember:
    group: int
    image_id: int
    uri: str
    kind: str  # "anchor" (the group's first image), "exact" (its bytes) or "near" (close vector)
    score: float | None  # cosine to the anchor; None for the anchor itself
    path: str | None = None  # the uri relative to the folder it was indexed from

    def to_dict(self) -> dict:
        score = None if self.score is None else round(self.score, 6)
        return {"group": self.group, "image_id": self.image_id, "kind": self.kind,
                "score": score, "path": self.path or self.uri, "uri": self.uri}  # fmt: skip


def find_duplicates(
    store: Store, threshold: float = 0.95, batch: int = 4096
) -> list[DuplicateMember]:
    """Groups of duplicates, each a set around an anchor: the anchor (the lowest image_id not
    yet in a group), the images with its exact bytes (score 1.0), and the images whose
    cosine to the anchor is at least `threshold`. Groups never chain: a member is always
    within the threshold of its own anchor, not merely of another member."""
    if not 0.0 < threshold <= 1.0:
        raise BioindexError(f"threshold must be in (0, 1], got {threshold}")
    twins: dict[int, list[int]] = {}
    for _, ids in store.catalog.same_bytes():
        for image_id in ids:
            twins[image_id] = [i for i in ids if i != image_id]
    # float16 storage can put a vector a hair below 1.0 from itself; the candidates are
    # then scored exactly against their anchor.
    radius = threshold - 1e-3
    close: dict[int, set[int]] = {}
    for ids, vectors in store.iter_live_vectors(batch):
        for image_id, found in zip(ids, store.range_search(vectors, radius)):
            others = {int(o) for o in found if o != image_id}
            if others:
                close[int(image_id)] = others
    candidates = sorted(set(twins) | set(close))
    if not candidates:
        return []
    vectors = dict(zip(candidates, _unit_rows(store.vectors(candidates))))
    grouped: set[int] = set()
    groups: list[list[tuple[int, str, float | None]]] = []
    for anchor in candidates:
        if anchor in grouped:
            continue
        members = [(i, "exact", 1.0) for i in twins.get(anchor, []) if i not in grouped]
        exact = {i for i, _, _ in members}
        for other in sorted(close.get(anchor, set()) - exact - grouped):
            score = min(float(vectors[anchor] @ vectors[other]), 1.0)
            if score >= threshold:
                members.append((other, "near", score))
        if members:
            grouped.update([anchor, *(i for i, _, _ in members)])
            members.sort(key=lambda m: (m[1] != "exact", -(m[2] or 0.0), m[0]))
            groups.append([(anchor, "anchor", None), *members])
    rows = store.rows([i for group in groups for i, _, _ in group])
    roots = source_roots(store.runs())
    return [DuplicateMember(number, image_id, rows[image_id]["uri"], kind, score,
                            display_path(rows[image_id]["uri"], roots))
            for number, group in enumerate(groups, start=1)
            for image_id, kind, score in group]  # fmt: skip


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
