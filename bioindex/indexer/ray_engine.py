"""The same decode and embed stages on a Ray cluster (`bioindex index --engine ray`).

Ray Data streams the work list in blocks: decoding runs as CPU tasks, embedding in a pool
of actors that each load the model once (one GPU each on GPU clusters). The driver keeps
the catalog: results stream back to it and are committed in chunks by the same code as the
local engine, so image ids, atomic commits and resume-after-kill are the store's, not
Ray's. Only what the tasks need (position, path, offset, size) travels; metadata stays on
the driver.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from bioindex.errors import BioindexError
from bioindex.indexer.embed import (
    EmbeddedBatch,
    decode_batch,
    embed_pixels,
    split_transform,
    to_embedded_batch,
)
from bioindex.indexer.sources import Item
from bioindex.models import EmbeddingModel

# Rows per Ray Data block: small enough to spread over workers, big enough to amortise
# task overhead.
BLOCK_ROWS = 256
MAX_BLOCKS = 20_000  # past this, blocks grow instead (Ray tracks every block's reference)


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Join the cluster at `address` ('auto', 'ray://host:port'), or start a local one."""
    try:
        import ray
    except ImportError as exc:
        raise BioindexError("--engine ray needs Ray: pip install 'bioindex[distributed]'") from exc
    # Ray's start-up notes (token auth, actor restarts, progress bars, concurrency hints)
    # concern Ray, not the run, and read as failures on runs that succeed: --verbose shows them.
    verbose = logging.getLogger("bioindex").isEnabledFor(logging.DEBUG)
    level = logging.INFO if verbose else logging.ERROR
    if not verbose:
        warnings.filterwarnings("ignore", module=r"ray\.")
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
        # Ray Data logs an error from its C++ core for its own actors' arguments; only
        # fatal ones stay (Ray announces that setting on stderr, hence _silenced below).
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose,
                                   "logging_level": level}  # fmt: skip
        if address:
            options["address"] = address
        elif num_cpus:
            options["num_cpus"] = num_cpus
        try:
            with contextlib.nullcontext() if verbose else _silenced_stderr():
                ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BioindexError(f"cannot reach a Ray cluster at {address}: {exc}") from exc
    logging.getLogger("ray.data").setLevel(level)  # after ray.data set up its loggers
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # bioindex draws its own
    return ray


@contextlib.contextmanager
def _silenced_stderr() -> Iterator[None]:
    """The process's stderr (file descriptor 2, where Ray's C++ core writes) sent to
    /dev/null; a failed start still raises, with its message, in Python."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _decode_rows(rows: dict[str, np.ndarray], transform: Any, image_size: int,
                 fast_decode: bool) -> dict[str, np.ndarray]:  # fmt: skip
    """Ray Data CPU task: a block of work rows → pixels and each row's outcome."""
    items = [
        Item(uri=str(uri), path=str(path), size=None if size < 0 else int(size), mtime=None,
             offset=None if offset < 0 else int(offset),
             packed=None if packed < 0 else int(packed), method=int(method))
        for uri, path, size, offset, packed, method in zip(
            rows["uri"], rows["path"], rows["size"], rows["offset"], rows["packed"],
            rows["method"])
    ]  # fmt: skip
    positions = [int(p) for p in rows["position"]]
    pil_part, _, _ = split_transform(transform)
    done = decode_batch(items, positions, pil_part, transform, image_size, fast_decode)
    ok = np.isin(rows["position"], done["position"])
    pixels = None if done["pixels"] is None else done["pixels"].numpy()
    shape = (len(positions), *(pixels.shape[1:] if pixels is not None else (1,)))
    all_pixels = np.zeros(shape, dtype=pixels.dtype if pixels is not None else np.uint8)
    if pixels is not None:
        all_pixels[ok] = pixels
    decoded = dict(zip(done["position"], zip(done["sha256"], done["width"], done["height"],
                                             done["facts"])))  # fmt: skip
    failed = {p: (stage, error) for p, stage, error in done["failures"]}
    blank, no_failure = ("", 0, 0, {}), ("", "")
    return {
        "position": rows["position"],
        "ok": ok,
        "pixels": all_pixels,
        "sha256": np.array([decoded.get(p, blank)[0] for p in positions], dtype=object),
        "width": np.array([decoded.get(p, blank)[1] for p in positions], dtype=np.int64),
        "height": np.array([decoded.get(p, blank)[2] for p in positions], dtype=np.int64),
        "facts": np.array([json.dumps(decoded.get(p, blank)[3]) for p in positions],
                          dtype=object),
        "stage": np.array([failed.get(p, no_failure)[0] for p in positions], dtype=object),
        "error": np.array([failed.get(p, no_failure)[1] for p in positions], dtype=object),
    }


