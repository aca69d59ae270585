"""COCO Camera Traps (CCT) files: the JSON that LILA's camera-trap datasets (Snapshot
Serengeti, Caltech Camera Traps, NACTI, …) and MegaDetector's tools use. `images` lists
each photo by `file_name` with its `datetime`, `location`, `seq_id`, `rights_holder`;
`annotations` give each photo's `category_id`s, named in `categories`.

Read into Darwin Core terms: `eventDate` (LILA writes "2013-10-10 10:15:33": the space
becomes ISO's T; a date in another shape is kept as `verbatimEventDate`), `locationID`,
`eventID` (the sequence: the burst of photos one trigger took), `rightsHolder`. A photo's
category is its `vernacularName` when it has one: LILA's category names are mostly common
names ("zebra", "elephant"), which are not a taxon the catalog could rank. Several
categories are kept as `observedTaxa`, "empty" as `observationType`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from bioindex.errors import BioindexError

_HEAD_BYTES = 65536
_EMPTY = {"empty", "blank", "none", "nothing"}
_SPACED = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_ISO = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:?\d{2}|Z)?)?)?)?$")


def looks_like(path: str | Path) -> bool:
    """Whether a .json file starts like a COCO file (an `images` list) and not like a IIIF
    document (which names its @context first): read from its head only, as LILA's files
    run to gigabytes."""
    try:
        with open(path, "rb") as file:
            head = file.read(_HEAD_BYTES)
    except OSError:
        return False
    return b'"images"' in head and b'"@context"' not in head


def rows(lists: Callable[[str], Iterable[Any]],
         source: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:  # fmt: skip
    """(file_name, metadata in Darwin Core terms) for each image of a CCT file, whose
    top-level lists `lists(name)` reads: categories, then annotations, then images — each
    once, whatever their order in the file."""
    names = {_key(c.get("id")): str(c.get("name") or "").strip()
             for c in lists("categories") if isinstance(c, dict)}  # fmt: skip
    seen: dict[Any, str | set[str]] = {}
    for note in lists("annotations"):
        if isinstance(note, dict) and _key(note.get("image_id")) is not None:
            _add(seen, _key(note["image_id"]), names.get(_key(note.get("category_id"))))
    for number, image in enumerate(lists("images"), 1):
        file_name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(file_name, str) or not file_name.strip():
            raise BioindexError(f"{source}: image {number} has no file_name")
        key = _key(image.get("id"))
        found = seen.get(key, ()) if key is not None else ()
        yield file_name.strip(), metadata(image, {found} if isinstance(found, str) else found)


def _add(seen: dict[Any, str | set[str]], image: Any, name: str | None) -> None:
    """One more category of a photo: most have one, kept as a bare name (a set each would
    hold ~200 bytes × millions of photos)."""
    if not name:
        return
    have = seen.get(image)
    if have is None or have == name:
        seen[image] = name
    elif isinstance(have, str):
        seen[image] = {have, name}
    else:
        have.add(name)


def metadata(image: dict[str, Any], categories: Collection[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "locationID": _text(image.get("location")),
        "eventID": _text(image.get("seq_id")),
        "rightsHolder": _text(image.get("rights_holder")),
        "frameNumber": image.get("frame_num"),
        "sequenceFrames": image.get("seq_num_frames"),
        "corrupt": image.get("corrupt") or None,
    }
    taken = _text(image.get("datetime"))
    if taken:
        if _SPACED.match(taken):
            out["eventDate"] = taken.replace(" ", "T")
        elif _ISO.match(taken):
            out["eventDate"] = taken
        else:
            out["verbatimEventDate"] = taken
    animals = sorted(c for c in categories if c.lower() not in _EMPTY)
    if len(animals) == 1:
        out["vernacularName"] = animals[0]
    elif animals:
        out["observedTaxa"] = " | ".join(animals)
    elif categories:
        out["observationType"] = sorted(categories)[0]
    return {k: v for k, v in out.items() if v not in (None, "")}


def _key(value: Any) -> Any:
    """An id as a dict key: ids are strings or numbers; anything else matches nothing."""
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else str(value).strip()
