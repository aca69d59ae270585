"""A model's towers kept as arrays encode texts and pictures as the loaded model does, and a
new query from a fresh process imports neither torch nor open_clip."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bioindex import image_tower, text_tower, towers
from bioindex.collection import Collection
from bioindex.image_tower import ImageTower
from bioindex.models import load_model
from bioindex.text_tower import TextTower
from tests.conftest import CAMERA_TRAP_NAMED, CAMERA_TRAP_SPECIES, shared

TEXTS = ["a photo of Cardinalis cardinalis.", "red fox", "x", "",
         "Animalia Chordata Aves Passeriformes Cardinalidae Cardinalis cardinalis with "
         "common name northern cardinal " * 3,  # past the context: truncated
         "<end_of_text> then more", "Cooper's hawk (Accipiter cooperii), 1758"]  # fmt: skip


def _exported(name: str, folder: Path) -> tuple[object, TextTower]:
    model = load_model(name, device="cpu")
    assert text_tower.export(model, folder)
    tower = TextTower.load(folder, model.identity)
    assert tower is not None
    return model, tower


def _tiny(folder: Path, **model_cfg: object) -> str:
    import open_clip
    import torch

    from bioindex.tiny import save_local_dir, tiny_config

    config = tiny_config(embed_dim=24, text_width=64, text_layers=2)
    config["model_cfg"].update(model_cfg)
    torch.manual_seed(3)
    return f"local-dir:{save_local_dir(open_clip.CLIP(**config['model_cfg']), config, folder)}"


@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
def test_the_tower_gives_the_models_vectors(tmp_path: Path, activation: str) -> None:
    name = _tiny(tmp_path / "model", quick_gelu=activation == "quick_gelu")
    model, tower = _exported(name, tmp_path / "tower")
    assert tower.meta["activation"] == activation
    found, expected = tower.encode(TEXTS), model.encode_texts(TEXTS)
    np.testing.assert_allclose(found, expected, atol=2e-6)
    assert np.all(np.sum(found * expected, axis=1) > 1 - 1e-6)


def test_the_demo_models_tower_gives_its_vectors(tmp_path: Path) -> None:
    model, tower = _exported("bioclip-demo", tmp_path / "tower")
    np.testing.assert_allclose(tower.encode(TEXTS), model.encode_texts(TEXTS), atol=2e-6)


def test_texts_the_tower_does_not_take_go_to_the_model(tmp_path: Path) -> None:
    _, tower = _exported(_tiny(tmp_path / "model"), tmp_path / "tower")
    assert tower.encode(["Ærø naïve"]) is None  # not plain ASCII: open_clip's own cleaning
    assert tower.encode(["M&Ms"]) is None  # "&": HTML entities
    assert tower.encode(["a"] * (text_tower.MOST_TEXTS + 1)) is None  # a label set
    assert tower.encode(["a"]) is not None


def test_a_tower_open_clip_runs_otherwise_is_not_kept(tmp_path: Path) -> None:
    # LayerScale in the blocks, and the vector read at the last position: not this tower.
    for cfg in ({"ls_init_value": 0.1}, {"pool_type": "last"}):
        config = {"text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64,
                               "heads": 2, "layers": 2, **cfg}}  # fmt: skip
        name = _tiny(tmp_path / f"model-{sorted(cfg)[0]}", **config)
        folder = tmp_path / f"tower-{sorted(cfg)[0]}"
        assert not text_tower.export(load_model(name, device="cpu"), folder)
        assert not folder.exists()


def test_a_damaged_or_foreign_tower_is_not_used(tmp_path: Path) -> None:
    model, _ = _exported(_tiny(tmp_path / "model"), tmp_path / "tower")
    other = load_model(_tiny(tmp_path / "other", quick_gelu=True), device="cpu")
    assert TextTower.load(tmp_path / "tower", other.identity) is None  # other weights
    (tmp_path / "tower" / "fc_w.npy").write_bytes(b"\x93NUMPY")  # cut short
    assert TextTower.load(tmp_path / "tower", model.identity) is None
    assert TextTower.load(tmp_path / "nowhere", model.identity) is None
    # The model, loaded for want of it, writes it again: else every query would load it.
    assert text_tower.export(model, tmp_path / "tower")
    assert TextTower.load(tmp_path / "tower", model.identity) is not None
    # Tokenizer tables that do not read back: the model encodes, and writes them again.
    (tmp_path / "tower" / text_tower.TOKENIZER).write_text('{"merges": [')
    assert TextTower.load(tmp_path / "tower", model.identity).encode(["a fox"]) is None
    assert text_tower.export(model, tmp_path / "tower")
    tower = TextTower.load(tmp_path / "tower", model.identity)
    np.testing.assert_allclose(tower.encode(["a fox"]), model.encode_texts(["a fox"]), atol=1e-6)


def _pictures() -> list[Image.Image]:
    """Odd sizes, both orientations, one already at the model's size, modes PIL converts."""
    rng = np.random.default_rng(5)
    sizes = [((300, 200), "RGB"), ((97, 411), "RGB"), ((96, 96), "L"), ((50, 61), "RGBA"),
             ((1001, 999), "P"), ((224, 224), "RGB")]  # fmt: skip
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).convert(mode)
            for (w, h), mode in sizes]  # fmt: skip


