"""Which index kind fits a store's own vectors: measured on samples of them, not guessed.

Rules of N, dim and memory picked well on one synthetic distribution and badly on a harder
one (#18): how clustered a collection is decides which structure finds its neighbours
cheaply, and collections differ. So `auto` (past the size where exact search stays fast)
builds every candidate — IVF with 8-bit codes at two list counts (≈ 4·√n and twice
that), IVF with 4-bit fast-scan PQ, an HNSW graph, exact flat — on two samples of the
stored vectors (s/4 and s), tunes each to the recall target against exact search on
held-out sample vectors, and times single queries at the tuned setting.

Full-size figures are predicted by a power law through the two measurements:
value(N) = value(s) · (N/s)^b, with b from the two sizes (clipped to [0, 1]: a search
never gets cheaper with more vectors, and no kind here scans more than all of them).
The list count grows with the sample as it will with the store (≈ 4·√n), so the fit
sees how the tuned nprobe and the list lengths move together. Memory is the kind's
bytes per vector times N (faiss_index.estimated_bytes); build time follows the same
power law. The fastest predicted candidate that meets the target at both sample sizes and
fits the memory budget is built at full size (and tuned again there, so the target holds
whatever the prediction said). Every candidate's figures are kept in the index record
(`bioindex info`), and benchmarks/search.py checks predictions against full builds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bioindex import faiss_index
from bioindex.faiss_index import IndexSpec

SAMPLE = 40_000  # vectors in the larger sample (the smaller is a quarter of it)
QUERIES = 200  # held-out sample vectors the candidates are tuned and timed on
MIN_VECTORS = 4 * faiss_index.MIN_POINTS_PER_LIST * 16 + QUERIES  # the small sample trains IVF


@dataclass(frozen=True)
class Option:
    """A candidate structure: a kind, and for IVF kinds a multiple of the default lists."""

    kind: str
    lists: float = 1.0

    @property
    def name(self) -> str:
        if self.kind.startswith("ivf") and self.lists != 1.0:
            return f"{self.kind} ({self.lists:g}x lists)"
        return self.kind

    def spec(self, n: int, dim: int, memory: int, rerank: bool | None = None) -> IndexSpec:
        spec = faiss_index.plan(self.kind, n, dim, memory, rerank)
        if spec.nlist:
            nlist = 2 ** round(math.log2(max(16, spec.nlist * self.lists)))
            spec.nlist = int(min(nlist, max(16, n // faiss_index.MIN_POINTS_PER_LIST)))
        return spec


# Half the lists was a candidate until a 1M x 512 store chose it by a noisy prediction and
# searched at 1.56 ms where the default count searches at 0.84 ms; twice the lists scans
# fewer codes for the same recall (and gets a graph quantizer past 8192 lists).
OPTIONS = (Option("ivf"), Option("ivf", 2.0), Option("ivf-pq"), Option("hnsw"), Option("flat"))


@dataclass
class Measured:
    """One candidate: what was measured on the two samples and what is predicted at N."""

    name: str
    kind: str
    nlist: int  # at full size
    pq_m: int
    search: dict[str, int]  # tuned on the larger sample
    recall_at_10: float
    recall_lower_bound: float
    met_target: bool
    sample_p50_ms: float
    predicted_p50_ms: float
    predicted_p99_ms: float
    predicted_bytes: int
    predicted_build_s: float
    fits_memory: bool
    chosen: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _power(small: float, large: float, ratio: float, full_ratio: float) -> float:
    """`large` carried from sample size s to N along the power law through both points."""
    if small <= 0 or large <= 0 or ratio <= 1:
        return large * full_ratio
    exponent = min(1.0, max(0.0, math.log(large / small) / math.log(ratio)))
    return large * full_ratio**exponent


def _measure(option: Option, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray,
             target: float, memory: int, rerank: bool | None,
             full: IndexSpec) -> tuple[Any, float, Any]:  # fmt: skip
    """Build and tune one candidate on `vectors`, shaped as it will be at full size (`full`);
    (tuning, build seconds, spec)."""
    n, dim = vectors.shape
    spec = option.spec(n, dim, memory, rerank)
    if spec.nlist:
        # The sample's fewer lists would be found by comparing with every centroid where
        # the full index uses a graph: that cost then grew 4x between the two samples, and
        # the power law carried it to 1M as if it were the search (#18: a 1M store chose
        # twice the lists over the default count on that prediction).
        spec.quantizer = "hnsw" if faiss_index.graph_quantizer(full) else "flat"
    sample = vectors[: faiss_index.training_size(spec, n)] if spec.nlist else None
    ids = np.arange(n, dtype=np.int64)
    started = time.perf_counter()
    index = faiss_index.build(spec, sample, [(ids, vectors)])
    seconds = time.perf_counter() - started
    faiss_index.set_search(index, spec)

    def fetch(wanted: np.ndarray) -> np.ndarray:
        return vectors[np.asarray(wanted, dtype=np.int64)]

    tuning = faiss_index.tune(index, spec, queries, truth, target,
                              fetch=fetch if faiss_index.reranks(spec) else None)  # fmt: skip
    return tuning, seconds, spec


def choose(vectors: np.ndarray, n: int, memory: int, target: float,
           rerank: bool | None = None,
           options: tuple[Option, ...] = OPTIONS) -> tuple[str, float, list[Measured]]:  # fmt: skip
    """Measure `options` on `vectors` (a random sample of the store's, at most SAMPLE plus
    QUERIES of them) and pick for a store of `n`, each searched the way it will be
    (`rerank` as faiss_index.plan takes it). Returns (kind, lists multiple, all candidates
    measured)."""
    dim = vectors.shape[1]
    queries, base = vectors[:QUERIES], vectors[QUERIES:]
    sizes = (max(len(base) // 4, 1), len(base))
    truths = [faiss_index.exact_neighbours([(np.arange(size), base[:size])], queries, 10)
              for size in sizes]  # fmt: skip
    measured = []
    for option in options:
        if option.kind.startswith("ivf") and sizes[0] < faiss_index.MIN_POINTS_PER_LIST * 16:
            continue
        full = option.spec(n, dim, memory)
        bytes_needed = faiss_index.estimated_bytes(option.kind, n, dim, full.pq_m)
        if option.kind == "flat" and bytes_needed > memory:
            continue
        runs = [_measure(option, base[:size], queries, truth, target, memory, rerank, full)
                for size, truth in zip(sizes, truths)]  # fmt: skip
        (small, small_s, _), (large, large_s, spec) = runs
        ratio, full_ratio = sizes[1] / sizes[0], max(1.0, n / sizes[1])
        measured.append(Measured(
            name=option.name, kind=option.kind, nlist=full.nlist, pq_m=full.pq_m,
            search=dict(spec.search), recall_at_10=large.recall_at_10,
            recall_lower_bound=large.recall_lower_bound,
            met_target=small.met_target and large.met_target,
            sample_p50_ms=large.latency_ms_p50,
            predicted_p50_ms=round(_power(small.latency_ms_p50, large.latency_ms_p50, ratio,
                                          full_ratio), 3),
            predicted_p99_ms=round(_power(small.latency_ms_p99, large.latency_ms_p99, ratio,
                                          full_ratio), 3),
            predicted_bytes=int(bytes_needed),
            predicted_build_s=round(_power(small_s, large_s, ratio, full_ratio), 1),
            fits_memory=bytes_needed <= memory))  # fmt: skip
    eligible = [m for m in measured if m.met_target and m.fits_memory]
    if not eligible:
        return faiss_index.choose_kind(n, dim, memory), 1.0, measured
    best = min(eligible, key=lambda m: m.predicted_p50_ms)
    best.chosen = True
    option = next(o for o in options if o.name == best.name)
    return option.kind, option.lists, measured


def describe(candidates: list[dict[str, Any]]) -> str:
    """One line for `bioindex info`: the choice and what it beat, by predicted p50."""
    ordered = sorted(candidates, key=lambda c: (not c.get("chosen"), c["predicted_p50_ms"]))
    parts = []
    for c in ordered:
        why = "" if c["met_target"] else " (misses target)"
        why += "" if c["fits_memory"] else " (over memory)"
        parts.append(f"{c['name']} {c['predicted_p50_ms']:g} ms{why}")
    return "chose " + parts[0] + (" over " + ", ".join(parts[1:]) if len(parts) > 1 else "")
