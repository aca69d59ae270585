"""Decode in worker processes, embed in the main one, batch by batch.

Workers read, decode and resize whole batches and hand over one tensor per batch. When the
model's transform ends in ToTensor + Normalize (open_clip's eval transform does), workers
stop before those two and ship uint8 pixels — a quarter of the bytes — and the model side
finishes the same arithmetic on its device, so the result is identical.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pillow_heif

from bioindex.images import (
    bounded_load,
    decode_smaller,
    describe_error,
    open_image,
    photo_facts,
    photo_facts_of,
    quiet_image_warnings,
    to_rgb,
)
from bioindex.indexer.device_decode import (
    crop_geometry,
    decode_on_device,
    device_decodable,
    use_device_decode,
)
from bioindex.indexer.sources import Item
from bioindex.models import EmbeddingModel
from bioindex.store import Failure, ImageRecord


@dataclass
class EmbeddedBatch:
    records: list[ImageRecord]
    vectors: np.ndarray
    failures: list[Failure]


def default_workers(device: str = "cpu") -> int:
    cores = os.cpu_count() or 2
    if device == "cpu":
        # Decoding and the model share the cores; the model gets its share between batches.
        return max(1, min(32, cores))
    return max(1, min(32, cores - 1))  # leave a core to feed the GPU


def default_batch_size(device: str) -> int:
    return 256 if device == "cuda" else 32


def split_transform(transform: Any) -> tuple[Callable[[Any], Any] | None, Any, Any]:
    """(PIL part, mean, std) when `transform` ends in ToTensor + Normalize, else (None, …)."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if len(steps) >= 2 and isinstance(steps[-2], T.ToTensor) and isinstance(steps[-1], T.Normalize):
        return T.Compose(steps[:-2]), steps[-1].mean, steps[-1].std
    return None, None, None


