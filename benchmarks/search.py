"""Vector search at scale: bioindex's index choice against exact and HNSW baselines.

    python benchmarks/search.py                          # N = 100k and 1M, d = 512 and 768
    python benchmarks/search.py --sizes 1000000 --dims 512
    python benchmarks/search.py --large --dims 512       # adds N = 10M (bioindex only)
    python benchmarks/search.py --store my-store         # a store's own vectors
    python benchmarks/search.py --sizes 100000 --dims 512 --distributions default hard demo

Vectors come from bioindex.synthetic (anisotropic, clustered unit vectors; see its
docstring), stored float16 in a real bioindex store. --distributions picks which: `default`
(the generator's defaults), `hard` (5,000 centres, spread 0.8, seed 7: issue #18's harder
setting, median top-10 neighbour cosine 0.77 at 100k), `demo` (real embeddings: the demo
model's vectors of freshly drawn demo-world pictures, at its own dimension, 64) and `copies`
(default's vectors, each stored three times: a collection indexed with two backups of
itself), `bursts` (a camera trap's: each default vector as five noisy frames side by
side, cosine ~0.97 between frames; queries are frames of new events, and the
bioindex-tuned-on system tunes on 500 frames of other new events, `build-index --tune-on`)
and `cone` (default's vectors sharing one direction, as CLIP image embeddings do: unrelated
pictures at cosine ~0.5). `clustered:CENTRES:SPREAD[:DECAY]` is any other setting of the
generator (`hard` is clustered:5000:0.8 at seed 7).
Queries are 4000 held-out vectors from the same distribution (--queries; 1000 left a recall
near 0.95 uncertain by ±0.008 at 95%, and the table prints each figure's interval); the
truth is an exact top-10 over the stored (float16) vectors, where any copy tied with the
10th counts.
The demo case also asks text queries (the demo model's vectors of the 48 species' captions
at every rank, 208 texts): bioindex tunes its text setting on the everyday texts
`build-index` uses on a store without labels (bioindex.search.text_probes), never on these.
Each system runs in its own process, so peak RSS is its own: build time, index bytes, peak
RSS, recall@10, p50/p99 latency of one query at a time (300 queries), and QPS for all
queries in one batch. Systems:

- bioindex auto: `Store.build_index(kind="auto")`, tuned to recall 0.95, no re-ranking;
- bioindex auto + re-rank: the same, tuned to 0.99, re-ranking against the stored vectors;
- bioindex tuned-on (bursts only): the default, tuned on pictures like the queries;
- bioindex default (on request): what `bioindex build-index` does with no options — auto,
  tuned to 0.95, re-ranking on for approximate kinds;
- faiss Flat: exact IndexFlatIP over float32 vectors;
- numpy: brute-force matmul + argpartition over float32 vectors (what rclip does);
- usearch HNSW: float16 storage, connectivity 16, expansion_search tuned to recall 0.95.

Baselines need every vector in RAM as float32 and are skipped past 2M vectors.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SYSTEMS = ("bioindex-auto", "bioindex-rerank", "bioindex-default", "bioindex-tuned-on",
           "faiss-flat", "numpy", "usearch-hnsw")  # fmt: skip
DEFAULT_SYSTEMS = ("bioindex-auto", "bioindex-rerank", "faiss-flat", "numpy", "usearch-hnsw")
BASELINE_MAX = 2_000_000
QUERIES = 4000
LATENCY_QUERIES = 300
USEARCH_EF = (16, 24, 32, 64, 96, 128, 192, 256, 384, 512)
MODEL = {"name": "synthetic", "source": "benchmarks/search.py", "weights_sha256": "0" * 64,
         "image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "preprocess": "eval"}  # fmt: skip


# ---- the case: vectors in a store, held-out queries, exact truth --------------------------


DISTRIBUTIONS = ("default", "hard", "demo", "copies", "bursts", "cone")
TUNE_ON = 500  # bursts: new-event frames made for bioindex-tuned-on, apart from the queries


def prepare(workdir: Path, n: int, dim: int, seed: int, distribution: str = "default",
            queries: int = QUERIES) -> Path:  # fmt: skip
    """A store of n vectors of `distribution` plus queries.npy and truth.npy next to it;
    the store is reused when its stamp matches (building 10M takes a while), the queries
    when their number does too."""
    from bioindex.store import ImageRecord, Store

    source = vector_source(distribution, dim, seed)
    dim = source.dim
    case = workdir / f"case-{distribution}-{n}-{dim}-s{seed}"
    stamp = {"n": n, "dim": dim, "seed": seed, "version": 2, "distribution": distribution}
    made = json.loads((case / "stamp.json").read_text()) if (case / "stamp.json").is_file() else {}
    if {k: v for k, v in made.items() if k != "queries"} == stamp:
        print(f"reusing {case}", flush=True)
        if made.get("queries") != queries:
            make_queries(case, source, queries)
            (case / "stamp.json").write_text(json.dumps({**stamp, "queries": queries}))
        return case
    import shutil

    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    started = time.perf_counter()
    with Store.create(case / "store", {**MODEL, "dim": dim}) as store:
        done = 0
        for batch in source.batches(n, part=0, batch=131072):
            records = [ImageRecord(f"v{done + i}", None, None, None, None, None, {})
                       for i in range(len(batch))]  # fmt: skip
            store.commit(records, batch)
            done += len(batch)
            print(f"\r  store {done:,}/{n:,}", end="", flush=True)
    print(f" ({time.perf_counter() - started:.0f} s)", flush=True)
    if distribution == "bursts":
        np.save(case / "tune_on.npy", source.sample(TUNE_ON, part=2).astype(np.float32))
    make_queries(case, source, queries)
    (case / "stamp.json").write_text(json.dumps({**stamp, "queries": queries}))
    return case


def make_queries(case: Path, source, n: int) -> None:
    """n queries of the case's distribution that the store never saw, and their truth."""
    queries = source.sample(n, part=1).astype(np.float32)
    np.save(case / "queries.npy", queries)
    np.save(case / "truth.npy", exact_truth(case / "store", queries))


