"""Which index kind fits a store's own vectors: measured on samples of them, not guessed.

Rules of N, dim and memory picked well on one synthetic distribution and badly on a harder
one (#18): how clustered a collection is decides which structure finds its neighbours
cheaply, and collections differ. So `auto` (past the size where exact search stays fast)
builds every candidate — IVF with 8-bit codes at two list counts (≈ 4·√n and twice
that), IVF with 4-bit fast-scan PQ, an HNSW graph, exact flat — on two samples of the
stored vectors (s/4 and s), tunes each to the recall target against exact search on
held-out sample vectors, and times single queries at the tuned setting.

The full-size p50 is predicted by a power law through the two measurements:
p50(N) = p50(s) · (N/s)^b, with b from the two sizes (clipped to [0, 1]: a search
never gets cheaper with more vectors, and no kind here scans more than all of them).
The list count grows with the sample as it will with the store (≈ 4·√n), so the fit
sees how the tuned nprobe and the list lengths move together. Every candidate's two
samples are timed together once all are built, query by query in turn, each query's
fastest of ROUNDS timings (`_timed_together`): the power law carries the ratio of two
timings 25x further, so timings taken minutes apart, in different phases of the machine,
made predictions that moved 9x between runs of the same build. The p99 is that p50 times
the larger sample's own tail (p99 / p50 of the same fastest timings).
Memory is the kind's bytes per vector times N (faiss_index.estimated_bytes); build time
is training plus adding, each scaled by what it costs (`predict_build_s`).

Where the store's model gives text probes (faiss_index.tune_text), each candidate is
tuned on them too, and one whose text queries miss the target is passed over
when another meets both: text queries land away from every picture, and a structure that
finds pictures' neighbours cheaply need not find theirs (1M demo pictures: HNSW 0.91 at its
widest, IVF-SQ8 0.99 at 0.3 ms). Candidates are then ranked by the mean of the two
predicted p50s, text and picture queries counted alike. The fastest predicted candidate
that meets the target at both sample sizes and fits the memory budget is built at full
size (and tuned again there, so the target holds whatever the prediction said). Every
candidate's figures are kept in the index record (`bioindex info`), and
benchmarks/search.py checks predictions against full builds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bioindex import faiss_index
from bioindex.faiss_index import RECALL_K, IndexSpec

# Predicted p50s within this factor of each other are taken as a tie (`pick`).
CHOICE_TIE = 1.25
SAMPLE = 40_000  # vectors in the larger sample (the smaller is a quarter of it)
QUERIES = 200  # held-out sample vectors the candidates are tuned and timed on
TIMED = 200  # of them (and of the text probes) timed for the prediction (`_timed_together`)
ROUNDS = 3  # timings of each query on each sample index; the fastest is its own work
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
    # With text probes: the same, for text queries (None without).
    search_text: dict[str, int] | None = None
    text_recall_at_10: float | None = None
    text_met_target: bool | None = None
    predicted_text_p50_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def cost_ms(self) -> float:
        """What the choice minimises: the predicted p50, averaged with text queries'."""
        if self.predicted_text_p50_ms is None:
            return self.predicted_p50_ms
        return (self.predicted_p50_ms + self.predicted_text_p50_ms) / 2


@dataclass(frozen=True)
class Run:
    """One candidate built and tuned on one sample."""

    tuning: Any  # faiss_index.Tuning
    spec: IndexSpec
    n: int  # vectors in the sample
    train_s: float  # k-means (IVF kinds); 0 for the others
    add_s: float
    text: Any = None  # faiss_index.Tuning on the text probes, or None
    index: Any = None  # the sample's index, kept to be timed with the others
    fetch: Any = None  # its re-rank's rows, where it re-ranks


