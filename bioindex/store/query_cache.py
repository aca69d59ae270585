"""Text query embeddings kept beside the store, so a repeated query needs no model.

One small .npy file per (model weights, text), named by their hash, written atomically, in
one of 256 folders by the hash's first two hex digits. A reader may write here (the vectors
are a pure function of the key, so two writers agree); nothing in a generation refers to
it, and losing it costs only a model load. A store on a read-only disk just goes without.

Bounded: a folder keeps its FILES_PER_FOLDER newest files. A server asked a new text each
time (a fuzzer, a crawler, months of a public search page) wrote one file per text, 4 kB
of disk each, without end.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bioindex.store.layout import QUERY_CACHE_DIR

log = logging.getLogger(__name__)

FILES_PER_FOLDER = 400  # x 256 folders: ~100k texts, ~400 MB on 4 kB blocks at the most


class QueryCache:
    def __init__(self, store_root: Path, model_key: str, dim: int):
        self.folder = Path(store_root) / QUERY_CACHE_DIR
        self.model_key = model_key
        self.dim = dim

    def embed(self, texts: Sequence[str], encode: Callable[[list[str]], np.ndarray]
              ) -> np.ndarray:  # fmt: skip
        """[len(texts), dim] vectors: cached ones read, the rest encoded (once) and kept."""
        found = {t: v for t in dict.fromkeys(texts) if (v := self._read(t)) is not None}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            for text, vector in zip(missing, encode(missing)):
                found[text] = np.asarray(vector, dtype=np.float32)
                self._write(text, found[text])
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[t] for t in texts])

    def _path(self, text: str) -> Path:
        digest = hashlib.sha256(f"{self.model_key}\0{text}".encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest[:40]}.npy"

    def _read(self, text: str) -> np.ndarray | None:
        try:
            vector = np.load(self._path(text), allow_pickle=False)
        except (OSError, ValueError):
            return None
        if vector.shape != (self.dim,) or not np.isfinite(vector).all():
            return None  # damaged or foreign: encode again
        return vector.astype(np.float32)

    def _write(self, text: str, vector: np.ndarray) -> None:
        path = self._path(text)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                np.save(handle, vector.astype(np.float32))
            os.replace(tmp, path)
            _keep_newest(path.parent, FILES_PER_FOLDER)
        except OSError as exc:
            log.debug("query cache not written (%s)", exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def _keep_newest(folder: Path, count: int) -> None:
    """Delete all but the `count` most recently written .npy files of `folder`."""
    with os.scandir(folder) as entries:
        kept = [(e.stat().st_mtime_ns, e.path) for e in entries if e.name.endswith(".npy")]
    if len(kept) <= count:
        return
    for _, path in sorted(kept)[: len(kept) - count]:
        with contextlib.suppress(OSError):  # another process took it first
            os.unlink(path)