class _Embed:
    """Ray Data actor stage: loads the model once, embeds the rows that decoded."""

    def __init__(self, identity: Any, checkpoint: str | None, device: str, precision: str):
        import torch

        from bioindex.models import load_model

        if device == "cpu":
            torch.set_num_threads(1)  # one actor per core; decode tasks use the others
        self.model = load_model(identity.source, checkpoint=checkpoint,
                                preprocess=identity.preprocess, device=device)  # fmt: skip
        # A worker node with other weights at the same path must not write into the store.
        identity.require_same(self.model.identity, "the store")
        self.model.set_precision(precision)
        _, self.mean, self.std = split_transform(self.model.transform)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(rows["ok"], dtype=bool)
        vectors = np.zeros((len(ok), self.model.identity.dim), dtype=np.float32)
        if ok.any():
            torch = self.model._torch
            pixels = torch.from_numpy(np.ascontiguousarray(rows["pixels"][ok]))
            vectors[ok] = embed_pixels(self.model, pixels, self.mean, self.std)
        out = {k: v for k, v in rows.items() if k != "pixels"}
        out["vector"] = vectors
        return out


def embed_items(
    items: Sequence[Item],
    model: EmbeddingModel,
    *,
    batch_size: int,
    commit_every: int,
    checkpoint: str | None = None,
    address: str | None = None,
    num_gpus: int = 0,
    actors: int | None = None,
    fast_decode: bool = False,
) -> Iterator[EmbeddedBatch]:
    """Yield EmbeddedBatches (in no particular order) computed on Ray; each actor loads
    the model from `model.identity.source` (+ `checkpoint`) and checks its weights."""
    if not items:
        return
    ray = connect(address)
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
    if num_gpus:
        actors, device, per_actor = actors or num_gpus, "cuda", {"num_gpus": 1}
    else:
        # Without GPUs Ray fuses the decode tasks into the model actors (same resources),
        # so each core gets an actor that decodes and embeds its own blocks.
        actors, device, per_actor = actors or max(1, cluster_cpus), "cpu", {"num_cpus": 1}
    identity = model.identity
    blocks = list(_work_blocks(ray, items))
    # An actor with no block to take still loads the model: on a small run (a day's new
    # photos) that start-up was most of the time, and it took the cores the others needed.
    actors = min(actors, len(blocks))
    work = ray.data.from_arrow_refs(blocks)
    decoded = work.map_batches(
        _decode_rows, fn_args=(model.transform, identity.image_size, fast_decode),
        batch_size=batch_size, num_cpus=1,
    )  # fmt: skip
    embedded = decoded.map_batches(
        _Embed,
        fn_constructor_args=(identity, checkpoint, device, model.precision),
        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors), **per_actor,
    )  # fmt: skip
    for rows in embedded.iter_batches(batch_size=commit_every, batch_format="numpy"):
        yield _to_batch(items, rows)