def predict_build_s(small: Run, large: Run, full: IndexSpec, n: int) -> float:
    """Seconds to build `full` over n vectors, from the two samples' training and adding
    times by what each costs. k-means is points × lists (× dim and iterations, the same at
    every size): the larger sample's time scaled to the full training set and lists.
    Adding is, per vector, a comparison with every list's centroid plus encoding: the two
    samples (with different list counts) give both terms. A graph (HNSW) inserts each
    vector in about log n steps; flat storage just copies. A power law through the two
    total times (before) predicted 5 s for a 1M × 512 IVF-PQ that took 101: the small
    samples' builds are mostly fixed costs."""
    train_s = 0.0
    if full.nlist and large.spec.nlist:
        points = faiss_index.training_size(full, n) * full.nlist
        sampled = faiss_index.training_size(large.spec, large.n) * large.spec.nlist
        train_s = large.train_s * points / max(sampled, 1)
    if full.kind == "hnsw":
        add_s = large.add_s * (n / large.n) * math.log(n) / math.log(max(large.n, 2))
    elif full.nlist:
        add_s = _per_vector_cost(small, large, full.nlist) * n
    else:
        add_s = large.add_s * n / large.n
    return train_s + add_s


def _per_vector_cost(small: Run, large: Run, nlist: int) -> float:
    """Seconds to add one vector to an IVF of `nlist` lists: a·lists + b, through the two
    samples' (lists, seconds per vector); the larger sample's cost scaled by lists where
    the two do not tell the terms apart."""
    lists = (small.spec.nlist, large.spec.nlist)
    per = (small.add_s / small.n, large.add_s / large.n)
    if lists[1] > lists[0]:
        slope = (per[1] - per[0]) / (lists[1] - lists[0])
        if slope > 0 and per[1] - slope * lists[1] >= 0:
            return per[1] + slope * (nlist - lists[1])
    return per[1] * nlist / max(lists[1], 1)


def _power(small: float, large: float, ratio: float, full_ratio: float) -> float:
    """`large` carried from sample size s to N along the power law through both points."""
    if small <= 0 or large <= 0 or ratio <= 1:
        return large * full_ratio
    exponent = min(1.0, max(0.0, math.log(large / small) / math.log(ratio)))
    return large * full_ratio**exponent


def _measure(option: Option, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray,
             target: float, memory: int, rerank: bool | None, full: IndexSpec,
             texts: tuple[np.ndarray, np.ndarray] | None = None) -> Run:  # fmt: skip
    """Build and tune one candidate on `vectors`, shaped as it will be at full size (`full`),
    and on `texts` (vectors, their truth) when given."""
    n, dim = vectors.shape
    spec = option.spec(n, dim, memory, rerank)
    if spec.nlist:
        # The sample's fewer lists would be found by comparing with every centroid where
        # the full index uses a graph: that cost then grew 4x between the two samples, and
        # the power law carried it to 1M as if it were the search (#18: a 1M store chose
        # twice the lists over the default count on that prediction).
        spec.quantizer = "hnsw" if faiss_index.graph_quantizer(full) else "flat"
    sample = vectors[: faiss_index.training_size(spec, n)] if spec.nlist else None
    started = time.perf_counter()
    index = faiss_index.train(spec, sample)
    trained = time.perf_counter()
    faiss_index.add(index, np.arange(n, dtype=np.int64), vectors)
    added = time.perf_counter()
    faiss_index.set_search(index, spec)

    def fetch(wanted: np.ndarray) -> np.ndarray:
        return vectors[np.asarray(wanted, dtype=np.int64)]

    reranked = fetch if faiss_index.reranks(spec) else None
    tuning = faiss_index.tune(index, spec, queries, truth, target, fetch=reranked)
    text = None
    if texts is not None and not spec.exact:
        text = faiss_index.tune_text(index, spec, *texts, target, fetch=reranked)
    # Only IVF kinds train (k-means); the others' empty index is part of adding.
    train_s = trained - started if spec.nlist else 0.0
    return Run(tuning, spec, n, train_s, added - started - train_s, text, index, reranked)


