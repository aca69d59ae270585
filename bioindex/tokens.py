"""Tokenizing many texts at once: open_clip's CLIP tokenizer, a word at a time.

open_clip's SimpleTokenizer cleans every text with ftfy and html.unescape before its regex
and BPE: 61 µs a text, 24 s of a 5,000-name label set's 400,000 prompts (80 templates),
where the words themselves are few. For printable ASCII without "&" that cleaning is
lower-casing, and neither the regex nor BPE ever joins across a space, so a text's tokens
are its words' tokens one after another; each word is tokenized once, by the tokenizer
itself. Other texts go to the tokenizer whole.
"""

from __future__ import annotations

import math
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

        return torch.from_numpy(self.array(texts, context_length))

    def array(self, texts: str | Sequence[str], context_length: int | None = None
              ) -> np.ndarray:  # fmt: skip
        """The tokens as a numpy array [texts, context length] (int64)."""
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
            out[whole] = np.asarray(self.tokenizer([texts[r] for r in whole], length))
        return out

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


def plain(text: str) -> bool:
    """Whether `text` is tokenized word by word as it stands (see PLAIN)."""
    return PLAIN.match(text) is not None


class PlainBPE:
    """CLIP's byte-pair encoding of plain words (printable ASCII without "&"), from the
    tables of an open_clip SimpleTokenizer (`tables`), without importing open_clip or
    torch: what the text tower kept beside the model (bioindex.text_tower) tokenizes
    with. Such a word's bytes are their own BPE symbols, and it splits as open_clip's
    pattern splits it: the two special tokens, English contractions, runs of letters,
    single digits, runs of anything else. WordTokenizer(PlainBPE(...)) gives open_clip's
    tokens for plain texts (tests/test_tokens.py); any other text is not its to tokenize."""

    PIECES = re.compile(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]"
                        r"|[^\sa-z0-9]+")  # fmt: skip

    def __init__(self, vocabulary: Sequence[str], merges: Sequence[Sequence[str]],
                 context_length: int) -> None:  # fmt: skip
        self.encoder = {token: at for at, token in enumerate(vocabulary)}
        self.ranks = {(first, second): at for at, (first, second) in enumerate(merges)}
        self.sot_token_id = self.encoder["<start_of_text>"]
        self.eot_token_id = self.encoder["<end_of_text>"]
        self.context_length = context_length

    @staticmethod
    def tables(tokenizer: Any) -> dict[str, Any]:
        """What a PlainBPE is made from, read off an open_clip SimpleTokenizer."""
        vocabulary = sorted(tokenizer.encoder, key=tokenizer.encoder.__getitem__)
        merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.__getitem__)
        return {"vocabulary": vocabulary, "merges": [list(m) for m in merges],
                "context_length": int(tokenizer.context_length)}  # fmt: skip

    def encode(self, word: str) -> list[int]:
        if not plain(word):
            raise ValueError(f"not a plain word: {word!r}")
        out: list[int] = []
        for piece in self.PIECES.findall(" ".join(word.split()).lower()):
            if piece in ("<start_of_text>", "<end_of_text>"):
                out.append(self.encoder[piece])
            else:
                out.extend(self.encoder[symbol] for symbol in self._merged(piece))
        return out

    def __call__(self, texts: Sequence[str], context_length: int) -> np.ndarray:
        raise ValueError("PlainBPE tokenizes plain texts only (WordTokenizer.array)")

    def _merged(self, piece: str) -> list[str]:
        """The piece's symbols, the end-of-word mark on the last, merged pair by pair in
        the order the merges were learnt."""
        symbols = [*piece[:-1], piece[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = list(zip(symbols, symbols[1:]))
            first, second = min(pairs, key=lambda pair: self.ranks.get(pair, math.inf))
            if (first, second) not in self.ranks:
                break
            merged, at = [], 0
            while at < len(symbols):
                if at + 1 < len(symbols) and symbols[at] == first and symbols[at + 1] == second:
                    merged.append(first + second)
                    at += 2
                else:
                    merged.append(symbols[at])
                    at += 1
            symbols = merged
        return symbols
