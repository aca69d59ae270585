"""The seven Linnaean ranks and the text formats BioCLIP was trained on.

Formats (BioCLIP paper, and pybioclip):
  taxonomic          "a photo of Animalia Chordata Aves Passeriformes Cardinalidae Cardinalis
                      cardinalis."
  scientific         "a photo of Cardinalis cardinalis."
  common             "a photo of northern cardinal."
  taxonomic_common   "a photo of Animalia ... Cardinalis cardinalis with common name northern
                      cardinal."
A higher taxon is named by the prefix of the taxonomic string down to its rank
("a photo of Animalia Chordata Aves.").
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bioindex.errors import BioindexError, UnknownTaxonError

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
# The same ranks as Darwin Core catalog columns: the species rank is held as its epithet.
RANK_COLUMNS = (*RANKS[:-1], "specific_epithet")

_BINOMIAL = re.compile(r"^([A-Z][a-z]+)\s+([a-z][a-z-]+)\b")


def split_binomial(name: str | None) -> tuple[str, str] | None:
    """(genus, epithet) of a binomial scientific name ("Felis catus Linnaeus, 1758"), or None
    for anything else (a genus alone, an informal or lower-case name)."""
    match = _BINOMIAL.match((name or "").strip())
    return (match.group(1), match.group(2)) if match else None


def common_name_key(name: str) -> str:
    """A common name as it is compared: case and runs of spaces aside ("Black  bear" is
    "black bear"), the same in Python and in SQL (search.filters)."""
    return " ".join(name.split()).lower()


def spellings(names: Iterable[str]) -> dict[str, str]:
    """Each common name (common_name_key) under the first of its spellings in `names`
    (given most used first, it is the one most records use), its spaces collapsed."""
    spelt: dict[str, str] = {}
    for name in names:
        spelt.setdefault(common_name_key(name), " ".join(name.split()))
    return spelt


_SCIENTIFIC = re.compile(r"^[A-Z][a-z]+(?:\s+[a-z][a-z-]+){0,2}$")


def looks_scientific(name: str) -> bool:
    """Whether `name` reads as a Latin taxon name: one capitalised word (a genus, family,
    order …) or a binomial/trinomial ("Cardinalis cardinalis"). Free text ("a red bird",
    "herbarium sheet") does not."""
    return bool(_SCIENTIFIC.match(" ".join(name.split())))


FORMATS = ("taxonomic", "scientific", "common", "taxonomic_common")


@dataclass(frozen=True)
class Taxon:
    """A lineage down to some rank; `epithet` is the species epithet (empty above species)."""

    kingdom: str = ""
    phylum: str = ""
    class_: str = ""
    order: str = ""
    family: str = ""
    genus: str = ""
    epithet: str = ""
    common_name: str = ""

    @property
    def lineage(self) -> tuple[str, ...]:
        """The names from kingdom down, ending at the lowest filled rank."""
        names = [self.kingdom, self.phylum, self.class_, self.order, self.family, self.genus,
                 self.epithet]  # fmt: skip
        while names and not names[-1]:
            names.pop()
        return tuple(names)

    @property
    def rank(self) -> str:
        return RANKS[len(self.lineage) - 1] if self.lineage else ""

    @property
    def scientific_name(self) -> str:
        if self.epithet and self.genus:
            return f"{self.genus} {self.epithet}"
        return self.lineage[-1] if self.lineage else ""

    def at_rank(self, rank: str) -> Taxon:
        """This taxon's ancestor at `rank` (common name dropped above species)."""
        depth = RANKS.index(rank) + 1
        names = list(self.lineage[:depth]) + [""] * (7 - min(depth, len(self.lineage)))
        common = self.common_name if rank == "species" else ""
        return Taxon(*names[:7], common_name=common)

    def name_at(self, rank: str) -> str:
        depth = RANKS.index(rank)
        lineage = self.lineage
        if depth >= len(lineage):
            return ""
        if rank == "species":
            return f"{self.genus} {self.epithet}"
        return lineage[depth]

    def text(self, fmt: str = "taxonomic") -> str:
        """This taxon as BioCLIP caption text (without the 'a photo of' template)."""
        if fmt == "taxonomic":
            return " ".join(n for n in self.lineage if n)
        if fmt == "scientific":
            return self.scientific_name
        if fmt == "common":
            return self.common_name or self.scientific_name
        if fmt == "taxonomic_common":
            body = " ".join(n for n in self.lineage if n)
            return f"{body} with common name {self.common_name}" if self.common_name else body
        raise ValueError(f"unknown text format {fmt!r}; choose one of {', '.join(FORMATS)}")

    def caption(self, fmt: str = "taxonomic") -> str:
        return f"a photo of {self.text(fmt)}."

    def label(self) -> str:
        """A short display name: binomial for species, the rank name above."""
        return self.scientific_name

    def to_row(self) -> dict[str, str]:
        """Rank columns (as in pybioclip's output) down to this taxon's rank."""
        row = {}
        for rank in RANKS[: len(self.lineage)]:
            row[rank] = self.name_at(rank)
        if self.common_name:
            row["common_name"] = self.common_name
        return row