def _work_blocks(ray: Any, items: Sequence[Item]) -> Iterator[Any]:
    """The work list as Arrow blocks put straight into Ray's object store, one block at a
    time, so the driver never holds a second copy of the whole list."""
    import pyarrow as pa

    rows = max(BLOCK_ROWS, -(-len(items) // MAX_BLOCKS))
    for start in range(0, len(items), rows):
        chunk = items[start : start + rows]
        yield ray.put(pa.table({
            "position": pa.array(range(start, start + len(chunk)), pa.int64()),
            "uri": pa.array([it.uri for it in chunk], pa.string()),
            "path": pa.array([it.path for it in chunk], pa.string()),
            "size": pa.array([-1 if it.size is None else it.size for it in chunk], pa.int64()),
            "offset": pa.array([-1 if it.offset is None else it.offset for it in chunk],
                               pa.int64()),
            # A compressed zip member's length: without it the member's bytes were read as
            # they lie; and how it is compressed.
            "packed": pa.array([-1 if it.packed is None else it.packed for it in chunk],
                               pa.int64()),
            "method": pa.array([it.method for it in chunk], pa.int64()),
        }))  # fmt: skip


def _to_batch(items: Sequence[Item], rows: dict[str, np.ndarray]) -> EmbeddedBatch:
    ok = np.asarray(rows["ok"], dtype=bool)
    positions = [int(p) for p in rows["position"]]
    batch = {
        "position": [p for p, good in zip(positions, ok) if good],
        "sha256": [str(s) for s, good in zip(rows["sha256"], ok) if good],
        "width": [int(w) for w, good in zip(rows["width"], ok) if good],
        "height": [int(h) for h, good in zip(rows["height"], ok) if good],
        "facts": [json.loads(str(f)) for f, good in zip(rows["facts"], ok) if good],
        "failures": [(p, str(st), str(er)) for p, st, er, good
                     in zip(positions, rows["stage"], rows["error"], ok) if not good],
    }  # fmt: skip
    vectors = np.asarray(rows["vector"], dtype=np.float32)[ok]
    return to_embedded_batch(items, batch, vectors)


def _add_shards(empty: bytes, parts: list[tuple[str, np.ndarray, np.ndarray]]) -> bytes:
    """Ray task: a copy of the trained, empty index filled from some shard files."""
    import faiss

    from bioindex import faiss_index

    index = faiss.deserialize_index(np.frombuffer(empty, dtype=np.uint8))
    for path, ids, rows in parts:
        vectors = np.asarray(np.load(path, mmap_mode="r")[rows], dtype=np.float32)
        faiss_index.add(index, ids, vectors)
    return faiss.serialize_index(index).tobytes()


def build_index(spec: Any, sample: np.ndarray | None,
                parts: Sequence[tuple[str, np.ndarray, np.ndarray]],
                progress: Any = None, address: str | None = None) -> Any:  # fmt: skip
    """Train once on the driver, add shard groups in parallel tasks, merge the parts.

    Each task returns its part serialized, and the driver merges one part at a time as
    they finish, so it never holds more than the index and one part."""
    import faiss

    from bioindex.faiss_index import train

    ray = connect(address)
    index = train(spec, sample)
    empty = ray.put(faiss.serialize_index(index).tobytes())
    tasks = max(1, int(ray.cluster_resources().get("CPU", 1)))
    groups = [list(parts[i::tasks]) for i in range(tasks) if parts[i::tasks]]
    remote = ray.remote(num_cpus=1)(_add_shards)
    pending = {remote.remote(empty, group): sum(len(ids) for _, ids, _ in group)
               for group in groups}  # fmt: skip
    while pending:
        [done], _ = ray.wait(list(pending), num_returns=1)
        part = faiss.deserialize_index(np.frombuffer(ray.get(done), dtype=np.uint8))
        index.merge_from(part, 0)
        added = pending.pop(done)
        if progress:
            progress(added)
    return index


class RayBuilder:
    """The store's index builder on a Ray cluster: mergeable kinds (flat, IVF) add their
    shards in parallel tasks; HNSW graphs cannot be merged and are built locally."""

    def __init__(self, address: str | None = None):
        self.address = address

    def __call__(self, spec: Any, sample: np.ndarray | None, source: Any,
                 progress: Any = None) -> Any:  # fmt: skip
        from bioindex.faiss_index import build, mergeable

        if not mergeable(spec):
            return build(spec, sample, source.iter_live_vectors(), progress)
        return build_index(spec, sample, source.live_shard_files(), progress, self.address)
