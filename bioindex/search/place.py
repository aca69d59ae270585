"""Where a specimen was found: a prior over the candidate taxa from where taxa are recorded.

Like iNaturalist's geographic re-weighting (and its "ignore location" switch: leave the
place out), a taxon recorded near the find keeps its probability and one that is not keeps
`outside` of it (0 restricts the answer to recorded taxa); the result is renormalised. Where
taxa are recorded comes from the catalog's own images and occurrence records (within a
radius of a point, or matching --where conditions such as country_code=KE), or from a
species list the user gives (a GBIF species-list download or a checklist, CSV or TSV).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bioindex.errors import BioindexError
from bioindex.search.defaults import DEFAULT_OUTSIDE_WEIGHT
from bioindex.search.filters import Filter
from bioindex.search.labels import checklist_taxa, taxon_from_row
from bioindex.store import Store
from bioindex.tables import WORKBOOK_SUFFIXES, workbook_text
from bioindex.taxonomy import RANKS, Taxon

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class PlacePrior:
    recorded: frozenset[str]  # "rank:name" for every rank of every recorded taxon
    outside: float
    source: str
    # A species list's own taxa: what a store whose catalog names none is classified
    # against (Collection.classify_vectors). Empty for a place in the catalog.
    taxa: tuple[Taxon, ...] = ()

    def weight(self, taxon: Taxon) -> float:
        return 1.0 if f"{taxon.rank}:{taxon.name_at(taxon.rank)}" in self.recorded else self.outside

    def apply(self, scores: dict[Taxon, float]) -> dict[Taxon, float]:
        """Re-weight per-taxon probabilities and renormalise (unchanged when the place
        rules out every candidate)."""
        weighted = {t: p * self.weight(t) for t, p in scores.items()}
        total = sum(weighted.values())
        return {t: p / total for t, p in weighted.items()} if total > 0 else scores


def recorded_names(taxa: Iterable[Taxon]) -> frozenset[str]:
    names = set()
    for taxon in taxa:
        for rank in RANKS[: len(taxon.lineage)]:
            name = taxon.name_at(rank)
            if name.strip():
                names.add(f"{rank}:{name}")
    return frozenset(names)


def parse_near(value: str) -> tuple[float, float]:
    """'LAT,LON' in decimal degrees."""
    parts = value.split(",")
    try:
        lat, lon = (float(p) for p in parts)
    except ValueError:
        raise BioindexError(f"near {value!r}: give LAT,LON in decimal degrees, e.g. "
                            "-1.29,36.82") from None  # fmt: skip
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise BioindexError(f"near {value!r}: latitude must be in [-90, 90] and longitude "
                            "in [-180, 180]")  # fmt: skip
    return lat, lon


def within_radius(lat: float, lon: float, radius_km: float) -> Filter:
    """Rows whose decimal_latitude/decimal_longitude lie within `radius_km` (haversine)."""
    if not radius_km > 0:
        raise BioindexError(f"the radius must be positive, got {radius_km} km")
    sql = (f"decimal_latitude IS NOT NULL AND decimal_longitude IS NOT NULL AND "
           f"2 * {EARTH_RADIUS_KM} * asin(sqrt(pow(sin(radians(decimal_latitude - ?) / 2), 2)"
           f" + cos(radians(?)) * cos(radians(decimal_latitude))"
           f" * pow(sin(radians(decimal_longitude - ?) / 2), 2))) <= ?")  # fmt: skip
    return Filter(conditions=[f"within {radius_km:g} km of {lat:g},{lon:g}"], sql=sql,
                  params=[lat, lat, lon, radius_km])  # fmt: skip


def catalog_prior(store: Store, where: Filter, outside: float = DEFAULT_OUTSIDE_WEIGHT,
                  remedy: str = "loosen the conditions") -> PlacePrior:  # fmt: skip
    """The taxa the catalog records where `where` holds (a radius, a country, a box)."""
    _check_outside(outside)
    rows = store.catalog.taxon_rows_where(where.sql, where.params, where.images_only)
    taxa = [t for t in (taxon_from_row(r) for r in rows) if t is not None]
    if not taxa:
        raise BioindexError(f"the catalog records no named taxon {' and '.join(where.conditions)}"
                            f"; {remedy}, or leave the place out")  # fmt: skip
    return PlacePrior(recorded_names(taxa), outside, " and ".join(where.conditions))


def species_list_prior(path: str | os.PathLike[str], outside: float = DEFAULT_OUTSIDE_WEIGHT
                       ) -> PlacePrior:  # fmt: skip
    """The taxa of a species list: a CSV/TSV with a `species` or `scientificName` column
    (GBIF's species-list download has both, plus kingdom … genus)."""
    _check_outside(outside)
    file = Path(path)
    if not file.is_file():
        raise BioindexError(f"species list {file} does not exist")
    if file.suffix.lower() in WORKBOOK_SUFFIXES:
        return species_list_from_text(workbook_text(file), str(file), outside)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BioindexError(f"species list {file} is not UTF-8 text") from exc
    return species_list_from_text(text, str(file), outside)


def species_list_from_text(text: str, name: str, outside: float = DEFAULT_OUTSIDE_WEIGHT
                           ) -> PlacePrior:  # fmt: skip
    """species_list_prior for a list already read (an upload), called `name` in messages."""
    _check_outside(outside)
    taxa = checklist_taxa(text, f"species list {name}")
    return PlacePrior(recorded_names(taxa), outside, f"species list {Path(name).name}",
                      tuple(taxa))  # fmt: skip


def _check_outside(outside: float) -> None:
    if not (0.0 <= outside <= 1.0) or math.isnan(outside):
        raise BioindexError(f"the weight of taxa not recorded there must be in [0, 1], got "
                            f"{outside}")  # fmt: skip
