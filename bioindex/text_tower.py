"""A model's text tower as arrays (bioindex.towers), so a text query needs neither torch nor
open_clip: 0.6 s from the shell where loading the model took 6-9 (docs/benchmarks.md).

Only the tower open_clip's CLIP class runs — token and position embeddings, causal blocks,
a final LayerNorm, the vector read at the end-of-text token, the projection — and only
texts its tokenizer takes a word at a time (bioindex.tokens.PlainBPE, from the tokenizer's
own tables, kept beside the arrays) are encoded here; anything else loads the model.
tests/test_text_tower.py holds the two to the same vectors.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bioindex import towers
from bioindex.tokens import PlainBPE, WordTokenizer, plain

log = logging.getLogger(__name__)

TOKENIZER = "tokenizer.json"
# More texts than this at once (a label set) go to the model, batched as it batches them.
MOST_TEXTS = 64


def _activation(model: Any) -> str | None:
    """The blocks' activation when `model` is open_clip's CLIP with the plain text tower
    described above, else None."""
    import open_clip
    import torch

    if (type(model).encode_text is not open_clip.CLIP.encode_text
            or getattr(model, "text_pool_type", None) != "argmax"
            or getattr(model, "attn_mask", None) is None
            or getattr(model, "cls_emb", None) is not None
            or not isinstance(model.ln_final, torch.nn.LayerNorm)
            or not isinstance(model.text_projection, torch.nn.Parameter)):  # fmt: skip
        return None
    return towers.block_activation(list(model.transformer.resblocks))


def export(model: Any, folder: Path) -> bool:
    """Write `model`'s (EmbeddingModel) text tower and tokenizer tables to `folder`, unless
    it is there already or is not one this module runs; True when it is there after."""
    if (tower := TextTower.load(folder, model.identity)) and tower.tokenizer is not None:
        return True
    net = model.model
    if not isinstance(model.tokenizer, WordTokenizer) or (activation := _activation(net)) is None:
        return False
    blocks = list(net.transformer.resblocks)
    arrays = {
        "token_embedding": towers.f32(net.token_embedding.weight),
        "positional_embedding": towers.f32(net.positional_embedding),
        "ln_final_w": towers.f32(net.ln_final.weight),
        "ln_final_b": towers.f32(net.ln_final.bias),
        "text_projection": towers.f32(net.text_projection),
        **towers.block_arrays(blocks),
    }
    record = towers.block_record(blocks, activation)
    meta = {**towers.identity_record(model.identity), **record,
            "eps": record["eps"] + [float(net.ln_final.eps)],
            "logit_scale": float(model.logit_scale)}  # fmt: skip
    tables = json.dumps(PlainBPE.tables(model.tokenizer.tokenizer))
    return towers.write(folder, arrays, meta, {TOKENIZER: tables})


class TextTower:
    """A text tower read back from `export`'s folder; `encode` as EmbeddingModel's."""

    def __init__(self, meta: dict[str, Any], arrays: dict[str, np.ndarray],
                 folder: Path) -> None:  # fmt: skip
        self.meta = meta
        self.arrays = arrays
        self.blocks = towers.Blocks(meta, arrays)
        self.folder = folder

    @classmethod
    def load(cls, folder: Path, identity: Any) -> TextTower | None:
        """The tower in `folder` when it is whole and of a model of `identity`, else None."""
        found = towers.read(folder, identity)
        return None if found is None else cls(*found, folder)

    @functools.cached_property
    def tokenizer(self) -> WordTokenizer | None:
        """The tokenizer from its kept tables, None where they do not read back. Read on the
        first encode: parsing 1.5 MB of JSON took 0.1 s of a classify that wants only the
        logit scale."""
        try:
            tables = json.loads((self.folder / TOKENIZER).read_text())
            return WordTokenizer(PlainBPE(**tables))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("text tower in %s not used: %s", self.folder, exc)
            return None

    @property
    def logit_scale(self) -> float:
        """The model's exp(logit_scale), as EmbeddingModel.logit_scale gives it."""
        return float(self.meta["logit_scale"])

    def encode(self, texts: Sequence[str]) -> np.ndarray | None:
        """Unit vectors [texts, dim], or None when a text is not one to encode here (not
        plain: see module doc) or there are more than MOST_TEXTS."""
        texts = list(texts)
        if (not texts or len(texts) > MOST_TEXTS or not all(plain(t) for t in texts)
                or self.tokenizer is None):  # fmt: skip
            return None
        return towers.unit(np.stack([self._forward(row) for row in self.tokenizer.array(texts)]))

    def _forward(self, tokens: np.ndarray) -> np.ndarray:
        """One text's vector: the tower run up to its end-of-text token (the highest id),
        which a causal tower reads without the padding after it."""
        a = self.arrays
        end = int(tokens.argmax())
        tokens = tokens[: end + 1]
        x = np.asarray(a["token_embedding"][tokens]) + a["positional_embedding"][: len(tokens)]
        mask = np.triu(np.full((len(tokens),) * 2, -np.inf, dtype=np.float32), k=1)
        x = self.blocks(x, mask)
        x = towers.layer_norm(x[end], a["ln_final_w"], a["ln_final_b"], self.blocks.eps[-1])
        return x @ a["text_projection"]
