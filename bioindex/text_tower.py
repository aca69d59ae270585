"""A model's text tower kept as plain arrays, so a text query needs neither torch nor open_clip.

A new text search from the shell paid for importing torch and open_clip (4-5 s: torchvision
pulls in torch._dynamo, open_clip pulls in timm) and for building the whole model (ViT-B-16:
1.7 s of random initialisation, then its 600 MB of weights), to encode one short text in
30 ms. CLIP's text tower is a plain causal transformer; written out once as float32 arrays
(`export`, when the model has been loaded anyway: indexing, a first query), it is read back
memory-mapped and run in numpy (`TextTower.encode`) with the same arithmetic, in float32.

Only the tower open_clip's CLIP class runs — token and position embeddings, pre-norm
residual blocks of multi-head causal attention and a GELU or QuickGELU MLP, a final
LayerNorm, the vector read at the end-of-text token, the projection — and only texts its
tokenizer takes a word at a time (bioindex.tokens.PlainBPE) are encoded here; anything else
loads the model as before. tests/test_text_tower.py holds the two to the same vectors.

Kept in the user's cache, one folder per model (weights and architecture), shared by every
store of that model: 250 MB for BioCLIP's tower. A folder that does not read back whole is
ignored and the model is loaded instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bioindex.tokens import PlainBPE, WordTokenizer, plain

log = logging.getLogger(__name__)

FORMAT = 1
CACHE_FOLDER = "text-towers"  # under the user's cache (BIOINDEX_CACHE_DIR)
META = "tower.json"
TOKENIZER = "tokenizer.json"
# Arrays per layer are stacked [layers, ...]: a dozen files, not a dozen per layer.
LAYER_ARRAYS = ("ln_1_w", "ln_1_b", "in_w", "in_b", "out_w", "out_b", "ln_2_w", "ln_2_b",
                "fc_w", "fc_b", "proj_w", "proj_b")  # fmt: skip
ARRAYS = ("token_embedding", "positional_embedding", "ln_final_w", "ln_final_b",
          "text_projection", *LAYER_ARRAYS)  # fmt: skip
# More texts than this at once (a label set) go to the model, batched as it batches them.
MOST_TEXTS = 64


def folder_for(cache_root: Path, identity: Any) -> Path | None:
    """Where the tower of a model of `identity` (ModelIdentity) is kept in the user's
    cache (`cache_root`, search.labels.default_cache_root); None
    for weights with no fingerprint (a hub model whose file was not found), which could
    not tell one set of weights from another."""
    weights = str(identity.weights_sha256)
    if weights.startswith("unknown:"):
        return None
    key = hashlib.sha256(f"{identity.source}\0{weights}\0{identity.dim}".encode()).hexdigest()
    return Path(cache_root) / CACHE_FOLDER / key[:32]


def _standard(model: Any) -> str | None:
    """The activation ("gelu" or "quick_gelu") when `model` is open_clip's CLIP with the
    plain text tower described above, else None."""
    import open_clip
    import torch
    from open_clip.transformer import ResidualAttentionBlock

    if (type(model).encode_text is not open_clip.CLIP.encode_text
            or getattr(model, "text_pool_type", None) != "argmax"
            or getattr(model, "attn_mask", None) is None
            or getattr(model, "cls_emb", None) is not None):  # fmt: skip
        return None
    blocks = list(model.transformer.resblocks)
    if not blocks or not isinstance(model.ln_final, torch.nn.LayerNorm):
        return None
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
    projection = model.text_projection
    if len(acts) != 1 or not isinstance(projection, torch.nn.Parameter):
        return None
    return acts.pop()


def export(model: Any, folder: Path) -> bool:
    """Write `model`'s (EmbeddingModel) text tower and tokenizer tables to `folder`, unless
    it is there already or is not one this module runs; True when it is there after."""
    if (folder / META).is_file():
        return True
    if not isinstance(model.tokenizer, WordTokenizer):
        return False
    net = model.model
    activation = _standard(net)
    if activation is None:
        return False
    arrays = _arrays(net)
    blocks = list(net.transformer.resblocks)
    meta = {
        "format": FORMAT,
        "source": model.identity.source,
        "weights_sha256": model.identity.weights_sha256,
        "dim": int(model.identity.dim),
        "heads": int(blocks[0].attn.num_heads),
        "activation": activation,
        "eps": [float(b.ln_1.eps) for b in blocks] + [float(b.ln_2.eps) for b in blocks]
        + [float(net.ln_final.eps)],
        "shapes": {name: list(array.shape) for name, array in arrays.items()},
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tower-", dir=folder.parent))
    try:
        for name, array in arrays.items():
            np.save(scratch / f"{name}.npy", array)
        tables = PlainBPE.tables(model.tokenizer.tokenizer)
        (scratch / TOKENIZER).write_text(json.dumps(tables))
        (scratch / META).write_text(json.dumps(meta))  # last: its presence means whole
        try:
            os.replace(scratch, folder)
        except OSError:  # another process put it there first
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return (folder / META).is_file()


def _arrays(net: Any) -> dict[str, np.ndarray]:
    import torch

    def f32(tensor: Any) -> np.ndarray:
        return tensor.detach().to("cpu", torch.float32).numpy().copy()

    blocks = list(net.transformer.resblocks)
    per_layer = {
        "ln_1_w": [b.ln_1.weight for b in blocks], "ln_1_b": [b.ln_1.bias for b in blocks],
        "in_w": [b.attn.in_proj_weight for b in blocks],
        "in_b": [b.attn.in_proj_bias for b in blocks],
        "out_w": [b.attn.out_proj.weight for b in blocks],
        "out_b": [b.attn.out_proj.bias for b in blocks],
        "ln_2_w": [b.ln_2.weight for b in blocks], "ln_2_b": [b.ln_2.bias for b in blocks],
        "fc_w": [b.mlp.c_fc.weight for b in blocks], "fc_b": [b.mlp.c_fc.bias for b in blocks],
        "proj_w": [b.mlp.c_proj.weight for b in blocks],
        "proj_b": [b.mlp.c_proj.bias for b in blocks],
    }  # fmt: skip
    arrays = {
        "token_embedding": f32(net.token_embedding.weight),
        "positional_embedding": f32(net.positional_embedding),
        "ln_final_w": f32(net.ln_final.weight), "ln_final_b": f32(net.ln_final.bias),
        "text_projection": f32(net.text_projection),
    }  # fmt: skip
    arrays.update({name: np.stack([f32(t) for t in tensors])
                   for name, tensors in per_layer.items()})  # fmt: skip
    return arrays


class TextTower:
    """A text tower read back from `export`'s folder; `encode` as EmbeddingModel's."""

    def __init__(self, meta: dict[str, Any], arrays: dict[str, np.ndarray],
                 tokenizer: WordTokenizer) -> None:  # fmt: skip
        self.meta = meta
        self.arrays = arrays
        self.tokenizer = tokenizer
        self.heads = int(meta["heads"])
        self.eps = [float(e) for e in meta["eps"]]
        self.quick = meta["activation"] == "quick_gelu"

    @classmethod
    def load(cls, folder: Path, identity: Any) -> TextTower | None:
        """The tower in `folder` when it is whole and of a model of `identity`, else None."""
        try:
            meta = json.loads((folder / META).read_text())
            if (meta.get("format") != FORMAT or meta["source"] != identity.source
                    or meta["weights_sha256"] != identity.weights_sha256
                    or meta["dim"] != identity.dim):  # fmt: skip
                return None
            arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
            if any(list(a.shape) != meta["shapes"][n] or a.dtype != np.float32
                   for n, a in arrays.items()):  # fmt: skip
                return None
            tables = json.loads((folder / TOKENIZER).read_text())
            tokenizer = WordTokenizer(PlainBPE(**tables))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("text tower in %s not used: %s", folder, exc)
            return None
        return cls(meta, arrays, tokenizer)

    def encode(self, texts: Sequence[str]) -> np.ndarray | None:
        """Unit vectors [texts, dim], or None when a text is not one to encode here (not
        plain: see module doc) or there are more than MOST_TEXTS."""
        texts = list(texts)
        if not texts or len(texts) > MOST_TEXTS or not all(plain(t) for t in texts):
            return None
        tokens = self.tokenizer.array(texts)
        vectors = np.stack([self._forward(row) for row in tokens])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)

    def _forward(self, tokens: np.ndarray) -> np.ndarray:
        """One text's vector: the tower run up to its end-of-text token (the highest id),
        which a causal tower reads without the padding after it."""
        a = self.arrays
        end = int(tokens.argmax())
        tokens = tokens[: end + 1]
        length = len(tokens)
        x = np.asarray(a["token_embedding"][tokens]) + a["positional_embedding"][:length]
        mask = np.triu(np.full((length, length), -np.inf, dtype=np.float32), k=1)
        layers = len(a["in_w"])
        for at in range(layers):
            h = _layer_norm(x, a["ln_1_w"][at], a["ln_1_b"][at], self.eps[at])
            x = x + self._attention(h, at, mask)
            h = _layer_norm(x, a["ln_2_w"][at], a["ln_2_b"][at], self.eps[layers + at])
            h = h @ a["fc_w"][at].T + a["fc_b"][at]
            h = _quick_gelu(h) if self.quick else _gelu(h)
            x = x + (h @ a["proj_w"][at].T + a["proj_b"][at])
        x = _layer_norm(x[end], a["ln_final_w"], a["ln_final_b"], self.eps[-1])
        return x @ a["text_projection"]

    def _attention(self, h: np.ndarray, at: int, mask: np.ndarray) -> np.ndarray:
        a = self.arrays
        length, width = h.shape
        size = width // self.heads
        qkv = h @ a["in_w"][at].T + a["in_b"][at]
        q, k, v = (qkv[:, i * width : (i + 1) * width].reshape(length, self.heads, size)
                   .transpose(1, 0, 2) for i in range(3))  # fmt: skip
        scores = (q / np.float32(math.sqrt(size))) @ k.transpose(0, 2, 1) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights = scores / scores.sum(axis=-1, keepdims=True)
        out = (weights @ v).transpose(1, 0, 2).reshape(length, width)
        return out @ a["out_w"][at].T + a["out_b"][at]


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps)) * weight + bias


def _quick_gelu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(np.float32(-1.702) * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    """x·Φ(x) with Φ through erf, as torch.nn.GELU computes it (numpy has no erf)."""
    return (0.5 * x * (1 + _erf(x * np.float32(1 / math.sqrt(2))))).astype(np.float32)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to within 1.2e-7 everywhere (Numerical Recipes' erfc by Chebyshev fit), in
    float64 and back: a float32 rounding apart from the exact value."""
    z = np.abs(x.astype(np.float64))
    t = 1 / (1 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (
        0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (
            1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))  # fmt: skip
    erfc = t * np.exp(poly)
    return np.where(x >= 0, 1 - erfc, erfc - 1)
