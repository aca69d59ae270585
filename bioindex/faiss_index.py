"""The FAISS index kinds a store can use: how `auto` picks one, building from streamed
vectors, tuning nprobe / efSearch against exact search, and searching with re-ranking.

Vectors are unit length and compared by inner product everywhere. Approximate kinds can
re-rank their candidates against the stored float16 vectors (the source of truth), which
both lifts recall and makes every reported score an exact cosine.
"""

from __future__ import annotations

import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bioindex import ivf_lists
from bioindex.errors import BioindexError

KINDS = ("flat", "hnsw", "ivf", "ivf-pq")
APPROXIMATE = ("hnsw", "ivf", "ivf-pq")
# Kinds whose index holds the vectors themselves (float32 copies of the stored float16):
# their inner products are the exact cosines a re-rank would compute, so re-ranking them
# only costs (1M x 64 demo vectors, HNSW: 0.061 ms a query without, 0.135 with).
EXACT_STORAGE = ("flat", "hnsw")
DEFAULT_MEMORY = 4 * 1024**3
DEFAULT_TARGET_RECALL = 0.95
RECALL_K = 10  # the recall every tuning measures: recall@10
# Stored vectors held out to tune an index on. Per-query recall@10 is nearly all or nothing
# (a query whose own list is missed loses most of its neighbours), so 500 carry about ±0.01
# and the 95% bound a tuning meets asks ~0.009 more than the target. 2,000 were tried
# (docs/benchmarks.md): a 1M store's tuned nprobe fell 160 -> 112 on one distribution (p50
# 0.91 -> 0.71 ms) but on another the setting they passed gave new queries 0.945, and
# build-index took 2 minutes more (251 and 282 s of #18's 300).
TUNING_PROBES = 500
# Exact answers carry up to this many ids tied with their k-th, scores within TIE_EPS of it.
# A copy's product with a query can come out of another GEMM tile a few 1e-7 apart (up to
# 4.2e-7 seen); at 1e-5, 19% of the 1M demo store's queries had a distinct vector that
# close to their 10th (its 64-d space is dense), at 1e-6 2%.
TIE_COLUMNS = 32
TIE_EPS = 1e-6
# A row whose ties fill its columns is searched again, eight times deeper, up to this many
# (a thousand copies of a "no image" placeholder tie); past it the rest read as misses.
MAX_TIES = 4096
# Flat search touches every vector; past ~32M stored numbers a single query on one laptop
# core takes more than a few milliseconds, so `auto` moves on to an approximate kind.
FLAT_MAX_NUMBERS = 32 * 1024 * 1024
# FAISS k-means wants ~39 points per centroid and gains little past ~50.
POINTS_PER_LIST = 50
MIN_POINTS_PER_LIST = 39
MAX_TRAINING_POINTS = 500_000
HNSW_M = 32
HNSW_QUANTIZER_LISTS = 8192
# A flat quantizer compares a query with every list centroid. Past ~1M centroid numbers that
# is most of a search: 0.42 ms of a 0.54 ms IVF4096 x 512 search at nprobe 8, where an HNSW
# graph over the centroids finds 99.6% of the same lists in 0.09 ms (benchmarks/search.py).
GRAPH_QUANTIZER_NUMBERS = 1 << 20
HNSW_EF_CONSTRUCTION = 128
# Candidates fetched per wanted result when re-ranking against stored vectors: 4-bit PQ
# scores are coarse enough that the true top-10 can sit far down its list.
RERANK_FACTOR = {"hnsw": 4, "ivf": 4, "ivf-pq": 16}
RERANK_MIN = 64  # small k still looks at enough candidates to find a stored vector
RERANK_MARGIN = 0.95  # a deeper re-rank replaces a shallower one only when this much faster
FASTSCAN_SPLIT_LISTS = 14  # IndexIVFFastScan.implem: lists of a query spread over threads
FLAT_FEW_QUERIES = 20  # FAISS's own switch to BLAS (distance_compute_blas_threshold)
FLAT_BLOCK = 1 << 18  # rows per product: a few queries' scores stay a few MB
# How wide an HNSW quantizer searches, in multiples of the lists asked for; tuned with them.
# A query whose nearest centroid the graph misses loses most of its neighbours: on the 1M x
# 512 *flat* case efSearch 64 found it for 95.3% of queries, 256 for 99.2%, and at nprobe
# 12 recall@10 went 0.909 -> 0.946; there a wide search of few lists beats a narrow one of
# many, while on tightly clustered vectors the narrow one costs less.
QUANTIZER_EF_STEPS = (2, 4, 8)
# A graph search of the centroids this wide (efSearch x M past this many times the lists)
# costs more than comparing the query with every centroid, which finds the nearest lists
# exactly. 4,096 centroids x 512 on the fifth distribution's 1M store, the lists alone:
# efSearch 64 0.10 ms, 192 0.25, 320 0.41, all of them compared 0.21; whole searches,
# interleaved, at nprobe 64 (ef 128) the same, 112 (ef 224) 1.07 -> 0.96 ms, 160 (ef 320)
# 1.25 -> 1.06 (docs/benchmarks.md).
EXACT_LISTS_WORK = 1.5
# Steps of at most 20% from 64 up: at 1M x 512 on loosely clustered vectors 64 lists met
# 0.95 and 96 (the next step then, 50% more time) was what the tuner had to take; on the
# fifth distribution 128 fell just short and 160 was taken, 25% more time than 128.
# The tuner halves its way through the grid, so a finer one costs about one measurement.
NPROBE_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 72, 80, 96, 112, 128, 144, 160,
               192, 224, 256, 288, 320, 384, 448, 512, 576, 640, 768, 896, 1024)
