"""An IVF's nearest lists, found faster than by comparing a query with every centroid.

A 1M x 512 IVF with 4,096 lists and an HNSW graph over its centroids finds a wide search's
lists (nprobe 144) by comparing the query with every centroid (faiss_index.exact_lists):
4,096 inner products of 512 numbers, 0.2 ms of a ~1.1 ms search on this project's machine.
Through this module whole searches took 5-12% less, the two taking turns on the same
index (benchmarks/ivf_lists.py; 20-35% in a five-way /tmp comparison). Here
the centroids are also coded 4 bits per pair of dimensions (a fast-scan PQ, a 16-point grid
at each pair's quantiles: no k-means to train, 50-70 ms to build at 4,096 x 512) and the
best LIST_DEPTH times as many as wanted are scored again exactly (IndexRefine).

The lists are the nearest ones for all but a few in 10,000 at nprobe 64-144 (k-means
centroids of the five distributions of benchmarks/search.py), and a 1M store's answers were
those of the exact lists for every one of 2,000 queries. A list that is missed is one of
the last few asked for. Batches go the same way (as fast), so a setting's tuned recall is
measured on the lists its single queries search.

Built once per quantizer, on its first search, and kept while it lives.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import numpy as np

# Candidates scored exactly per list wanted, and at least LIST_SLACK more. On k-means
# centroids of benchmarks/search.py's five distributions, the share of the nearest lists
# found at nprobe 24 / 64 / 144: depth 2.5 98.3-99.7% / 99.7-99.97% / 99.97-100%; depth 4
# 99.7-99.96% / 99.99-100% / 100%. On a 1M store's own centroids, at 2 one list in 4,000
# was missed (the 144th and 145th swapped) and at 2.5 none of 144,000.
LIST_DEPTH = 2.5
LIST_SLACK = 96
# Finders kept. `auto`'s choice times two sample indexes of each of its IVF candidates
# query by query in turn (six): with four kept, every search rebuilt one, and a 1M store's
# predicted p50 read 436 ms for a search of 0.9.
KEPT = 16
GRID = (0.125, 0.375, 0.625, 0.875)  # each dimension's quantiles: 4 x 4 points per pair

_kept: collections.OrderedDict[int, tuple[tuple, Any]] = collections.OrderedDict()
_lock = threading.Lock()
_depths: dict[float, Any] = {}  # k_factor: its search parameters, shared (FAISS reads them)


def nearest_lists(storage: Any, queries: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroid scores, list numbers) [queries, nprobe] of the nearest lists by inner
    product, best first: as `storage.search` (an IndexFlat of the centroids) gives them."""
    finder = _finder(storage)
    if finder is None:
        return storage.search(queries, nprobe)
    import faiss

    depth = max(LIST_DEPTH, (nprobe + LIST_SLACK) / nprobe)
    params = _depths.get(depth)
    if params is None:  # made once: one made per search took 0.07 ms of a 1.1 ms search
        params = _depths.setdefault(depth, faiss.IndexRefineSearchParameters(k_factor=depth))
    return finder.search(queries, nprobe, params=params)


def build(storage: Any) -> Any | None:
    """The finder for an IndexFlat of centroids, or None where its dimension cannot be cut
    into an even number of pairs (fast-scan PQ codes come in pairs of sub-vectors)."""
    import faiss

    d, n = int(storage.d), int(storage.ntotal)
    if d % 4 or n < 2 * len(GRID) ** 2:
        return None
    centroids = np.ascontiguousarray(_centroids(storage), dtype=np.float32)
    pairs = centroids.reshape(n, d // 2, 2)
    # Quantiles from at most 1,024 centroids: np.quantile over 4,096 took 77 ms, and a
    # grid a few rows coarser is scored again exactly anyway.
    sample = pairs[:: max(1, n // 1024)]
    levels = np.quantile(sample, GRID, axis=0)  # [4, pairs, 2]
    first, second = np.broadcast_arrays(levels[:, None, :, 0], levels[None, :, :, 1])
    codebook = np.stack([first, second], axis=-1).reshape(len(GRID) ** 2, d // 2, 2)
    coded = faiss.IndexPQFastScan(d, d // 2, 4, storage.metric_type)
    layout = np.ascontiguousarray(codebook.transpose(1, 0, 2), dtype=np.float32)  # M, ksub, 2
    faiss.copy_array_to_vector(layout.ravel(), coded.pq.centroids)
    coded.is_trained = True
    coded.add(centroids)
    # Re-scored against the storage itself, not a copy (as fast; a 10M store's 65,536 x 768
    # centroids are 200 MB): safe, since a finder is only looked up for a live storage at
    # the address it was built for (`_finder`).
    finder = faiss.IndexRefine(coded, storage)
    finder.referenced_objects = [coded]  # the refine index does not own its base
    return finder


def _finder(storage: Any) -> Any | None:
    """The kept finder of this centroid storage, built on first use. Kept by the storage's
    address (FAISS objects take no Python attributes) with what it held then, so one freed
    and another made at the same address is not mistaken for it."""
    key, mark = int(storage.this), _mark(storage)
    with _lock:
        found = _kept.get(key)
        if found is not None and found[0] == mark:
            _kept.move_to_end(key)
            return found[1]
        finder = build(storage)
        _kept[key] = (mark, finder)
        while len(_kept) > KEPT:
            _kept.popitem(last=False)
        return finder


def _centroids(storage: Any) -> np.ndarray:
    import faiss

    n, d = int(storage.ntotal), int(storage.d)
    return faiss.rev_swig_ptr(storage.get_xb(), n * d).reshape(n, d)


def _mark(storage: Any) -> tuple:
    """What tells one storage from another at the same address: its size, and its first,
    middle and last centroids."""
    n = int(storage.ntotal)
    if not n:
        return (0,)
    rows = _centroids(storage)[[0, n // 2, n - 1]]
    return (n, int(storage.d), rows.tobytes())
