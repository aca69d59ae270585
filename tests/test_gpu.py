"""The CUDA path end to end: skipped without a GPU (CI has none); `benchmarks/gpu_check.sh`
runs it on a lent machine. The CPU run of the same files is the reference."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bioindex import Collection
from tests.conftest import draw_images

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpu-images")
    paths = draw_images(folder, 70, seed=11)  # JPEGs and PNGs of many shapes
    base = Image.open(next(p for p in paths if p.suffix == ".jpg")).convert("RGB")
    base.save(folder / "progressive.jpg", progressive=True, quality=90)
    base.convert("L").save(folder / "grey.jpg", quality=90)
    base.resize((224, 224)).save(folder / "square.jpg", quality=90)
    whole = io.BytesIO()
    base.save(whole, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(whole.getvalue()[:-400])
    return folder


def _index(tmp_path: Path, model: str, images: Path, device: str, **options) -> dict:
    with Collection.open(tmp_path / device, model=model, create=True, device=device) as c:
        summary = c.index([images], progress=False, batch_size=16, **options)
        rows = c.store.catalog.query(
            "SELECT uri, image_id FROM images WHERE status='live' ORDER BY uri"
        )[1]
        failed = {uri for uri, *_ in c.store.catalog.query("SELECT uri FROM failures")[1]}
        vectors = c.store.vectors([image_id for _, image_id in rows])
        assert c.store.index().ntotal == len(rows)
    return {
        "summary": summary,
        "vectors": dict(zip([uri for uri, _ in rows], vectors)),
        "failed": failed,
    }


@pytest.mark.parametrize("gpu_decode", [True, False])
def test_cuda_run_matches_the_cpu_run(tmp_path, tiny_model, images, gpu_decode) -> None:
    cpu = _index(tmp_path, tiny_model, images, "cpu")
    cuda = _index(tmp_path, tiny_model, images, "cuda", gpu_decode=gpu_decode)
    assert cuda["vectors"].keys() == cpu["vectors"].keys()
    assert cuda["failed"] == cpu["failed"] and any("truncated" in f for f in cpu["failed"])
    for uri, vector in cpu["vectors"].items():
        # bf16 autocast and (with gpu_decode) nvJPEG's IDCT against float32 on PIL pixels.
        cosine = float(np.dot(vector, cuda["vectors"][uri])) / float(
            np.linalg.norm(vector) * np.linalg.norm(cuda["vectors"][uri])
        )
        assert cosine >= 0.99, uri


def test_cuda_compiled_run_matches(tmp_path, tiny_model, images) -> None:
    plain = _index(tmp_path / "plain", tiny_model, images, "cuda")
    compiled = _index(tmp_path / "compiled", tiny_model, images, "cuda", compile=True)
    for uri, vector in plain["vectors"].items():
        assert float(np.dot(vector, compiled["vectors"][uri])) >= 0.99 * float(
            np.linalg.norm(vector) ** 2
        ), uri


def test_device_decode_leaves_memory_the_model_stream_still_reads() -> None:
    # pytorch/vision#9606's pattern: tensors freed while kernels queued on the caller's
    # stream still read them, then a decode. Decoding on the caller's stream, nvJPEG was
    # handed those blocks and overwrote them before the reads ran (199/200 on an H100);
    # in a run that is the batch in flight while the next one is decoded.
    from torchvision.transforms import InterpolationMode

    from bioindex.indexer.device_decode import decode_on_device

    size = 224
    encoded = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), np.uint8)).save(
        encoded, "JPEG", quality=90
    )
    raws = [torch.frombuffer(bytearray(encoded.getvalue()), dtype=torch.uint8) for _ in range(8)]
    expected = 7 * 3 * size * size
    corrupted = 0
    for _ in range(20):
        victims = [torch.full((3, size, size), 7, dtype=torch.uint8, device="cuda")
                   for _ in range(8)]  # fmt: skip
        torch.cuda.synchronize()
        torch.cuda._sleep(50_000_000)  # keeps the stream busy: the sums below stay queued
        sums = [victim.sum() for victim in victims]
        del victims
        pixels, failed = decode_on_device(raws, "cuda", (size, InterpolationMode.BICUBIC))
        torch.cuda.synchronize()
        assert not failed and pixels.shape == (8, 3, size, size)
        corrupted += sum(int(total) != expected for total in sums)
    assert corrupted == 0


def test_cuda_bf16_weights_match_float32(tmp_path, tiny_model, images) -> None:
    exact = _index(tmp_path / "float32", tiny_model, images, "cuda", precision="float32")
    half = _index(tmp_path / "bf16", tiny_model, images, "cuda", precision="bf16")
    assert half["vectors"].keys() == exact["vectors"].keys()
    for uri, vector in exact["vectors"].items():
        other = half["vectors"][uri]
        cosine = float(vector @ other) / float(np.linalg.norm(vector) * np.linalg.norm(other))
        assert cosine >= 0.999, uri
