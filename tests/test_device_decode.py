"""The device JPEG path (nvJPEG on CUDA) checked on the CPU, where torchvision's decoder
runs the same code: which files it takes, parity with the PIL path, failures, and that it
is chosen only with CUDA unless asked for."""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bioindex import Collection
from bioindex.errors import BioindexError
from bioindex.indexer.device_decode import decode_on_device, device_decodable, use_device_decode
from bioindex.indexer.embed import split_transform
from bioindex.models import load_model
from tests.conftest import shared


def _jpeg(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The camera-trap fixtures plus the JPEG variants the device path must leave alone."""
    folder = tmp_path_factory.mktemp("device-decode")
    for path in shared("camera-trap").glob("*.jpg"):
        shutil.copy(path, folder / path.name)
    base = Image.open(folder / "ocelot.jpg").convert("RGB")
    (folder / "progressive.jpg").write_bytes(_jpeg(base, progressive=True))
    (folder / "grey.jpg").write_bytes(_jpeg(base.convert("L")))
    base.save(folder / "ocelot.png")
    whole = (folder / "domestic_dog.jpg").read_bytes()
    # Complete framing (SOI ... EOI) around a broken entropy-coded body.
    (folder / "garbled.jpg").write_bytes(whole[:2000] + b"\x00" * 3000 + whole[-2:])
    return folder


def test_device_path_takes_only_what_it_decodes_like_pillow(photos: Path) -> None:
    def takes(name: str) -> bool:
        return device_decodable((photos / name).read_bytes()) is not None

    assert takes("ocelot.jpg") and takes("grey.jpg") and takes("african_elephants_bw.jpg")
    assert (
        device_decodable((photos / "ocelot.jpg").read_bytes())
        == Image.open(photos / "ocelot.jpg").size
    )
    for name in ("progressive.jpg", "ocelot.png", "african_elephants_cmyk.jpg",
                 "african_elephants_truncated_file.jpg",
                 "african_elephants_with_exif_orientation.jpg"):  # fmt: skip
        assert not takes(name), name


@pytest.mark.slow
def test_device_decode_matches_the_pil_path(photos: Path, tmp_path: Path) -> None:
    vectors, failures = {}, {}
    for device_decode in (False, True):
        with Collection.open(tmp_path / str(device_decode), model="bioclip-demo", create=True,
                             device="cpu") as col:  # fmt: skip
            summary = col.index([photos], progress=False, workers=0, gpu_decode=device_decode)
            rows = col.store.catalog.query(
                "SELECT uri, image_id, width, height, sha256 FROM images ORDER BY uri"
            )[1]
            stored = col.store.vectors([r[1] for r in rows])
            vectors[device_decode] = {r[0]: (v, r[2:]) for r, v in zip(rows, stored)}
            failures[device_decode] = {(f["uri"], f["stage"]) for f in col.store.failures()}
            assert summary.embedded == len(rows)
    assert failures[True] == failures[False]
    assert {Path(uri).name for uri, _ in failures[True]} == {
        "african_elephants_truncated_file.jpg",
        "garbled.jpg",
    }
    assert vectors[True].keys() == vectors[False].keys()
    for uri, (exact, facts) in vectors[False].items():
        device, device_facts = vectors[True][uri]
        assert device_facts == facts, uri  # width, height, sha256 agree
        cosine = float(exact @ device / np.linalg.norm(exact) / np.linalg.norm(device))
        assert cosine >= 0.99, (uri, cosine)


def test_a_garbled_jpeg_fails_alone(photos: Path) -> None:
    model = load_model("bioclip-demo", device="cpu")
    pil_part, _, _ = split_transform(model.transform)
    from bioindex.indexer.device_decode import crop_geometry

    geometry = crop_geometry(pil_part)
    assert geometry is not None and geometry[0] == model.identity.image_size
    raws = [torch.frombuffer(bytearray((photos / n).read_bytes()), dtype=torch.uint8)
            for n in ("ocelot.jpg", "garbled.jpg", "human.jpg")]  # fmt: skip
    pixels, failed = decode_on_device(raws, "cpu", geometry)
    assert [index for index, _ in failed] == [1]
    assert pixels.shape == (2, 3, geometry[0], geometry[0]) and pixels.dtype == torch.uint8


def test_images_of_one_shape_are_resized_together_with_the_same_pixels(photos: Path) -> None:
    from torchvision.transforms import InterpolationMode

    names = ["ocelot.jpg", "human.jpg", "ocelot.jpg", "domestic_dog.jpg", "human.jpg"]
    raws = [torch.frombuffer(bytearray((photos / n).read_bytes()), dtype=torch.uint8)
            for n in names]  # fmt: skip
    geometry = (64, InterpolationMode.BICUBIC)
    together, failed = decode_on_device(raws, "cpu", geometry)
    alone = torch.cat([decode_on_device([raw], "cpu", geometry)[0] for raw in raws])
    assert not failed and together.shape == (5, 3, 64, 64)
    assert torch.equal(together, alone)
    assert torch.equal(together[0], together[2]) and not torch.equal(together[0], together[1])
    one_shape, _ = decode_on_device([raws[0], raws[2]], "cpu", geometry)
    assert torch.equal(one_shape, alone[[0, 2]])


def test_raw_jpegs_leave_the_worker_as_one_tensor(photos: Path) -> None:
    """Hundreds of small tensors per batch crossed from a worker process at ~1,500 files/s
    here; one tensor with the lengths beside it crosses at ~12,000 (docs/benchmarks.md)."""
    from bioindex.indexer.embed import decode_batch
    from bioindex.indexer.sources import Item

    model = load_model("bioclip-demo", device="cpu")
    pil_part, _, _ = split_transform(model.transform)
    names = ["ocelot.jpg", "progressive.jpg", "human.jpg", "ocelot.png", "domestic_dog.jpg"]
    items = [Item(str(photos / n), str(photos / n), 0, 0.0) for n in names]
    batch = decode_batch(items, range(len(items)), pil_part, model.transform,
                         model.identity.image_size, False, raw_jpeg=True)  # fmt: skip
    raw_names = ["ocelot.jpg", "human.jpg", "domestic_dog.jpg"]  # baseline JPEGs only
    assert batch["decoded"] == 2 and batch["position"] == [1, 3, 0, 2, 4]
    assert isinstance(batch["raw"], torch.Tensor) and batch["raw"].dim() == 1
    views = torch.split(batch["raw"], batch["raw_sizes"])
    assert [bytes(v.numpy()) for v in views] == [(photos / n).read_bytes() for n in raw_names]


def test_a_batch_of_large_photos_is_decoded_in_runs(photos: Path, monkeypatch) -> None:
    """nvJPEG held a whole batch at full size at once (256 herbarium sheets of 100 MP: ~150
    GB); a batch is decoded in runs of at most DEVICE_DECODE_PIXELS, with the same pixels
    and failures (a garbled file falls back to one-by-one within its run only)."""
    from bioindex.indexer import device_decode
    from bioindex.indexer.embed import _finish_on_device, decode_batch
    from bioindex.indexer.sources import Item

    assert device_decode.pixel_runs([(10, 10)] * 3 + [(100, 100), (5, 5)], 250) == [
        (0, 2), (2, 3), (3, 4), (4, 5)]  # fmt: skip
    model = load_model("bioclip-demo", device="cpu")
    pil_part, _, _ = split_transform(model.transform)
    geometry = device_decode.crop_geometry(pil_part)
    names = ["ocelot.jpg", "human.jpg", "garbled.jpg", "domestic_dog.jpg", "vehicle.jpg",
             "american_black_bear.jpg"]  # fmt: skip
    items = [Item(str(photos / n), str(photos / n), 0, 0.0) for n in names]

    def finished() -> dict:
        batch = decode_batch(items, range(len(items)), pil_part, model.transform,
                             model.identity.image_size, False, raw_jpeg=True)  # fmt: skip
        return _finish_on_device(batch, "cpu", geometry)

    whole = finished()
    calls: list[int] = []
    decode = device_decode._decode_and_crop
    monkeypatch.setattr(device_decode, "_decode_and_crop",
                        lambda raws, *rest: calls.append(len(raws)) or decode(raws, *rest))
    sizes = [Image.open(photos / n).size for n in names]
    monkeypatch.setattr(device_decode, "DEVICE_DECODE_PIXELS", max(w * h for w, h in sizes))
    runs = finished()
    expected = [stop - start for start, stop in device_decode.pixel_runs(sizes, max(
        w * h for w, h in sizes))]  # fmt: skip
    assert calls == expected and len(calls) >= 3 and sum(calls) == len(names)
    assert torch.equal(runs["pixels"], whole["pixels"]) and len(runs["pixels"]) == 5
    assert runs["failures"] == whole["failures"] and len(whole["failures"]) == 1
    assert runs["position"] == whole["position"]


def test_chosen_only_with_cuda_unless_asked() -> None:
    model = load_model("bioclip-demo", device="cpu")
    pil_part, _, _ = split_transform(model.transform)
    assert not use_device_decode(model, pil_part, None)
    assert use_device_decode(model, pil_part, True)
    on_cuda = dataclasses.replace(model, device="cuda")  # the choice only reads the device
    assert use_device_decode(on_cuda, pil_part, None)
    assert not use_device_decode(on_cuda, pil_part, False)
    squash = load_model("bioclip-demo", device="cpu", preprocess="squash")
    squash_pil, _, _ = split_transform(squash.transform)
    assert not use_device_decode(dataclasses.replace(squash, device="cuda"), squash_pil, None)
    with pytest.raises(BioindexError, match="resize \\+ centre-crop"):
        use_device_decode(squash, squash_pil, True)


@pytest.mark.slow
def test_compiled_image_tower_embeds_the_same(tiny_model: str, photos: Path, tmp_path) -> None:
    names = ["ocelot.jpg", "human.jpg", "domestic_dog.jpg", "ocelot.png"]
    stored = {}
    for compiled in (False, True):
        with Collection.open(tmp_path / str(compiled), model=tiny_model, create=True,
                             device="cpu") as col:  # fmt: skip
            col.index([photos / n for n in names], progress=False, workers=0, compile=compiled)
            if compiled:
                assert "Optimized" in type(col.model.model.visual).__name__  # really compiled
            stored[compiled] = col.store.vectors([1, 2, 3, 4])
    assert np.abs(stored[True] - stored[False]).max() < 1e-3
