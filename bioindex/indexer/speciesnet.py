"""SpeciesNet's files (google/cameratrapai, the camera-trap classifier of Wildlife Insights):
the *instances* a run is given and the *predictions* it writes. Both list photos by
`filepath` with where they were taken — `country` (ISO 3166-1 alpha-3), `admin1_region`
(ISO 3166-2), `latitude`, `longitude` — so a camera trap that ran SpeciesNet already has
its photos' places in one of them.

Read into Darwin Core terms: the country as `countryCode` (alpha-2, as Darwin Core and
GBIF write it: `--where country_code=KE` finds a photo SpeciesNet was told was in KEN),
the coordinates as `decimalLatitude`/`decimalLongitude`. A prediction is kept beside the
record (`speciesnetPrediction`, `speciesnetScore`), never as the photo's identification:
it is a model's guess, and the few-shot heads and the neighbour vote learn from the
catalog's names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bioindex.errors import BioindexError

# The list a file holds, by its top-level key; SpeciesNet writes that key first.
KINDS = ("instances", "predictions")
_HEAD = re.compile(rb'^\s*\{\s*"(instances|predictions)"\s*:\s*\[')
_HEAD_BYTES = 4096


def is_speciesnet(path: str | Path) -> bool:
    """Whether a local .json file starts as a SpeciesNet instances or predictions file."""
    try:
        with open(path, "rb") as file:
            head = file.read(_HEAD_BYTES)
    except OSError:
        return False
    return bool(_HEAD.match(head.removeprefix(b"\xef\xbb\xbf")))


def rows(kind: str, entries: Iterable[Any],
         source: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:  # fmt: skip
    """(filepath, metadata in Darwin Core terms) for each entry of a file's `kind` list."""
    for number, entry in enumerate(entries, 1):
        filepath = entry.get("filepath") if isinstance(entry, dict) else None
        if not isinstance(filepath, str) or not filepath.strip():
            raise BioindexError(f"{source}: {kind} entry {number} has no filepath")
        yield filepath.strip(), metadata(entry)


def metadata(entry: dict[str, Any]) -> dict[str, Any]:
    """One instance or prediction's fields as Darwin Core terms (and its prediction)."""
    out: dict[str, Any] = {}
    country = entry.get("country")
    if isinstance(country, str) and country.strip():
        alpha_2 = country_code(country)
        if alpha_2:
            out["countryCode"] = alpha_2
        else:  # not a code ISO knows: kept as written, not read as a country
            out["country"] = country
    if entry.get("admin1_region"):
        out["admin1Region"] = entry["admin1_region"]
    if entry.get("latitude") is not None and entry.get("longitude") is not None:
        out["decimalLatitude"] = entry["latitude"]
        out["decimalLongitude"] = entry["longitude"]
    prediction = entry.get("prediction")
    if isinstance(prediction, str) and prediction:
        out["speciesnetPrediction"] = predicted_name(prediction)
        if entry.get("prediction_score") is not None:
            out["speciesnetScore"] = entry["prediction_score"]
        if entry.get("model_version"):
            out["speciesnetModel"] = entry["model_version"]
    return out


def country_code(code: str) -> str | None:
    """ISO 3166-1 alpha-2 for an alpha-3 (or alpha-2) code; None for one ISO lacks."""
    import pycountry

    code = code.strip().upper()
    found = pycountry.countries.get(**{"alpha_3" if len(code) == 3 else "alpha_2": code})
    return found.alpha_2 if found is not None else None


def predicted_name(label: str) -> str:
    """'uuid;mammalia;proboscidea;elephantidae;loxodonta;africana;african elephant' →
    'Loxodonta africana (african elephant)'; a label above species ('…;felidae;;;cat
    family') → 'Felidae (cat family)'; 'blank' and the like as written."""
    parts = [p.strip() for p in label.split(";")]
    if len(parts) != 7:
        return label
    ranks, common = parts[1:6], parts[6]
    genus, epithet = ranks[3], ranks[4]
    if genus and epithet:
        name = f"{genus.capitalize()} {epithet.lower()}"
    else:
        name = next((r.capitalize() for r in reversed(ranks) if r), "")
    if not name:
        return common
    return f"{name} ({common})" if common else name
