"""The Python API: a searchable collection = a store plus the model its vectors came from.

from bioindex import Collection

with Collection.open("my-store", model="bioclip", create=True) as col:
    col.index(["photos/"])
    for hit in col.search_text("a photo of Cardinalis cardinalis.", k=5):
        print(hit.score, hit.uri)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bioindex.errors import BioindexError
from bioindex.images import open_image
from bioindex.indexer.pipeline import IndexSummary, run_index
from bioindex.indexer.sources import Scan, scan_paths
from bioindex.models import EmbeddingModel, ModelIdentity, load_model
from bioindex.search.query import Hit, check_k, search_vector
from bioindex.store import Store

DEFAULT_MODEL = "bioclip"


def scan_sources(
    sources: Sequence[str | os.PathLike[str]], metadata: str | os.PathLike[str] | None = None
) -> Scan:
    """List the images under folders/files (raises on missing paths or no images)."""
    return scan_paths(sources, metadata_file=str(metadata) if metadata else None)


class Collection:
    def __init__(self, store: Store, model: EmbeddingModel | None = None, device: str = "auto"):
        self.store = store
        self._model = model
        self._device = device

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        model: str | None = None,
        checkpoint: str | None = None,
        preprocess: str | None = None,
        device: str = "auto",
        create: bool = False,
        read_only: bool = False,
    ) -> Collection:
        """Open a store; with create=True make it (with `model`, default bioclip) if missing.

        Naming a model for an existing store checks that it is the store's model.
        """
        if Store.exists(path):
            store = Store.open(path, read_only=read_only)
            collection = cls(store, device=device)
            if model is not None or checkpoint is not None:
                try:
                    loaded = load_model(
                        model or store.model["name"],
                        checkpoint=checkpoint,
                        preprocess=preprocess or store.model["preprocess"],
                        device=device,
                    )
                    collection._adopt(loaded)
                except BaseException:
                    store.close()
                    raise
            return collection
        if not create:
            if Path(path).exists() and not Path(path).is_dir():
                raise BioindexError(f"store path {path} exists and is not a directory")
            raise BioindexError(f"no bioindex store at {path}; create one with bioindex index")
        if Path(path).exists() and not Path(path).is_dir():
            raise BioindexError(f"store path {path} exists and is not a directory")
        loaded = load_model(
            model or DEFAULT_MODEL,
            checkpoint=checkpoint,
            preprocess=preprocess or "eval",
            device=device,
        )
        store = Store.create(path, {**loaded.identity.to_dict(), "checkpoint": checkpoint})
        return cls(store, loaded, device=device)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the model -----------------------------------------------------------------

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity.from_dict(self.store.model)

    @property
    def model(self) -> EmbeddingModel:
        """The store's own model, loaded on first use and checked against the manifest."""
        if self._model is None:
            manifest = self.store.model
            loaded = load_model(
                manifest["name"],
                checkpoint=manifest.get("checkpoint"),
                preprocess=manifest["preprocess"],
                device=self._device,
            )
            self._adopt(loaded)
        return self._model

    def _adopt(self, loaded: EmbeddingModel) -> None:
        self.identity.require_same(loaded.identity, f"store {self.store.path}")
        self._model = loaded

    # ---- writing -------------------------------------------------------------------

    def index(
        self,
        sources: Sequence[str | os.PathLike[str]] | Scan,
        *,
        metadata: str | os.PathLike[str] | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        commit_every: int = 2048,
        progress: bool = True,
    ) -> IndexSummary:
        """Embed new or changed images, forget vanished ones; returns the run's counts."""
        from bioindex.indexer.embed import default_batch_size, default_workers

        scan = sources if isinstance(sources, Scan) else scan_sources(sources, metadata)
        model = self.model
        if batch_size is not None and batch_size < 1:
            raise BioindexError(f"batch size must be at least 1, got {batch_size}")
        return run_index(
            self.store,
            model,
            scan,
            batch_size=batch_size or default_batch_size(model.device),
            workers=default_workers() if workers is None else workers,
            commit_every=commit_every,
            progress=progress,
        )

    def rebuild_index(self) -> int:
        return int(self.store.rebuild_index().ntotal)

    # ---- reading -------------------------------------------------------------------

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode_texts(texts)

    def embed_image(self, path: str | os.PathLike[str]) -> np.ndarray:
        file = Path(path)
        if not file.is_file():
            raise BioindexError(f"image {path} does not exist")
        try:
            image = open_image(file)
        except Exception as exc:
            raise BioindexError(f"cannot read image {path}: {exc}") from exc
        return self.model.embed_pil([image])[0]

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[Hit]:
        vector = np.asarray(vector, dtype=np.float32).ravel()
        if vector.shape[0] != self.store.dim:
            raise BioindexError(
                f"vector has {vector.shape[0]} values; the store holds dim {self.store.dim}"
            )
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise BioindexError("query vector is zero or not finite")
        return search_vector(self.store, vector / norm, k)

    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        check_k(k)
        if not text or not text.strip():
            raise BioindexError("text query is empty")
        return search_vector(self.store, self.embed_texts([text])[0], k)

    def search_image(self, path: str | os.PathLike[str], k: int = 10) -> list[Hit]:
        check_k(k)
        return search_vector(self.store, self.embed_image(path), k)

    def search_id(self, image_id: int, k: int = 10) -> list[Hit]:
        """Neighbours of an indexed image (the image itself left out)."""
        check_k(k)
        vector = self.store.vectors([int(image_id)])[0]
        return search_vector(self.store, vector, k, exclude={int(image_id)})

    def info(self) -> dict[str, Any]:
        return self.store.info()

    def failures(self) -> list[dict[str, Any]]:
        return self.store.failures()
