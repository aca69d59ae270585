"""Near-duplicate groups: identical bytes (sha256) first, then vectors closer than a threshold."""

from __future__ import annotations

from collections.abc import Callable, Set
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

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


# Neighbour ids one range search may return: a camera trap's empty frames can all be
# within the threshold of each other, hundreds of thousands per query, and holding every
# image's list at once took 16 GB on a 1M store of such groups.
RESULTS_PER_SEARCH = 4_000_000
FIRST_SEARCH = 64  # images in the first range search, before their lists' length is known
SCORE_CHUNK = 16384  # vectors read at once to score against an anchor (32 MB at 512-d)
PREFETCH = 65536  # a range search's candidates read together, at most
# How far below the threshold a PQ-coded index (4-bit fast-scan codes) is searched: on the
# 200k spread store 0.02 found 5.2% more images in groups for 18% more time, 0.05 only
# 0.1% more for 90% more (benchmarks/dedup.py). Codes trained on few or structureless
# vectors are further off (6,000 clustered vectors: 222 of 300 pairs at 0.96 found, 124
# at 1e-3, 269 at 0.05).
CODE_MARGIN = 0.02
# An approximate index's range search stops where its search does (an HNSW graph at
# efSearch 48 returned at most ~1,700 of a camera trap's 7,500 empty frames of one
# background): an anchor with this many members is a crowd, whose members are found by
# scanning the store. Each crowd takes this many images out of the search, so at most
# N / CROWD scans; at 16, the benchmark's spread store (groups of up to ~160) scanned
# hundreds of times, 7x the time (benchmarks/dedup.py).
CROWD = 256
# A graph (HNSW) links few of a group of near-copies to each other, and an anchor's search
# misses some of its group: on 110 groups of 20-250 near-copies among 50k vectors, 8% of the
# members at the tuned efSearch 24, splitting 90 of the groups. A group this big on a graph
# is widened by searching from its members too: from the WIDEN_FROM farthest from the
# anchor, then from the farthest of those that search found, until it finds no more. On
# those 110 groups, searching from 4 farthest members found every member; from 2, all but
# 7 of 16,755; from every member (10x the searches), no more than from 4.
GRAPH_WIDEN, WIDEN_FROM = 8, 8


