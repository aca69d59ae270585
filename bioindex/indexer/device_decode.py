"""JPEG decoding on the model's device (nvJPEG through torchvision on CUDA).

At 224 px a GPU embeds far faster than CPU cores decode, so on CUDA the decode workers only
read bytes for the JPEGs that the device decodes exactly like Pillow (baseline, no EXIF
rotation, complete, RGB or grey) and the model side decodes, resizes and crops them as one
batch on the GPU. Every other file keeps the CPU path. The same code runs on the CPU
(torchvision's libjpeg decoder), which is how the tests check it.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from typing import Any

from bioindex.errors import BioindexError
from bioindex.images import DECODE_PIXELS


def device_decodable(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG the device decoder handles as Pillow would, else None."""
    if data[:2] != b"\xff\xd8" or data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return None  # not a JPEG, or cut short (the CPU path reports truncation)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:  # header only; nothing is decoded
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return None
            if image.width * image.height > DECODE_PIXELS:
                return None  # decoded at reduced scale on the CPU path (bounded_load)
            if image.info.get("progressive") or image.info.get("progression"):
                return None
            if image.getexif().get(0x0112, 1) not in (0, 1):
                return None  # needs rotating; exif_transpose on the CPU path does it
            return image.size
    except Exception:
        return None


def crop_geometry(pil_part: Any) -> tuple[int, Any] | None:
    """(size, interpolation) when the PIL steps are Resize(short side) + CenterCrop(square)
    (+ RGB conversion), the eval preprocessing the device path reproduces; else None."""
    from torchvision import transforms as T

    steps = [s for s in getattr(pil_part, "transforms", []) if not _is_mode_conversion(s)]
    if len(steps) != 2 or not isinstance(steps[0], T.Resize):
        return None
    resize, crop = steps
    if not isinstance(crop, T.CenterCrop):
        return None
    size = resize.size if isinstance(resize.size, int) else resize.size[0]
    if isinstance(resize.size, (list, tuple)) and len(resize.size) != 1:
        return None
    crop_size = crop.size if isinstance(crop.size, int) else crop.size[0]
    if crop_size != size:
        return None
    return int(size), resize.interpolation


def _is_mode_conversion(step: Any) -> bool:
    name = type(step).__name__
    return "Convert" in name or getattr(step, "__name__", "") == "_convert_to_rgb"


def use_device_decode(model: Any, pil_part: Any, requested: bool | None) -> bool:
    """On by default on CUDA when the preprocessing is one the device path reproduces."""
    if requested is False:
        return False
    possible = crop_geometry(pil_part) is not None
    if requested and not possible:
        raise BioindexError(
            "device decoding reproduces resize + centre-crop preprocessing only; "
            "this model's preprocessing is different (drop --gpu-decode)"
        )
    return possible and (requested is True or model.device == "cuda")


# The most pixels one decode call holds: nvJPEG keeps a call's whole batch at full size
# before any is resized, and stacking by shape copies it again. 256 camera photos of 12 MP
# are 9 GB twice over; 256 herbarium sheets of 100 MP would ask for ~150 GB. A batch is
# decoded in runs under this (1.6 GB of RGB; a batch of 256 TreeOfLife pictures, ~0.5 MP
# each, is still one run).
DEVICE_DECODE_PIXELS = 1 << 29


def decode_on_device(raws: list[Any], device: str, geometry: tuple[int, Any],
                     sizes: Sequence[tuple[int, int]] | None = None,
                     ) -> tuple[Any, list[tuple[int, str]]]:  # fmt: skip
    """Decode JPEG byte tensors on `device`, resize the short side and centre-crop like the
    PIL path: (uint8 [n_ok, 3, S, S] on the device, [(index, error)] of those that failed).
    With their (width, height) `sizes`, in runs of at most DEVICE_DECODE_PIXELS.

    On CUDA the work runs on a side stream. nvJPEG writes its output tensors from a stream
    of its own without waiting for the caller's (pytorch/vision#9606: 199 of 200 batches
    corrupted on an H100), and those tensors come from the caller's stream's memory pool:
    on the model's stream, with a batch in flight, the decoder could be handed memory that
    the batch's queued kernels have yet to read. A side stream has a pool of its own."""
    import torch

    runs = pixel_runs(sizes, DEVICE_DECODE_PIXELS) if sizes is not None else []
    if torch.device(device).type != "cuda":
        return _decode_runs(raws, runs, device, geometry)
    side = _side_stream(device)
    side.synchronize()  # its earlier kernels are done before nvJPEG may reuse their memory
    with torch.cuda.stream(side):
        pixels, failed = _decode_runs(raws, runs, device, geometry)
    current = torch.cuda.current_stream(device)
    current.wait_stream(side)
    # Freed by the caller later: not reused on the side stream until the caller's use is done.
    pixels.record_stream(current)
    return pixels, failed


def pixel_runs(sizes: Sequence[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive runs whose pixels add up to at most `limit` (a run holds
    one image at least, however large)."""
    runs, start, total = [], 0, 0
    for index, (width, height) in enumerate(sizes):
        if index > start and total + width * height > limit:
            runs.append((start, index))
            start, total = index, 0
        total += width * height
    if start < len(sizes):
        runs.append((start, len(sizes)))
    return runs


def _decode_runs(raws: list[Any], runs: list[tuple[int, int]], device: str,
                 geometry: tuple[int, Any]) -> tuple[Any, list[tuple[int, str]]]:  # fmt: skip
    """decode_and_crop over each run (none given: all of `raws` at once), as one result."""
    import torch

    parts, failed = [], []
    for start, stop in runs or [(0, len(raws))]:
        pixels, bad = _decode_and_crop(raws[start:stop], device, geometry)
        parts.append(pixels)
        failed += [(start + index, error) for index, error in bad]
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), failed


@functools.cache
def _side_stream(device: str) -> Any:
    import torch

    return torch.cuda.Stream(device=device)


def _decode_and_crop(raws: list[Any], device: str, geometry: tuple[int, Any]
                     ) -> tuple[Any, list[tuple[int, str]]]:  # fmt: skip
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    size, interpolation = geometry
    try:
        images = decode_jpeg(raws, mode=ImageReadMode.RGB, device=device)
        failed: list[tuple[int, str]] = []
    except RuntimeError:
        # One bad file fails the whole batch call; sort them out one by one.
        images, failed = [], []
        for index, raw in enumerate(raws):
            try:
                images.append(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as exc:
                images.append(None)
                failed.append((index, f"RuntimeError: {str(exc).splitlines()[0]}"))
    decoded = [image for image in images if image is not None]
    if not decoded:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8, device=device), failed
    # Images of one shape are resized and cropped in one call (a shard's files often share
    # a shape); the kernels are per image, so the pixels are those of one-by-one.
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(decoded):
        by_shape.setdefault(tuple(image.shape), []).append(index)
    groups: dict[tuple[int, ...], Any] = {}
    for shape, indices in by_shape.items():
        group = torch.stack([decoded[i] for i in indices])
        group = F.resize(group, [size], interpolation=interpolation, antialias=True)
        groups[shape] = F.center_crop(group, [size, size])
    if len(groups) == 1:
        return next(iter(groups.values())), failed
    pixels = torch.empty((len(decoded), 3, size, size), dtype=torch.uint8,
                         device=decoded[0].device)  # fmt: skip
    for shape, indices in by_shape.items():
        pixels[torch.tensor(indices, device=pixels.device)] = groups[shape]
    return pixels, failed
