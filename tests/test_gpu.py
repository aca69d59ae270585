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
        rows = c.store.con.execute(
            "SELECT uri, image_id FROM images WHERE status='live' ORDER BY uri"
        ).fetchall()
        failed = {uri for uri, *_ in c.store.con.execute("SELECT uri FROM failures").fetchall()}
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
