"""A training set outside the store for the few-shot heads (`classify --train PATH`).

Two layouts, both common where labelled photos are kept:

- a folder with one subfolder per species, named by the species: "Cardinalis cardinalis"
  (or with underscores), or the seven ranks kingdom … epithet joined by spaces or
  underscores, as TreeOfLife-style folders are ("Animalia_Chordata_Aves_…_cardinalis");
- a CSV/TSV table with a column naming each image (file, filepath, path, image) and its
  name in Darwin Core columns (scientificName, or kingdom … genus + specificEpithet), the
  same table `bioindex index --metadata` reads. Paths are relative to the table's folder.

Where no folder (or row) names a species, the folders' names (or the vernacularName
column) are common names, and the classes are those: a camera trap's "zebra/", "elephant/".

The images are read only by the user's own command (never over HTTP: a server must not
read paths a stranger names).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bioindex.errors import BioindexError
from bioindex.images import walk_images
from bioindex.tables import table_rows
from bioindex.taxonomy import Taxon, common_name_key, folder_name_taxon, make_taxon, split_binomial

FILE_COLUMNS = ("file", "filepath", "file_path", "path", "image", "filename", "identifier")
RANK_COLUMNS = ("kingdom", "phylum", "class", "order", "family", "genus", "specificepithet")


@dataclass(frozen=True)
class Example:
    path: Path
    taxon: Taxon


def read_training_set(path: str | os.PathLike[str]) -> list[Example]:
    """The labelled images of a training folder or table (see the module docstring)."""
    root = Path(path).expanduser()
    if root.is_dir():
        examples = list(_from_folder(root))
    elif root.is_file():
        try:
            examples = list(_from_table(root))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise BioindexError(f"training table {root} is not a UTF-8 CSV/TSV table: "
                                f"{exc}") from exc  # fmt: skip
    else:
        raise BioindexError(f"training set {root} does not exist")
    if examples and not examples[0].taxon.lineage:  # common names: one class per name
        spelling: dict[str, Taxon] = {}
        examples = [Example(e.path, spelling.setdefault(common_name_key(e.taxon.common_name),
                                                        e.taxon)) for e in examples]
    species = {(e.taxon.lineage, e.taxon.common_name) for e in examples}
    if len(species) < 2:
        what = "common names" if examples and not examples[0].taxon.lineage else "species"
        raise BioindexError(f"training set {root} names {len(species)} {what} with images; "
                            "a classifier needs at least two")  # fmt: skip
    return examples


def training_key(examples: list[Example], identity: list[object]) -> str:
    """Changes when an image, its label or the model does (a cached head is then stale)."""
    digest = hashlib.sha256(json.dumps(identity).encode())
    for example in examples:
        try:
            stat = example.path.stat()
            seen = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            seen = [None, None]
        digest.update(json.dumps([str(example.path), *seen, *example.taxon.lineage,
                                  example.taxon.common_name]).encode())  # fmt: skip
    return digest.hexdigest()[:16]


def folder_taxa(names: list[str]) -> list[Taxon]:
    """The species training subfolders are named for; where none is named for one, the
    common names they are ("zebra", "african_elephant" → "african elephant")."""
    taxa = [folder_name_taxon(name) for name in names]
    if not any(taxa):
        return [Taxon(common_name=" ".join(name.replace("_", " ").split())) for name in names]
    for name, taxon in zip(names, taxa):
        if taxon is None:
            raise BioindexError(f"training folder {name!r} is not named for a species: name "
                                "it 'Genus epithet' or by the seven ranks kingdom … epithet "
                                "(or name every folder by a common name)")  # fmt: skip
    return [t for t in taxa if t is not None]


def _from_folder(root: Path) -> Iterator[Example]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise BioindexError(f"training folder {root} has no subfolders; put each species' "
                            "images in a folder named for it ('Genus epithet')")  # fmt: skip
    for folder, taxon in zip(folders, folder_taxa([f.name for f in folders])):
        for file in walk_images(folder):
            yield Example(file, taxon)


def _from_table(table: Path) -> Iterator[Example]:
    fieldnames, rows = table_rows(table)
    lowered = {name.lower().split(":")[-1]: name for name in fieldnames}
    file_column = next((lowered[c] for c in FILE_COLUMNS if c in lowered), None)
    if file_column is None:
        raise BioindexError(f"training table {table} needs a column naming the images "
                            f"({', '.join(FILE_COLUMNS)})")  # fmt: skip
    named = [((row.get(file_column) or "").strip(), _row_taxon(row, lowered)) for row in rows]
    if not any(taxon for _, taxon in named) and "vernacularname" in lowered:
        named = [(value, _common_name_taxon(row, lowered["vernacularname"]))
                 for (value, _), row in zip(named, rows)]  # fmt: skip
    for value, taxon in named:
        if value and taxon is not None:
            yield Example((table.parent / value).resolve(), taxon)


def _common_name_taxon(row: dict[str, str], column: str) -> Taxon | None:
    name = " ".join((row.get(column) or "").split())
    return Taxon(common_name=name) if name else None


def _row_taxon(row: dict[str, str], lowered: dict[str, str]) -> Taxon | None:
    ranks = [(row.get(lowered[c]) or "").strip() if c in lowered else "" for c in RANK_COLUMNS]
    binomial = split_binomial(row.get(lowered.get("scientificname", ""), "") or "")
    if binomial and not (ranks[5] and ranks[6]):
        ranks[5], ranks[6] = binomial
    if not (ranks[5] and ranks[6]):
        return None  # not named to species: nothing to learn a species from
    return make_taxon(ranks, row.get(lowered.get("vernacularname", ""), "") or "")
