"""A model's towers kept as plain float32 arrays and run in numpy: what bioindex.text_tower
and bioindex.image_tower share — the transformer blocks open_clip's CLIP is made of, the
arithmetic they run, and the folder in the user's cache each is kept in.

A query from the shell paid for importing torch and open_clip (4-5 s: torchvision pulls in
torch._dynamo, open_clip pulls in timm) and for building the whole model (ViT-B-16: 1.7 s
of random initialisation, then its 600 MB of weights and their checksum) to encode one
text in 30 ms or one picture in a fraction of a second. Written out once when the model is
loaded anyway (indexing, a first query), a tower is read back memory-mapped. Only blocks
open_clip's ResidualAttentionBlock runs plainly (pre-norm multi-head attention and a GELU or
QuickGELU MLP, no LayerScale) are taken; anything else keeps loading the model.

Each tower is a folder of .npy files and a JSON record written last (its presence means the
folder is whole), in <cache>/towers/<model key>/<tower>: shared by every store of a model.
A folder that does not read back whole, or of another model, is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT = 2  # 2: the text tower's record holds the logit scale (a classify's softmax)
CACHE_FOLDER = "towers"  # under the user's cache (BIOINDEX_CACHE_DIR)
META = "tower.json"


def wanted() -> bool:
    """Whether towers are kept and used: BIOINDEX_TOWERS=0 turns both off (a cache disk too
    small for BioCLIP-2's ~1.7 GB of towers)."""
    return os.environ.get("BIOINDEX_TOWERS", "1") != "0"


def folder_for(cache_root: Path, identity: Any, tower: str) -> Path | None:
    """Where `tower` ("text", "image") of a model of `identity` (ModelIdentity) is kept in
    the user's cache (`cache_root`, search.labels.default_cache_root); None for weights
    with no fingerprint (a hub model whose file was not found), which could not tell one
    set of weights from another. The image tower is kept per preprocessing too."""
    weights = str(identity.weights_sha256)
    if weights.startswith("unknown:"):
        return None
    key = hashlib.sha256(f"{identity.source}\0{weights}\0{identity.dim}".encode()).hexdigest()
    name = tower if tower != "image" else f"image-{identity.preprocess}"
    return Path(cache_root) / CACHE_FOLDER / key[:32] / name


def identity_record(identity: Any) -> dict[str, Any]:
    """What a tower's record must match of the model it is read for."""
    return {"source": identity.source, "weights_sha256": identity.weights_sha256,
            "dim": int(identity.dim)}  # fmt: skip


def block_activation(blocks: list[Any]) -> str | None:
    """"gelu" or "quick_gelu" when every block is a plain ResidualAttentionBlock (see module
    doc) with that activation, else None."""
    import open_clip
    import torch
    from open_clip.transformer import ResidualAttentionBlock

    acts = set()
    for block in blocks:
        attn = block.attn
        if (type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv")
                or not isinstance(block.ls_1, torch.nn.Identity)
                or not isinstance(block.ls_2, torch.nn.Identity)
                or not isinstance(attn, torch.nn.MultiheadAttention)
                or attn.bias_k is not None or attn.add_zero_attn or attn.in_proj_weight is None
                or attn.in_proj_bias is None or attn.out_proj.bias is None
                or not isinstance(block.ln_1, torch.nn.LayerNorm)
                or not isinstance(block.ln_2, torch.nn.LayerNorm)):  # fmt: skip
            return None
        act = block.mlp.gelu
        if isinstance(act, open_clip.transformer.QuickGELU):
            acts.add("quick_gelu")
        elif type(act) is torch.nn.GELU and act.approximate == "none":
            acts.add("gelu")
        else:
            return None
    return acts.pop() if len(acts) == 1 else None


def f32(tensor: Any) -> np.ndarray:
    import torch

    return tensor.detach().to("cpu", torch.float32).numpy().copy()


def block_arrays(blocks: list[Any]) -> dict[str, np.ndarray]:
    """Each block's weights, stacked [layers, ...]: a dozen files, not a dozen a layer."""
    parts = {
        "ln_1_w": lambda b: b.ln_1.weight, "ln_1_b": lambda b: b.ln_1.bias,
        "in_w": lambda b: b.attn.in_proj_weight, "in_b": lambda b: b.attn.in_proj_bias,
        "out_w": lambda b: b.attn.out_proj.weight, "out_b": lambda b: b.attn.out_proj.bias,
        "ln_2_w": lambda b: b.ln_2.weight, "ln_2_b": lambda b: b.ln_2.bias,
        "fc_w": lambda b: b.mlp.c_fc.weight, "fc_b": lambda b: b.mlp.c_fc.bias,
        "proj_w": lambda b: b.mlp.c_proj.weight, "proj_b": lambda b: b.mlp.c_proj.bias,
    }  # fmt: skip
    return {name: np.stack([f32(part(b)) for b in blocks]) for name, part in parts.items()}


def block_record(blocks: list[Any], activation: str) -> dict[str, Any]:
    return {"heads": int(blocks[0].attn.num_heads), "activation": activation,
            "eps": [float(b.ln_1.eps) for b in blocks]
            + [float(b.ln_2.eps) for b in blocks]}  # fmt: skip


def write(folder: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any],
          files: dict[str, str] | None = None) -> bool:  # fmt: skip
    """Write a tower's arrays, other `files` (name: text) and record to `folder`, whole or
    not at all (a scratch folder renamed into place); True when it is there after."""
    meta = {**meta, "format": FORMAT,
            "shapes": {name: list(array.shape) for name, array in arrays.items()}}  # fmt: skip
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tower-", dir=folder.parent))
    try:
        for name, array in arrays.items():
            np.save(scratch / f"{name}.npy", array)
        for name, text in (files or {}).items():
            (scratch / name).write_text(text)
        (scratch / META).write_text(json.dumps(meta))  # last: its presence means whole
        if folder.exists():  # one of an older format, or damaged (`current` said no)
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(scratch, folder)
        except OSError:  # another process put it there first
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return (folder / META).is_file()


