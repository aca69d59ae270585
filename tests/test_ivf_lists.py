"""An IVF's nearest lists through the coded centroids (bioindex.ivf_lists) are the lists
comparing with every centroid finds, all but a few at the edge."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from bioindex import faiss_index, ivf_lists
from bioindex.synthetic import ClusteredVectors


@pytest.fixture(scope="module")
def centroids() -> tuple[faiss.IndexFlatIP, np.ndarray]:
    """k-means centroids of embedding-like vectors, and new queries from the same source."""
    source = ClusteredVectors(128, centres=400, seed=4)
    kmeans = faiss.Kmeans(128, 512, niter=8, spherical=True, seed=1)
    kmeans.train(source.sample(512 * 40))
    storage = faiss.IndexFlatIP(128)
    storage.add(kmeans.centroids)
    return storage, source.sample(300, part=2)


@pytest.mark.parametrize("nprobe", [16, 48, 128])
def test_the_coded_centroids_find_the_nearest_lists(centroids, nprobe: int) -> None:
    storage, queries = centroids
    want_scores, want = storage.search(queries, nprobe)
    scores, lists = ivf_lists.nearest_lists(storage, queries, nprobe)
    found = np.mean([len(np.intersect1d(a, b)) for a, b in zip(lists, want)]) / nprobe
    assert found >= 0.995
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    same = lists == want  # where the list is the same, its score is the exact one
    np.testing.assert_allclose(scores[same], want_scores[same], atol=1e-5)
    # One query at a time finds what the batch found: tuning measures batches.
    for row in range(0, len(queries), 50):
        assert np.array_equal(ivf_lists.nearest_lists(storage, queries[row : row + 1], nprobe)[1],
                              lists[row : row + 1])  # fmt: skip


def test_an_ivf_search_through_the_coded_centroids_keeps_its_recall() -> None:
    source = ClusteredVectors(64, centres=300, seed=9)
    vectors = source.sample(30_000)
    queries = source.sample(200, part=1)
    spec = faiss_index.IndexSpec(kind="ivf", dim=64, nlist=512, quantizer="hnsw")
    spec.search = {"nprobe": 32}  # the graph's efSearch x M reaches every centroid
    index = faiss_index.build(spec, vectors, [(np.arange(len(vectors)), vectors)])
    assert faiss_index.exact_lists(spec, spec.search)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    _, found = faiss_index.search(index, spec, queries, 10)
    keep = ivf_lists._finder
    ivf_lists._finder = lambda storage: None  # every centroid compared, as before
    try:
        _, exact = faiss_index.search(index, spec, queries, 10)
    finally:
        ivf_lists._finder = keep

    def recall(ids: np.ndarray) -> float:
        return float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(ids, truth)]) / 10)

    assert recall(found) >= recall(exact) - 0.005
    assert np.mean([np.array_equal(a, b) for a, b in zip(found, exact)]) >= 0.97


def test_each_storage_gets_its_own_finder_and_odd_shapes_compare_with_every_centroid(
    centroids,
) -> None:
    first, queries = centroids
    second = faiss.IndexFlatIP(128)
    second.add(np.ascontiguousarray(first.reconstruct_n(0, 512)[::-1]))  # the same, reordered
    for storage in (first, second, first):
        assert (np.mean(ivf_lists.nearest_lists(storage, queries[:20], 16)[1]
                        == storage.search(queries[:20], 16)[1]) >= 0.99)  # fmt: skip
    odd = faiss.IndexFlatIP(30)  # 15 pairs: fast-scan codes come in pairs of them
    odd.add(np.ascontiguousarray(first.reconstruct_n(0, 512)[:, :30]))
    assert ivf_lists.build(odd) is None
    query = np.ascontiguousarray(queries[:1, :30])
    assert np.array_equal(ivf_lists.nearest_lists(odd, query, 20)[1], odd.search(query, 20)[1])


def test_indexes_searched_in_turn_keep_their_finders(centroids, monkeypatch) -> None:
    """`auto` times six sample indexes query by query in turn; with four finders kept,
    each search built its index's finder again (a 1M store's predicted p50: 436 ms)."""
    storage, queries = centroids
    storages = []
    for shift in range(8):
        other = faiss.IndexFlatIP(128)
        other.add(np.ascontiguousarray(np.roll(storage.reconstruct_n(0, 512), shift, axis=0)))
        storages.append(other)
    built = []
    build = ivf_lists.build
    monkeypatch.setattr(ivf_lists, "build", lambda s: built.append(1) or build(s))
    for query in queries[:5]:
        for other in storages:
            ivf_lists.nearest_lists(other, query[None], 16)
    assert len(built) == len(storages)