# On 1M demo-model vectors (64-d, tightly clustered) efSearch 16 found 0.979 at 0.041 ms a
# query, where the grid's old first step, 32, took 0.067. Not below 16: 12 met 0.95 there
# too (0.962), but a graph searched that narrowly misses more for queries unlike the
# stored vectors it was tuned on (a 20k store whose queries' neighbours were deleted: 0.90).
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)

_BLAS_TURN = threading.Lock()
# Search parameters by (setting, graph quantizer): made once, read by every search.
_PARAMETERS: dict[tuple, Any] = {}
# An index object's IVF part and its graph quantizer's flat storage (None: a flat
# quantizer), while the object lives.
_LIST_PARTS: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()
_FASTSCAN_SWITCH = threading.Lock()

# image_ids → float32 vectors in the same order; NaN rows for ids no longer stored.
Fetch = Callable[[np.ndarray], np.ndarray]
# A batch is re-ranked in blocks of rows whose candidates hold about this many floats
# (1 MB: six queries of 80 candidates x 512; benchmarks/rerank.py).
RERANK_BLOCK = 1 << 18


@dataclass
class IndexSpec:
    """What an index is and how it is searched; stored in the store's manifest."""

    kind: str = "flat"
    dim: int = 0
    nlist: int = 0
    pq_m: int = 0
    rerank: bool = False
    search: dict[str, int] = field(default_factory=dict)  # {"nprobe": n} or {"efSearch": n}
    built: dict[str, Any] = field(default_factory=dict)  # measured facts from the last build
    # IVF only: "hnsw" or "flat" to force how lists are found, "" for graph_quantizer's rule
    # (forced where a sample stands in for the full-size index: index_choice).
    quantizer: str = ""
    # The setting text queries (a caption, a taxon's name) search with, tuned on text probes;
    # empty: the pictures' own. A text vector lies away from every picture (CLIP's modality
    # gap), among many near-equal scores, where a search tuned on pictures finds fewer of the
    # true neighbours: on the 1M demo graph, recall@10 0.47 at the pictures' efSearch 16.
    search_text: dict[str, int] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def setting(self, text: bool = False) -> dict[str, int]:
        """How a query is searched: text queries by their own tuned setting, if any."""
        return self.search_text if text and self.search_text else self.search

    def to_json(self) -> dict[str, Any]:
        data = {"metric": "inner_product", **asdict(self)}
        for optional in ("quantizer", "search_text"):  # records written before compare equal
            if not data[optional]:
                del data[optional]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], dim: int) -> IndexSpec:
        known = {k: data[k] for k in ("kind", "nlist", "pq_m", "rerank", "search", "built",
                                      "quantizer", "search_text")
                 if k in data}  # fmt: skip
        return cls(dim=dim, **known)


def parse_memory(text: str | int) -> int:
    """'4G', '512M', '1.5GiB', or a byte count → bytes."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.I)
        if not match:
            raise BioindexError(f"memory budget {text!r} is not a size like 4G or 512M")
        power = " KMGT".index(match.group(2).upper() or " ")
        value = int(float(match.group(1)) * 1024**power)
    if value <= 0:
        raise BioindexError(f"memory budget must be positive, got {text!r}")
    return value


def estimated_bytes(kind: str, n: int, dim: int, pq_m: int = 0) -> int:
    """Memory an index of this kind needs for n vectors (codes + ids + graph)."""
    per_vector = {
        "flat": 4 * dim + 8,
        "hnsw": 4 * dim + 8 + HNSW_M * 2 * 4,
        "ivf": dim + 8,
        "ivf-pq": (pq_m or default_pq_m(dim, n)) // 2 + 8,
    }[kind]
    nlist = default_nlist(n) if kind.startswith("ivf") else 0
    return n * per_vector + nlist * dim * 4


def choose_kind(n: int, dim: int, memory: int = DEFAULT_MEMORY) -> str:
    """Exact flat while it fits and stays fast; then IVF with 8-bit codes; then IVF-PQ."""
    if n * dim <= FLAT_MAX_NUMBERS and estimated_bytes("flat", n, dim) <= memory:
        return "flat"
    if n >= MIN_POINTS_PER_LIST * 16 and estimated_bytes("ivf", n, dim) <= memory:
        return "ivf"
    if n >= MIN_POINTS_PER_LIST * 16:
        return "ivf-pq"
    return "flat"


def default_nlist(n: int) -> int:
    """A power of two near 4·sqrt(n), with enough points per list to train on; at most
    8192 without a GPU, where k-means over more lists would dominate the build."""
    if n < MIN_POINTS_PER_LIST * 16:
        return 0
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    ceiling = 65536 if gpu_count() > 0 else 8192
    return int(max(16, min(nlist, ceiling, 2 ** int(math.log2(n // MIN_POINTS_PER_LIST)))))


def default_pq_m(dim: int, n: int = 0, memory: int = DEFAULT_MEMORY) -> int:
    """Sub-quantizers for 4-bit fast-scan PQ: one per 2 dimensions (dim/4 bytes a vector)
    when that fits the memory budget, fewer (coarser codes) when it does not."""
    choices = [m for m in (dim // 2, dim // 4, dim // 8, dim // 16, dim // 32)
               if m >= 2 and m % 2 == 0 and dim % m == 0]  # fmt: skip
    if not choices:
        raise BioindexError(f"cannot split dimension {dim} into PQ sub-vectors")
    for m in choices:
        if n * (m // 2 + 8) <= memory:
            return m
    return choices[-1]


def plan(kind: str, n: int, dim: int, memory: int = DEFAULT_MEMORY,
         rerank: bool | None = None) -> IndexSpec:  # fmt: skip
    """The spec for `kind` ('auto' or one of KINDS) at n vectors of this dim."""
    if kind == "auto":
        kind = choose_kind(n, dim, memory)
    if kind not in KINDS:
        raise BioindexError(f"unknown index kind {kind!r}; choose auto, {', '.join(KINDS)}")
    spec = IndexSpec(kind=kind, dim=dim)
    if kind.startswith("ivf"):
        spec.nlist = default_nlist(n)
        if not spec.nlist:
            raise BioindexError(
                f"{n} vectors are too few to train an {kind} index (at least "
                f"{MIN_POINTS_PER_LIST * 16} needed); use --kind flat"
            )
    if kind == "ivf-pq":
        spec.pq_m = default_pq_m(dim, n, memory)
    # PQ distances are too coarse to rank by; the other approximate kinds re-rank by
    # default too, so that scores are exact cosines.
    spec.rerank = kind in APPROXIMATE if rerank is None else (rerank and kind in APPROXIMATE)
    spec.search = {"efSearch": 64} if kind == "hnsw" else {"nprobe": 16} if spec.nlist else {}
    return spec


def reranks(spec: IndexSpec, superseded: bool = False) -> bool:
    """Whether searches re-rank against the stored vectors: approximate codes asked to, and
    any index still holding a vector an image has since replaced (an index that cannot drop
    ids keeps the old one, and its own score would be the old vector's)."""
    return superseded or (spec.rerank and spec.kind not in EXACT_STORAGE)


def new_index(spec: IndexSpec) -> Any:
    """An empty (untrained where it matters) FAISS index with ids, for this spec."""
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(spec.dim))
    if spec.kind == "hnsw":
        graph = faiss.IndexHNSWFlat(spec.dim, HNSW_M, ip)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return faiss.IndexIDMap2(graph)
    # Fast-scan PQ codes of the residual to the list centroid ("fsr"), not of the vector:
    # at 1M x 512 (hard case) 80 re-ranked candidates then found 0.960 at nprobe 64 where
    # plain codes found 0.929 (0.949 from 160). For inner product the lookup table is still
    # one per query (the centroid adds a constant per list), so the scan costs the same.
    codes = "SQ8" if spec.kind == "ivf" else f"PQ{spec.pq_m}x4fsr"
    quantizer = "_HNSW32" if graph_quantizer(spec) else ""
    return faiss.index_factory(spec.dim, f"IVF{spec.nlist}{quantizer},{codes}", ip)


