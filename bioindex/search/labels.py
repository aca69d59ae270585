"""Label sets for zero-shot classification, and their text embeddings cached on disk.

A label set is a list of labels, each a Taxon (when its lineage is known) or a free text, with
a text embedding per label: BioCLIP/pybioclip's recipe, the label put into each of the 80
OpenAI ImageNet templates, each normalised, averaged, renormalised. TreeOfLife label
directories come with their embeddings precomputed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bioindex.errors import BioindexError
from bioindex.search.defaults import TEMPLATE_CHOICES
from bioindex.tables import WORKBOOK_SUFFIXES, delimiter, workbook_text
from bioindex.taxonomy import (
    TOL_VECTORS,
    Taxon,
    make_taxon,
    read_tree_of_life_names,
    split_binomial,
)

TEMPLATE_SET = "openai-imagenet-80"
ONE_TEMPLATE_SET = "a-photo-of"
ENCODE_CHUNK = 64  # labels per model call: the progress bar's step
CACHE_EVERY = 1024  # labels between cache writes (each rewrites the cache's matrix)
logger = logging.getLogger(__name__)


def openai_templates() -> list[Callable[[str], str]]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


def a_photo_of(text: str) -> str:
    return f"a photo of {text}."


def template_set(choice: str) -> str:
    """The cache's name for a TEMPLATE_CHOICES template set."""
    names = {"openai": TEMPLATE_SET, "one": ONE_TEMPLATE_SET}
    if choice not in names:
        raise BioindexError(f"templates: {choice!r}; choose one of "
                            f"{', '.join(TEMPLATE_CHOICES)}")  # fmt: skip
    return names[choice]


def templates_of(choice: str) -> list[Callable[[str], str]]:
    """The templates of a TEMPLATE_CHOICES name. Only for texts to encode: OpenAI's come
    from open_clip, whose import brings torch (4-5 s) into a command whose labels are all
    cached."""
    return openai_templates() if template_set(choice) == TEMPLATE_SET else [a_photo_of]


@dataclass
class LabelSet:
    names: list[str]  # what a label is called in output
    texts: list[str]  # what is put into the templates
    taxa: list[Taxon | None]
    vectors: np.ndarray | None = None  # [N, dim] when precomputed
    source: str = ""
    templates: str = "openai"  # TEMPLATE_CHOICES: the prompts each text is put into

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_lineage(self) -> bool:
        return all(t is not None and t.lineage for t in self.taxa)


def templated(labels: LabelSet | None, templates: str) -> LabelSet | None:
    """`labels` put into `templates` (TEMPLATE_CHOICES), as a copy; "openai", the default,
    leaves them as they are. Custom labels only: the store's own names and a species list
    keep the prompts their calibration was fitted with."""
    if templates not in TEMPLATE_CHOICES:
        raise BioindexError(f"templates: {templates!r}; choose one of "
                            f"{', '.join(TEMPLATE_CHOICES)}")  # fmt: skip
    if templates == "openai" or (labels is not None and labels.templates == templates):
        return labels
    if labels is None:
        raise BioindexError("templates are for custom labels: the store's own names and a "
                            "species list keep the 80 prompts their calibration uses")
    return replace(labels, templates=templates)


def labels_from_taxa(taxa: Sequence[Taxon], source: str) -> LabelSet:
    taxa = list(taxa)
    if not taxa:
        raise BioindexError(f"no labelled taxa in {source}")
    texts = [t.text("taxonomic_common" if t.common_name else "taxonomic") for t in taxa]
    return LabelSet([t.scientific_name for t in taxa], texts, list(taxa), None, source)


def labels_from_strings(labels: Sequence[str], source: str = "--labels") -> LabelSet:
    cleaned = [label.strip() for label in labels if label.strip()]
    if len(cleaned) < 2:
        raise BioindexError("give at least two labels to choose between")
    if len(set(cleaned)) != len(cleaned):
        raise BioindexError("the labels contain duplicates")
    return LabelSet(cleaned, cleaned, [None] * len(cleaned), None, source)