def _timed_together(runs: list[Run], queries: np.ndarray, text: bool = False,
                    rounds: int = ROUNDS) -> list[np.ndarray]:  # fmt: skip
    """Per run, milliseconds of each of `queries` searched alone at the run's tuned setting
    (`text`: its text setting), the fastest of `rounds`: every run searches a query before
    the next query is asked, so a slow minute of the machine falls on all of them alike,
    and a pause of it on one timing is not a query's own work (one such pause made a p99
    from 200 timings: 310 ms predicted for a 1M store that answered at p99 1.2 ms)."""
    times = np.full((len(runs), len(queries)), np.inf)
    for row in range(len(queries)):
        query = queries[row : row + 1]
        for _ in range(rounds):
            for at, run in enumerate(runs):
                started = time.perf_counter()
                faiss_index.search(run.index, run.spec, query, RECALL_K, fetch=run.fetch,
                                   text=text)  # fmt: skip
                elapsed = (time.perf_counter() - started) * 1000
                times[at, row] = min(times[at, row], elapsed)
    return list(times)


def _tail(fastest: np.ndarray) -> float:
    """p99 / p50 of each query's fastest time: the tail a query's own work makes."""
    return float(np.percentile(fastest, 99) / max(np.percentile(fastest, 50), 1e-9))


