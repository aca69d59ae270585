"""A table of what common names mean: a camera trap's categories ("zebra", "bat-eared fox")
mapped to taxa the catalog can rank, so that a store named by common names gets lineages —
search by family, back-off by rank, place priors, GBIF-ready exports.

Read from any CSV/TSV/XLSX with a common-name column and a scientific name or rank columns:

- LILA's taxonomy mapping (lila-taxonomy-mapping_release.csv): `query` (a dataset's category,
  lowercased), `scientific_name` at `taxonomy_level`, and kingdom … species filled from
  iNaturalist's taxonomy, all lowercase (species holds the binomial); one row per dataset
  and category (`dataset_name`), and the same category can mean other taxa in another
  dataset ("deer");
- a curator's own table: vernacularName (or common_name) with scientificName and/or
  kingdom … genus, specificEpithet.

Names are cased as Darwin Core writes them ("equus quagga" → "Equus quagga").
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bioindex.errors import BioindexError
from bioindex.tables import table_rows
from bioindex.taxonomy import common_name_key, split_binomial

KEY_COLUMNS = ("query", "vernacularname", "vernacular_name", "common_name", "commonname")
RANK_TERMS = {"kingdom": "kingdom", "phylum": "phylum", "class": "class", "order": "order",
              "family": "family", "genus": "genus"}  # fmt: skip
RANK_ORDER = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


@dataclass
class NamesTable:
    source: str
    terms: dict[str, dict[str, str]]  # common_name_key → Darwin Core terms of its taxon
    # Keys the table maps to several taxa (other datasets' meanings): left unnamed.
    ambiguous: dict[str, int] = field(default_factory=dict)

    def lookup(self, common_name: str) -> dict[str, str] | None:
        return self.terms.get(common_name_key(common_name))

    def is_ambiguous(self, common_name: str) -> bool:
        return common_name_key(common_name) in self.ambiguous


def read_names_table(path: str | os.PathLike[str], dataset: str | None = None) -> NamesTable:
    """The table at `path`; `dataset`: only the rows of that `dataset_name` (LILA's)."""
    table = Path(path).expanduser()
    if not table.is_file():
        raise BioindexError(f"names table {path} does not exist")
    try:
        fieldnames, rows = table_rows(table)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BioindexError(f"names table {path} is not a UTF-8 CSV/TSV table: {exc}") from None
    lowered = {name.lower().strip(): name for name in fieldnames}
    key = next((lowered[c] for c in KEY_COLUMNS if c in lowered), None)
    if key is None:
        raise BioindexError(f"names table {path} has no common-name column (one of "
                            f"{', '.join(KEY_COLUMNS)})")  # fmt: skip
    if dataset is not None:
        rows = _of_dataset(rows, lowered, dataset, str(path))
    found: dict[str, set[tuple[tuple[str, str], ...]]] = defaultdict(set)
    for row in rows:
        name = common_name_key(row.get(key) or "")
        terms = _terms(row, lowered)
        if name and terms:
            found[name].add(tuple(sorted(terms.items())))
    if not found:
        raise BioindexError(f"names table {path} maps no common name to a taxon")
    return NamesTable(str(path), {k: dict(next(iter(v))) for k, v in found.items() if len(v) == 1},
                      {k: len(v) for k, v in found.items() if len(v) > 1})  # fmt: skip


def _of_dataset(rows: list[dict[str, str]], lowered: dict[str, str], dataset: str,
                path: str) -> list[dict[str, str]]:  # fmt: skip
    column = lowered.get("dataset_name")
    if column is None:
        raise BioindexError(f"names table {path} has no dataset_name column to choose "
                            f"{dataset!r} by")  # fmt: skip
    wanted = dataset.strip().casefold()
    kept = [row for row in rows if (row.get(column) or "").strip().casefold() == wanted]
    if not kept:
        known = sorted({(row.get(column) or "").strip() for row in rows} - {""})
        raise BioindexError(f"names table {path} has no rows of dataset {dataset!r}; it has "
                            f"{', '.join(known[:8])}{' …' if len(known) > 8 else ''}")
    return kept


def _terms(row: dict[str, str], lowered: dict[str, str]) -> dict[str, str]:
    """A row's taxon as Darwin Core terms (scientificName, taxonRank, kingdom … epithet),
    empty when it names none (LILA maps "empty" and "human" to nothing)."""
    def value(*columns: str) -> str:
        for column in columns:
            if column in lowered and (row.get(lowered[column]) or "").strip():
                return " ".join(str(row[lowered[column]]).split())
        return ""

    terms = {term: _capital(value(column)) for column, term in RANK_TERMS.items()
             if value(column)}  # fmt: skip
    binomial = split_binomial(_binomial(value("species") or value("scientificname",
                                                                  "scientific_name")))
    epithet = value("specificepithet", "specific_epithet").lower()
    if binomial is None and epithet and terms.get("genus"):
        binomial = (terms["genus"], epithet)
    if binomial is not None:
        terms.update(genus=binomial[0], specificEpithet=binomial[1],
                     scientificName=f"{binomial[0]} {binomial[1]}", taxonRank="species")
        return terms
    named = _capital(value("scientificname", "scientific_name"))
    lowest = next((r for r in reversed(RANK_ORDER[:-1]) if terms.get(RANK_TERMS[r])), None)
    if named and " " not in named:  # "Canis" at genus; "Panthera" beside family Felidae
        terms["scientificName"] = named
        rank = next((r for r in RANK_ORDER[:-1] if terms.get(RANK_TERMS[r]) == named), None)
        if rank is not None:
            terms["taxonRank"] = rank
    elif lowest is not None:
        terms.update(scientificName=terms[RANK_TERMS[lowest]], taxonRank=lowest)
    return terms


def _capital(name: str) -> str:
    """A name above species as Darwin Core writes it: its first letter capital."""
    return name[:1].upper() + name[1:] if name else ""


def _binomial(name: str) -> str:
    """"equus quagga" → "Equus quagga" (LILA's names are lowercase)."""
    words = name.split()
    return " ".join([_capital(words[0]), *(w.lower() for w in words[1:])]) if words else ""