def graph_quantizer(spec: IndexSpec) -> bool:
    """Whether an IVF spec finds its lists with an HNSW graph rather than by comparing with
    every centroid: with many lists, brute force over the centroids dominates both the build
    (assigning 10M vectors to 8192 lists) and each search (GRAPH_QUANTIZER_NUMBERS)."""
    if spec.quantizer:
        return spec.quantizer == "hnsw"
    return spec.nlist >= HNSW_QUANTIZER_LISTS or spec.nlist * spec.dim >= GRAPH_QUANTIZER_NUMBERS


def training_size(spec: IndexSpec, n: int) -> int:
    if not spec.kind.startswith("ivf"):
        return 0
    return min(n, max(POINTS_PER_LIST * spec.nlist, 20_000), MAX_TRAINING_POINTS)


def build(
    spec: IndexSpec,
    sample: np.ndarray | None,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    progress: Callable[[int], None] | None = None,
) -> Any:
    """Train on `sample` (IVF kinds), then add (ids, vectors) batches as they stream in."""
    index = train(spec, sample)
    for ids, vectors in batches:
        add(index, ids, vectors)
        if progress:
            progress(len(ids))
    return index


def add(index: Any, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Add vectors under their ids, each into the list of its nearest centroid.

    An HNSW quantizer assigns by its own graph search at its stored efSearch (16), which on
    loosely clustered vectors is not the nearest centroid for one vector in seven (1M x 512,
    the benchmark's *flat* case: 87.6% right); a query then finds that neighbour only by
    probing many more lists than its own (nprobe 64 where 16 would do). Adding compares each
    vector with every centroid instead, as the graph's own flat storage: exact, and in
    batched matrix products faster than a wider graph search (1M x 4096 lists x 512: 21 s,
    where efSearch 256 took 78 s and was still wrong for 0.6%)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    ivf = faiss.try_extract_index_ivf(index)
    graph = faiss.downcast_index(ivf.quantizer) if ivf is not None else None
    if not isinstance(graph, faiss.IndexHNSW):
        index.add_with_ids(vectors, ids)
        return
    # (IndexIVF.add_core with the assignment given leaves fast-scan lists unreadable in
    # faiss-cpu 1.15.1, so the quantizer is swapped for the add instead.)
    ivf.quantizer = graph.storage
    try:
        index.add_with_ids(vectors, ids)
    finally:
        ivf.quantizer = graph


def train(spec: IndexSpec, sample: np.ndarray | None) -> Any:
    """A new index for `spec`, trained on `sample` where its kind needs training."""
    import faiss

    index = new_index(spec)
    if not index.is_trained:
        if sample is None or len(sample) < spec.nlist:
            raise BioindexError(f"an {spec.kind} index needs a training sample")
        if gpu_count() > 0:
            # k-means is most of an IVF build; the GPU does it and the CPU keeps the index.
            index.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(spec.dim))
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def removable(spec: IndexSpec) -> bool:
    """Whether ids can be taken out of the index itself. FAISS's remove_ids on fast-scan PQ
    lists (faiss-cpu 1.15.1) moves codes as if unpacked: an id removed and added again is
    never found after (tests/test_index_kinds.py). HNSW refuses outright."""
    return spec.kind in ("flat", "ivf")


def mergeable(spec: IndexSpec) -> bool:
    """Whether parts built separately can be merged (FAISS cannot merge HNSW graphs)."""
    return spec.kind != "hnsw"


def gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def set_search(index: Any, spec: IndexSpec) -> None:
    """Apply the spec's nprobe / efSearch to the index object itself."""
    import faiss

    if "nprobe" in spec.search:
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = int(spec.search["nprobe"])
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):  # (stores built before have flat ones)
            quantizer.hnsw.efSearch = lists_ef(spec.search)
    if "efSearch" in spec.search:
        faiss.downcast_index(index.index).hnsw.efSearch = int(spec.search["efSearch"])


