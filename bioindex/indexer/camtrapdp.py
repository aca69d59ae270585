"""Camera Trap Data Packages (Camtrap DP 1.0, the TDWG standard that camera-trap platforms
such as Agouti and Trapper export and GBIF publishes from): a folder with `datapackage.json`
and three tables — deployments (where each camera stood), media (each photo, by URL or a
path inside the package) and observations (what was seen, on one photo or over a sequence
of them).

Each photo becomes an image row in Darwin Core terms: `eventDate` its timestamp,
`decimalLatitude`/`decimalLongitude`, `locationID` and `locality` its deployment's,
`basisOfRecord` MachineObservation (as GBIF publishes camera-trap data), licence and rights
holder from the package. Its taxon comes from the observations of that photo, else from the
event-level ones of its deployment whose time span holds it; only where those name one
taxon and a person made them (`classificationMethod` human or unsaid). Several taxa on one
photo, and a machine's guesses, are kept beside the record (`observedTaxa`,
`machineIdentification`): the catalog's names are what the few-shot heads and the
neighbour vote learn from.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bioindex.errors import BioindexError

PACKAGE_FILE = "datapackage.json"
TABLES = ("deployments", "media", "observations")


def package_file(path: str | Path) -> Path | None:
    """The datapackage.json of a Camtrap DP folder (or the file itself), else None."""
    path = Path(path)
    file = path / PACKAGE_FILE if path.is_dir() else path
    if file.name != PACKAGE_FILE or not file.is_file():
        return None
    try:
        with open(file, encoding="utf-8-sig") as opened:
            profile = json.load(opened).get("profile", "")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return file if isinstance(profile, str) and "camtrap-dp" in profile else None


@dataclass
class Package:
    """A Camtrap DP's photos with their metadata, and what was left out."""

    folder: Path
    photos: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    videos: int = 0  # media that are not still images: not embedded


def read(file: Path) -> Package:
    from bioindex.indexer.sources import iter_table_rows

    descriptor = _descriptor(file)
    folder = file.parent
    paths = {r.get("name"): r.get("path") for r in _list(descriptor.get("resources"))
             if isinstance(r, dict)}  # fmt: skip
    missing = [name for name in TABLES if not isinstance(paths.get(name), str)]
    if missing:
        raise BioindexError(f"{file} names no {', '.join(missing)} table (a Camtrap DP "
                            f"needs deployments, media and observations)")  # fmt: skip

    def rows(name: str) -> Iterator[dict[str, Any]]:
        table = (folder / paths[name]).resolve()
        if not table.is_relative_to(folder.resolve()):
            raise BioindexError(f"{file}: the {name} table {paths[name]} is outside the package")
        return iter_table_rows(table)

    common = _package_terms(descriptor)
    deployments = {row.get("deploymentID"): row for row in rows("deployments")}
    seen = _Observations(rows("observations"))
    package = Package(folder)
    for photo in rows("media"):
        kind = str(photo.get("fileMediatype") or "")
        path = str(photo.get("filePath") or "").strip()
        if not path:
            continue
        if kind and not kind.startswith("image/"):
            package.videos += 1
            continue
        deployment = deployments.get(photo.get("deploymentID")) or {}
        terms = {**common, **_deployment_terms(deployment), **_media_terms(photo),
                 **seen.terms(photo)}  # fmt: skip
        package.photos.append((path, {k: v for k, v in terms.items() if v not in (None, "")}))
    return package


def _descriptor(file: Path) -> dict[str, Any]:
    try:
        with open(file, encoding="utf-8-sig") as opened:
            descriptor = json.load(opened)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BioindexError(f"{file} cannot be read as JSON: {exc}") from None
    if not isinstance(descriptor, dict):
        raise BioindexError(f"{file} is not a data package descriptor (a JSON object)")
    return descriptor


