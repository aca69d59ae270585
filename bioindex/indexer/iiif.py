"""IIIF in: Presentation manifests (v2 and v3) and collections list canvases, and each
canvas's image is fetched through its Image API service at a size fit for the model.

A herbarium master is 50-150 MP; the model sees 224 px. So an image is asked for at about
twice the model's input on its long side (never less than the input on its short side),
within what the service says it serves: a level-0 service only has its listed `sizes`;
others are held to maxWidth/maxHeight/maxArea. Only a level-0 service that lists no sizes
makes us take the full image.

The canvas id is an image's identity (its uri), so a rerun asks for nothing it has. A
Darwin Core Archive row that follows the CETAF convention (Audubon Core, dc:format
application/ld+json, ac:serviceExpectation IIIF) names a manifest; it stands for that
manifest's first canvas and is resolved only when it is fetched.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bioindex.errors import BioindexError
from bioindex.indexer.remote import Fetched, FetchPolicy, MediaCache, fetch, read_json

MANIFEST = "iiif-manifest"  # fetch_via of an item whose uri is a manifest URL
IMAGE_SERVICE = "iiif-image:"  # fetch_via prefix: the canvas's Image API service
PLAIN = "url:"  # fetch_via prefix: a canvas image without a service
MAX_MANIFEST_BYTES = 64 << 20
MAX_MANIFESTS = 100_000  # in one collection, all levels together
_TAGS = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class Canvas:
    id: str
    label: str
    service: str  # the Image API service's id ('' when the image has none)
    image: str  # the painted image's own URL
    width: int | None = None
    height: int | None = None

    @property
    def fetch_via(self) -> str:
        return IMAGE_SERVICE + self.service if self.service else PLAIN + self.image


def is_presentation(document: Any) -> bool:
    context = document.get("@context", "") if isinstance(document, dict) else ""
    contexts = context if isinstance(context, list) else [context]
    return any(isinstance(c, str) and "iiif.io/api/presentation" in c for c in contexts)


def _kind(document: dict[str, Any]) -> str:
    return str(document.get("type") or document.get("@type") or "").split(":")[-1]


def text(value: Any) -> str:
    """A label or value as plain text: v3 language maps, v2 strings or @value lists."""
    if value is None:
        return ""
    if isinstance(value, str):
        return _TAGS.sub("", value).strip()
    if isinstance(value, dict):
        if "@value" in value:
            return text(value["@value"])
        preferred = value.get("en") or value.get("none") or next(iter(value.values()), [])
        return text(preferred)
    if isinstance(value, list):
        return "; ".join(t for t in (text(v) for v in value) if t)
    return str(value)


def _id(thing: dict[str, Any]) -> str:
    return str(thing.get("id") or thing.get("@id") or "")


def _service(resource: dict[str, Any]) -> str:
    services = resource.get("service") or []
    for service in services if isinstance(services, list) else [services]:
        if not isinstance(service, dict):
            continue
        kind = str(service.get("type") or service.get("@type") or "")
        profile = json.dumps(service.get("profile", ""))
        if kind.startswith("ImageService") or "iiif.io/api/image" in profile or "level" in profile:
            return _id(service).rstrip("/")
    return ""


def _painted(canvas: dict[str, Any]) -> dict[str, Any]:
    """The image painted on a canvas (v3 items → annotation → body; v2 images → resource)."""
    for page in canvas.get("items") or []:
        for annotation in page.get("items") or []:
            body = annotation.get("body") or {}
            body = body[0] if isinstance(body, list) and body else body
            if isinstance(body, dict) and body:
                return body
    for annotation in canvas.get("images") or []:
        resource = annotation.get("resource") or {}
        if isinstance(resource, dict) and resource:
            return resource
    return {}


def canvases(manifest: dict[str, Any]) -> list[Canvas]:
    found = []
    listed = manifest.get("items")
    if listed is None:  # v2: the canvases of the first sequence
        sequences = manifest.get("sequences") or [{}]
        listed = sequences[0].get("canvases") or []
    for canvas in listed:
        if not isinstance(canvas, dict) or _kind(canvas) != "Canvas":
            continue
        image = _painted(canvas)
        service, url = _service(image), _id(image)
        if not (service or url):
            continue
        found.append(Canvas(_id(canvas), text(canvas.get("label")), service, url,
                            _int(canvas.get("width")), _int(canvas.get("height"))))  # fmt: skip
    return found


def manifest_metadata(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the catalog keeps of a manifest: its label, its metadata pairs (a label that
    names a Darwin Core term, such as "Catalog Number", fills that column), its rights and
    required statement, and the manifest's own id."""
    metadata: dict[str, Any] = {}
    for pair in manifest.get("metadata") or []:
        if isinstance(pair, dict):
            label, value = text(pair.get("label")), text(pair.get("value"))
            if label and value:
                metadata[label] = value
    metadata["title"] = text(manifest.get("label"))
    rights = manifest.get("rights") or manifest.get("license")
    if rights:
        metadata["license"] = text(rights)
    statement = manifest.get("requiredStatement") or {}
    holder = text(statement.get("value")) if isinstance(statement, dict) else ""
    holder = holder or text(manifest.get("attribution"))
    if holder:
        metadata["rightsHolder"] = holder
    metadata["iiifManifest"] = _id(manifest)
    return {k: v for k, v in metadata.items() if v}


def is_collection(document: dict[str, Any]) -> bool:
    return _kind(document) == "Collection"