def checklist_taxa(text: str, name: str) -> list[Taxon]:
    """The species of a checklist table: a CSV/TSV with a `species` or `scientificName`
    column (GBIF's species-list download has both, plus kingdom … genus), `name` in
    messages."""
    text = text.removeprefix("\ufeff")
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect="excel",
                            delimiter=delimiter(text[:65536].split("\n", 1)[0]))  # fmt: skip
    try:
        lowered = {field.lower(): field for field in reader.fieldnames or ()}
        column = lowered.get("species") or lowered.get("scientificname")
        if column is None:
            raise BioindexError(f"{name} has no 'species' or 'scientificName' column")
        taxa = list(_listed_taxa(reader, column, lowered))
    except csv.Error as exc:
        raise BioindexError(f"{name} is not a CSV/TSV table: {exc}") from exc
    if not taxa:
        raise BioindexError(f"{name} names no species")
    return taxa


def _listed_taxa(rows: Iterable[dict[str, str]], column: str, lowered: dict[str, str]
                 ) -> Iterable[Taxon]:  # fmt: skip
    ranks: Sequence[str] = ("kingdom", "phylum", "class", "order", "family")
    seen: set[tuple[str, ...]] = set()
    for row in rows:
        binomial = split_binomial(row.get(column) or "")
        if binomial is None:
            continue
        higher = [(row.get(lowered[r]) or "").strip() if r in lowered else "" for r in ranks]
        taxon = Taxon(*higher, genus=binomial[0], epithet=binomial[1])
        if taxon.lineage not in seen:  # a checklist may list a species once per source
            seen.add(taxon.lineage)
            yield taxon


def read_labels_argument(value: str) -> LabelSet:
    """--labels FILE (one per line, or a checklist table: species with their lineage) or
    a comma-separated list."""
    path = Path(value)
    if path.is_file():
        try:
            text = (workbook_text(path) if path.suffix.lower() in WORKBOOK_SUFFIXES
                    else path.read_text(encoding="utf-8-sig"))  # fmt: skip
        except UnicodeDecodeError:
            raise BioindexError(f"--labels {value}: not UTF-8 text") from None
        first = text.split("\n", 1)[0]
        if "\t" in first or "," in first:
            # A table, such as a GBIF species list: read line by line its header was a
            # label, and every answer a whole row of it.
            return labels_from_taxa(checklist_taxa(text, f"--labels {value}"), str(path))
        return labels_from_strings(text.splitlines(), str(path))
    if "," not in value:
        raise BioindexError(f"--labels {value!r}: not a file, and not a comma-separated list")
    return labels_from_strings(value.split(","))


def labels_from_tree_of_life(folder: str | os.PathLike[str], dim: int) -> LabelSet:
    """txt_emb_species.npy [dim, N] + txt_emb_species.json, as BioCLIP publishes them."""
    taxa = read_tree_of_life_names(folder)
    vectors_path = Path(folder) / TOL_VECTORS
    if not vectors_path.is_file():
        raise BioindexError(f"{folder} has no {TOL_VECTORS}")
    vectors = np.load(vectors_path, mmap_mode="r")
    if vectors.ndim != 2 or vectors.shape[0] != dim or vectors.shape[1] != len(taxa):
        raise BioindexError(
            f"{vectors_path} has shape {vectors.shape}; expected [{dim}, {len(taxa)}] for this "
            f"model and {len(taxa)} names"
        )
    matrix = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).T)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    names = [t.scientific_name or " ".join(n for n in t.lineage if n) for t in taxa]
    return LabelSet(names, [t.text("taxonomic") for t in taxa], taxa, matrix, str(folder))