@pytest.mark.parametrize("name", ["bioclip-demo", "tiny-quick"])
def test_the_image_tower_gives_the_models_pixels_and_vectors(tmp_path: Path, name: str) -> None:
    if name == "tiny-quick":
        name = _tiny(tmp_path / "model", quick_gelu=True)
    model = load_model(name, device="cpu")
    assert image_tower.export(model, tmp_path / "tower")
    tower = ImageTower.load(tmp_path / "tower", model.identity)
    for picture in _pictures():
        np.testing.assert_array_equal(tower.pixels(picture), model.transform(picture).numpy())
        np.testing.assert_allclose(tower.embed(picture), model.embed_pil([picture])[0],
                                   atol=2e-6)  # fmt: skip


def test_an_image_tower_is_kept_only_for_the_plain_transform_and_tower(tmp_path: Path) -> None:
    # bioindex's squash preprocessing resizes a tensor (torchvision's filter, not PIL's).
    squash = load_model("bioclip-demo", device="cpu", preprocess="squash")
    assert not image_tower.export(squash, tmp_path / "squash")
    config = {"vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 32,
                             "head_width": 32, "pool_type": "avg"}}  # fmt: skip
    pooled = load_model(_tiny(tmp_path / "avg", **config), device="cpu")
    assert not image_tower.export(pooled, tmp_path / "avg-tower")
    assert not (tmp_path / "squash").exists() and not (tmp_path / "avg-tower").exists()


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.jpg")
    return folder


