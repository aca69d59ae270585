"""How the server answers many requests at once.

`Gate`: every request reads one generation of the store; requests run side by side, and
moving to a newer generation (Store.refresh: new catalog files, the index catching up)
waits for the requests in flight and holds new ones meanwhile. With `workers=1` requests
run one at a time, as before: the benchmark's serial baseline.

`BatchingModel`: all model calls go through one thread, which takes the text and image
encodes of concurrent requests that queued up meanwhile and runs each kind as one batch. A
CPU spends much of a batch-of-one call on overheads a batch shares, and one thread means
the model is never entered twice at once. Batched results equal one-at-a-time results to
float rounding (~1e-7): a batched matrix product sums in another order.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bioindex.collection import Collection

log = logging.getLogger(__name__)

# Seconds a model call waits for company once one request is there. None by default: a
# lone request must not wait (it cost the fuzzing test a fifth of its time at 4 ms), and
# under load requests pile up while the model runs, so the next call takes them together.
BATCH_WINDOW = 0.0
MAX_TEXTS = 64
MAX_IMAGES = 16


class Gate:
    """Shared reading of one generation; exclusive moves to the next."""

    def __init__(self, collection: Collection, workers: int):
        self.collection = collection
        self.workers = max(1, workers)
        self._slots = threading.BoundedSemaphore(self.workers)
        self._state = threading.Condition()
        self._readers = 0
        self._moving = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._slots:
            if self.collection.store.stale():
                self._move()
            with self._state:
                while self._moving:
                    self._state.wait()
                self._readers += 1
            try:
                yield
            finally:
                with self._state:
                    self._readers -= 1
                    self._state.notify_all()

    def _move(self) -> None:
        with self._state:
            if self._moving:  # another request is moving the store on: wait for it
                while self._moving:
                    self._state.wait()
                return
            self._moving = True
            while self._readers:
                self._state.wait()
        try:
            self.collection.refresh()
        finally:
            with self._state:
                self._moving = False
                self._state.notify_all()


@dataclass
class _Job:
    kind: str  # "texts" or "images"
    payload: Any
    size: int
    done: Future = field(default_factory=Future)


class BatchingModel:
    """An EmbeddingModel stand-in whose encodes run batched on one thread."""

    def __init__(self, model: Any, window: float = BATCH_WINDOW):
        self._model = model
        self._window = window
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="bioindex-model", daemon=True)
        self._thread.start()
        # Sizes of the latest model calls by kind (tests and logs look at them).
        self.batches: dict[str, deque[int]] = {"texts": deque(maxlen=1000),
                                               "images": deque(maxlen=1000)}  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._submit(_Job("texts", list(texts), len(texts)))

    def encode_images(self, batch: Any) -> np.ndarray:
        return self._submit(_Job("images", batch, int(batch.shape[0])))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _submit(self, job: _Job) -> np.ndarray:
        if job.size == 0:
            return np.zeros((0, self._model.identity.dim), dtype=np.float32)
        self._jobs.put(job)
        return job.done.result()

    def _run(self) -> None:
        while (first := self._jobs.get()) is not None:
            jobs = [first]
            try:
                while True:  # what is queued (or arrives within the window) joins this round
                    more = (self._jobs.get(timeout=self._window) if self._window > 0
                            else self._jobs.get_nowait())  # fmt: skip
                    if more is None:
                        self._jobs.put(None)
                        break
                    jobs.append(more)
                    if len(jobs) >= MAX_TEXTS:
                        break
            except queue.Empty:
                pass
            for kind, limit in (("texts", MAX_TEXTS), ("images", MAX_IMAGES)):
                mine = [j for j in jobs if j.kind == kind]
                while mine:
                    group, taken = [], 0
                    while mine and (not group or taken + mine[0].size <= limit):
                        taken += mine[0].size
                        group.append(mine.pop(0))
                    self._encode(kind, group)

    def _encode(self, kind: str, group: list[_Job]) -> None:
        try:
            if kind == "texts":
                vectors = self._model.encode_texts([t for j in group for t in j.payload])
            else:
                torch = self._model._torch
                vectors = self._model.encode_images(torch.cat([j.payload for j in group]))
        except BaseException as exc:  # handed to every waiting request
            for job in group:
                job.done.set_exception(exc)
            return
        self.batches[kind].append(sum(j.size for j in group))
        start = 0
        for job in group:
            job.done.set_result(vectors[start : start + job.size])
            start += job.size
