"""`bioindex demo`: draw a small labelled collection, index it with the demo model, query it.

Fully offline: the pictures are drawn here and the model ships in data/models/.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bioindex.demo.draw import draw_dataset, draw_organism
from bioindex.demo.tree import SPECIES, Species
from bioindex.errors import BioindexError
from bioindex.models import DEMO_MODEL_NAME

INSTITUTIONS = (
    ("SYNTH", "Synthetic Natural History Museum", "CC-BY-4.0"),
    ("DEMO-U", "Demo University Herbarium", "CC0-1.0"),
    ("PIXEL", "Pixel Field Station", "CC-BY-NC-4.0"),
)
COUNTRIES = ("BR", "KE", "US", "AU", "DE", "ID")


def write_collection(folder: str | os.PathLike[str], per_species: int, seed: int) -> Path:
    """Pictures named by catalog number, plus occurrences.csv with Darwin Core terms."""
    root = Path(folder)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    rows = []
    for number, (species, picture) in enumerate(draw_dataset(per_species, seed), start=1):
        code, holder, licence = INSTITUTIONS[int(rng.integers(len(INSTITUTIONS)))]
        catalog = f"{code}-{number:06d}"
        name = f"{catalog}.jpg"
        picture.save(images / name, quality=92)
        taxon = species.taxon
        rows.append({
            "file": name, "occurrenceID": f"urn:demo:{seed}:{number}",
            "catalogNumber": catalog, "institutionCode": code, "collectionCode": "DEMO",
            "basisOfRecord": "PreservedSpecimen" if code != "PIXEL" else "HumanObservation",
            "scientificName": taxon.scientific_name, "taxonRank": "species",
            "kingdom": taxon.kingdom, "phylum": taxon.phylum, "class": taxon.class_,
            "order": taxon.order, "family": taxon.family, "genus": taxon.genus,
            "specificEpithet": taxon.epithet, "vernacularName": taxon.common_name,
            "countryCode": COUNTRIES[int(rng.integers(len(COUNTRIES)))],
            "decimalLatitude": round(float(rng.uniform(-40, 60)), 4),
            "decimalLongitude": round(float(rng.uniform(-120, 150)), 4),
            "eventDate": f"{int(rng.integers(1950, 2025))}-{int(rng.integers(1, 13)):02d}-"
                         f"{int(rng.integers(1, 29)):02d}",
            "recordedBy": "bioindex demo", "license": licence, "rightsHolder": holder,
        })  # fmt: skip
    with open(root / "occurrences.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def run_demo(
    workdir: str | os.PathLike[str] = "bioindex-demo",
    *,
    images_per_species: int = 6,
    seed: int = 7,
    device: str = "auto",
    echo: Callable[[str], None] = print,
) -> dict[str, float]:
    """Build (or refresh) the demo store and print example queries; returns their precisions."""
    from bioindex.collection import Collection
    from bioindex.output import render

    root = Path(workdir)
    if root.exists() and not root.is_dir():
        raise BioindexError(f"{root} is a file; the demo writes into a folder")
    if images_per_species < 1:
        raise BioindexError(f"the demo draws at least 1 picture per species, not "
                            f"{images_per_species}")  # fmt: skip
    echo(f"Drawing {images_per_species} pictures of each of {len(SPECIES)} synthetic species "
         f"into {root / 'images'} ...")  # fmt: skip
    write_collection(root, images_per_species, seed)
    store = root / "store"
    with Collection.open(store, model=DEMO_MODEL_NAME, device=device, create=True) as col:
        summary = col.index([root / "images"], metadata=root / "occurrences.csv", progress=True)
        echo(f"Indexed with the {DEMO_MODEL_NAME} model: {summary.line()}")
        precisions: dict[str, float] = {}

        def show(title: str, hits, judge: Callable[[dict], bool],
                 also: tuple[str, Callable[[dict], bool]] | None = None) -> None:  # fmt: skip
            rows = []
            for hit in hits:
                rows.append({
                    "rank": hit.rank, "score": hit.score,
                    "scientific_name": hit.metadata.get("scientific_name", ""),
                    "vernacular_name": hit.metadata.get("vernacular_name", ""),
                    "catalog_number": hit.metadata.get("catalog_number", ""),
                    "path": os.path.relpath(hit.uri),
                })  # fmt: skip
            catalog = col.store.rows([h.image_id for h in hits])
            right = sum(judge(catalog[h.image_id]) for h in hits)
            precisions[title] = right / max(1, len(hits))
            extra = ""
            if also is not None:
                extra = f", {sum(also[1](catalog[h.image_id]) for h in hits)}/{len(hits)} {also[0]}"
            echo(f"\n{title}  ({right}/{len(hits)} correct{extra})")
            echo(render(rows, "table").rstrip())

        cardinal = SPECIES[0].taxon
        query = cardinal.caption("taxonomic")
        show(f'search text "{query}"', col.search_text(query, k=5),
             lambda r: r.get("scientific_name") == cardinal.scientific_name)  # fmt: skip

        family = SPECIES[27].taxon.at_rank("family")
        query = family.caption("taxonomic")
        show(f'search text "{query}"  (a family)', col.search_text(query, k=5),
             lambda r: r.get("family") == family.family)  # fmt: skip

        wedge = SPECIES[20].taxon
        query = wedge.caption("common")
        show(f'search text "{query}"  (a common name)', col.search_text(query, k=5),
             lambda r: r.get("vernacular_name") == wedge.common_name)  # fmt: skip

        target: Species = SPECIES[40]
        photo = root / "query.jpg"
        draw_organism(target, np.random.default_rng(seed + 99)).save(photo)
        show(f"search image {photo}  (a new picture of {target.name})",
             col.search_image(photo, k=5),
             lambda r: r.get("scientific_name") == target.name,
             ("same genus", lambda r: r.get("genus") == target.taxon.genus))  # fmt: skip

    echo(f"\nTry next:\n  bioindex search text \"a photo of tailed blue plain starwort.\" "
         f"--store {store}\n  bioindex search image {photo} --store {store} --format json\n"
         f"  bioindex info --store {store}")  # fmt: skip
    return precisions
