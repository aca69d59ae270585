"""Texts tokenized a word at a time give open_clip's own tokens, whatever the text."""

from __future__ import annotations

import string

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from open_clip.tokenizer import SimpleTokenizer

from bioindex import tokens
from bioindex.search.labels import openai_templates

TOKENIZER = SimpleTokenizer()
WORDS = ["Cardinalis", "cardinalis", "Cooper's", "hawk", "sp.", "(L.)", "1758", "&amp;", "<b>",
         "Bubo", "Ærø", "naïve", "–", "👍", "don't", "x" * 40, "''", "--", "<end_of_text>"]


def _same(texts: list[str]) -> None:
    fast = tokens.WordTokenizer(TOKENIZER)
    assert torch.equal(fast(texts), TOKENIZER(texts)), texts
    assert torch.equal(fast(texts), TOKENIZER(texts))  # from the remembered words too


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(
    st.text(string.printable, max_size=60),
    st.lists(st.sampled_from(WORDS + list(string.punctuation)), max_size=50)
    .map(" ".join),  # many words: truncated at the context length
    st.text(max_size=40)), min_size=1, max_size=8))  # fmt: skip
@example(["a photo of a Cardinalis cardinalis."])
@example(["Quercus robur L. & Q. petraea", "M&Ms", "tab\tand\nnewline", "  padded  "])
@example(["word " * 80, "a" * 400, ""])
@example(["<i>Quercus</i> &amp;amp;amp; oaks"])  # ftfy unescapes HTML only where no "<"
def test_any_texts_get_the_tokenizers_own_tokens(texts: list[str]) -> None:
    _same(texts)


def test_a_label_sets_prompts_get_the_tokenizers_own_tokens() -> None:
    names = ["Cardinalis cardinalis", "Accipiter cooperii (Cooper's hawk)", "Passer domesticus",
             "Quercus robur L.", "Erithacus rubecula 'robin'", "Bubo bubo — Eurasian eagle-owl",
             "Poaceae sp. 2", "Turdus merula;"]  # fmt: skip
    _same([template(name) for name in names for template in openai_templates()])


def test_only_a_lower_casing_simple_tokenizer_is_taken_a_word_at_a_time() -> None:
    assert isinstance(tokens.word_tokenizer(TOKENIZER), tokens.WordTokenizer)
    for other in (SimpleTokenizer(clean="canonicalize"), SimpleTokenizer(clean="whitespace"),
                  SimpleTokenizer(reduction_mask="simple"), "not a tokenizer"):  # fmt: skip
        assert tokens.word_tokenizer(other) is other


def test_the_remembered_words_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "WORDS_KEPT", 10)
    fast = tokens.WordTokenizer(TOKENIZER)
    texts = [f"a photo of specimen{i}" for i in range(50)]
    assert torch.equal(fast(texts), TOKENIZER(texts))
    assert len(fast._words) <= 10


def test_a_loaded_model_tokenizes_a_word_at_a_time(tiny_model: str) -> None:
    from bioindex.models import load_model

    model = load_model(tiny_model, device="cpu")
    assert isinstance(model.tokenizer, tokens.WordTokenizer)


BPE = tokens.PlainBPE(**tokens.PlainBPE.tables(TOKENIZER))
PLAIN_WORDS = [w for w in WORDS if tokens.plain(w)]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(
    st.text(string.ascii_letters + string.digits + string.punctuation.replace("&", "") + " ",
            max_size=60),
    st.lists(st.sampled_from(PLAIN_WORDS), max_size=50).map(" ".join)),
    min_size=1, max_size=8))  # fmt: skip
@example(["a photo of a Cardinalis cardinalis.", "<start_of_text>x<END_OF_TEXT>", "'S'll'd"])
def test_the_kept_tables_tokenize_plain_texts_as_open_clip(texts: list[str]) -> None:
    """PlainBPE (the text tower's tokenizer, without open_clip) gives open_clip's tokens."""
    assert (tokens.WordTokenizer(BPE).array(texts) == TOKENIZER(texts).numpy()).all(), texts


def test_the_kept_tables_refuse_what_is_not_plain() -> None:
    for word in ("naïve", "M&Ms", "tab\tword"):
        with pytest.raises(ValueError):
            BPE.encode(word)
