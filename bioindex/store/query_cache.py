"""Text query embeddings kept beside the store, so a repeated query needs no model.

One small .npy file per (model weights, text), named by their hash, written atomically. A
reader may write here (the vectors are a pure function of the key, so two writers agree);
nothing in a generation refers to it, and losing it costs only a model load. A store on a
read-only disk just goes without.
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
        return self.folder / f"{digest[:40]}.npy"

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
            self.folder.mkdir(exist_ok=True)
            with open(tmp, "wb") as handle:
                np.save(handle, vector.astype(np.float32))
            os.replace(tmp, path)
        except OSError as exc:
            log.debug("query cache not written (%s)", exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
