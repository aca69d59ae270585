"""Decode in worker processes, embed in the main one, batch by batch."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bioindex.images import open_image
from bioindex.indexer.sources import Item
from bioindex.models import EmbeddingModel
from bioindex.store import Failure, ImageRecord


@dataclass
class EmbeddedBatch:
    records: list[ImageRecord]
    vectors: np.ndarray
    failures: list[Failure]


def default_workers() -> int:
    # Leave a core to the process that runs the model.
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def default_batch_size(device: str) -> int:
    return 256 if device == "cuda" else 32


class DecodeDataset:
    """Map-style dataset: item position → preprocessed tensor, or the reason it failed."""

    def __init__(self, items: Sequence[Item], transform: Callable[[Any], Any]):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> dict[str, Any]:
        item = self.items[position]
        stage = "read"
        try:
            data = item.read_bytes()
            stage = "decode"
            image = open_image(data)
            stage = "preprocess"
            tensor = self.transform(image)
        except Exception as exc:  # bad input is recorded, never fatal
            return {"position": position, "error": (stage, f"{type(exc).__name__}: {exc}")}
        return {
            "position": position,
            "tensor": tensor,
            "sha256": hashlib.sha256(data).hexdigest(),
            "width": image.width,
            "height": image.height,
        }


def collate_samples(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return samples


def worker_init(_: int) -> None:
    import torch

    # Each decode worker is one core's worth of work; torch's own threads would oversubscribe.
    torch.set_num_threads(1)


def embed_items(
    items: Sequence[Item],
    model: EmbeddingModel,
    batch_size: int,
    workers: int,
) -> Iterator[EmbeddedBatch]:
    """Yield one EmbeddedBatch per decoded batch, in item order."""
    import torch
    from torch.utils.data import DataLoader

    if not items:
        return
    workers = workers if len(items) > batch_size else 0
    loader = DataLoader(
        DecodeDataset(items, model.transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_samples,
        worker_init_fn=worker_init if workers else None,
        pin_memory=model.device == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    for samples in loader:
        good = [s for s in samples if "tensor" in s]
        failures = [
            Failure(
                items[s["position"]].uri,
                s["error"][0],
                s["error"][1],
                items[s["position"]].size,
                items[s["position"]].mtime,
            )
            for s in samples
            if "error" in s
        ]
        if good:
            vectors = model.encode_images(torch.stack([s["tensor"] for s in good]))
        else:
            vectors = np.zeros((0, model.identity.dim), dtype=np.float32)
        records = [
            ImageRecord(
                uri=items[s["position"]].uri,
                size=items[s["position"]].size,
                mtime=items[s["position"]].mtime,
                sha256=s["sha256"],
                width=s["width"],
                height=s["height"],
                metadata=items[s["position"]].metadata,
            )
            for s in good
        ]
        yield EmbeddedBatch(records, vectors, failures)