def current(folder: Path, identity: Any) -> bool:
    """Whether `folder` holds a whole tower of this format for a model of `identity`: else
    a model loaded anyway writes it again (one of an older release, or damaged, would have
    every later query load the model)."""
    return read(folder, identity) is not None


def read(folder: Path, identity: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """(record, arrays memory-mapped) of the tower in `folder` when it is whole and of a
    model of `identity`, else None."""
    try:
        meta = json.loads((folder / META).read_text())
        wanted = identity_record(identity)
        if meta.get("format") != FORMAT or any(meta.get(k) != v for k, v in wanted.items()):
            return None
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r")
                  for name in meta["shapes"]}  # fmt: skip
        if any(list(a.shape) != meta["shapes"][n] or a.dtype != np.float32
               for n, a in arrays.items()):  # fmt: skip
            return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("tower in %s not used: %s", folder, exc)
        return None
    return meta, arrays


class Blocks:
    """The stacked blocks of a tower, run in numpy with torch's float32 arithmetic."""

    def __init__(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.a = arrays
        self.heads = int(meta["heads"])
        self.eps = [float(e) for e in meta["eps"]]
        self.quick = meta["activation"] == "quick_gelu"
        self.layers = len(arrays["in_w"])

    def __call__(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """x [tokens, width] through every block; `mask` added to attention scores."""
        a = self.a
        for at in range(self.layers):
            h = layer_norm(x, a["ln_1_w"][at], a["ln_1_b"][at], self.eps[at])
            x = x + self._attention(h, at, mask)
            h = layer_norm(x, a["ln_2_w"][at], a["ln_2_b"][at], self.eps[self.layers + at])
            h = h @ a["fc_w"][at].T + a["fc_b"][at]
            h = quick_gelu(h) if self.quick else gelu(h)
            x = x + (h @ a["proj_w"][at].T + a["proj_b"][at])
        return x

    def _attention(self, h: np.ndarray, at: int, mask: np.ndarray | None) -> np.ndarray:
        a = self.a
        length, width = h.shape
        size = width // self.heads
        qkv = h @ a["in_w"][at].T + a["in_b"][at]
        q, k, v = (qkv[:, i * width : (i + 1) * width].reshape(length, self.heads, size)
                   .transpose(1, 0, 2) for i in range(3))  # fmt: skip
        scores = (q / np.float32(math.sqrt(size))) @ k.transpose(0, 2, 1)
        if mask is not None:
            scores = scores + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights = scores / scores.sum(axis=-1, keepdims=True)
        out = (weights @ v).transpose(1, 0, 2).reshape(length, width)
        return out @ a["out_w"][at].T + a["out_b"][at]


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps)) * weight + bias


def quick_gelu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(np.float32(-1.702) * x))


def gelu(x: np.ndarray) -> np.ndarray:
    """x·Φ(x) with Φ through erf, as torch.nn.GELU computes it (numpy has no erf)."""
    return (0.5 * x * (1 + erf(x * np.float32(1 / math.sqrt(2))))).astype(np.float32)


def erf(x: np.ndarray) -> np.ndarray:
    """erf to within 1.2e-7 everywhere (the Chebyshev fit of erfc in Numerical Recipes,
    §6.2), in float64 and back: a float32 rounding apart from the exact value."""
    z = np.abs(x.astype(np.float64))
    t = 1 / (1 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (
        0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (
            1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))  # fmt: skip
    erfc = t * np.exp(poly)
    return np.where(x >= 0, 1 - erfc, erfc - 1)


def unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
