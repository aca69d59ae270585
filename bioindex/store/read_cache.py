"""What the catalog answered, kept for the store's current generation.

A generation's catalog files never change, so an answer read once stays the answer until the
store moves to a newer generation. Reading from Parquet is most of what a search answer
costs past the index: 10 result rows took 1.6 ms on a 288-image store (the index 0.05) and
18-29 ms at 1M images, a taxon's image_ids 1.2 ms on the small store — while a server is
asked the same things again and again (the same queries, the next page, a record after its
hit, a taxon's images). Shared by the store's threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

ROWS = 10_000  # rows kept; a few kB each at most
ID_BYTES = 64 * 2**20  # bytes of image_id arrays kept (a kingdom's ids at 1M: 8 MB)


class GenerationCache:
    """The most recently used answers of one generation, at most `capacity` in weight
    (`weigh` of each value; 1 each by default). Callers that always pass one generation
    get a plain weighed LRU (the server's thumbnails, whose keys hold their file's mtime)."""

    def __init__(self, capacity: int, weigh: Callable[[Any], int] = lambda value: 1):
        self.capacity = capacity
        self._weigh = weigh
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._kept: OrderedDict[Hashable, Any] = OrderedDict()
        self._weight = 0

    def get(self, generation: int, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        """The kept answers among `keys` at `generation`."""
        found = {}
        with self._lock:
            self._move_to(generation)
            for key in keys:
                if key in self._kept:
                    self._kept.move_to_end(key)
                    found[key] = self._kept[key]
        return found

    def put(self, generation: int, answers: dict[Hashable, Any]) -> None:
        with self._lock:
            if generation != self._generation:  # the store moved on while this was read
                return
            for key, value in answers.items():
                weight = self._weigh(value)
                if weight > self.capacity:
                    continue
                if key in self._kept:
                    self._weight -= self._weigh(self._kept.pop(key))
                self._kept[key] = value
                self._weight += weight
            while self._weight > self.capacity:
                self._weight -= self._weigh(self._kept.popitem(last=False)[1])

    def _move_to(self, generation: int) -> None:
        if generation != self._generation:
            self._kept.clear()
            self._weight = 0
            self._generation = generation


Row = dict[str, Any]


def cached_rows(cache: GenerationCache, generation: int, image_ids: Sequence[int],
                read: Callable[[Sequence[int]], dict[int, Row]]) -> dict[int, Row]:  # fmt: skip
    """Rows of `image_ids` (those the catalog has), by image_id: kept ones from `cache`, the
    rest from `read`. Each row is a copy the caller may change."""
    ids = [int(i) for i in image_ids]
    found = cache.get(generation, ids)
    missing = [i for i in ids if i not in found]
    if missing:
        fresh = read(missing)
        cache.put(generation, fresh)
        found.update(fresh)
    return {image_id: dict(row) for image_id, row in found.items()}