def test_a_new_query_in_a_fresh_process_needs_no_torch(
    photos: Path, tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new text or picture searched from the shell imported torch and open_clip and built
    the whole model (6 s with the demo model, 9 s with a ViT-B-16 weights file) to encode
    one short text or one picture."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BIOINDEX_CACHE_DIR", str(cache))
    store = tmp_path / "store"
    with Collection.open(store, model=tiny_model, create=True, device="cpu") as col:
        col.index([photos], progress=False)  # keeps the tower, the model being loaded
        # Not through search_text: the store's query cache would answer the new process.
        vectors = col.model.encode_texts(TEXTS[:3])
        expected = {t: [h.image_id for h in col.search_vector(v, k=3, text=True)]
                    for t, v in zip(TEXTS[:3], vectors)}  # fmt: skip
        query = photos / "0.jpg"
        expected["image"] = [h.image_id for h in col.search_image(query, k=3)]
        picture = col.model.embed_pil([Image.open(query)])[0]
    assert not (store / "query-cache").exists()
    assert len(list((cache / towers.CACHE_FOLDER).glob(f"*/*/{towers.META}"))) == 2
    code = textwrap.dedent(f"""
        import json, sys
        from bioindex import Collection
        with Collection.open({str(store)!r}, read_only=True) as col:
            found = {{t: [h.image_id for h in col.search_text(t, k=3)] for t in {TEXTS[:3]!r}}}
            vectors = col.embed_texts({TEXTS[:3]!r}).tolist()
            found["image"] = [h.image_id for h in col.search_image({str(query)!r}, k=3)]
            picture = col.embed_image({str(query)!r}).tolist()
        heavy = [m for m in ("torch", "open_clip", "torchvision") if m in sys.modules]
        print(json.dumps({{"found": found, "heavy": heavy, "vectors": vectors,
                          "picture": picture}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["heavy"] == []
    assert answer["found"] == expected
    np.testing.assert_allclose(np.array(answer["vectors"]), vectors, atol=2e-6)
    np.testing.assert_allclose(np.array(answer["picture"]), picture, atol=2e-6)


def test_without_a_kept_tower_a_text_query_loads_the_model_and_keeps_it(
    photos: Path, tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    with Collection.open(store, model=tiny_model, create=True, device="cpu") as col:
        col.index([photos], progress=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("BIOINDEX_CACHE_DIR", str(cache))  # a new cache: no tower in it
    with Collection.open(store, read_only=True, device="cpu") as col:
        col.search_text("a red fox", k=2)
        assert col._model is not None
    with Collection.open(store, read_only=True, device="cpu") as col:
        col.search_text("a green frog", k=2)
        assert col._model is None  # the kept tower encoded it
    monkeypatch.setenv("BIOINDEX_TOWERS", "0")  # turned off: the model, as before
    with Collection.open(store, read_only=True, device="cpu") as col:
        col.search_text("a grey wolf", k=2)
        assert col._model is not None
    monkeypatch.delenv("BIOINDEX_TOWERS")
    # A cache that cannot be written costs only the model load.
    monkeypatch.setenv("BIOINDEX_CACHE_DIR", "/proc/no-such-cache")
    with Collection.open(store, read_only=True, device="cpu") as col:
        assert col.search_text("a blue jay", k=2)


CLASSIFY_CALLS = [{"method": "zero-shot", "rank": "family"}, {"method": "combined"},
                  {"method": "few-shot"}, {"method": "zero-shot", "specimen": True}]  # fmt: skip


def test_classifying_a_few_photos_in_a_fresh_process_needs_no_torch(
    tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bioindex classify photo.jpg` embedded through the loaded model and took its logit
    scale from it: every "what is this specimen?" from the shell built the whole model."""
    monkeypatch.setenv("BIOINDEX_CACHE_DIR", str(tmp_path / "cache"))
    folder = shared("camera-trap")
    meta = tmp_path / "meta.csv"
    meta.write_text(CAMERA_TRAP_SPECIES)
    store = tmp_path / "store"
    queries = [str(folder / "african_elephants_cmyk.jpg"), str(folder / "ocelot.jpg")]
    with Collection.open(store, model=tiny_model, create=True, device="cpu") as col:
        col.index([folder / n for n in CAMERA_TRAP_NAMED], metadata=meta, progress=False)
        assert col._model is not None
        expected = [[p.to_dict() for p in col.classify(queries, k=3, **call)]
                    for call in CLASSIFY_CALLS]  # fmt: skip
    code = textwrap.dedent(f"""
        import json, sys
        from bioindex import Collection
        with Collection.open({str(store)!r}, read_only=True) as col:
            found = [[p.to_dict() for p in col.classify({queries!r}, k=3, **call)]
                     for call in {CLASSIFY_CALLS!r}]
        heavy = [m for m in ("torch", "open_clip", "torchvision") if m in sys.modules]
        print(json.dumps({{"found": found, "heavy": heavy}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["heavy"] == []
    for got, want in zip(answer["found"], expected, strict=True):
        assert [{k: v for k, v in row.items() if "score" not in k} for row in got] == [
            {k: v for k, v in row.items() if "score" not in k} for row in want]
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want],
                                   atol=1e-5)  # fmt: skip