def quantizer_ef(nprobe: int, step: int = QUANTIZER_EF_STEPS[0]) -> int:
    """efSearch of an HNSW quantizer asked for `nprobe` lists, `step` times as wide: the
    graph's default (16) found too few of the right ones past nprobe 16 — a 1M x 512 IVF8192
    on hard data reached recall 0.92 scanning *every* list it was given."""
    return max(step * nprobe, 32 * step)


def lists_ef(setting: dict[str, int]) -> int:
    """The quantizer's efSearch of an IVF setting: tuned (`quantizer_ef`), or by the rule."""
    return int(setting.get("quantizer_ef", quantizer_ef(int(setting["nprobe"]))))


def search_parameters(spec: IndexSpec, selector: Any = None, text: bool = False) -> Any:
    """FAISS's parameters for a search with the spec's setting; those without a selector
    are made once per setting and shared (FAISS only reads them): made per search they
    took 15 µs of a 0.8 ms one (two SWIG objects)."""
    if selector is not None:
        return _new_search_parameters(spec, selector, text)
    setting = spec.setting(text)
    key = (tuple(sorted(setting.items())), graph_quantizer(spec))
    params = _PARAMETERS.get(key)
    if params is None:
        if len(_PARAMETERS) >= 1024:  # tuning asks tens of settings per build: a bound
            _PARAMETERS.clear()
        params = _PARAMETERS.setdefault(key, _new_search_parameters(spec, None, text))
    return params


def _new_search_parameters(spec: IndexSpec, selector: Any, text: bool) -> Any:
    import faiss

    setting = spec.setting(text)
    if "nprobe" in setting:
        nprobe = int(setting["nprobe"])
        params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
        if graph_quantizer(spec):  # a flat quantizer of an older build ignores these
            params.quantizer_params = faiss.SearchParametersHNSW(efSearch=lists_ef(setting))
        return params
    if "efSearch" in setting:
        return faiss.SearchParametersHNSW(efSearch=int(setting["efSearch"]), sel=selector)
    return faiss.SearchParameters(sel=selector) if selector is not None else None


def search(
    index: Any,
    spec: IndexSpec,
    queries: np.ndarray,
    k: int,
    selector: Any = None,
    fetch: Fetch | None = None,
    text: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores [q, k], ids [q, k]), -1 where fewer than k; re-ranked by `fetch` (the stored
    vectors) when given: see `reranks` for when to. `text`: the queries are text vectors
    (IndexSpec.search_text)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    rerank = fetch is not None
    wanted = k
    if rerank:
        factor = spec.setting(text).get("rerank_factor", RERANK_FACTOR[spec.kind])
        wanted = min(max(k * factor, RERANK_MIN), int(index.ntotal))
    scores, ids = knn_search(index, queries, max(wanted, 1),
                             search_parameters(spec, selector, text),
                             exact_lists=exact_lists(spec, spec.setting(text)))  # fmt: skip
    if rerank:
        return rerank_exact(queries, ids, k, fetch)
    if not removable(spec):  # an id deleted and added again is in the index twice
        return _unique_per_row(scores, ids, k)
    return scores[:, :k], ids[:, :k]


def exact_lists(spec: IndexSpec, setting: dict[str, int]) -> bool:
    """Whether a search with this IVF setting finds its lists by comparing the query with
    every centroid rather than by the graph over them (EXACT_LISTS_WORK)."""
    return ("nprobe" in setting and graph_quantizer(spec)
            and lists_ef(setting) * HNSW_M >= EXACT_LISTS_WORK * spec.nlist)  # fmt: skip


def knn_search(index: Any, queries: np.ndarray, k: int, params: Any = None,
               exact_lists: bool = False) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """index.search, letting an IVF fast-scan index share one query's lists among the
    OpenMP threads; `exact_lists`: an IVF with a graph quantizer finds the lists by its
    graph's flat storage instead (EXACT_LISTS_WORK).

    FAISS's own choice for fewer queries than threads scans a query's lists on one thread;
    its implementation 14 hands the lists out to all of them. At 1M x 512 (hard case,
    nprobe 64, 2 threads) a query took 1.20 ms end to end instead of 1.51 (interleaved).
    Measured again on an AMD EPYC with faiss 1.15 (the default distribution's IVF4096,
    each query both ways, which goes first alternating: the second finds the lists in
    the CPU's caches): split / FAISS's own 1.06 at nprobe 8, 0.98-1.00 at 16-24, 0.92 at
    32, 0.80 at 64, 0.72 at 144. For batches FAISS's default, which splits the queries,
    is ~15% faster. The switch is an attribute of the shared index and range search
    refuses implementation 14, so the split runs under a lock that range_search also
    takes. A server searching from several threads runs OpenMP with one thread each: no
    split, no lock."""
    import faiss

    def run() -> tuple[np.ndarray, np.ndarray]:
        if exact_lists:
            return _search_exact_lists(index, queries, k, params)
        return index.search(queries, k, params=params)

    if not hasattr(index, "implem") or len(queries) >= faiss.omp_get_max_threads():
        return run()
    with _FASTSCAN_SWITCH:
        index.implem = FASTSCAN_SPLIT_LISTS
        try:
            return run()
        finally:
            index.implem = 0


