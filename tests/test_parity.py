"""bioindex's embeddings equal open_clip's own (eval) and pybioclip's recipe (squash)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bioindex import Collection
from tests.conftest import shared

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
def test_embeddings_match_reference(tmp_path, tiny_model: str, mode: str) -> None:
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


def test_modes_differ_on_non_square_images(tmp_path, tiny_model: str) -> None:
    photo = shared("camera-trap", "ocelot.jpg")
    eval_vec = _reference(tiny_model, photo, squash=False)
    squash_vec = _reference(tiny_model, photo, squash=True)
    # If the two recipes collapsed into one, the parity test above would prove nothing.
    assert float(eval_vec @ squash_vec) < 0.9999
