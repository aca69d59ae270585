"""bioindex's embeddings equal open_clip's own (eval) and pybioclip's recipe (squash)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bioindex import Collection
from tests.conftest import draw_images, shared

PHOTOS = [
    "african_elephants.jpg",
    "ocelot.jpg",
    "american_black_bear.jpg",
    "african_elephants_bw.jpg",
    "african_elephants_cmyk.jpg",
]


def _reference(model_name: str, path, squash: bool) -> np.ndarray:
    import open_clip
    from torchvision import transforms

    model, _, preprocess = open_clip.create_model_and_transforms(model_name)
    model.eval()
    image = Image.open(path).convert("RGB")
    if squash:
        # pybioclip's recipe, written out here independently of bioindex.models.
        preprocess = transforms.Compose(
            [
                transforms.ToTensor(),
                transforms.Resize((224, 224), antialias=True),
                transforms.Normalize(
                    (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
                ),
            ]
        )
    with torch.no_grad():
        features = model.encode_image(preprocess(image).unsqueeze(0))
    features = features / features.norm(dim=-1, keepdim=True)
    return features[0].numpy()


@pytest.mark.parametrize("mode", ["eval", "squash"])
def test_embeddings_match_reference(tmp_path, tiny_model_224: str, mode: str) -> None:
    tiny_model = tiny_model_224
    folder = shared("camera-trap")
    with Collection.open(
        tmp_path / mode, model=tiny_model, preprocess=mode, create=True, device="cpu"
    ) as col:
        col.index([folder / name for name in PHOTOS], progress=False, workers=0)
        for name in PHOTOS:
            reference = _reference(tiny_model, folder / name, squash=mode == "squash")
            direct = col.embed_image(folder / name)
            hit = col.search_image(folder / name, k=1)[0]
            stored = col.store.vectors([hit.image_id])[0]
            assert float(direct @ reference) >= 0.9999
            # Stored as float16: still the same vector for every practical purpose.
            assert float(stored @ reference) / np.linalg.norm(stored) >= 0.9999
        assert col.identity.preprocess == mode


def test_modes_differ_on_non_square_images(tmp_path, tiny_model_224: str) -> None:
    tiny_model = tiny_model_224
    photo = shared("camera-trap", "ocelot.jpg")
    eval_vec = _reference(tiny_model, photo, squash=False)
    squash_vec = _reference(tiny_model, photo, squash=True)
    # If the two recipes collapsed into one, the parity test above would prove nothing.
    assert float(eval_vec @ squash_vec) < 0.9999


@pytest.mark.slow
def test_fast_decode_stays_close_to_the_exact_path(tmp_path) -> None:
    from bioindex.indexer.embed import decode

    folder = shared("camera-trap")
    names = [n for n in PHOTOS if "cmyk" not in n] + [
        "african_elephants_cmyk.jpg",
        "african_elephants_with_exif_orientation.jpg",
    ]
    vectors = {}
    for fast in (False, True):
        with Collection.open(tmp_path / str(fast), model="bioclip-demo", create=True,
                             device="cpu") as col:  # fmt: skip
            col.index([folder / n for n in names], progress=False, workers=0, fast_decode=fast)
            for name in names:
                hit = col.search_image(folder / name, k=1)[0]
                vectors[(fast, name)] = col.store.vectors([hit.image_id])[0]
    for name in names:
        exact, fast = vectors[(False, name)], vectors[(True, name)]
        cosine = float(exact @ fast / np.linalg.norm(exact) / np.linalg.norm(fast))
        assert cosine >= 0.99, (name, cosine)
    # ... and the fast path really decoded fewer pixels (else this test proves nothing).
    data = (folder / "african_elephants.jpg").read_bytes()
    small, full = decode(data, 96, fast=True), decode(data, 96, fast=False)
    assert small.width * 4 <= full.width and min(small.size) >= 2 * 96
    rotated = decode((folder / "african_elephants_with_exif_orientation.jpg").read_bytes(), 96,
                     fast=True)  # fmt: skip
    upright = decode((folder / "african_elephants.jpg").read_bytes(), 96, fast=True)
    assert rotated.size in (upright.size, upright.size[::-1])


def test_uint8_hand_over_is_exact(tiny_model: str) -> None:
    """Workers ship uint8 pixels; finishing ToTensor + Normalize on the model side must give
    exactly what the full transform gives."""
    from bioindex.indexer.embed import split_transform
    from bioindex.models import load_model

    model = load_model(tiny_model, device="cpu")
    pil_part, mean, std = split_transform(model.transform)
    assert pil_part is not None
    image = Image.open(shared("camera-trap", "ocelot.jpg")).convert("RGB")
    pixels = torch.from_numpy(np.asarray(pil_part(image)).copy()).permute(2, 0, 1)
    via_uint8 = model.encode_pixels(pixels[None], mean, std)
    via_float = model.encode_images(model.transform(image)[None])
    np.testing.assert_array_equal(via_uint8, via_float)
    squash = load_model(tiny_model, device="cpu", preprocess="squash")
    assert split_transform(squash.transform)[0] is None  # resize on floats: no uint8 shortcut


@pytest.mark.parametrize("name", ["tiny", "bioclip-demo"])
def test_text_encoded_up_to_its_end_token_equals_the_whole_context(tiny_model: str,
                                                                   name: str) -> None:  # fmt: skip
    """The text tower runs only as far as a batch's longest text (its pooled token), not
    the whole 77-token context: the same vectors, the padding never reaching them."""
    import open_clip

    from bioindex.models import load_model

    model = load_model(tiny_model if name == "tiny" else name, device="cpu")
    texts = ["Cardinalis cardinalis", "a photo of Puma concolor, the mountain lion",
             "x", "word " * 90]  # fmt: skip  (the last is cut at the context's end)
    lengths = []
    model.model.transformer.register_forward_hook(
        lambda module, args, out: lengths.append(args[0].shape[1]))  # fmt: skip
    ours = model.encode_texts(texts)
    assert lengths == [model.model.context_length]  # the longest fills it
    lengths.clear()
    short = model.encode_texts(texts[:3])
    assert lengths and lengths[0] < 20
    tokens = model.tokenizer(texts)
    with torch.inference_mode():
        whole = model.model.encode_text(tokens).float().numpy()
    whole /= np.linalg.norm(whole, axis=1, keepdims=True)
    np.testing.assert_allclose(ours, whole, atol=1e-5)
    np.testing.assert_allclose(short, whole[:3], atol=1e-5)
    assert type(model.model) is open_clip.CLIP  # the path these tests are about


@pytest.mark.parametrize("change", [{"no_causal_mask": True}, {"pool_type": "last"}])
def test_a_text_tower_that_sees_its_padding_runs_whole(change: dict) -> None:
    """Without a causal mask, or read at the last position, the padding is part of the
    answer: trimmed, these vectors would move."""
    import open_clip

    from bioindex.models import encode_text_trimmed
    from bioindex.tiny import tiny_config

    config = tiny_config()["model_cfg"]
    config["text_cfg"].update(change)
    torch.manual_seed(0)
    model = open_clip.CLIP(**config).eval()
    tokens = open_clip.get_tokenizer("ViT-B-32")(["Cardinalis cardinalis", "a bird"])
    with torch.inference_mode():
        np.testing.assert_array_equal(encode_text_trimmed(model, tokens).numpy(),
                                      model.encode_text(tokens).numpy())  # fmt: skip


def _stored_vectors(store) -> dict[str, np.ndarray]:
    from bioindex.store import Store

    with Store.open(store) as opened:
        rows = opened.catalog.query("SELECT uri, image_id FROM images WHERE status='live'")[1]
        return dict(zip([uri for uri, _ in rows], opened.vectors([i for _, i in rows])))


def test_bf16_precision_stays_close_to_float32(tmp_path) -> None:
    """`index --precision bf16` (bf16 image-tower weights) against float32 on the real
    photos; text vectors stay float32, exactly."""
    from click.testing import CliRunner

    from bioindex.cli import main
    from bioindex.models import _cpu_has_bf16, load_model

    if not _cpu_has_bf16(torch):
        pytest.skip("this CPU has no bf16 instructions")
    names = [n for n in PHOTOS if "cmyk" not in n] + ["vehicle.jpg", "domestic_dog.jpg"]
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in names:
        (photos / name).write_bytes(shared("camera-trap", name).read_bytes())
    for precision in ("float32", "bf16"):
        args = ["index", str(photos), "--store", str(tmp_path / precision), "--model",
                "bioclip-demo", "--device", "cpu", "--precision", precision, "-q"]  # fmt: skip
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    exact, half = _stored_vectors(tmp_path / "float32"), _stored_vectors(tmp_path / "bf16")
    assert exact.keys() == half.keys() and len(exact) == len(names)
    cosines = [float(exact[uri] @ half[uri]) for uri in exact]
    assert min(cosines) >= 0.999, cosines
    assert min(cosines) < 0.99999, "bf16 gave float32's vectors: it did not run in bf16"

    model = load_model("bioclip-demo", device="cpu")
    texts = model.encode_texts(["Felis catus", "a photo of an elephant"])
    model.set_precision("bf16")
    assert next(model.model.visual.parameters()).dtype == torch.bfloat16
    np.testing.assert_array_equal(model.encode_texts(["Felis catus", "a photo of an elephant"]),
                                  texts)  # fmt: skip


def test_bf16_on_a_cpu_without_it_is_a_clear_error(tmp_path, tiny_model, monkeypatch) -> None:
    from bioindex import models
    from bioindex.errors import BioindexError

    draw_images(tmp_path / "photos", 2)
    monkeypatch.setattr(models, "_cpu_has_bf16", lambda torch: False)  # the hardware
    with Collection.open(tmp_path / "s", model=tiny_model, create=True, device="cpu") as col:
        with pytest.raises(BioindexError, match="needs a CPU with bf16 instructions"):
            col.index([tmp_path / "photos"], progress=False, precision="bf16")
        with pytest.raises(BioindexError, match="unknown precision 'half'"):
            col.index([tmp_path / "photos"], progress=False, precision="half")