def write_tree_of_life(folder: str | os.PathLike[str], taxa: Sequence[Taxon],
                       vectors: np.ndarray) -> Path:  # fmt: skip
    """Write labels in the TreeOfLife layout (used by tests and to export a label set)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / TOL_VECTORS, np.ascontiguousarray(vectors.T, dtype=np.float32))
    names = [
        [[t.kingdom, t.phylum, t.class_, t.order, t.family, t.genus, t.epithet], t.common_name]
        for t in taxa
    ]
    (out / "txt_emb_species.json").write_text(json.dumps(names))
    return out


class TextEmbeddingCache:
    """Template-averaged label embeddings on disk, keyed by (model, template set, text).

    One folder per model identity and template set: `keys.json` (text → row) and
    `vectors.npy`. Rewritten atomically when new labels are added.
    """

    def __init__(self, root: str | os.PathLike[str], model_key: str, template_set: str):
        digest = hashlib.sha256(f"{model_key}|{template_set}".encode()).hexdigest()[:24]
        self.folder = Path(root) / "text-embeddings" / digest
        self._keys: dict[str, int] | None = None
        self._vectors: np.ndarray | None = None

    def _load(self) -> None:
        if self._keys is not None:
            return
        try:
            self._keys = json.loads((self.folder / "keys.json").read_text())
            self._vectors = np.load(self.folder / "vectors.npy")
            if len(self._keys) != len(self._vectors):
                raise ValueError("keys and vectors disagree")
        except (OSError, ValueError):
            self._keys, self._vectors = {}, None

    def get(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """(cached vectors by text, texts missing from the cache)."""
        self._load()
        found = {t: self._vectors[self._keys[t]] for t in texts if t in self._keys}
        return found, [t for t in dict.fromkeys(texts) if t not in found]

    def put(self, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        self._load()
        keys = dict(self._keys)
        rows = [] if self._vectors is None else [self._vectors]
        new = [t for t in vectors if t not in keys]
        for text in new:
            keys[text] = len(keys)
        rows.append(np.stack([vectors[t] for t in new]).astype(np.float32))
        matrix = np.concatenate(rows)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp_vectors = self.folder / "vectors.npy.tmp"
        with open(tmp_vectors, "wb") as handle:
            np.save(handle, matrix)
        tmp_keys = self.folder / "keys.json.tmp"
        tmp_keys.write_text(json.dumps(keys))
        # vectors first: keys that point past the end are caught by the length check.
        os.replace(tmp_vectors, self.folder / "vectors.npy")
        os.replace(tmp_keys, self.folder / "keys.json")
        self._keys, self._vectors = keys, matrix


def default_cache_root() -> Path:
    root = os.environ.get("BIOINDEX_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bioindex"


class RecentLabels:
    """Label vectors a server encoded for its requests' custom labels, in memory only,
    least recently used out. Anyone who reaches an exposed server can send labels; written
    to the persisted cache, made-up ones grew it without end and each request rewrote its
    whole matrix. Thread-safe."""

    def __init__(self, size: int = 16_384):
        self.size = size
        self._vectors: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_key: str, template_set: str, texts: Sequence[str]
            ) -> dict[str, np.ndarray]:  # fmt: skip
        with self._lock:
            found = {}
            for text in texts:
                key = (model_key, template_set, text)
                if key in self._vectors:
                    found[text] = self._vectors[key]
                    self._vectors.move_to_end(key)
            return found

    def put(self, model_key: str, template_set: str, vectors: dict[str, np.ndarray]) -> None:
        with self._lock:
            for text, vector in vectors.items():
                self._vectors[(model_key, template_set, text)] = vector
                self._vectors.move_to_end((model_key, template_set, text))
            while len(self._vectors) > self.size:
                self._vectors.popitem(last=False)


class TooManyNewLabels(BioindexError):
    pass


def label_vectors(
    labels: LabelSet,
    encode_texts: Callable[[Sequence[str]], np.ndarray],
    model_key: str,
    cache_root: str | os.PathLike[str] | None = None,
    *,
    max_new_texts: int | None = None,
    recent: RecentLabels | None = None,
) -> np.ndarray:
    """[N, dim] unit vectors for a label set, encoding only what the cache lacks.
    `max_new_texts`: refuse (TooManyNewLabels) a set whose labels missing from the caches
    would take more texts than this to encode; `recent`: labels encoded now are kept there,
    not in the persisted cache (a server's requests)."""
    if labels.vectors is not None:
        return labels.vectors
    named = template_set(labels.templates)
    cache = TextEmbeddingCache(cache_root or default_cache_root(), model_key, named)
    found, missing = cache.get(labels.texts)
    if recent is not None and missing:
        found.update(recent.get(model_key, named, missing))
        missing = [t for t in missing if t not in found]
    templates = templates_of(labels.templates) if missing else []
    texts = len(missing) * len(templates)
    if max_new_texts is not None and texts > max_new_texts:
        prompts = "80 prompts" if len(templates) > 1 else "1 prompt"
        hint = ", or templates=one" if len(templates) > 1 else ""
        raise TooManyNewLabels(
            f"{len(missing)} labels not encoded before × {prompts} = {texts} texts to "
            f"encode; at most {max_new_texts} in one request (send fewer new labels at a "
            f"time{hint})")  # fmt: skip
    if missing:
        put = cache.put if recent is None else (
            lambda vectors: recent.put(model_key, named, vectors))  # fmt: skip
        found.update(_encode_labels(missing, encode_texts, put, templates))
    return np.stack([found[t] for t in labels.texts]).astype(np.float32)


def _encode_labels(texts: Sequence[str], encode_texts: Callable[[Sequence[str]], np.ndarray],
                   put: Callable[[dict[str, np.ndarray]], None],
                   templates: Sequence[Callable[[str], str]]) -> dict[str, np.ndarray]:  # fmt: skip
    """Each text's template-averaged vector, `put` in a cache every CACHE_EVERY labels: a
    label set of 10,000 names is 800,000 texts, an hour of a BioCLIP-sized model on a CPU,
    and an interrupted run keeps what it had done."""
    if len(texts) > ENCODE_CHUNK:
        hint = "; --templates one: 1 each" if len(templates) > 1 else ""
        logger.info("encoding %d labels × %d templates (%d texts); kept for next time%s",
                    len(texts), len(templates), len(texts) * len(templates), hint)
    done: dict[str, np.ndarray] = {}
    pending: dict[str, np.ndarray] = {}
    with tqdm(total=len(texts), unit="label", desc="label texts", leave=False,
              disable=None if len(texts) > ENCODE_CHUNK else True) as bar:  # fmt: skip
        for start in range(0, len(texts), ENCODE_CHUNK):
            chunk = texts[start : start + ENCODE_CHUNK]
            prompts = [template(text) for text in chunk for template in templates]
            encoded = encode_texts(prompts).reshape(len(chunk), len(templates), -1)
            averaged = encoded.mean(axis=1)
            averaged /= np.maximum(np.linalg.norm(averaged, axis=1, keepdims=True), 1e-12)
            pending.update(zip(chunk, averaged))
            bar.update(len(chunk))
            if len(pending) >= CACHE_EVERY:
                put(pending)
                done.update(pending)
                pending = {}
    put(pending)
    done.update(pending)
    return done


def taxa_from_rows(rows: Sequence[Sequence[str | None]]) -> list[Taxon]:
    """Species-level taxa from catalog rows (kingdom … genus, epithet, vernacular, sci name).

    When a row has no genus/epithet but a binomial scientific name, the binomial is split;
    no higher rank is ever invented.
    """
    taxa: dict[tuple[str, ...], Taxon] = {}
    for row in rows:
        taxon = taxon_from_row(row)
        if taxon is not None and taxon.epithet:
            taxa.setdefault(taxon.lineage, taxon)  # one label per lineage, first common name
    return sorted(taxa.values(), key=lambda t: t.lineage)


def taxon_from_row(row: Sequence[str | None]) -> Taxon | None:
    """(kingdom, phylum, class, order, family, genus, epithet, vernacular, scientific_name)."""
    *ranks, epithet, common, scientific = row
    genus = ranks[5]
    binomial = split_binomial(scientific)
    if (not genus or not epithet) and binomial:
        genus, epithet = binomial
    taxon = make_taxon([*ranks[:5], genus, epithet], common)
    return taxon if taxon.lineage else None
