"""Tokenizing many texts at once: open_clip's CLIP tokenizer, a word at a time.

open_clip's SimpleTokenizer cleans every text with ftfy and html.unescape before its regex
and BPE: 61 µs a text, 24 s of a 5,000-name label set's 400,000 prompts (80 templates),
where the words themselves are few. For printable ASCII without "&" that cleaning is
lower-casing, and neither the regex nor BPE ever joins across a space, so a text's tokens
are its words' tokens one after another; each word is tokenized once, by the tokenizer
itself. Other texts go to the tokenizer whole.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

# Printable ASCII (space to "~") without "&": ftfy leaves it as it is (its fixes need
# non-ASCII text, control characters or an HTML entity) and html.unescape has nothing to do.
# With "&" a word is not what it is in its text: ftfy unescapes entities only in a text
# without a "<" ("<i>Quercus</i> &amp;amp;amp;" tokenizes otherwise word by word).
PLAIN = re.compile(r"[ -%'-~]*\Z")
WORDS_KEPT = 200_000  # words remembered, then forgotten all at once: a server's memory


class WordTokenizer:
    """open_clip's SimpleTokenizer (lower-casing, truncating) with its words remembered:
    the same tokens, 20x as fast over a label set (benchmarks/tokenize_speed.py)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.context_length = tokenizer.context_length
        self._words: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Any:
        import torch

        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        start, end = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        out = np.zeros((len(texts), length), dtype=np.int64)
        whole = []
        for row, text in enumerate(texts):
            if not PLAIN.match(text):
                whole.append(row)
                continue
            tokens = [start]
            for word in text.split():
                tokens += self._words.get(word) or self._learn(word)
            tokens.append(end)
            if len(tokens) > length:  # as the tokenizer truncates: the end token kept last
                tokens = tokens[: length - 1] + [end]
            out[row, : len(tokens)] = tokens
        if whole:
            out[whole] = self.tokenizer([texts[r] for r in whole], length).numpy()
        return torch.from_numpy(out)

    def _learn(self, word: str) -> list[int]:
        tokens = self.tokenizer.encode(word)
        with self._lock:
            if len(self._words) >= WORDS_KEPT:
                self._words.clear()
            self._words[word] = tokens
        return tokens


def word_tokenizer(tokenizer: Any) -> Any:
    """`tokenizer` a word at a time where that gives the same tokens (open_clip's
    SimpleTokenizer as CLIP and BioCLIP use it), else `tokenizer` itself."""
    from open_clip import tokenizer as open_clip_tokenizer

    plain = (type(tokenizer) is open_clip_tokenizer.SimpleTokenizer
             and tokenizer.clean_fn is open_clip_tokenizer._clean_lower
             and tokenizer.reduction_fn is None and tokenizer.context_length)  # fmt: skip
    return WordTokenizer(tokenizer) if plain else tokenizer