def members(collection: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(manifest URLs, sub-collection URLs) a IIIF Collection lists."""
    manifests, collections = [], []
    for entry in (collection.get("items") or collection.get("manifests") or []) + (
            collection.get("collections") or []):  # fmt: skip
        if isinstance(entry, dict):
            (collections if _kind(entry) == "Collection" else manifests).append(_id(entry))
    return [m for m in manifests if m], [c for c in collections if c]


def read_manifest(source: str, policy: FetchPolicy) -> dict[str, Any]:
    """A Presentation document from a URL or a file; BioindexError when it is not one."""
    from bioindex.uris import is_remote

    try:
        if is_remote(source):
            document = read_json(source, policy)
        else:
            path = Path(source).expanduser()
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise ValueError(f"larger than {MAX_MANIFEST_BYTES >> 20} MiB")
            document = json.loads(path.read_bytes())
    except (ValueError, OSError, RecursionError) as exc:  # a stranger's: nested 100,000 deep
        raise BioindexError(f"cannot read IIIF manifest {source}: {exc}") from None
    if not is_presentation(document):
        raise BioindexError(f"{source} is not a IIIF Presentation manifest or collection "
                            f"(no presentation @context)")  # fmt: skip
    return document


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ---- the Image API: which size to ask for ------------------------------------------


def _level0(info: dict[str, Any]) -> bool:
    profile = info.get("profile")
    first = profile[0] if isinstance(profile, list) and profile else profile
    return isinstance(first, str) and "level0" in first


def _limits(info: dict[str, Any]) -> dict[str, Any]:
    """maxWidth/maxHeight/maxArea: top level in v3, in the profile's dict in v2."""
    limits = {k: info[k] for k in ("maxWidth", "maxHeight", "maxArea") if k in info}
    profile = info.get("profile")
    for entry in profile if isinstance(profile, list) else []:
        if isinstance(entry, dict):
            limits.update({k: entry[k] for k in ("maxWidth", "maxHeight", "maxArea")
                           if k in entry})  # fmt: skip
    return limits


def size_for(info: dict[str, Any], image_size: int) -> str:
    """The Image API size segment for a model whose input is `image_size` pixels."""
    version3 = "image/3" in json.dumps(info.get("@context", ""))
    full = "max" if version3 else "full"
    width, height = _int(info.get("width")), _int(info.get("height"))
    sizes = [(int(s["width"]), int(s["height"])) for s in info.get("sizes") or []
             if isinstance(s, dict) and _int(s.get("width")) and _int(s.get("height"))]
    if not width or not height:
        return full
    scale = min(1.0, max(2 * image_size / max(width, height), image_size / min(width, height)))
    wanted_w, wanted_h = math.ceil(width * scale), math.ceil(height * scale)
    if sizes and (_level0(info) or scale < 1):
        fitting = sorted(s for s in sizes if s[0] >= wanted_w and s[1] >= wanted_h)
        if fitting or _level0(info):
            chosen = fitting[0] if fitting else max(sizes)
            if chosen[0] >= width:
                return full
            return f"{chosen[0]},{chosen[1]}" if version3 else f"{chosen[0]},"
    if _level0(info):
        return full  # nothing smaller is served
    limits = _limits(info)
    w = wanted_w
    if limits.get("maxWidth"):
        w = min(w, int(limits["maxWidth"]))
    if limits.get("maxHeight"):
        w = min(w, int(int(limits["maxHeight"]) * width / height))
    if limits.get("maxArea"):
        w = min(w, int(math.sqrt(int(limits["maxArea"]) * width / height)))
    return full if w >= width else f"{max(1, w)},"


def image_url(service: str, info: dict[str, Any], image_size: int) -> str:
    base = (_id(info) or service).rstrip("/")
    return f"{base}/full/{size_for(info, image_size)}/0/default.jpg"


def fetch_item(key: str, via: str, cache: MediaCache, policy: FetchPolicy,
               image_size: int) -> Fetched:  # fmt: skip
    """Fetch the image behind a canvas (or a manifest's first canvas) at the size the
    model needs. The result is keyed by `key` (the item's uri)."""
    metadata: dict[str, Any] = {}
    cached = cache.cached(key)
    if cached is not None and via != MANIFEST:  # fetched before a run was stopped
        return Fetched(key, cached)
    try:
        if via == MANIFEST:
            manifest = read_manifest(key, policy)
            found = canvases(manifest)
            if not found:
                return Fetched(key, error="IIIF: the manifest has no canvas with an image")
            metadata = {**manifest_metadata(manifest), "iiifCanvas": found[0].id}
            via = found[0].fetch_via
        if via.startswith(IMAGE_SERVICE):
            service = via[len(IMAGE_SERVICE):]
            info = read_json(f"{service}/info.json", policy)
            if not isinstance(info, dict):
                return Fetched(key, error="IIIF: info.json is not an object")
            url = image_url(service, info, image_size)
        else:
            url = via[len(PLAIN):]
    except (ValueError, BioindexError) as exc:
        return Fetched(key, error=f"IIIF: {exc}")
    fetched = fetch(url, cache, policy)
    if fetched.path is not None:
        # Also under the item's own uri: thumbnails and reruns find it by what the catalog
        # holds (the canvas or manifest), not by a URL that depended on info.json.
        _link(fetched.path, cache.path_for(key))
    return Fetched(key, fetched.path, fetched.error, fetched.downloaded, metadata)


def _link(source: Path, target: Path) -> None:
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".{os.getpid()}.link.tmp")
    try:
        os.link(source, tmp)
    except OSError:  # another filesystem: a copy
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