def find_duplicates(
    store: Store, threshold: float = 0.95, batch: int = 4096
) -> list[DuplicateMember]:
    """Groups of duplicates, each a set around an anchor: the anchor (the first image, in
    the store's order, not yet in a group), the images with its exact bytes (score 1.0),
    and the images whose cosine to the anchor is at least `threshold`. Groups never chain:
    a member is always within the threshold of its own anchor, not merely of another
    member. Images already grouped are not searched again, so memory follows the groups'
    size, not the number of close pairs."""
    if not 0.0 < threshold <= 1.0:
        raise BioindexError(f"threshold must be in (0, 1], got {threshold}")
    twins: dict[int, tuple[int, ...]] = {}
    for _, ids in store.catalog.same_bytes():
        same = tuple(int(i) for i in ids)
        twins.update(dict.fromkeys(same, same))
    # Candidates are gathered a little below the threshold and scored exactly against
    # their anchor: float16 storage puts a vector a hair below 1.0 from itself, and PQ
    # codes score pairs a few hundredths off (CODE_MARGIN).
    store.index()  # loaded (or built) first: its spec is then the one searched
    radius = threshold - (CODE_MARGIN if store.index_spec.pq_m else 1e-3)
    exhaustive = store.index_spec.kind == "flat"  # its range search misses no one
    graph = store.index_spec.kind == "hnsw"
    group_of: dict[int, int] = {}  # image_id: its group's index in groups
    grouped = group_of.keys()
    groups: list[list[tuple[int, str, float | None]]] = []
    anchors: list[np.ndarray] = []  # on a graph: each group's anchor vector, as stored
    size = FIRST_SEARCH  # images a range search takes: grows while their lists stay short
    with tqdm(total=store.live_count(), unit="img", desc="dedup", disable=None,
              leave=False) as bar:  # fmt: skip
        for ids, vectors in store.iter_live_vectors(batch):
            order = np.argsort(ids, kind="stable")
            ids, vectors = ids[order], vectors[order]
            start = 0
            while start < len(ids):
                end = min(start + size, len(ids))
                rows = [r for r in range(start, end) if int(ids[r]) not in grouped]
                found = store.range_search(vectors[rows], radius) if rows else []
                read = _reader(store, found, ids[rows])
                for row, neighbours in zip(rows, found):
                    anchor = int(ids[row])
                    if anchor in grouped or (_alone(neighbours, anchor) and anchor not in twins):
                        continue  # taken by an earlier anchor, or near nothing
                    if graph:
                        joined = _earlier_group(vectors[row], neighbours, group_of, anchors,
                                                threshold)  # fmt: skip
                        if joined is not None:  # an earlier anchor's search missed it
                            group_of[anchor] = joined[0]
                            groups[joined[0]].append((anchor, "near", joined[1]))
                            continue
                    members = _members(read, anchor, vectors[row], neighbours,
                                       twins.get(anchor, ()), grouped, threshold)  # fmt: skip
                    if not exhaustive and len(members) >= CROWD:
                        members = _crowd(store, anchor, vectors[row], members, grouped,
                                         threshold)  # fmt: skip
                    elif graph and len(members) >= GRAPH_WIDEN:
                        members = _widened(store, read, anchor, vectors[row], members,
                                           grouped, threshold, radius)  # fmt: skip
                    if members:
                        group_of.update(dict.fromkeys([anchor, *(i for i, _, _ in members)],
                                                      len(groups)))  # fmt: skip
                        groups.append([(anchor, "anchor", None), *members])
                        if graph:  # float16, as the store holds it: no precision is lost
                            anchors.append(vectors[row].astype(np.float16))
                returned = sum(len(f) for f in found)
                size = max(1, min(batch, RESULTS_PER_SEARCH * max(len(rows), 1)
                                  // max(returned, 1)))  # fmt: skip
                bar.update(end - start)
                start = end
    groups = [[group[0], *sorted(group[1:], key=_member_order)] for group in groups]
    rows_of = store.rows([i for group in groups for i, _, _ in group])
    roots = source_roots(store.runs())
    return [DuplicateMember(number, image_id, rows_of[image_id]["uri"], kind, score,
                            display_path(rows_of[image_id]["uri"], roots))
            for number, group in enumerate(groups, start=1)
            for image_id, kind, score in group]  # fmt: skip


def _alone(neighbours: np.ndarray, image_id: int) -> bool:
    # An approximate index can miss an image's own vector: one neighbour may be another.
    return not len(neighbours) or (len(neighbours) == 1 and int(neighbours[0]) == image_id)


def _earlier_group(vector: np.ndarray, neighbours: np.ndarray, group_of: dict[int, int],
                   anchors: list[np.ndarray], threshold: float,
                   ) -> tuple[int, float] | None:  # fmt: skip
    """The first group, among those of an image's grouped neighbours, whose anchor is within
    `threshold` of it (that group's index, and the image's cosine to its anchor): the group
    an exact search would have put it in. An approximate index's search from the anchor
    can miss an image whose own search finds the group: on a graph of 200k vectors, 30% of
    them in sequences of 20-250 near-copies, 17,000 such images were left in no group."""
    numbers = sorted({group_of[int(o)] for o in neighbours if int(o) in group_of})
    if not numbers:
        return None
    near = np.stack([anchors[number] for number in numbers]).astype(np.float32)
    scores = _unit_rows(near) @ _unit_rows(np.asarray(vector, dtype=np.float32)[None])[0]
    for number, score in zip(numbers, scores):
        if score >= threshold:
            return number, min(float(score), 1.0)
    return None


def _reader(store: Store, found: list[np.ndarray], queries: np.ndarray,
            ) -> Callable[[list[int]], np.ndarray]:  # fmt: skip
    """store.indexed_vectors for one range search's candidates: read together when few
    enough (a read per anchor was 4x the time on a store of bursts)."""
    lists = [f for f, q in zip(found, queries) if not _alone(f, int(q))]
    wanted = np.unique(np.concatenate(lists)) if lists else np.empty(0, dtype=np.int64)
    if not len(wanted) or len(wanted) > PREFETCH:
        return store.indexed_vectors
    held = store.indexed_vectors(wanted)

    def read(image_ids: list[int]) -> np.ndarray:
        at = np.minimum(np.searchsorted(wanted, image_ids), len(wanted) - 1)
        if np.array_equal(wanted[at], image_ids):
            return held[at]
        return store.indexed_vectors(image_ids)

    return read


def _members(read: Callable[[list[int]], np.ndarray], anchor: int, vector: np.ndarray,
             neighbours: np.ndarray,
             twins: tuple[int, ...], grouped: Set[int], threshold: float,
             ) -> list[tuple[int, str, float | None]]:  # fmt: skip
    """The ungrouped images of an anchor's group: its exact copies, then the neighbours
    whose exact cosine to it reaches `threshold`, nearest first."""
    members: list[tuple[int, str, float | None]] = [
        (i, "exact", 1.0) for i in twins if i != anchor and i not in grouped]
    exact = {anchor, *(i for i, _, _ in members)}
    others = sorted({int(o) for o in neighbours if o not in grouped and o not in exact})
    unit = _unit_rows(np.asarray(vector, dtype=np.float32)[None])[0]
    for start in range(0, len(others), SCORE_CHUNK):
        chunk = others[start : start + SCORE_CHUNK]
        scores = _unit_rows(read(chunk)) @ unit
        members += [(i, "near", min(float(score), 1.0))
                    for i, score in zip(chunk, scores) if score >= threshold]  # fmt: skip
    return sorted(members, key=_member_order)


def _crowd(store: Store, anchor: int, vector: np.ndarray,
           members: list[tuple[int, str, float | None]], grouped: Set[int], threshold: float,
           ) -> list[tuple[int, str, float | None]]:  # fmt: skip
    """The group of a crowd's anchor (CROWD): its exact copies and every ungrouped image
    within `threshold` of it, by an exact scan of the store. An approximate index's search
    finds only part of a crowd, and an HNSW graph of thousands of near-copies leaves some
    unreachable (17% of a camera trap's empty frames were in no group at all)."""
    unit = _unit_rows(np.asarray(vector, dtype=np.float32)[None])[0]
    exact = [m for m in members if m[1] == "exact"]
    taken = {anchor, *(i for i, _, _ in exact)}
    near: list[tuple[int, str, float | None]] = []
    for ids, vectors in store.iter_live_vectors(SCORE_CHUNK):
        scores = _unit_rows(vectors) @ unit
        near += [(int(ids[i]), "near", min(float(scores[i]), 1.0))
                 for i in np.flatnonzero(scores >= threshold)
                 if int(ids[i]) not in taken and int(ids[i]) not in grouped]  # fmt: skip
    return sorted(exact + near, key=_member_order)


def _widened(store: Store, read: Callable[[list[int]], np.ndarray], anchor: int,
             vector: np.ndarray,
             members: list[tuple[int, str, float | None]], grouped: Set[int],
             threshold: float, radius: float,
             ) -> list[tuple[int, str, float | None]]:  # fmt: skip
    """An anchor's group on a graph index, with the images found by searching from its
    WIDEN_FROM farthest members (and so on) that are within `threshold` of the anchor
    itself: the group the anchor's own search would give if the graph missed no one."""
    members = list(members)
    frontier = members
    seen = {anchor, *(i for i, _, _ in members)}
    while frontier:
        farthest = sorted(frontier, key=lambda m: (m[2] or 0.0, m[0]))[:WIDEN_FROM]
        found = store.range_search(read([i for i, _, _ in farthest]), radius)
        fresh = np.fromiter({int(o) for f in found for o in f} - seen - grouped, np.int64)
        seen.update(fresh.tolist())
        frontier = _members(read, anchor, vector, fresh, (), grouped, threshold)
        members += frontier
    return sorted(members, key=_member_order)


def _member_order(member: tuple[int, str, float | None]) -> tuple[bool, float, int]:
    """Exact copies first, then the nearest; ties by image_id."""
    image_id, kind, score = member
    return kind != "exact", -(score or 0.0), image_id


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
