"""A model's image tower as arrays (bioindex.towers), so a picture query from the shell
needs neither torch nor open_clip.

Only open_clip's plain VisionTransformer — a patch embedding without bias, the class token
and positions, a LayerNorm before the blocks and one after them read at the class token,
the projection — with open_clip's evaluation transform on a PIL image: resize (the short
side to a size, or to an exact size) by PIL's own filter, centre crop, RGB, scaled to
[0, 1] and normalised. Those are read off the loaded transform and refused when it is
anything else (bioindex's squash preprocessing resizes a tensor, not a PIL image).
tests/test_text_tower.py holds the two to the same pixels and vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bioindex import towers

FILTERS = {"bicubic": 3, "bilinear": 2}  # PIL.Image.Resampling values


def _transform(transform: Any) -> dict[str, Any] | None:
    """The evaluation transform's steps as data, when they are the plain ones, else None."""
    from open_clip.transform import MaybeConvertMode, MaybeToTensor
    from torchvision import transforms

    steps = list(getattr(transform, "transforms", []))
    if len(steps) not in (4, 5):
        return None
    resize, *rest = steps
    crop = rest.pop(0) if len(steps) == 5 else None
    convert, tensor, normalize = rest
    filter_name = getattr(getattr(resize, "interpolation", None), "value", None)
    if (type(resize) is not transforms.Resize or resize.max_size is not None
            or filter_name not in FILTERS
            or (crop is not None and type(crop) is not transforms.CenterCrop)
            or type(convert) is not MaybeConvertMode or convert.mode != "RGB"
            or type(tensor) is not MaybeToTensor
            or type(normalize) is not transforms.Normalize):  # fmt: skip
        return None
    size = resize.size if isinstance(resize.size, int) else list(resize.size)
    if isinstance(size, list) and len(size) == 1:
        size = size[0]
    return {"resize": size, "filter": filter_name,
            "crop": list(crop.size) if crop is not None else None,
            "mean": [float(v) for v in normalize.mean],
            "std": [float(v) for v in normalize.std]}  # fmt: skip


def _plain(visual: Any) -> str | None:
    """The blocks' activation when `visual` is the plain VisionTransformer above."""
    import torch
    from open_clip.transformer import VisionTransformer

    conv = getattr(visual, "conv1", None)
    if (type(visual) is not VisionTransformer or visual.attn_pool is not None
            or visual.pool_type != "tok" or not isinstance(visual.proj, torch.nn.Parameter)
            or not isinstance(visual.ln_pre, torch.nn.LayerNorm)
            or not isinstance(visual.ln_post, torch.nn.LayerNorm)
            or conv is None or conv.bias is not None or conv.kernel_size != conv.stride
            or conv.padding != (0, 0) or conv.dilation != (1, 1) or conv.groups != 1):  # fmt: skip
        return None
    return towers.block_activation(list(visual.transformer.resblocks))


def export(model: Any, folder: Path) -> bool:
    """Write `model`'s (EmbeddingModel) image tower and its transform to `folder`, unless
    it is there already or is not one this module runs; True when it is there after."""
    if towers.current(folder, model.identity):
        return True
    visual = model.model.visual
    steps = _transform(model.transform)
    if steps is None or (activation := _plain(visual)) is None:
        return False
    blocks = list(visual.transformer.resblocks)
    conv = visual.conv1
    arrays = {
        "patch_w": towers.f32(conv.weight).reshape(conv.out_channels, -1),
        "class_embedding": towers.f32(visual.class_embedding),
        "positional_embedding": towers.f32(visual.positional_embedding),
        "ln_pre_w": towers.f32(visual.ln_pre.weight), "ln_pre_b": towers.f32(visual.ln_pre.bias),
        "ln_post_w": towers.f32(visual.ln_post.weight),
        "ln_post_b": towers.f32(visual.ln_post.bias),
        "proj": towers.f32(visual.proj),
        **towers.block_arrays(blocks),
    }  # fmt: skip
    record = towers.block_record(blocks, activation)
    meta = {**towers.identity_record(model.identity), **record, "transform": steps,
            "preprocess": model.identity.preprocess, "patch": int(conv.kernel_size[0]),
            "eps": record["eps"] + [float(visual.ln_pre.eps), float(visual.ln_post.eps)]}
    return towers.write(folder, arrays, meta)


class ImageTower:
    """An image tower read back from `export`'s folder."""

    def __init__(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.meta = meta
        self.arrays = arrays
        self.blocks = towers.Blocks(meta, arrays)
        self.steps = meta["transform"]
        self.patch = int(meta["patch"])

    @classmethod
    def load(cls, folder: Path, identity: Any) -> ImageTower | None:
        """The tower in `folder` when it is whole and of a model of `identity`, else None."""
        found = towers.read(folder, identity)
        if found is None or found[0].get("preprocess") != identity.preprocess:
            return None
        return cls(*found)

    def embed(self, image: Any) -> np.ndarray:
        """The unit vector of a PIL image, as EmbeddingModel.embed_pil gives it."""
        return towers.unit(self._forward(self.pixels(image))[None])[0]

    def pixels(self, image: Any) -> np.ndarray:
        """[3, H, W] float32: the transform open_clip's evaluation runs, step for step."""
        steps = self.steps
        width, height = image.size
        if isinstance(steps["resize"], int):  # the short side to this, as torchvision sizes
            size = steps["resize"]
            short, long = sorted((width, height))
            new_short, new_long = size, int(size * long / short)
            new = (new_short, new_long) if width <= height else (new_long, new_short)
        else:
            new = (steps["resize"][1], steps["resize"][0])
        image = image.resize(new, FILTERS[steps["filter"]])
        if steps["crop"] is not None:
            image = _centre_crop(image, *steps["crop"])
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8).astype(np.float32)
        pixels = pixels.transpose(2, 0, 1) / np.float32(255)
        mean = np.asarray(steps["mean"], dtype=np.float32)[:, None, None]
        std = np.asarray(steps["std"], dtype=np.float32)[:, None, None]
        return (pixels - mean) / std

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        a, p = self.arrays, self.patch
        channels, height, width = pixels.shape
        rows, cols = height // p, width // p
        patches = (pixels[:, : rows * p, : cols * p].reshape(channels, rows, p, cols, p)
                   .transpose(1, 3, 0, 2, 4).reshape(rows * cols, channels * p * p))  # fmt: skip
        x = patches @ a["patch_w"].T
        x = np.concatenate([np.asarray(a["class_embedding"])[None], x]) + a["positional_embedding"]
        eps = self.blocks.eps
        x = towers.layer_norm(x, a["ln_pre_w"], a["ln_pre_b"], eps[-2])
        x = self.blocks(x)
        x = towers.layer_norm(x[0], a["ln_post_w"], a["ln_post_b"], eps[-1])
        return x @ a["proj"]


def _centre_crop(image: Any, height: int, width: int) -> Any:
    """torchvision's CenterCrop of a PIL image no smaller than the crop (the resize made
    it so): the offset rounded half to even, as Python's round."""
    top = int(round((image.size[1] - height) / 2.0))
    left = int(round((image.size[0] - width) / 2.0))
    return image.crop((left, top, left + width, top + height))