def _package_terms(descriptor: dict[str, Any]) -> dict[str, Any]:
    """Licence of the media and the rights holder, as the package's metadata gives them."""
    terms: dict[str, Any] = {"basisOfRecord": "MachineObservation"}
    for licence in _list(descriptor.get("licenses")):
        if isinstance(licence, dict) and licence.get("scope") == "media":
            terms["license"] = licence.get("path") or licence.get("name")
    for person in _list(descriptor.get("contributors")):
        if isinstance(person, dict) and person.get("role") == "rightsHolder":
            terms["rightsHolder"] = person.get("title")
    return terms


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _deployment_terms(deployment: dict[str, Any]) -> dict[str, Any]:
    return {
        "decimalLatitude": deployment.get("latitude"),
        "decimalLongitude": deployment.get("longitude"),
        "coordinateUncertaintyInMeters": deployment.get("coordinateUncertainty"),
        "locationID": deployment.get("locationID"),
        "locality": deployment.get("locationName"),
    }


def _media_terms(photo: dict[str, Any]) -> dict[str, Any]:
    return {"eventDate": photo.get("timestamp"), "mediaID": photo.get("mediaID"),
            "deploymentID": photo.get("deploymentID")}  # fmt: skip


class _Observations:
    """The observations of a package, found for a photo: its own (media level), else those
    of its deployment's events whose span holds its timestamp."""

    def __init__(self, rows: Iterator[dict[str, Any]]):
        self.by_media: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.events: dict[str, list[tuple[datetime, datetime, dict[str, Any]]]] = defaultdict(list)
        for row in rows:
            if row.get("observationLevel") == "media" and row.get("mediaID"):
                self.by_media[row["mediaID"]].append(row)
            elif row.get("observationLevel") == "event":
                start, end = _instant(row.get("eventStart")), _instant(row.get("eventEnd"))
                if start is not None and end is not None:
                    self.events[row.get("deploymentID")].append((start, end, row))

    def own(self, photo: dict[str, Any]) -> list[dict[str, Any]]:
        return self.by_media.get(photo.get("mediaID"), [])

    def spanning(self, photo: dict[str, Any]) -> list[dict[str, Any]]:
        taken = _instant(photo.get("timestamp"))
        if taken is None:
            return []
        return [row for start, end, row in self.events.get(photo.get("deploymentID"), [])
                if start <= taken <= end]  # fmt: skip

    def terms(self, photo: dict[str, Any]) -> dict[str, Any]:
        own, spanning = self.own(photo), self.spanning(photo)
        # A person's word on the photo itself, else on its sequence; a machine's on either
        # is only kept beside the record.
        by_people = _named(own, people=True) or _named(spanning, people=True)
        observations = own or spanning
        names = sorted({o["scientificName"] for o in by_people})
        terms: dict[str, Any] = {}
        if len(names) == 1:
            terms["scientificName"] = names[0]
            first = by_people[0]
            if len(by_people) == 1:
                terms["occurrenceID"] = first.get("observationID")
                terms["individualCount"] = first.get("count")
            terms.update({"lifeStage": first.get("lifeStage"), "sex": first.get("sex"),
                          "behavior": first.get("behavior"),
                          "identifiedBy": first.get("classifiedBy")})  # fmt: skip
        elif names:
            terms["observedTaxa"] = " | ".join(names)
        guesses = sorted({_guess(o) for o in _named(observations, people=False)})
        if guesses:
            terms["machineIdentification"] = " | ".join(guesses)
        kinds = sorted({str(o.get("observationType")) for o in observations
                        if o.get("observationType") not in (None, "", "animal")})  # fmt: skip
        if kinds and not names:
            terms["observationType"] = " | ".join(kinds)
        return terms


def _named(observations: list[dict[str, Any]], people: bool) -> list[dict[str, Any]]:
    """The observations naming an animal, by people (`classificationMethod` human or
    unsaid) or by a machine."""
    return [o for o in observations
            if o.get("observationType") == "animal" and o.get("scientificName")
            and (o.get("classificationMethod") != "machine") == people]  # fmt: skip


def _guess(observation: dict[str, Any]) -> str:
    probability = observation.get("classificationProbability")
    return (f"{observation['scientificName']} ({probability})" if probability not in (None, "")
            else observation["scientificName"])  # fmt: skip


def _instant(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as an aware datetime (one without an offset taken as UTC)."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
