"""`auto` measures the candidate index kinds on the store's own vectors and keeps the
fastest that meets the recall target (#18)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bioindex.faiss_index import exact_neighbours
from bioindex.index_choice import CHOICE_TIE, Measured, Run, pick, predict_build_s
from bioindex.store import ImageRecord, Store
from bioindex.synthetic import ClusteredVectors

DIM = 32
N = 16_000
MODEL = {"name": "test", "source": "test", "weights_sha256": "3" * 64, "dim": DIM,
         "image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "preprocess": "eval"}  # fmt: skip
DISTRIBUTIONS = {
    # Tight, few clusters: the lists of an IVF hold whole neighbourhoods.
    "strongly clustered": ClusteredVectors(DIM, centres=40, spread=0.25, seed=11),
    # Loose, many clusters: neighbourhoods straddle lists; a graph walks across them.
    "weakly clustered": ClusteredVectors(DIM, centres=5000, spread=1.2, decay=0.3, seed=12),
}


def _store(path: Path, generator: ClusteredVectors) -> Path:
    vectors = generator.sample(N)
    with Store.create(path, MODEL) as store:
        for start in range(0, N, 8_000):
            store.commit([ImageRecord(f"/v/{i}.jpg", 1, 1.0, None, 8, 8, {})
                          for i in range(start, start + 8_000)],
                         vectors[start : start + 8_000])  # fmt: skip
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_auto_keeps_the_fastest_candidate_that_meets_the_target(tmp_path: Path,
                                                               name: str) -> None:  # fmt: skip
    generator = DISTRIBUTIONS[name]
    path = _store(tmp_path / "s", generator)
    with Store.open(path) as store:
        # Exact search would still be fast at this size; measuring is what is tested.
        spec = store.build_index("auto", target_recall=0.95, exact_up_to=0)
        candidates = spec.built["candidates"]
        print(name, [(c["name"], c["predicted_p50_ms"], c["met_target"]) for c in candidates])
        chosen = [c for c in candidates if c["chosen"]]
        assert len(chosen) == 1 and chosen[0]["kind"] == spec.kind
        eligible = [c for c in candidates if c["met_target"] and c["fits_memory"]]
        fastest = min(c["predicted_p50_ms"] for c in eligible)
        close = [c for c in eligible if c["predicted_p50_ms"] <= CHOICE_TIE * fastest]
        assert chosen[0] in close
        assert chosen[0]["predicted_bytes"] == min(c["predicted_bytes"] for c in close)
        assert {c["kind"] for c in candidates} >= {"ivf", "ivf-pq", "hnsw", "flat"}
        assert spec.built["met_target"]  # tuned at full size on held-out stored vectors
        queries = generator.sample(300, part=5)  # never stored, never tuned on
        truth = exact_neighbours(store.iter_live_vectors, queries, 10)
        _, found = store.search(queries, 10)
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
        assert recall >= 0.93, recall  # the target, less what 300 queries can vouch for
        said = store.info()["index_choice"]
        # Predictions, and said to be: extrapolated from a 40k sample, a 1M store's were off
        # up to 11x (benchmarks/search.py's prediction check), and info printed them bare.
        assert "chose " + chosen[0]["name"] in said and "predicted" in said


@pytest.mark.slow
def test_the_recall_a_build_reports_is_what_unseen_queries_get(tmp_path: Path) -> None:
    # Tuned on stored vectors still in the graph, this HNSW reported recall 0.978 and gave
    # queries it had never seen 0.964: a stored vector's node is linked to its neighbours.
    dim, n = 256, 30_000
    generator = ClusteredVectors(dim, centres=5000, spread=0.8, seed=7)
    model = {**MODEL, "dim": dim}
    with Store.create(tmp_path / "s", model) as store:
        store.commit([ImageRecord(f"/v/{i}.jpg", 1, 1.0, None, 8, 8, {}) for i in range(n)],
                     generator.sample(n))  # fmt: skip
        spec = store.build_index("hnsw", target_recall=0.95, rerank=False)
        assert store.index().ntotal == n  # the held-out tuning vectors were added back
        queries = generator.sample(1000, part=5)
        truth = exact_neighbours(store.iter_live_vectors, queries, 10)
        _, found = store.search(queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    print(spec.search, spec.built["recall_at_10"], recall)
    assert recall >= 0.95
    assert recall >= spec.built["recall_at_10"] - 0.006


def test_candidates_are_measured_with_the_quantizer_they_will_have() -> None:
    # A sample has fewer lists than the store will: found by comparing with every centroid,
    # that cost grew 4x between the two samples and the power law carried it to full size,
    # where the index finds its lists with a graph.
    import faiss

    from bioindex import faiss_index, index_choice

    generator = ClusteredVectors(256, centres=200, seed=5)
    vectors = generator.sample(3_200)
    queries, base = vectors[:200], vectors[200:]
    truth = exact_neighbours([(np.arange(len(base)), base)], queries, 10)
    for n, graph in ((1_000_000, True), (100_000, False)):  # 4096 / 1024 lists at full size
        option = index_choice.Option("ivf")
        full = option.spec(n, 256, faiss_index.DEFAULT_MEMORY)
        assert faiss_index.graph_quantizer(full) is graph
        spec = index_choice._measure(option, base, queries, truth, 0.9,
                                     faiss_index.DEFAULT_MEMORY, None, full).spec
        assert faiss_index.graph_quantizer(spec) is graph
        index = faiss_index.new_index(spec)
        assert isinstance(faiss.downcast_index(index.quantizer), faiss.IndexHNSW) is graph


def _candidate(name: str, p50: float, megabytes: int, build_s: float = 60.0) -> Measured:
    return Measured(name=name, kind=name, nlist=4096, pq_m=0, search={}, recall_at_10=0.96,
                    recall_lower_bound=0.95, met_target=True, sample_p50_ms=p50,
                    predicted_p50_ms=p50, predicted_p99_ms=p50, predicted_bytes=megabytes << 20,
                    predicted_build_s=build_s, fits_memory=True)  # fmt: skip


def test_twice_the_lists_as_fast_on_the_samples_is_the_slower_build() -> None:
    # On a 40k sample twice the lists is capped to the default count's lists (39 points a
    # list): the same index, timed again. The fifth distribution's 1M store chose it on
    # 0.546 against the default's 0.766 ms predicted, trained for 284 s where IVF-PQ builds
    # in 105, and searched at 4.25 ms (IVF-PQ: 1.09).
    default = _candidate("ivf", 0.60, 503, build_s=87.1)
    twice = _candidate("ivf (2x lists)", 0.55, 503, build_s=293.7)
    assert pick([default, twice]) is default
    assert pick([_candidate("ivf", 2.0, 503, build_s=87.1), twice]) is twice  # clearly faster


def test_candidates_predicted_alike_are_told_apart_by_their_size() -> None:
    # A 1M x 512 store's IVF-SQ8 (505 MB) was chosen over IVF-PQ (147 MB) on predictions of
    # 9.9 and 10.4 ms, where the two searched at 0.70 and 0.50 ms.
    sq8, pq, graph = _candidate("ivf", 9.93, 505), _candidate("ivf-pq", 10.39, 147), \
        _candidate("hnsw", 4.0, 900)
    assert pick([sq8, pq]) is pq
    assert pick([sq8, pq, graph]) is graph  # clearly faster: size does not matter
    assert pick([_candidate("ivf", 5.0, 505), pq]).name == "ivf"


def _run(spec_kind: str, n: int, nlist: int, train_s: float, add_s: float) -> Run:
    from bioindex.faiss_index import IndexSpec

    return Run(tuning=None, spec=IndexSpec(kind=spec_kind, dim=512, nlist=nlist), n=n,
               train_s=train_s, add_s=add_s)


def test_build_time_is_predicted_from_what_training_and_adding_cost() -> None:
    """Samples whose times follow a known cost (k-means: points × lists; adding: per vector,
    a comparison with every list plus encoding) predict the full build exactly. The power
    law through the samples' total times predicted 5 s for a 1M × 512 IVF-PQ that built in
    101 s."""
    from bioindex.faiss_index import IndexSpec, training_size

    def train_s(spec: IndexSpec, n: int) -> float:
        return 4e-9 * training_size(spec, n) * spec.nlist

    def add_s(n: int, nlist: int) -> float:
        return n * (2e-8 * nlist + 5e-6)

    runs = []
    for n, nlist in ((10_000, 128), (40_000, 256)):
        spec = IndexSpec(kind="ivf-pq", dim=512, nlist=nlist)
        runs.append(_run("ivf-pq", n, nlist, train_s(spec, n), add_s(n, nlist)))
    full = IndexSpec(kind="ivf-pq", dim=512, nlist=4096)
    expected = train_s(full, 1_000_000) + add_s(1_000_000, 4096)
    assert predict_build_s(*runs, full, 1_000_000) == pytest.approx(expected, rel=1e-6)
    # Flat storage copies each vector; a graph inserts each in about log n steps.
    flat = [_run("flat", n, 0, 0.0, 1e-6 * n) for n in (10_000, 40_000)]
    assert predict_build_s(*flat, IndexSpec(kind="flat", dim=512), 1_000_000) == \
        pytest.approx(1.0)
    graph = [_run("hnsw", n, 0, 0.0, 1e-5 * n * np.log(n)) for n in (10_000, 40_000)]
    assert predict_build_s(*graph, IndexSpec(kind="hnsw", dim=512), 1_000_000) == \
        pytest.approx(1e-5 * 1e6 * np.log(1e6))


def test_the_samples_are_timed_together_and_a_pause_is_not_a_querys_work(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Each candidate's samples were timed right after it was built, minutes apart from the
    others', and the power law carries a ratio of two timings 25x further: the same 1M
    build's predictions moved up to 9x between runs (twice the lists 0.55-4.9 ms) and a
    noisy one chose an index 3.9x slower. Now every sample index searches a query in turn
    before the next query, and a query's time is its fastest of ROUNDS: a pause of the
    machine (one made a p99 of 310 ms predicted for a 1M store that answered at 1.2 ms)
    is not a query's own work."""
    import time

    from bioindex import faiss_index, index_choice

    asked: list[tuple[str, int]] = []
    pauses = {("b", 3, 0), ("a", 7, 1), ("b", 7, 2)}  # (run, query, round)

    def search(index, spec, query, k, fetch=None, text=False):
        row = int(query[0, 0])
        done = sum(1 for a in asked if a == (index, row))
        asked.append((index, row))
        time.sleep(0.015 if (index, row, done) in pauses else 0.001)

    monkeypatch.setattr(faiss_index, "search", search)
    runs = [Run(None, None, 0, 0.0, 0.0, index="a"), Run(None, None, 0, 0.0, 0.0, index="b")]
    queries = np.arange(10, dtype=np.float32)[:, None]
    times = index_choice._timed_together(runs, queries, rounds=3)
    assert asked[:6] == [("a", 0), ("b", 0)] * 3 and asked[6:8] == [("a", 1), ("b", 1)]
    assert all(t.max() < 10 for t in times)  # no pause survives the fastest of three
    assert index_choice._tail(times[0]) < 10