def _search_exact_lists(index: Any, queries: np.ndarray, k: int, params: Any
                        ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """An IVF search whose lists are the nearest centroids by the graph's own flat storage
    (the one `add` assigns by; found through ivf_lists' coded copy, re-scored exactly),
    scanned as FAISS scans lists it is given. Through the C++
    call: faiss's Python wrapper of search_preassigned refuses search parameters, and
    without them the lists' count would be the shared index's nprobe."""
    import faiss

    ivf, storage = _ivf_parts(index)
    if storage is None:  # a flat quantizer compares with every centroid itself
        return index.search(queries, k, params=params)
    queries = np.ascontiguousarray(queries, dtype=np.float32)  # swig_ptr reads raw memory
    centroid_scores, lists = ivf_lists.nearest_lists(storage, queries, int(params.nprobe))
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    ivf.search_preassigned_c(len(queries), faiss.swig_ptr(queries), k, faiss.swig_ptr(lists),
                             faiss.swig_ptr(centroid_scores), faiss.swig_ptr(scores),
                             faiss.swig_ptr(ids), False, params)  # fmt: skip
    return scores, ids


def _ivf_parts(index: Any) -> tuple[Any, Any]:
    """An index's IVF part (None: not an IVF) and its graph quantizer's flat storage
    (None where the quantizer is flat, as in older builds); 12 µs of SWIG calls, made
    once per index object."""
    import faiss

    found = _LIST_PARTS.get(index)
    if found is None:
        ivf, storage = faiss.try_extract_index_ivf(index), None
        graph = faiss.downcast_index(ivf.quantizer) if ivf is not None else None
        if isinstance(graph, faiss.IndexHNSW):
            storage = faiss.downcast_index(graph.storage)
        found = _LIST_PARTS.setdefault(index, (ivf, storage))
    return found


def range_search(index: Any, vectors: np.ndarray, radius: float) -> Any:
    """index.range_search (limits, scores, ids), never during a split knn_search; a graph
    index is asked a block of queries at a time (graph_range_block)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    block = graph_range_block(index)
    if block and len(vectors) > block:
        parts = [range_search(index, vectors[start : start + block], radius)
                 for start in range(0, len(vectors), block)]  # fmt: skip
        limits, total = [parts[0][0][:1]], parts[0][0][:1].copy()
        for part_limits, _, _ in parts:  # each part's limits start at 0, in faiss's dtype
            limits.append(part_limits[1:] + total)
            total = total + part_limits[-1]
        return (np.concatenate(limits), np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]))
    if not hasattr(index, "implem"):
        return index.range_search(vectors, radius)
    with _FASTSCAN_SWITCH:
        return index.range_search(vectors, radius)


def graph_range_block(index: Any) -> int:
    """How many queries an HNSW index may take in one range search (0: any number).
    faiss (1.15) runs an HNSW search in blocks of InterruptCallback.get_period_hint(
    max_level·d·efSearch) queries (10^8 / that, with Python's interrupt handler set) and
    sets up its range result once per block: a second block aborts the process ("labels ==
    nullptr && distances == nullptr failed") — 4,096 queries did on a 200k × 512 store at
    efSearch 16. Half the period keeps every call to one block."""
    import faiss

    inner = faiss.downcast_index(index)
    inner = faiss.downcast_index(inner.index) if hasattr(inner, "id_map") else inner
    if not isinstance(inner, faiss.IndexHNSW):
        return 0
    work = int(inner.hnsw.max_level) * int(inner.d) * int(inner.hnsw.efSearch)
    return max(1, 10**8 // (work + 1) // 2)


def rerank_exact(
    queries: np.ndarray, candidates: np.ndarray, k: int, fetch: Fetch
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidates; top-k of those (ties in
    ascending id order). A batch goes in blocks of rows, one `fetch` each: fetched row by
    row, a tuning run's thousands of held-out queries each paid the store's id lookup
    (1.45x the search's speed on 4,000 queries; benchmarks/rerank.py); fetched all at
    once, the widened vectors left the CPU's caches and it was slower than row by row."""
    if len(queries) == 1:
        return _rerank_one(queries[0], candidates[0], k, fetch)
    rows, width = candidates.shape
    exact = np.full((rows, width), -np.inf, dtype=np.float32)
    ids = np.sort(candidates, axis=1)
    keep = ids >= 0
    keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]  # an id re-added after replacement shows twice
    step = max(1, RERANK_BLOCK // max(1, width * queries.shape[1]))
    for start in range(0, rows, step):
        block = slice(start, start + step)
        kept = keep[block]
        wanted, where = np.unique(ids[block][kept], return_inverse=True)
        if not len(wanted):
            continue
        position = np.zeros(kept.shape, dtype=np.int64)  # 0 where not kept: masked below
        position[kept] = where.reshape(-1)
        gathered = fetch(wanted)[position]  # [rows, width, dim]: each row's candidates
        exact[block] = np.einsum("rwd,rd->rw", gathered, queries[block])
    exact[~keep | np.isnan(exact)] = -np.inf  # not stored (NaN) or not a candidate
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(exact, order, axis=1)
    found = np.isfinite(top)
    out_scores = np.full((rows, k), -np.inf, dtype=np.float32)
    out_ids = np.full((rows, k), -1, dtype=np.int64)
    out_scores[:, : order.shape[1]] = np.where(found, top, -np.inf)
    out_ids[:, : order.shape[1]] = np.where(found, np.take_along_axis(ids, order, axis=1), -1)
    return out_scores, out_ids


def _rerank_one(query: np.ndarray, candidates: np.ndarray, k: int, fetch: Fetch
                ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One query's re-rank (the interactive case), with fewer numpy calls than a block's."""
    out_scores = np.full((1, k), -np.inf, dtype=np.float32)
    out_ids = np.full((1, k), -1, dtype=np.int64)
    found = distinct(candidates[candidates >= 0])  # an id re-added after replacement: twice
    if len(found):
        # Scored before the rows no longer stored (NaN) are dropped: dropping them first
        # copied all 80 rows (160 KB) when none was.
        exact = fetch(found) @ query
        stored = ~np.isnan(exact)
        if not stored.all():
            found, exact = found[stored], exact[stored]
        order = np.argsort(-exact, kind="stable")[:k]
        out_scores[0, : len(order)] = exact[order]
        out_ids[0, : len(order)] = found[order]
    return out_scores, out_ids


def distinct(ids: np.ndarray) -> np.ndarray:
    """The sorted distinct ids, as np.unique gives them, by one sort: 7 µs for a re-rank's
    80 candidates where numpy 2's hashing np.unique took 11."""
    ids = np.sort(ids)
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    return ids[keep]


def _unique_per_row(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(ids), k), -1, dtype=np.int64)
    for row in range(len(ids)):
        seen: set[int] = set()
        for score, found in zip(scores[row], ids[row]):
            if found >= 0 and found not in seen and len(seen) < k:
                out_scores[row, len(seen)] = score
                out_ids[row, len(seen)] = found
                seen.add(int(found))
    return out_scores, out_ids


Batches = Iterable[tuple[np.ndarray, np.ndarray]]


def exact_neighbours(
    batches: Callable[[], Batches] | Sequence[tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
    ties: int = TIE_COLUMNS,
) -> np.ndarray:
    """Exact top-k ids over (ids, vectors) batches — a list of them, or a function that
    streams them (Store.iter_live_vectors); `exclude[i]` is an id left out of row i's
    answer (a query that is itself stored).

    Then the ids whose score equals the k-th's (within TIE_EPS), −1 where none: `ties`
    columns, more for rows whose ties fill them (read again deeper, up to MAX_TIES). Copies
    of one image have one score, and which of them fills the last places of an exact top k
    is arbitrary: any is a right answer (per_query_recall takes them all). Without them a
    collection stored three times over measured recall 0.937 at an exhaustive search, and
    tuning chose the widest setting, 8 ms a query."""
    if not callable(batches) and iter(batches) is batches:
        raise TypeError("exact_neighbours reads the vectors again for deep ties: pass a list "
                        "of batches or a function that returns them")  # fmt: skip

    def read() -> Batches:
        return batches() if callable(batches) else batches

    truth = with_ties(*streamed_top_k(read(), queries, k + ties, exclude), k)
    full = np.flatnonzero(truth[:, -1] >= 0)  # more ties may lie past the last column
    while len(full) and 0 < ties < MAX_TIES:
        ties = min(ties * 8, MAX_TIES)
        deeper = with_ties(*streamed_top_k(read(), queries[full], k + ties,
                                           exclude[full] if exclude is not None else None), k)
        wider = np.full((len(truth), k + ties), -1, dtype=np.int64)
        wider[:, : truth.shape[1]] = truth
        wider[full] = deeper
        truth, full = wider, full[deeper[:, -1] >= 0]
    return truth


def with_ties(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """An exact top-(k + more)'s ids as exact_neighbours gives them: the top k, then the
    ids tied with the k-th, −1 in place of the rest. `scores`, `ids`: best first."""
    tied = ids[:, k:].copy()
    tied[scores[:, k:] < scores[:, k - 1 : k] - TIE_EPS] = -1
    return np.concatenate([ids[:, :k], tied], axis=1)


def copies_of(batches: Iterable[tuple[np.ndarray, np.ndarray]], probes: np.ndarray,
              probe_ids: np.ndarray | None = None) -> np.ndarray:
    """The ids of stored vectors identical to a probe (its score with each equals its score
    with itself, within TIE_EPS), the probes' own ids left out. The same file indexed under
    two paths is stored twice: a probe held out of the index with its copy still in it
    finds its own neighbourhood as easily as a stored vector does (HeldOut), and a store of
    three copies of each vector tuned to recall 0.978 gave new queries 0.892."""
    probes = np.ascontiguousarray(probes, dtype=np.float32)
    own = np.einsum("ij,ij->i", probes, probes)[:, None] - TIE_EPS
    found = [ids[(probes @ np.asarray(vectors, dtype=np.float32).T >= own).any(axis=0)]
             for ids, vectors in batches]  # fmt: skip
    copies = np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
    return np.setdiff1d(copies, probe_ids) if probe_ids is not None else copies


def streamed_top_k(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the exact inner-product top-k over (ids, vectors) batches, best
    first; -1 ids where fewer than k. Each batch's own top k is taken before merging: merging
    whole batches copied a [queries × batch] id matrix each time (1 GB a shard for 2,000
    tuning probes) and partitioned it, most of the time of the exact answers at 1M."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for ids, vectors in batches:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            continue
        scores = queries @ np.asarray(vectors, dtype=np.float32).T
        if exclude is not None:
            _drop_own(scores, ids, exclude)
        found: np.ndarray = np.broadcast_to(ids, scores.shape)
        if scores.shape[1] > k:
            top = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
            scores, found = np.take_along_axis(scores, top, axis=1), ids[top]
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_ids = np.concatenate([best_ids, found], axis=1)
        top = np.argpartition(-merged_scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, top, axis=1)
        best_ids = np.take_along_axis(merged_ids, top, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    best_scores = np.take_along_axis(best_scores, order, axis=1)
    return best_scores, np.take_along_axis(best_ids, order, axis=1)


def _drop_own(scores: np.ndarray, ids: np.ndarray, exclude: np.ndarray) -> None:
    """Score −inf where row i's column holds the id exclude[i] (a query that is stored)."""
    order = np.argsort(ids, kind="stable")
    at = np.minimum(np.searchsorted(ids[order], exclude), len(ids) - 1)
    rows = np.flatnonzero(ids[order][at] == exclude)
    scores[rows, order[at[rows]]] = -np.inf


def flat_search_few(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A flat index's exact top-k for a few queries, by matrix products over its own vectors
    (no copy). FAISS answers fewer than 20 queries with a per-vector loop that ran 2.4-2.8x
    slower than one BLAS product here (one query over 100k x 64: 2.25 vs 0.88 ms), and one
    query at a time is how people search."""
    import faiss

    flat = faiss.downcast_index(index.index)
    n, dim = int(flat.ntotal), int(flat.d)
    vectors = faiss.rev_swig_ptr(flat.get_xb(), n * dim).reshape(n, dim)
    ids = faiss.rev_swig_ptr(index.id_map.data(), n)
    blocks = ((ids[start : start + FLAT_BLOCK], vectors[start : start + FLAT_BLOCK])
              for start in range(0, n, FLAT_BLOCK))  # fmt: skip
    # One product at a time: OpenBLAS's threads thrash when several callers use them at
    # once (8 threads searching 100k x 64: 68 queries/s together, 791 taking turns, and
    # FAISS's own loop in parallel 588).
    with _BLAS_TURN:
        scores, found = streamed_top_k(blocks, queries, k)
    scores[found < 0] = -np.finfo(np.float32).max  # what FAISS says for an empty slot
    return scores, found


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = RECALL_K) -> float:
    """Mean share of each true top-k that the answer's first k contain."""
    return float(np.mean(per_query_recall(found, truth, k)))


def per_query_recall(found: np.ndarray, truth: np.ndarray, k: int = RECALL_K) -> np.ndarray:
    """Per query: the share of its first k answers that are right — in the exact top k
    (`truth[:, :k]`) or tied with its k-th (the −1-padded columns after; exact_neighbours).
    A tie counts as ann-benchmarks' k-nn recall counts one (any answer no farther than the
    k-th true neighbour), there within 1e-3 of distance, here only within TIE_EPS."""
    return np.array([len(set(f[:k].tolist()) & (set(t.tolist()) - {-1})) / k
                     for f, t in zip(found, truth)])  # fmt: skip


def recall_lower_bound(recalls: np.ndarray) -> float:
    """Mean recall less 1.96 standard errors: tuning to this keeps the target for queries
    the tuning never saw (about 19 times in 20), not just for the sample."""
    if len(recalls) < 2:
        return float(np.mean(recalls)) if len(recalls) else 0.0
    return float(np.mean(recalls) - 1.96 * np.std(recalls, ddof=1) / math.sqrt(len(recalls)))


@dataclass
class Tuning:
    search: dict[str, int]
    recall_at_10: float
    recall_lower_bound: float
    latency_ms_p50: float
    latency_ms_p99: float
    queries: int
    met_target: bool


def tune(
    index: Any,
    spec: IndexSpec,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float,
    fetch: Fetch | None = None,
    exclude: np.ndarray | None = None,
    k: int = RECALL_K,
) -> Tuning:
    """The fastest setting whose recall@10 meets `target` (its 95% lower confidence
    bound does), with its latency: the smallest nprobe / efSearch that does, and when
    re-ranking, at each depth of candidates (a deeper re-rank lets a narrower search do),
    and for an HNSW quantizer at each width of its search (QUANTIZER_EF_STEPS: the same).

    `exclude[i]` (optional) is an id row i's answers must drop before comparing: a stored
    vector used as its own query finds itself first. `truth`: exact_neighbours' answers
    (with their tied columns) at `k`."""
    name = "nprobe" if "nprobe" in spec.search else "efSearch" if "efSearch" in spec.search else ""
    grid: list[int] = [0]
    if name == "nprobe":
        grid = [p for p in NPROBE_GRID if p < spec.nlist] + [spec.nlist]
    elif name == "efSearch":
        grid = [e for e in EF_GRID if e >= k]
    base = RERANK_FACTOR.get(spec.kind, 1)
    factors = [base]
    if fetch is not None:
        factors = [max(1, base // 2), base, base * 2, base * 4, base * 8]
    best: tuple[dict[str, int], float, float] | None = None  # (search, recall, bound)
    last: tuple[dict[str, int], float, float] = ({}, 0.0, 0.0)
    steps = QUANTIZER_EF_STEPS if name == "nprobe" and graph_quantizer(spec) else (0,)
    depths: set[int] = set()
    narrowest = math.inf  # the narrowest width any depth tried so far met the target at

    def measure(setting: dict[str, int]) -> tuple[dict[str, int], float, float]:
        spec.search = dict(setting)
        recalls = per_query_recall(_answers(index, spec, queries, k, fetch, exclude), truth, k)
        return dict(setting), float(np.mean(recalls)), recall_lower_bound(recalls)

    for factor, step in [(f, q) for f in factors for q in steps]:
        depth = max(k * factor, RERANK_MIN)
        if (depth, step) in depths:  # RERANK_MIN makes small factors the same search
            continue
        depths.add((depth, step))
        # A deeper re-rank (or a wider search of the lists' centroids) at the same width
        # does strictly more work: it is only worth timing where it lets a search narrower
        # than every shallower one's meet the target. (Narrower than the best's only, a 1M
        # store raced 1280 candidates at the width where 320 had already lost, and noise
        # let it win: 8 ms where 1.7 was had.)
        narrower = [v for v in grid if v < narrowest]
        settings = []
        for value in narrower:
            setting = {name: int(value)} if name else {}
            if factor != base:
                setting["rerank_factor"] = factor
            if step != steps[0]:
                setting["quantizer_ef"] = quantizer_ef(int(value), step)
            settings.append(setting)
        at, found, measured = _narrowest_meeting(narrower, settings, measure, target,
                                                 widest_first=narrowest < math.inf)
        last = measured or last
        if at is not None:
            narrowest = narrower[at]
            if best is None or _faster(index, spec, found[0], best[0], queries[:100], k,
                                       fetch):  # fmt: skip
                best = found
        if best is not None and best[0].get(name) == grid[0]:
            break  # the narrowest search already does: deeper re-ranks only cost more
    met = best is not None
    search, recall, bound = best if best is not None else last
    spec.search = dict(search)
    latencies = single_query_latencies(index, spec, queries[:200], k, fetch)
    return Tuning(
        search=dict(spec.search),
        recall_at_10=round(recall, 4),
        recall_lower_bound=round(bound, 4),
        latency_ms_p50=round(float(np.percentile(latencies, 50)), 3),
        latency_ms_p99=round(float(np.percentile(latencies, 99)), 3),
        queries=len(queries),
        met_target=met,
    )


Measure = Callable[[dict[str, int]], tuple[dict[str, int], float, float]]


def _narrowest_meeting(widths: list[int], settings: list[dict[str, int]], measure: Measure,
                       target: float, widest_first: bool,
                       ) -> tuple[int | None, Any, Any]:  # fmt: skip
    """(index, (setting, recall, bound)) of the narrowest of `settings` (narrowest first)
    whose recall bound meets `target`, or None; and the last measurement taken. Recall
    grows with the width, so the narrowest that meets is found by halving, once a width
    that meets is known: `widest_first`, the widest is asked first, and where it falls
    short no narrower one is tried (a deeper re-rank, below the width a shallower one
    already met at); else widths are tried from the narrowest, each at least twice the
    last, so none is more than twice as wide as the one that meets (the widest of a first
    search is every list: 500 queries through a whole 1M IVF-SQ8).
    Scanning up from the narrowest one width at a time asked ~16 widths at every re-rank
    depth and quantizer width: a 1M store's tuning took 220 s (now 21), 190 of them
    re-ranking 1,280 candidates at widths that could not meet the target."""
    if not settings:
        return None, None, None

    def meets(found: tuple[dict[str, int], float, float]) -> bool:
        return found[2] >= target or found[1] >= 1.0

    last_at = len(settings) - 1
    if widest_first:
        last = measure(settings[last_at])
        if not meets(last):
            return None, None, last
        low, high, hit = 0, last_at, last
    else:
        low, at = 0, 0
        while True:
            last = measure(settings[at])
            if meets(last):
                high, hit = at, last
                break
            if at == last_at:
                return None, None, last
            low = at + 1
            at = next((i for i in range(low, last_at) if widths[i] >= 2 * widths[at]), last_at)
    while low < high:
        middle = (low + high) // 2
        last = measure(settings[middle])
        if meets(last):
            high, hit = middle, last
        else:
            low = middle + 1
    return high, hit, last


def tune_text(index: Any, spec: IndexSpec, texts: np.ndarray, truth: np.ndarray, target: float,
              fetch: Fetch | None = None) -> Tuning:  # fmt: skip
    """`tune` on text vectors (`truth`: their exact neighbours among every vector the index
    holds) into `spec.search_text`; the pictures' `spec.search` stays as it was."""
    pictures = dict(spec.search)
    try:
        tuning = tune(index, spec, texts, truth, target, fetch=fetch)
    finally:
        spec.search = pictures
        set_search(index, spec)
    spec.search_text = dict(tuning.search)
    return tuning


def _faster(index: Any, spec: IndexSpec, challenger: dict[str, int], holder: dict[str, int],
            queries: np.ndarray, k: int, fetch: Fetch | None) -> bool:  # fmt: skip
    """Whether the `challenger` setting answers single queries clearly faster than the
    `holder`. The two take turns on each query: this VM's speed drifts ±20% from minute to
    minute, and timing one setting after the other let drift decide. Each turn asks another
    query than the one before it (the two go half the queries apart): asked the same query
    right after the challenger, the holder found that query's lists in the cache."""
    times = np.zeros((2, len(queries)))
    half = len(queries) // 2
    for row in range(len(queries)):
        for which, search in enumerate((challenger, holder)):
            at = (row + which * half) % len(queries)
            spec.search = search
            times[which, at] = single_query_latencies(index, spec, queries[at : at + 1], k,
                                                      fetch)[0]  # fmt: skip
    spec.search = dict(challenger)
    return bool(np.median(times[0]) < RERANK_MARGIN * np.median(times[1]))


def _answers(index: Any, spec: IndexSpec, queries: np.ndarray, k: int, fetch: Fetch | None,
             exclude: np.ndarray | None) -> np.ndarray:  # fmt: skip
    extra = 1 if exclude is not None else 0
    _, ids = search(index, spec, queries, k + extra, fetch=fetch)
    if exclude is None:
        return ids
    return np.array([row[row != own][:k] for row, own in zip(ids, exclude)])


def single_query_latencies(index: Any, spec: IndexSpec, queries: np.ndarray, k: int,
                           fetch: Fetch | None = None) -> np.ndarray:  # fmt: skip
    """Milliseconds per one-query search, the way an interactive user asks."""
    out = []
    for row in range(len(queries)):
        started = time.perf_counter()
        search(index, spec, queries[row : row + 1], k, fetch=fetch)
        out.append((time.perf_counter() - started) * 1000)
    return np.asarray(out)


def read(path: str, kind: str, mapped: bool = False) -> Any:
    """Read an index file; `mapped` maps it instead where this FAISS can (IVF lists,
    flat and HNSW vector storage; not fast-scan PQ), leaving it read-only."""
    import faiss

    flags = 0
    if mapped:
        # The two flags apply to different structures and FAISS refuses them combined.
        flags = {"ivf": faiss.IO_FLAG_MMAP, "flat": faiss.IO_FLAG_MMAP_IFC,
                 "hnsw": faiss.IO_FLAG_MMAP_IFC}.get(kind, 0)  # fmt: skip
    return faiss.read_index(path, flags)