def choose(vectors: np.ndarray, n: int, memory: int, target: float,
           rerank: bool | None = None, options: tuple[Option, ...] = OPTIONS,
           texts: np.ndarray | None = None, queries: np.ndarray | None = None,
           ) -> tuple[str, float, list[Measured]]:  # fmt: skip
    """Measure `options` on `vectors` (a random sample of the store's, at most SAMPLE plus
    QUERIES of them) and pick for a store of `n`, each searched the way it will be
    (`rerank` as faiss_index.plan takes it); `texts`: text probes to tune on as well;
    `queries`: pictures to tune on instead of QUERIES of the sample's own (Store.build_index's
    tune_on). Returns (kind, lists multiple, all candidates measured)."""
    dim = vectors.shape[1]
    if queries is None:
        queries, base = vectors[:QUERIES], vectors[QUERIES:]
    else:
        base = vectors
    # A query's copy in the sample would make it as easy as a stored vector (copies_of).
    copies = faiss_index.copies_of([(np.arange(len(base)), base)], queries)
    base = np.delete(base, copies, axis=0)
    sizes = (max(len(base) // 4, 1), len(base))
    truths = [faiss_index.exact_neighbours([(np.arange(size), base[:size])], queries, 10)
              for size in sizes]  # fmt: skip
    text_sets: list[tuple[np.ndarray, np.ndarray] | None] = [None, None]
    if texts is not None and len(texts):
        texts = np.ascontiguousarray(texts, dtype=np.float32)
        text_sets = [(texts, faiss_index.exact_neighbours([(np.arange(size), base[:size])],
                                                          texts, 10))
                     for size in sizes]  # fmt: skip
    built = []  # (option, full spec, bytes, small run, large run)
    for option in options:
        if option.kind.startswith("ivf") and sizes[0] < faiss_index.MIN_POINTS_PER_LIST * 16:
            continue
        full = option.spec(n, dim, memory)
        bytes_needed = faiss_index.estimated_bytes(option.kind, n, dim, full.pq_m)
        if option.kind == "flat" and bytes_needed > memory:
            continue
        small_run, large_run = [
            _measure(option, base[:size], queries, truth, target, memory, rerank, full, text)
            for size, truth, text in zip(sizes, truths, text_sets)]  # fmt: skip
        built.append((option, full, bytes_needed, small_run, large_run))
    runs = [run for *_, small_run, large_run in built for run in (small_run, large_run)]
    times = _timed_together(runs, queries[:TIMED])
    text_runs = [run for run in runs if run.text is not None]  # none without text probes
    text_times = {} if texts is None else dict(zip(
        map(id, text_runs), _timed_together(text_runs, texts[:TIMED], text=True)))  # fmt: skip
    ratio, full_ratio = sizes[1] / sizes[0], max(1.0, n / sizes[1])
    measured = []
    for at, (option, full, bytes_needed, small_run, large_run) in enumerate(built):
        small, large = small_run.tuning, large_run.tuning
        small_times, large_times = times[2 * at], times[2 * at + 1]
        p50 = _power(float(np.median(small_times)), float(np.median(large_times)), ratio,
                     full_ratio)  # fmt: skip
        measured.append(Measured(
            name=option.name, kind=option.kind, nlist=full.nlist, pq_m=full.pq_m,
            search=dict(large_run.spec.search), recall_at_10=large.recall_at_10,
            recall_lower_bound=large.recall_lower_bound,
            met_target=small.met_target and large.met_target,
            sample_p50_ms=round(float(np.median(large_times)), 3),
            predicted_p50_ms=round(p50, 3),
            predicted_p99_ms=round(p50 * _tail(large_times), 3),
            predicted_bytes=int(bytes_needed),
            predicted_build_s=round(predict_build_s(small_run, large_run, full, n), 1),
            fits_memory=bytes_needed <= memory))  # fmt: skip
        small_text, large_text = small_run.text, large_run.text
        if large_text is not None:
            measured[-1].search_text = dict(large_text.search)
            measured[-1].text_recall_at_10 = large_text.recall_at_10
            measured[-1].text_met_target = small_text.met_target and large_text.met_target
            measured[-1].predicted_text_p50_ms = round(_power(
                float(np.median(text_times[id(small_run)])),
                float(np.median(text_times[id(large_run)])), ratio, full_ratio), 3)  # fmt: skip
        elif text_sets[1] is not None:  # exact search: text queries are exact too
            measured[-1].text_met_target = True
            measured[-1].predicted_text_p50_ms = measured[-1].predicted_p50_ms
    eligible = [m for m in measured if m.met_target and m.fits_memory]
    if any(m.text_met_target for m in eligible):
        eligible = [m for m in eligible if m.text_met_target]
    if not eligible:
        return faiss_index.choose_kind(n, dim, memory), 1.0, measured
    best = pick(eligible)
    best.chosen = True
    option = next(o for o in options if o.name == best.name)
    return option.kind, option.lists, measured


def pick(eligible: list[Measured]) -> Measured:
    """The fastest predicted candidate, or among those predicted within CHOICE_TIE of it the
    smallest, then the quickest to build: predictions that close are a coin toss (a 1M x 512
    store's IVF-SQ8 and IVF-PQ were predicted 9.9 and 10.4 ms, and searched at 0.70 and
    0.50), and a smaller index leaves the memory to the rest of the machine. Twice the lists
    has the same lists as the default count on a sample (capped at MIN_POINTS_PER_LIST a
    list) and trains 3.5x as long: as fast on the samples, it is the slower build."""
    fastest = min(eligible, key=lambda m: m.cost_ms)
    close = [m for m in eligible if m.cost_ms <= CHOICE_TIE * fastest.cost_ms]
    return min(close, key=lambda m: (m.predicted_bytes, m.predicted_build_s, m.cost_ms))


def describe(candidates: list[dict[str, Any]]) -> str:
    """One line for `bioindex info`: the choice and what it beat, by predicted p50. Said to
    be predicted: extrapolated 25x from a 40k sample, a figure can be off several-fold
    (benchmarks/search.py's prediction check; the built index's own p50 is measured)."""
    ordered = sorted(candidates, key=lambda c: (not c.get("chosen"), c["predicted_p50_ms"]))
    parts = []
    for c in ordered:
        why = "" if c["met_target"] else " (misses target)"
        why += " (texts miss target)" if c.get("text_met_target") is False else ""
        why += "" if c["fits_memory"] else " (over memory)"
        text = c.get("predicted_text_p50_ms")
        text = f", texts {text:g} ms" if text is not None else ""
        parts.append(f"{c['name']} {c['predicted_p50_ms']:g} ms{text}{why}")
    return ("by p50 predicted from samples, chose " + parts[0]
            + (" over " + ", ".join(parts[1:]) if len(parts) > 1 else ""))