def make_taxon(names: Iterable[str | None], common_name: str | None = "") -> Taxon:
    """A Taxon from up to seven rank names (None/blank allowed for missing ranks)."""
    cleaned = [(n or "").strip() for n in names][:7]
    cleaned += [""] * (7 - len(cleaned))
    return Taxon(*cleaned, common_name=(common_name or "").strip())


def folder_name_taxon(name: str) -> Taxon | None:
    """The species a folder is named for: "Panthera leo", "Panthera_leo", or the seven ranks
    joined by "_" or spaces (TreeOfLife-10M's layout); None for any other name ("site3")."""
    words = name.replace("_", " ").split()
    if len(words) == 7:
        return make_taxon(words)
    binomial = split_binomial(" ".join(words))
    return make_taxon([""] * 5 + list(binomial)) if binomial else None


class Taxonomy:
    """Known taxa to resolve what a user types: a rank name, a binomial, a common name or a
    taxonomic prefix string ("Animalia Chordata Mammalia")."""

    def __init__(self, taxa: Iterable[Taxon]):
        self.species = sorted(set(taxa), key=lambda t: t.lineage)
        self._names: dict[str, set[Taxon]] = defaultdict(set)
        for taxon in self.species:
            for rank in RANKS[: len(taxon.lineage)]:
                name = taxon.name_at(rank)
                if name and (rank != "species" or taxon.epithet):
                    self._names[name.lower()].add(taxon.at_rank(rank))
            if taxon.common_name:
                self._names[taxon.common_name.lower()].add(taxon)

    def __len__(self) -> int:
        return len(self.species)

    def resolve(self, name: str) -> Taxon:
        """The one taxon `name` means; raises (listing candidates) when unknown or ambiguous."""
        key = " ".join(_strip_caption(name).lower().split())
        if not key:
            raise BioindexError("taxon name is empty")
        candidates = set(self._names.get(key, ()))
        words = key.split()
        if not candidates and len(words) >= 2:
            candidates = self._prefix_matches(words)
        if len(candidates) == 1:
            return candidates.pop()
        if not candidates:
            close = difflib.get_close_matches(key, self._names.keys(), n=3, cutoff=0.75)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownTaxonError(
                f"unknown taxon {name!r} (not among {len(self)} known taxa){hint}", close)
        listed = "; ".join(
            f"{t.rank} {' '.join(n for n in t.lineage if n)}"
            for t in sorted(candidates, key=lambda t: t.lineage)[:5]
        )
        raise BioindexError(f"ambiguous taxon {name!r}: {listed} — give more of the lineage")

    def _prefix_matches(self, words: list[str]) -> set[Taxon]:
        found = set()
        pool = self._names.get(words[-1], set()) | self._names.get(" ".join(words[-2:]), set())
        for taxon in pool:
            lineage = [n.lower() for n in taxon.lineage if n]
            if len(lineage) >= len(words) and lineage[-len(words) :] == words:
                found.add(taxon)
        return found

    @classmethod
    def from_tree_of_life(cls, folder: str | os.PathLike[str]) -> Taxonomy:
        return cls(read_tree_of_life_names(folder))

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> Taxonomy:
        """A CSV with rank columns (kingdom … genus, species or specific_epithet, common_name)."""
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
        taxa = []
        for row in rows:
            lower = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            epithet = lower.get("specific_epithet") or lower.get("epithet") or ""
            species = lower.get("species", "")
            if not epithet and species:
                epithet = species.split()[-1] if " " in species else species
            names = [lower.get(r, "") for r in RANKS[:6]] + [epithet]
            common = lower.get("common_name") or lower.get("vernacular_name") or ""
            taxa.append(make_taxon(names, common))
        if not taxa:
            raise BioindexError(f"taxonomy file {path} has no rows")
        return cls(taxa)


TOL_NAMES = "txt_emb_species.json"
TOL_VECTORS = "txt_emb_species.npy"


def read_tree_of_life_names(folder: str | os.PathLike[str]) -> list[Taxon]:
    """TreeOfLife label names: [[kingdom, …, epithet], common_name] per column of the npy."""
    path = Path(folder) / TOL_NAMES
    if not path.is_file():
        raise BioindexError(f"{folder} has no {TOL_NAMES} (TreeOfLife label directory expected)")
    try:
        entries = json.loads(path.read_text())
        return [make_taxon(ranks, common) for ranks, common in entries]
    except (ValueError, TypeError) as exc:
        raise BioindexError(f"{path} is not a TreeOfLife label list: {exc}") from exc


def _strip_caption(text: str) -> str:
    text = text.strip().rstrip(".").strip()
    prefix = "a photo of "
    return text[len(prefix) :] if text.lower().startswith(prefix) else text