def prepare_texts(case: Path) -> None:
    """The demo case's text probes (what build-index tunes on), text queries (captions of
    the demo world's taxa, never tuned on) and their exact truth; made once per case."""
    if (case / "text_truth.npy").is_file():
        return
    from bioindex.demo.tree import SPECIES
    from bioindex.models import load_model
    from bioindex.search.text_probes import probe_texts

    model = load_model("bioclip-demo", device="cpu")
    everyday = probe_texts([])
    held = [t for t in probe_texts([s.taxon for s in SPECIES]) if t not in everyday]
    np.save(case / "text_probes.npy", model.encode_texts(everyday).astype(np.float32))
    queries = model.encode_texts(held).astype(np.float32)
    np.save(case / "text_queries.npy", queries)
    np.save(case / "text_truth.npy", exact_truth(case / "store", queries))


def text_case(case: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not (case / "text_truth.npy").is_file():
        return None
    return np.load(case / "text_queries.npy"), np.load(case / "text_truth.npy")


def vector_source(distribution: str, dim: int, seed: int):
    from bioindex.synthetic import ClusteredVectors

    if distribution == "default":
        return ClusteredVectors(dim, seed=seed)
    if distribution == "hard":
        return ClusteredVectors(dim, centres=5000, spread=0.8, seed=7)
    if distribution == "demo":
        return DemoEmbeddings(seed)
    if distribution == "copies":
        return StoredThrice(ClusteredVectors(dim, seed=seed))
    if distribution == "bursts":
        return Bursts(ClusteredVectors(dim, seed=seed))
    if distribution == "cone":
        return InCone(ClusteredVectors(dim, seed=seed))
    if distribution.startswith("clustered:"):
        centres, spread, decay = clustered_setting(distribution)
        return ClusteredVectors(dim, centres=centres, spread=spread, decay=decay, seed=seed)
    raise ValueError(f"unknown distribution {distribution!r}")


def clustered_setting(distribution: str) -> tuple[int, float, float]:
    """(centres, spread, decay) of `clustered:CENTRES:SPREAD[:DECAY]`."""
    from bioindex.synthetic import DEFAULT_DECAY

    parts = distribution.split(":")[1:]
    usage = f"{distribution!r}: write clustered:CENTRES:SPREAD[:DECAY], e.g. clustered:5000:0.8"
    if len(parts) not in (2, 3):
        raise ValueError(usage)
    try:
        return (int(parts[0]), float(parts[1]),
                float(parts[2]) if len(parts) == 3 else DEFAULT_DECAY)  # fmt: skip
    except ValueError:
        raise ValueError(usage) from None


def distribution_name(value: str) -> str:
    """argparse's check of --distributions: a name, or a clustered: setting."""
    if value.startswith("clustered:"):
        try:
            clustered_setting(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    elif value not in DISTRIBUTIONS:
        raise argparse.ArgumentTypeError(
            f"{value!r}: choose from {', '.join(DISTRIBUTIONS)} or clustered:C:S[:D]")
    return value


class InCone:
    """The default distribution inside a narrow cone, as CLIP-style image embeddings are:
    every vector shares one direction (the mean of the image tower's outputs), so two
    unrelated pictures still have a cosine near 0.5 and neighbours differ in what is left.
    Each vector is the default's plus CONE times a fixed random unit vector, renormalised."""

    CONE = 1.0

    def __init__(self, source):
        self.source = source
        self.dim = source.dim
        shared = np.random.default_rng([source.seed, 7]).standard_normal(source.dim)
        self.shared = (shared / np.linalg.norm(shared)).astype(np.float32)

    def batches(self, n: int, part: int = 0, batch: int = 131072):
        for vectors in self.source.batches(n, part, batch):
            vectors = vectors + self.CONE * self.shared
            yield vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def sample(self, n: int, part: int = 0) -> np.ndarray:
        return np.concatenate(list(self.batches(n, part)))


class StoredThrice:
    """The default distribution with each stored vector there three times, in random order:
    a collection indexed together with two backup copies of itself. Queries are new
    vectors, copies of nothing."""

    def __init__(self, source):
        self.source = source
        self.dim = source.dim

    def batches(self, n: int, part: int = 0, batch: int = 131072):
        if part:
            yield from self.source.batches(n, part, batch)
            return
        vectors = np.repeat(self.source.sample(-(-n // 3)), 3, axis=0)[:n]
        vectors = vectors[np.random.default_rng(self.source.seed).permutation(n)]
        for start in range(0, n, batch):
            yield vectors[start : start + batch]

    def sample(self, n: int, part: int = 0) -> np.ndarray:
        return np.concatenate(list(self.batches(n, part)))


class Bursts:
    """A camera trap's bursts: each event five frames (the default distribution's vector
    plus noise of 0.15 its spread's shape, frame to frame cosine ~0.97), stored side by
    side. Every `part` is its own events: queries are frames of events never stored."""

    FRAMES, NOISE = 5, 0.15

    def __init__(self, source):
        self.source = source
        self.dim = source.dim

    def batches(self, n: int, part: int = 0, batch: int = 131072):
        events = self.source.batches(-(-n // self.FRAMES), part, batch // self.FRAMES)
        rng = np.random.default_rng([self.source.seed, part, 99])
        done = 0
        for centres in events:
            frames = np.repeat(centres, self.FRAMES, axis=0)[: n - done]
            noise = rng.standard_normal(frames.shape, dtype=np.float32) * self.source.scale
            frames = frames + self.NOISE * (noise @ self.source.rotation)
            done += len(frames)
            yield frames / np.linalg.norm(frames, axis=1, keepdims=True)

    def sample(self, n: int, part: int = 0) -> np.ndarray:
        return np.concatenate(list(self.batches(n, part)))


class DemoEmbeddings:
    """Real embeddings: the demo model's vectors of demo-world pictures drawn for the
    purpose (each `part` from its own seed, so queries are pictures the store never saw).
    Drawing and embedding run in one process per core, a chunk of DEMO_CHUNK pictures each
    from its own seed, so the vectors do not depend on how many processes there are."""

    def __init__(self, seed: int):
        from bioindex.models import load_model

        self.dim = load_model("bioclip-demo", device="cpu").identity.dim
        self.seed = seed

    def batches(self, n: int, part: int = 0, batch: int = 131072):
        import os
        from concurrent.futures import ProcessPoolExecutor

        chunks = [(self.seed, part, i, min(DEMO_CHUNK, n - i * DEMO_CHUNK))
                  for i in range(-(-n // DEMO_CHUNK))]  # fmt: skip
        per_batch = max(1, batch // DEMO_CHUNK)
        workers = min(os.cpu_count() or 1, len(chunks))
        with ProcessPoolExecutor(workers, initializer=_demo_worker_init) as pool:
            drawn = pool.map(_demo_chunk, chunks)
            pending: list[np.ndarray] = []
            for vectors in drawn:
                pending.append(vectors)
                if len(pending) == per_batch:
                    yield np.concatenate(pending)
                    pending = []
            if pending:
                yield np.concatenate(pending)

    def sample(self, n: int, part: int = 0) -> np.ndarray:
        return np.concatenate(list(self.batches(n, part)))


DEMO_CHUNK = 4096
_demo_model = None


def _demo_worker_init() -> None:
    import torch

    from bioindex.models import load_model

    global _demo_model
    torch.set_num_threads(1)  # one process per core
    _demo_model = load_model("bioclip-demo", device="cpu")


def _demo_chunk(chunk: tuple[int, int, int, int]) -> np.ndarray:
    from bioindex.demo.draw import draw_organism
    from bioindex.demo.tree import SPECIES

    seed, part, index, size = chunk
    rng = np.random.default_rng([seed, part, index])
    kinds = rng.integers(len(SPECIES), size=size)
    return np.concatenate([_demo_model.embed_pil([draw_organism(SPECIES[k], rng)
                                                  for k in kinds[i : i + 256]])
                           for i in range(0, size, 256)])  # fmt: skip


def exact_truth(store_path: Path, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-k image_ids over the stored float16 vectors, one shard batch at a time,
    then the ids tied with the k-th (faiss_index.exact_neighbours: any copy of the k-th is
    a right answer; only the copies distribution has them)."""
    import faiss

    from bioindex.faiss_index import TIE_COLUMNS, with_ties
    from bioindex.store import Store

    depth = k + TIE_COLUMNS
    heap = faiss.ResultHeap(len(queries), depth, keep_max=True)
    with Store.open(store_path, read_only=True) as store:
        for ids, vectors in store.iter_live_vectors(262144):
            scores, rows = faiss.knn(queries, vectors, depth, metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(scores, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1))
    heap.finalize()
    return with_ties(heap.D, heap.I, k)


def load_vectors(case: Path) -> np.ndarray:
    """All stored vectors as float32, in image_id order (image_id = row + 1)."""
    from bioindex.store import Store

    with Store.open(case / "store", read_only=True) as store:
        parts = [(ids, vectors) for ids, vectors in store.iter_live_vectors(262144)]
    ids = np.concatenate([p[0] for p in parts])
    assert (np.diff(ids) > 0).all() and ids[0] == 1
    return np.concatenate([p[1] for p in parts])


# ---- one system, in a child process --------------------------------------------------------


def measure(case: Path, system: str, memory: str) -> dict:
    queries = np.load(case / "queries.npy")
    truth = np.load(case / "truth.npy")
    single, batch, info = RUNNERS[system](case, queries, memory)
    # numpy is exact and takes 35-80 ms a query at 1M: its answers come from the batch.
    found_single = (batch(queries) if system == "numpy"
                    else np.stack([single(q) for q in queries]))  # warms caches too  # fmt: skip
    latencies = []
    for q in queries[:LATENCY_QUERIES]:
        started = time.perf_counter()
        single(q)
        latencies.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    found = batch(queries)
    qps = len(queries) / (time.perf_counter() - started)
    from bioindex.faiss_index import per_query_recall, recall_at

    texts = text_case(case)
    if texts is not None:
        info.update(measure_texts(single, system, *texts))
    return {
        **info,
        "recall_at_10": round(recall_at(found_single, truth), 4),
        "recall_ci95": round(interval(per_query_recall(found_single, truth)), 4),
        "queries": len(queries),
        # The same answers against the exact top 10's ids alone, ties not taken: what
        # figures before the truth carried ties were.
        "recall_at_10_ids": round(recall_at(found_single, truth[:, :10]), 4),
        "recall_at_10_batch": round(recall_at(found, truth), 4),
        "p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "batch_qps": round(qps, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def interval(recalls: np.ndarray) -> float:
    """Half-width of the 95% interval of a mean recall over these queries (normal
    approximation: thousands of queries, per-query std ~0.1)."""
    return float(1.96 * recalls.std(ddof=1) / np.sqrt(len(recalls))) if len(recalls) > 1 else 0.0


def measure_texts(single, system: str, queries: np.ndarray, truth: np.ndarray) -> dict:
    """Recall@10 and p50 of text queries; bioindex's with its text setting, and with the
    pictures' setting (what every text query got before it had one)."""
    from bioindex.faiss_index import recall_at

    ask = (lambda q: single(q, text=True)) if system.startswith("bioindex") else single
    found = np.stack([ask(q) for q in queries])
    latencies = []
    for q in queries:
        started = time.perf_counter()
        ask(q)
        latencies.append((time.perf_counter() - started) * 1000)
    out = {"text_recall_at_10": round(recall_at(found, truth), 4),
           "text_p50_ms": round(float(np.percentile(latencies, 50)), 3)}  # fmt: skip
    if system.startswith("bioindex"):
        pictures = np.stack([single(q) for q in queries])
        out["text_recall_pictures_setting"] = round(recall_at(pictures, truth), 4)
    return out


def run_bioindex(case: Path, queries: np.ndarray, memory: str, rerank: bool | None,
                 target: float, tune_on: bool = False):  # fmt: skip
    """`tune_on`: tune on the case's tune_on.npy (pictures like the queries, not the
    queries) instead of held-out stored vectors, as `build-index --tune-on` does."""
    from bioindex import faiss_index
    from bioindex.store import Store

    path = case / "store"
    probes = case / "text_probes.npy"
    if tune_on and not (case / "tune_on.npy").is_file():
        raise SystemExit(f"{case} has no tune_on.npy (only the bursts distribution makes one)")
    with Store.open(path) as store:
        store.build_index("auto", faiss_index.parse_memory(memory), target_recall=target,
                          rerank=rerank,
                          text_probes=(lambda: np.load(probes)) if probes.is_file() else None,
                          tune_on=np.load(case / "tune_on.npy") if tune_on else None)
    # Timed queries go through a long-lived read-only open, the way the server runs.
    store = Store.open(path, read_only=True)
    spec = store.index_spec
    info = {
        "kind": spec.kind, "search": spec.search, "rerank": spec.rerank,
        "build_s": spec.built["build_seconds"], "index_mb": spec.built["index_bytes"] / 2**20,
        # build-index's whole wait: measuring the kinds, building and tuning
        "total_s": spec.built.get("total_seconds"),
        "tuned_recall": spec.built.get("recall_at_10"), "search_text": spec.search_text,
    }  # fmt: skip
    chosen = next((c for c in spec.built.get("candidates", []) if c.get("chosen")), None)
    if chosen:  # what the measured choice predicted for this build, from its samples
        info["predicted"] = {key: chosen[key] for key in (
            "name", "predicted_p50_ms", "predicted_p99_ms", "predicted_bytes",
            "predicted_build_s")}  # fmt: skip
    return ((lambda q, text=False: store.search(q[None], 10, text=text)[1][0]),
            (lambda qs: store.search(qs, 10)[1]), info)  # fmt: skip


def cold_query(case: Path, mapped: bool) -> dict:
    """One query from a fresh process, the way `bioindex search` runs: seconds to the first
    answer and how much the process grew to give it (mapped index vs loaded)."""
    import faiss  # noqa: F401  (imports are not what is measured)

    from bioindex.store import Store

    queries = np.load(case / "queries.npy")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with Store.open(case / "store", read_only=True, map_index=mapped) as store:
        store.search(queries[:1], 10)
        kind = store.index_spec.kind
    return {
        "kind": kind,
        "first_query_s": round(time.perf_counter() - started, 3),
        "rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
                               / 1024, 1),
    }  # fmt: skip


def run_faiss_flat(case: Path, queries: np.ndarray, memory: str):
    import faiss

    vectors = load_vectors(case)
    started = time.perf_counter()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    info = {"kind": "faiss IndexFlatIP", "build_s": time.perf_counter() - started,
            "index_mb": vectors.nbytes / 2**20}  # fmt: skip
    del vectors
    return (
        (lambda q: index.search(q[None], 10)[1][0] + 1),
        (lambda qs: index.search(qs, 10)[1] + 1),
        info,
    )


def run_numpy(case: Path, queries: np.ndarray, memory: str):
    vectors = load_vectors(case)

    def top(scores: np.ndarray) -> np.ndarray:
        part = np.argpartition(-scores, 10, axis=-1)[..., :10]
        order = np.argsort(-np.take_along_axis(scores, part, -1), axis=-1)
        return np.take_along_axis(part, order, -1) + 1

    def batch(qs: np.ndarray) -> np.ndarray:
        return np.concatenate([top(qs[i : i + 64] @ vectors.T) for i in range(0, len(qs), 64)])

    info = {"kind": "numpy matmul", "build_s": 0.0, "index_mb": vectors.nbytes / 2**20}
    return (lambda q: top(vectors @ q)), batch, info


def run_usearch(case: Path, queries: np.ndarray, memory: str):
    from usearch.index import Index

    from bioindex.faiss_index import recall_at

    vectors = load_vectors(case)
    started = time.perf_counter()
    index = Index(ndim=vectors.shape[1], metric="ip", dtype="f16", connectivity=16,
                  expansion_add=64)  # fmt: skip
    index.add(np.arange(1, len(vectors) + 1), vectors, threads=2)
    build = time.perf_counter() - started
    del vectors
    # Every expansion_search on every query: "faster at equal recall" reads usearch's p50 at
    # the smallest setting whose recall reaches bioindex's (`equal_recall`). Tuned on the
    # test queries themselves, which favours usearch.
    truth = np.load(case / "truth.npy")
    curve = []
    for expansion in USEARCH_EF:
        index.expansion_search = expansion
        recall = recall_at(index.search(queries, 10, threads=2).keys, truth)
        latencies = []
        for q in queries[:LATENCY_QUERIES]:
            started = time.perf_counter()
            index.search(q, 10, threads=1)
            latencies.append((time.perf_counter() - started) * 1000)
        curve.append({"ef": expansion, "recall_at_10": round(recall, 4),
                      "p50_ms": round(float(np.percentile(latencies, 50)), 3)})  # fmt: skip
        texts = text_case(case)
        if texts is not None:
            curve[-1]["text_recall_at_10"] = round(
                recall_at(index.search(texts[0], 10, threads=2).keys, texts[1]), 4)
    # The row itself: the smallest setting reaching 0.95 on all queries.
    chosen = next((c for c in curve if c["recall_at_10"] >= 0.95), curve[-1])
    index.expansion_search = chosen["ef"]
    info = {"kind": f"usearch HNSW (f16, M=16, ef={chosen['ef']})", "build_s": build,
            "index_mb": index.memory_usage / 2**20, "curve": curve}  # fmt: skip
    return (
        (lambda q: index.search(q, 10, threads=1).keys),
        (lambda qs: index.search(qs, 10, threads=2).keys),
        info,
    )


RUNNERS = {
    "bioindex-auto": lambda c, q, m: run_bioindex(c, q, m, rerank=False, target=0.95),
    "bioindex-rerank": lambda c, q, m: run_bioindex(c, q, m, rerank=True, target=0.99),
    "bioindex-default": lambda c, q, m: run_bioindex(c, q, m, rerank=None, target=0.95),
    "bioindex-tuned-on": lambda c, q, m: run_bioindex(c, q, m, rerank=None, target=0.95,
                                                      tune_on=True),
    "faiss-flat": run_faiss_flat,
    "numpy": run_numpy,
    "usearch-hnsw": run_usearch,
}


def in_child(case: Path, system: str, memory: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", str(case), system, "--memory", memory],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- the neighbour profile: synthetic next to real embeddings ---------------------------


def profiles(dim: int, distributions: list[str], seed: int) -> dict:
    """Median neighbour cosines: the demo model's real vectors, the generator's defaults at
    the demo's size and at 100k, and each other synthetic distribution run at 100k."""
    from bioindex.demo.draw import draw_dataset
    from bioindex.models import load_model
    from bioindex.synthetic import ClusteredVectors, neighbour_profile

    model = load_model("bioclip-demo", device="cpu")
    pictures = draw_dataset(21, seed=99)  # 1,008 pictures, 21 per species
    real = np.concatenate([model.embed_pil([p for _, p in pictures[i : i + 128]])
                           for i in range(0, len(pictures), 128)])  # fmt: skip
    real_base, real_queries = real[::2], real[1::2]
    out = {"demo model (1008 drawn pictures)": neighbour_profile(real_base, real_queries)}
    generator = ClusteredVectors(dim)
    for n in (504, 100_000):
        base = generator.sample(n)
        out[f"synthetic d={dim}, n={n:,}"] = neighbour_profile(base, generator.sample(300, 1))
    for distribution in distributions:
        if distribution in ("default", "demo"):
            continue
        source = vector_source(distribution, dim, seed)
        out[f"{distribution} d={dim}, n=100,000"] = neighbour_profile(
            source.sample(100_000), source.sample(300, 1))
    return out


# ---- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--large", action="store_true", help="add N = 10M (bioindex only)")
    parser.add_argument("--store", type=Path, help="benchmark this store's own vectors")
    parser.add_argument("--systems", nargs="+", default=list(DEFAULT_SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--memory", default="4G", help="bioindex's memory budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distributions", nargs="+", default=["default"],
                        type=distribution_name,
                        help="which vectors (see above), or clustered:CENTRES:SPREAD[:DECAY] "
                        "for another setting of the generator; demo ignores --dims")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--queries", type=int, default=QUERIES,
                        help="query vectors per case (recall; latency times the first 300)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search.json"))
    parser.add_argument(
        "--cold-only",
        action="store_true",
        help="only time a first query from a fresh process (index built)",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, system = Path(args.child[0]), args.child[1]
        if system.startswith("cold-"):
            print(json.dumps(cold_query(case, mapped=system == "cold-mapped")))
        else:
            print(json.dumps(measure(case, system, args.memory)))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bioindex-search-"))
    cases: list[tuple[str, Path]] = []
    if args.store:
        cases.append((f"store {args.store}", own_store_case(args.store, workdir, args.queries)))
    else:
        sizes = sorted(set(args.sizes + ([10_000_000] if args.large else [])))
        for distribution in args.distributions:
            for n in sizes:
                for dim in args.dims if distribution != "demo" else [0]:
                    case = prepare(workdir, n, dim, args.seed, distribution, args.queries)
                    if distribution == "demo":
                        prepare_texts(case)
                    shown = json.loads((case / "stamp.json").read_text())["dim"]
                    cases.append((f"{distribution} {n:,} x {shown}", case))
    results: list[dict] = []
    report_cold: list[dict] = []
    for label, case in cases:
        n = int(json.loads((case / "stamp.json").read_text())["n"])
        for system in [] if args.cold_only else args.systems:
            if not system.startswith("bioindex") and n > BASELINE_MAX:
                continue
            print(f"{label}: {system} ...", flush=True)
            row = {"case": label, "system": system, **in_child(case, system, args.memory)}
            results.append(row)
            print("  " + json.dumps(row), flush=True)
        if any(s.startswith("bioindex") for s in args.systems):
            # The store now holds the last bioindex index built; open it cold both ways.
            cold = {way: in_child(case, f"cold-{way}", args.memory) for way in ("mapped", "loaded")}
            report_cold.append({"case": label, **cold})
            print("  cold query: " + json.dumps(cold), flush=True)
    equal_recall(results)
    report = {"results": results, "cold_query": report_cold, "machine": machine()}
    if not args.store and 512 in args.dims:
        report["neighbour_profile"] = profiles(512, args.distributions, args.seed)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


def own_store_case(store_path: Path, workdir: Path, queries: int = QUERIES) -> Path:
    """A copy of the store with `queries` of its vectors (a tenth at most) held out as
    queries."""
    import shutil

    from bioindex.store import Store

    case = workdir / "own-store"
    shutil.rmtree(case, ignore_errors=True)
    shutil.copytree(store_path, case / "store")
    with Store.open(case / "store") as store:
        held_out = store._sample_ids(min(queries, store.live_count() // 10))
        vectors = store.vectors(held_out)
        store.mark_deleted(held_out.tolist())
        n = store.live_count()
    np.save(case / "queries.npy", vectors)
    np.save(case / "truth.npy", exact_truth(case / "store", vectors))
    (case / "stamp.json").write_text(json.dumps({"n": n}))
    return case


def machine() -> dict:
    import os
    import platform

    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}  # fmt: skip


def equal_recall(results: list[dict]) -> None:
    """Beside each bioindex row: usearch's p50 at the smallest setting whose recall on the
    same queries reaches the row's (None when no setting does)."""
    curves = {r["case"]: r["curve"] for r in results if r.get("curve")}
    for row in results:
        curve = curves.get(row["case"])
        if not row["system"].startswith("bioindex") or not curve or "recall_at_10" not in row:
            continue
        match = next((c for c in curve if c["recall_at_10"] >= row["recall_at_10"]), None)
        row["usearch_at_equal_recall"] = match
        if match:
            row["vs_usearch"] = round(match["p50_ms"] / row["p50_ms"], 2)


def print_table(report: dict) -> None:
    columns = ("case", "system", "kind", "build_s", "total_s", "index_mb", "peak_rss_mb",
               "recall_at_10",
               "recall_ci95", "recall_at_10_ids", "p50_ms", "p99_ms", "batch_qps",
               "text_recall_at_10", "text_p50_ms", "text_recall_pictures_setting")  # fmt: skip
    rows = report["results"]
    numpy_p50 = {r["case"]: r["p50_ms"] for r in rows if r["system"] == "numpy" and "p50_ms" in r}
    print()
    print(" | ".join(columns) + " | p50 vs numpy")
    for row in rows:
        cells = [_cell(row.get(c)) for c in columns]
        base = numpy_p50.get(row["case"])
        ratio = f"{base / row['p50_ms']:.0f}x faster" if base and row.get("p50_ms") else ""
        if row.get("usearch_at_equal_recall"):
            match = row["usearch_at_equal_recall"]
            ratio += (f"; usearch at equal recall: ef {match['ef']} {match['p50_ms']} ms "
                      f"({row['vs_usearch']}x bioindex's p50)")  # fmt: skip
        print(" | ".join(cells) + f" | {ratio}" + (f"  ERROR {row['error']}" if "error" in row
                                                    else ""))  # fmt: skip
    for cold in report.get("cold_query", []):
        print(f"{cold['case']}: first query from a fresh process: {cold}")
    for name, profile in report.get("neighbour_profile", {}).items():
        print(f"neighbour cosine {name}: {profile}")
    print_predictions(rows)


def print_predictions(rows: list[dict]) -> None:
    """The measured choice's full-size predictions (made from two samples) against the
    full build: predicted / measured for p50, p99, index size and build time."""
    checked = [r for r in rows if r.get("predicted") and "p50_ms" in r]
    if not checked:
        return
    print("\nprediction check (predicted / measured at full size):")
    print("case | system | chosen | p50 ms | p99 ms | index MB | build s")
    for row in checked:
        guess = row["predicted"]
        pairs = [(guess["predicted_p50_ms"], row["p50_ms"]),
                 (guess["predicted_p99_ms"], row["p99_ms"]),
                 (guess["predicted_bytes"] / 2**20, row["index_mb"]),
                 (guess["predicted_build_s"], row["build_s"])]  # fmt: skip
        cells = [f"{a:.3g} / {b:.3g} ({a / b:.2f}x)" if b else f"{a:.3g} / -" for a, b in pairs]
        print(" | ".join([row["case"], row["system"], guess["name"], *cells]))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


if __name__ == "__main__":
    main()
