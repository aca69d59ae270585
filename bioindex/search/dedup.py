"""Near-duplicate groups: identical bytes (sha256) first, then vectors closer than a threshold."""

from __future__ import annotations

from dataclasses import dataclass

from bioindex.errors import BioindexError
from bioindex.store import Store


@dataclass
class DuplicateMember:
    group: int
    image_id: int
    uri: str
    kind: str  # "exact": same bytes as the group's first image; "near": similar vectors
    score: float  # cosine to the group's first image

    def to_dict(self) -> dict:
        return {"group": self.group, "image_id": self.image_id, "kind": self.kind,
                "score": round(self.score, 6), "uri": self.uri}  # fmt: skip


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_duplicates(
    store: Store, threshold: float = 0.95, batch: int = 4096
) -> list[DuplicateMember]:
    if not 0.0 < threshold <= 1.0:
        raise BioindexError(f"threshold must be in (0, 1], got {threshold}")
    groups = _UnionFind()
    sha_of: dict[int, str] = {}
    for sha, ids in store.catalog.same_bytes():
        for image_id in ids:
            sha_of[image_id] = sha
            groups.union(ids[0], image_id)
    # float16 storage can put a vector a hair below 1.0 from itself; the radius is inclusive.
    radius = threshold - 1e-4
    for ids, vectors in store.iter_live_vectors(batch):
        for image_id, found in zip(ids, store.range_search(vectors, radius)):
            for other in found:
                if other != image_id:
                    groups.union(int(image_id), int(other))
    members: dict[int, list[int]] = {}
    for image_id in list(groups.parent):
        members.setdefault(groups.find(image_id), []).append(image_id)
    clusters = sorted((sorted(m) for m in members.values() if len(m) > 1), key=lambda m: m[0])
    if not clusters:
        return []
    all_ids = [i for m in clusters for i in m]
    rows = store.rows(all_ids)
    vectors = dict(zip(all_ids, store.vectors(all_ids)))
    out = []
    for number, cluster in enumerate(clusters, start=1):
        first = cluster[0]
        for image_id in cluster:
            same_bytes = sha_of.get(image_id) is not None and sha_of.get(image_id) == sha_of.get(
                first
            )
            score = float(vectors[first] @ vectors[image_id])
            out.append(
                DuplicateMember(
                    number,
                    image_id,
                    rows[image_id]["uri"],
                    "exact" if same_bytes else "near",
                    min(score, 1.0),
                )
            )
    return out