def decode(data: bytes, image_size: int, fast: bool) -> Any:
    """Bytes → upright RGB. `fast` lets a JPEG decode at reduced scale in the DCT domain
    (Image.draft), and a JPEG 2000 at a lower resolution, to no less than twice the model's
    input on the shortest side."""
    if not fast:
        return open_image(data)
    from PIL import Image, ImageOps

    with io.BytesIO(data) as stream:
        image = Image.open(stream)
        width, height = image.size
        target = 2 * image_size
        short = min(width, height)
        if short >= 2 * target:
            decode_smaller(image, (max(1, width * target // short),
                                   max(1, height * target // short)))  # fmt: skip
        bounded_load(image)
    return to_rgb(ImageOps.exif_transpose(image))


class DecodeBatches:
    """Map-style dataset of whole batches: batch number → pixels, or reasons for failure."""

    def __init__(self, items: Sequence[Item], transform: Callable[[Any], Any], batch_size: int,
                 image_size: int, fast_decode: bool = False, raw_jpeg: bool = False):  # fmt: skip
        self.items = items
        self.batch_size = batch_size
        self.image_size = image_size
        self.fast_decode = fast_decode
        self.raw_jpeg = raw_jpeg
        self.pil_part, _, _ = split_transform(transform)
        self.transform = transform

    def __len__(self) -> int:
        return (len(self.items) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, number: int) -> dict[str, Any]:
        start = number * self.batch_size
        positions = range(start, min(start + self.batch_size, len(self.items)))
        return decode_batch([self.items[p] for p in positions], positions, self.pil_part,
                            self.transform, self.image_size, self.fast_decode,
                            self.raw_jpeg)  # fmt: skip


def decode_batch(
    items: Sequence[Item],
    positions: Sequence[int],
    pil_part: Any,
    transform: Any,
    image_size: int,
    fast_decode: bool,
    raw_jpeg: bool = False,
) -> dict[str, Any]:
    """Read, decode and preprocess items: pixels (uint8 when `pil_part` is given, else the
    full transform's float tensor) of the good ones, (position, stage, error) of the rest.

    With `raw_jpeg`, JPEGs the device decoder handles are not decoded here: their bytes go,
    end to end, in one uint8 tensor "raw" with their lengths in "raw_sizes" (one tensor
    crosses from a worker process far faster than hundreds), and their positions come after
    the decoded ones (see device_decode)."""
    import torch

    quiet_image_warnings()  # the process decoding (a worker, Ray's, or this one)
    began = time.process_time()
    square = _square_size(pil_part) if pil_part is not None else None
    good: dict[str, list[Any]] = {"position": [], "sha256": [], "width": [], "height": [],
                                  "facts": []}  # fmt: skip
    pixels = []
    failures = []
    raw: dict[str, list[Any]] = {"position": [], "sha256": [], "width": [], "height": [],
                                 "facts": [], "bytes": []}  # fmt: skip
    for item, position in zip(items, positions):
        stage = "read"
        try:
            data = item.read_bytes()
            if not data:  # Pillow would call it an image it cannot identify
                raise OSError("the file is empty (0 bytes)")
            stage = "decode"
            if raw_jpeg and (size := device_decodable(data)) is not None:
                for key, value in (
                    ("position", position),
                    ("width", size[0]),
                    ("height", size[1]),
                    ("sha256", hashlib.sha256(data).hexdigest()),
                    ("facts", photo_facts_of(data)),
                    ("bytes", data),
                ):
                    raw[key].append(value)  # fmt: skip
                continue
            image = decode(data, image_size, fast_decode)
            stage = "preprocess"
            if pil_part is None:
                pixels.append(transform(image))
            elif image.mode == "RGB" and image.size == (square, square):
                pixels.append(np.asarray(image))  # resize + crop to its own size: a no-op
            else:
                pixels.append(np.asarray(pil_part(image), dtype=np.uint8))
        except Exception as exc:  # bad input is recorded, never fatal
            failures.append((position, stage, describe_error(exc)))
            continue
        good["position"].append(position)
        good["sha256"].append(hashlib.sha256(data).hexdigest())
        good["width"].append(image.width)
        good["height"].append(image.height)
        good["facts"].append(photo_facts(image))
    if not pixels:
        good["pixels"] = None
    elif pil_part is None:
        good["pixels"] = torch.stack(pixels)
    else:
        # Stacked as height × width × channel, as decoded: one contiguous copy, and a
        # channels-last [n, 3, H, W] view for the model.
        good["pixels"] = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
    good["failures"] = failures
    good["decoded"] = len(good["position"])  # the first this many have pixels
    for key in ("position", "sha256", "width", "height", "facts"):
        good[key].extend(raw[key])
    good["raw_sizes"] = [len(data) for data in raw["bytes"]]
    good["raw"] = (
        torch.frombuffer(bytearray(b"".join(raw["bytes"])), dtype=torch.uint8)
        if raw["bytes"]
        else None
    )
    good["decode_seconds"] = time.process_time() - began  # CPU time: immune to waiting
    return good


@functools.lru_cache(maxsize=8)
def _square_size(pil_part: Any) -> int | None:
    """S when the PIL steps are resize-short-side-to-S + centre-crop S×S (+ RGB)."""
    geometry = crop_geometry(pil_part)
    return geometry[0] if geometry is not None else None


def worker_init(_: int, nice: int = 0) -> None:
    import torch

    # Each decode worker is one core's worth of work; torch's own threads would oversubscribe,
    # as would libheif's (4 threads a HEIC decode by default).
    torch.set_num_threads(1)
    pillow_heif.options.DECODE_THREADS = 1
    if nice:
        os.nice(nice)


# Decode workers' priority when they share a CPU with the model (see CpuThreads).
CPU_WORKER_NICE = 19


class CpuThreads:
    """The model's OpenMP threads on a CPU shared with decode workers. While decoding is
    the slower stage the model keeps the cores the workers leave (more threads would only
    run less efficiently beside them); when the model is the slower one, it takes every
    core, and the workers, at a lower priority, decode in what it leaves. Decided once,
    from the workers' own CPU seconds and the model's seconds on the first batches."""

    SAMPLE = 4  # batches after the first (whose time is the workers starting up)

    def __init__(self, torch: Any, workers: int):
        self.torch = torch
        cores = os.cpu_count() or 2
        self.few, self.all = max(1, cores - workers), cores
        self.batches, self.decoding, self.modelling = 0, 0.0, 0.0
        torch.set_num_threads(self.few)

    def update(self, decoding: float, modelling: float) -> None:
        """After a batch: CPU seconds its worker spent decoding it, seconds in the model."""
        self.batches += 1
        if self.batches == 1 or self.batches > self.SAMPLE + 1:
            return
        self.decoding += decoding
        self.modelling += modelling
        if self.batches == self.SAMPLE + 1 and self.modelling > self.decoding:
            self.torch.set_num_threads(self.all)


def batch_loader(items: Sequence[Item], model: EmbeddingModel, batch_size: int, workers: int,
                 fast_decode: bool = False, raw_jpeg: bool = False) -> Any:  # fmt: skip
    from torch.utils.data import DataLoader

    dataset = DecodeBatches(items, model.transform, batch_size, model.identity.image_size,
                            fast_decode, raw_jpeg)  # fmt: skip
    workers = min(workers, len(dataset)) if len(dataset) > 1 else 0
    return DataLoader(
        dataset,
        batch_size=None,  # the dataset already yields whole batches
        shuffle=False,
        num_workers=workers,
        worker_init_fn=(
            functools.partial(worker_init, nice=CPU_WORKER_NICE if model.device == "cpu" else 0)
            if workers
            else None
        ),
        pin_memory=model.device == "cuda",
        prefetch_factor=2 if workers else None,
    )


def embed_items(
    items: Sequence[Item],
    model: EmbeddingModel,
    batch_size: int,
    workers: int,
    fast_decode: bool = False,
    gpu_decode: bool | None = None,
) -> Iterator[EmbeddedBatch]:
    """Yield one EmbeddedBatch per batch of items, in item order (failures aside).

    `gpu_decode` (default: on with CUDA) decodes baseline JPEGs on the model's device."""
    if not items:
        return
    pil_part, mean, std = split_transform(model.transform)
    geometry = crop_geometry(pil_part) if use_device_decode(model, pil_part, gpu_decode) else None
    torch = model._torch
    threads = torch.get_num_threads()
    cpu_threads = CpuThreads(torch, workers) if model.device == "cpu" and workers else None
    try:
        # One batch in flight: on a GPU the model runs batch k+1 while batch k's vectors
        # come back and are handed on.
        pending: tuple[dict[str, Any], Callable[[], np.ndarray]] | None = None
        for batch in batch_loader(items, model, batch_size, workers, fast_decode,
                                  raw_jpeg=geometry is not None):  # fmt: skip
            if batch.get("raw_sizes"):
                batch = _finish_on_device(batch, model.device, geometry)
            began = time.perf_counter()
            started = (batch, start_pixels(model, batch["pixels"], mean, std))
            if cpu_threads is not None:  # on a CPU the batch is done by now
                cpu_threads.update(batch["decode_seconds"], time.perf_counter() - began)
            if pending is not None:
                yield to_embedded_batch(items, pending[0], pending[1]())
            pending = started
        if pending is not None:
            yield to_embedded_batch(items, pending[0], pending[1]())
    finally:
        torch.set_num_threads(threads)


def _finish_on_device(batch: dict[str, Any], device: str, geometry: Any) -> dict[str, Any]:
    """Decode the batch's raw JPEGs on the device and append them to its pixels."""
    import torch

    raws = list(torch.split(batch["raw"], batch["raw_sizes"]))  # views, no copies
    decoded = batch["decoded"]
    sizes = list(zip(batch["width"][decoded:], batch["height"][decoded:]))
    pixels, failed = decode_on_device(raws, device, geometry, sizes)
    if failed:
        bad = {decoded + index for index, _ in failed}
        batch["failures"] = batch["failures"] + [
            (batch["position"][decoded + index], "decode", error) for index, error in failed
        ]
        for key in ("position", "sha256", "width", "height"):
            batch[key] = [v for i, v in enumerate(batch[key]) if i not in bad]
    cpu_pixels = batch["pixels"]
    if cpu_pixels is not None and len(cpu_pixels):
        pixels = torch.cat([cpu_pixels.to(pixels.device), pixels])
    batch["pixels"] = pixels
    return batch


def embed_pixels(model: EmbeddingModel, pixels: Any, mean: Any, std: Any) -> np.ndarray:
    """Unit vectors for a batch of uint8 (resized) or float (fully transformed) pixels."""
    return start_pixels(model, pixels, mean, std)()


def start_pixels(model: EmbeddingModel, pixels: Any, mean: Any, std: Any
                 ) -> Callable[[], np.ndarray]:  # fmt: skip
    """Queue a batch on the model (see EmbeddingModel.start_images); call to get vectors."""
    if pixels is None or len(pixels) == 0:
        empty = np.zeros((0, model.identity.dim), dtype=np.float32)
        return lambda: empty
    if pixels.dtype == model._torch.uint8:
        return model.start_pixels(pixels, mean, std)
    return model.start_images(pixels)


def to_embedded_batch(items: Sequence[Item], batch: dict[str, Any],
                      vectors: np.ndarray) -> EmbeddedBatch:  # fmt: skip
    """Catalog records for a decoded batch (as decode_batch describes it) and its vectors."""
    records = [
        ImageRecord(
            uri=items[p].uri, size=items[p].size, mtime=items[p].mtime, sha256=sha,
            width=w, height=h, metadata=items[p].metadata, facts=facts,
        )
        for p, sha, w, h, facts in zip(batch["position"], batch["sha256"], batch["width"],
                                       batch["height"], batch["facts"])
    ]  # fmt: skip
    failures = [
        Failure(items[p].uri, stage, error, items[p].size, items[p].mtime)
        for p, stage, error in batch["failures"]
    ]
    return EmbeddedBatch(records, vectors, failures)
