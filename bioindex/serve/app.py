"""HTTP API over one store (read-only): FastAPI, served by uvicorn via `bioindex serve`.

The model is loaded once at start. The server only ever reads files that belong to indexed
images, found by image_id in the catalog — never a path taken from a request — and shows
their paths relative to the folder they were indexed from. Every error is JSON
`{"error": …}` with a 4xx status for what the client sent; nothing answers with a
traceback. Uploads are decoded in a small pool of their own, outside the lock the model and
catalog are used under, and refused above a pixel cap before they are decoded. The Guard
(guard.py) checks Host, token and body size and adds the security headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from bioindex.collection import Collection, combine_views
from bioindex.errors import BioindexError, ImageTooLarge
from bioindex.indexer.stored import image_bytes
from bioindex.output import ANSWER_KEYS
from bioindex.search.dedup import DuplicateMember, find_duplicates
from bioindex.search.defaults import (
    DEFAULT_MIN_CONFIDENCE,
    DEFAULT_OUTSIDE_WEIGHT,
    DEFAULT_RADIUS_KM,
)
from bioindex.search.fewshot import FEW_SHOT_METHODS, store_head
from bioindex.search.filters import parse_where
from bioindex.search.labels import RecentLabels, labels_from_strings, templated
from bioindex.search.place import parse_near, species_list_from_text
from bioindex.search.query import check_k, display_path, group_by_occurrence, source_roots
from bioindex.serve.concurrency import BatchingModel, Gate
from bioindex.serve.guard import LOOPBACK_NAMES, Guard
from bioindex.store import Store
from bioindex.store.read_cache import GenerationCache
from bioindex.taxonomy import RANKS
from bioindex.uris import is_remote, member_of

DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000  # a 50 MP upload decodes to ~150 MB of RGB
DECODE_WORKERS = 2  # uploads decoded at once; more wait their turn without blocking searches
DEFAULT_WORKERS = 8  # requests answered at once (FAISS, DuckDB and torch release the GIL)
MAX_K = 1000
# A text query, taxon name or label longer than this is refused: the model reads its first
# 77 tokens (a few hundred characters), and a server took 100 kB queries and kept 4,096 of
# them in memory (RecentTexts). Labels: each is one text encode.
MAX_TEXT = 1000
MAX_LABELS = 1000
# Texts the model may encode for one request's custom labels not seen before (80 prompts a
# label; templates=one: 1): 1,000 made-up labels were 80,000 texts, ~14 minutes of a
# BioCLIP-sized text tower on two cores. 4,096 is ~45 s there, well under a second on a GPU.
DEFAULT_MAX_LABEL_TEXTS = 4096
MAX_VIEWS = 8  # photos of one specimen in one classify request
MAX_SPECIES_LIST = 8 * 1024 * 1024  # a country's GBIF species list is a few MB
STATIC = Path(__file__).resolve().parent / "static"
# Thumbnails made kept, by the file's identity: a 3 MP camera-trap JPEG takes 6.8 ms to
# shrink, a page of results shows 10-50 of them, and browsers keep them per user only.
THUMBNAIL_BYTES = 64 * 2**20
MAX_GROUPS_PAGE = 200  # duplicate groups in one answer
# Duplicate groups are found once per threshold and generation (a minute per million images
# on 2 cores) and kept for paging: a few thresholds at once.
DUPLICATE_THRESHOLDS_KEPT = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# Methods counted under their own name; any other is "other". A client picks the method
# freely: 300 made-up ones made 300 series, kept for good and sent on every scrape.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """Request counts and latency sums per route and status, in Prometheus text format."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, str, int], int] = defaultdict(int)
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        with self.lock:
            self.counts[(method, route, status)] += 1
            self.seconds[(method, route)] += seconds

    def text(self) -> str:
        lines = ["# TYPE bioindex_requests_total counter"]
        with self.lock:
            for (method, route, status), n in sorted(self.counts.items()):
                lines.append(f'bioindex_requests_total{{method="{method}",route="{route}",'
                             f'status="{status}"}} {n}')  # fmt: skip
            lines.append("# TYPE bioindex_request_seconds_sum counter")
            for (method, route), total in sorted(self.seconds.items()):
                lines.append(f'bioindex_request_seconds_sum{{method="{method}",route="{route}"}} '
                             f"{total:.6f}")  # fmt: skip
        return "\n".join(lines) + "\n"


def create_app(
    store: str | Path,
    *,
    model: str | None = None,
    device: str = "auto",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    token: str | None = None,
    hosts: tuple[str, ...] = LOOPBACK_NAMES,
    workers: int = DEFAULT_WORKERS,
    max_label_texts: int = DEFAULT_MAX_LABEL_TEXTS,
) -> FastAPI:
    """The app. `hosts`: the Host names it answers to; `token`: when given, every API call
    must carry it (bearer header, or the cookie the page sets); `workers`: requests served
    at once (1: one at a time, the model called per request); `max_label_texts`: texts one
    classify request's new custom labels may take to encode (0: no limit)."""
    collection = Collection.open(store, model=model, device=device, read_only=True)
    loaded = collection.model  # load once, now, not on the first request
    collection.store.index()
    collection.store.hold_rows_in_memory()  # every answer reads rows: 0.2 ms, not 16-25 at 1M
    if workers > 1:
        collection.use_model(BatchingModel(loaded))
    # Each request reads one generation; a newer one is moved to between requests (a stat
    # call when there is none). See concurrency.py.
    lock = Gate(collection, workers)
    decoding = ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="bioindex-upload")
    metrics = Metrics()
    recent_labels = RecentLabels()  # custom labels' vectors: never written to disk
    # One "generation" for good: a kept thumbnail's key holds its file's size and mtime.
    thumbnails = GenerationCache(THUMBNAIL_BYTES, weigh=len)
    duplicate_groups = GenerationCache(DUPLICATE_THRESHOLDS_KEPT)
    finding_duplicates = threading.Lock()  # one search of the store at a time
    preparing_heads = threading.Lock()
    heads_ready: set[tuple[int, str]] = set()  # (generation, method) with a head cached
    app = FastAPIOffline(title="bioindex", version="0.1.0",
                         description="Search a biological image collection.")  # fmt: skip
    # Multipart framing and the other form fields ride on top of the upload itself.
    app.add_middleware(Guard, hosts=hosts, token=token, max_body=max_upload_bytes + 64 * 1024)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.record(request.method, path, response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _describe(exc.errors())}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "bad request"
        return JSONResponse({"error": message.lower() if exc.status_code == 404 else message},
                            status_code=exc.status_code, headers=exc.headers)  # fmt: skip

    private = _private_paths(collection)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": _without(private, exc.message)}, status_code=exc.status)

    @app.exception_handler(BioindexError)
    async def user_error(_: Request, exc: BioindexError) -> JSONResponse:
        return JSONResponse({"error": _without(private, exc.explain("http"))}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    def where_of(where: list[str] | None):
        return parse_where(where or []) or None

    def k_of(k: int) -> int:
        check_k(k)
        if k > MAX_K:
            raise ApiError(400, f"k must be at most {MAX_K}")
        return k

    def hits_json(hits: list, group_by: str | None, k: int) -> dict:
        if group_by == "occurrence":
            hits = group_by_occurrence(hits, k)
        elif group_by is not None:
            raise ApiError(400, "group_by must be 'occurrence'")
        return {"results": [_public(h.to_dict()) for h in hits]}

    async def read_upload(file: UploadFile) -> bytes:
        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise ApiError(413, f"upload larger than {max_upload_bytes} bytes")
        if not data:
            raise ApiError(400, "empty upload")
        return data

    async def read_species_list(part: UploadFile, outside: float) -> Any:
        data = await part.read(MAX_SPECIES_LIST + 1)
        if len(data) > MAX_SPECIES_LIST:
            raise ApiError(413, f"species list larger than {MAX_SPECIES_LIST} bytes")
        if data.startswith(b"PK\x03\x04"):  # an Excel workbook (a zip), as curators keep lists
            text = await asyncio.to_thread(_workbook_upload_text, data)
        else:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise ApiError(400, "species list is not UTF-8 text") from exc
        return species_list_from_text(text, part.filename or "upload", outside)

    async def upload_vector(data: bytes):
        """Decoded and preprocessed in the upload pool, then embedded (batched with other
        requests' images when the server runs workers side by side)."""
        future = decoding.submit(_prepare_upload, collection, data, max_pixels)
        pixels = await asyncio.wrap_future(future)
        return await run_in_threadpool(embed_upload, pixels)

    def embed_upload(pixels: Any) -> np.ndarray:
        # Waited for off the event loop: on it, the server read no other request while
        # an image was in the model, and concurrent uploads never met in a model call.
        with lock.reading():
            return collection.embed_pixels(pixels)

    @app.get("/api/health")
    def health() -> dict:
        with lock.reading():
            return {"status": "ok", "images": collection.store.live_count()}

    @app.get("/api/info")
    def info() -> dict:
        with lock.reading():
            data = collection.info()
            data["names_taxa"] = collection.catalog_names_taxa()
            # Without taxa, zero-shot chooses between the records' common names (two or more).
            data["common_names"] = len(collection.common_names())
            # Which filter boxes the page shows: a plain folder has no institutions.
            data["filled"] = collection.store.catalog.filled(PAGE_FILTER_COLUMNS)
        return _public_info(data)

    @app.get("/api/search")
    def search_box(q: str = Query(max_length=MAX_TEXT), k: int = 10,
                   where: list[str] | None = Query(None), group_by: str | None = None,
                   ) -> dict:  # fmt: skip
        """What the page's search box does: a taxon the catalog names (its records, then
        look-alikes), a Latin name it does not (look-alikes), or free text."""
        k = k_of(k)
        fetch = k * 5 if group_by else k
        with lock.reading():
            answer = collection.search(q, k=fetch, where=where_of(where))
        return {**answer.to_dict(), **hits_json(answer.hits, group_by, k)}

    @app.get("/api/search/text")
    def search_text(q: str = Query(max_length=MAX_TEXT), k: int = 10,
                    where: list[str] | None = Query(None), group_by: str | None = None,
                    ) -> dict:  # fmt: skip
        k = k_of(k)
        fetch = k * 5 if group_by else k
        with lock.reading():
            hits = collection.search_text(q, k=fetch, where=where_of(where))
        return hits_json(hits, group_by, k)

    @app.get("/api/search/taxon")
    def search_taxon(name: str = Query(max_length=MAX_TEXT), k: int = 10, mode: str = "hybrid",
                     where: list[str] | None = Query(None), group_by: str | None = None,
                     ) -> dict:  # fmt: skip
        k = k_of(k)
        fetch = k * 5 if group_by else k
        with lock.reading():
            hits = collection.search_taxon(name, k=fetch, mode=mode, where=where_of(where))
        return hits_json(hits, group_by, k)

    @app.get("/api/search/id/{image_id}")
    def search_id(image_id: int, k: int = 10, where: list[str] | None = Query(None)) -> dict:
        k = k_of(k)
        with lock.reading():
            known = collection.store.rows([image_id])
            if image_id not in known or known[image_id].get("status") != "live":
                raise ApiError(404, f"no image with id {image_id}")
            hits = collection.search_id(image_id, k=k, where=where_of(where))
        return hits_json(hits, None, k)

    async def views_vector(parts: list[UploadFile]) -> np.ndarray:
        """Several uploads are views of one specimen: the mean of their unit vectors."""
        if len(parts) > MAX_VIEWS:
            raise ApiError(400, f"at most {MAX_VIEWS} views of one specimen")
        return combine_views(np.stack([await named_upload_vector(part) for part in parts]))

    async def named_upload_vector(part: UploadFile) -> np.ndarray:
        try:
            return await upload_vector(await read_upload(part))
        except ApiError as exc:  # say which view, of several, could not be read
            name = " ".join((part.filename or "upload").split())[:120]  # kept to one line
            raise ApiError(exc.status, f"{name}: {exc.message}") from exc

    @app.post("/api/search/image")
    async def search_image(file: list[UploadFile] = File(...), k: int = 10,
                           where: list[str] | None = Query(None), group_by: str | None = None,
                           ) -> dict:  # fmt: skip
        """Images like the upload; several `file` parts are views of one specimen."""
        k = k_of(k)
        conditions = where_of(where)
        vector = await views_vector(file)
        fetch = k * 5 if group_by else k

        def search() -> list:
            with lock.reading():
                return collection.search_vector(vector, k=fetch, where=conditions)

        return hits_json(await run_in_threadpool(search), group_by, k)

    @app.post("/api/search/vector")
    def search_vector(body: dict) -> dict:
        vector = body.get("vector")
        if not isinstance(vector, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector):
            raise ApiError(400, "body needs 'vector': a list of numbers")
        k = body.get("k", 10)
        if not isinstance(k, int) or isinstance(k, bool):
            raise ApiError(400, "'k' must be a whole number")
        k = k_of(k)
        where = body.get("where") or []
        if not isinstance(where, list) or not all(isinstance(w, str) for w in where):
            raise ApiError(400, "'where' must be a list of strings")
        text = body.get("text", False)  # a text vector: the index's text setting
        if not isinstance(text, bool):
            raise ApiError(400, "'text' must be true or false")
        with lock.reading():
            hits = collection.search_vector(vector, k=k, where=where_of(where), text=text)
        return hits_json(hits, None, k)

    @app.post("/api/classify")
    async def classify(file: list[UploadFile] = File(...), rank: str = "species", k: int = 5,
                       method: str = "zero-shot", labels: str | None = None,
                       min_confidence: float = DEFAULT_MIN_CONFIDENCE, near: str | None = None,
                       radius_km: float | None = None,
                       outside_weight: float | None = None,
                       where: list[str] | None = Query(None),
                       species_list: UploadFile | None = File(None),
                       calibrate: bool = True, templates: str = "openai") -> dict:  # fmt: skip
        """Top-k predictions with the answer (deepest rank reaching `min_confidence`, and
        its band), and the best name at each rank the labels name (`labels`:
        comma-separated custom labels instead of the catalog's taxa; `templates`: openai,
        80 prompts a label, or one, 'a photo of X.'). Several `file` parts
        are views of one specimen, answered once; `near` (LAT,LON) re-weights taxa by
        where the catalog records them within `radius_km`, `where` (country_code=KE, …) by
        the catalog's records matching those conditions."""
        k = k_of(k)
        if labels and (labels.count(",") >= MAX_LABELS
                       or any(len(label) > MAX_TEXT for label in labels.split(","))):
            raise ApiError(400, f"at most {MAX_LABELS} labels of {MAX_TEXT} characters each")
        label_set = templated(labels_from_strings(labels.split(","), "labels") if labels
                              else None, templates)  # fmt: skip
        vector = await views_vector(file)
        name = " + ".join(part.filename or "upload" for part in file)
        options = {"method": method, "min_confidence": min_confidence, "calibrate": calibrate}
        if sum(bool(p) for p in (near, where, species_list)) > 1:
            raise ApiError(400, "give one place: near, where or species_list")
        if radius_km is not None and not near:
            raise ApiError(400, "radius_km is the distance from near; give near=LAT,LON")
        if outside_weight is not None and not (near or where or species_list):
            raise ApiError(400, "outside_weight re-weights taxa by a place; give near, where "
                                "or species_list with it")  # fmt: skip
        radius_km = DEFAULT_RADIUS_KM if radius_km is None else radius_km
        outside_weight = DEFAULT_OUTSIDE_WEIGHT if outside_weight is None else outside_weight
        if species_list is not None:
            options["place"] = await read_species_list(species_list, outside_weight)
        if method in FEW_SHOT_METHODS:
            await run_in_threadpool(prepare_head, method)
        elif not labels:  # the novelty test's head, for answers over the store's own names
            with contextlib.suppress(BioindexError):  # none: answered without one
                await run_in_threadpool(prepare_head, "few-shot")

        def predict() -> tuple[list, dict]:
            labelled = label_set
            if label_set is not None and method in ("zero-shot", "combined"):  # text read
                labelled = collection.with_label_vectors(
                    label_set, max_new_texts=max_label_texts or None, recent=recent_labels)
            with lock.reading():
                if where:
                    options["place"] = collection.place_where(where_of(where), outside_weight)
                if near:
                    if not 0 < radius_km <= 20_000:
                        raise ApiError(400, "radius_km must be in (0, 20000]")
                    options["place"] = collection.place_near(*parse_near(near), radius_km,
                                                             outside_weight)  # fmt: skip
                predictions = collection.classify_vectors(
                    [name], vector[None], rank=rank, k=k, labels=labelled, **options
                )  # fmt: skip
                lineage = {}
                named = label_set is None and collection.catalog_names_taxa()  # not common names
                for level in RANKS if named else ():
                    top = collection.classify_vectors(["upload"], vector[None], rank=level,
                                                      k=1, **options)  # fmt: skip
                    name_at = top[0].taxon.name_at(level) if top and top[0].taxon else ""
                    if name_at.strip():  # a rank the catalog leaves empty: no prediction
                        lineage[level] = {"name": name_at, "score": round(top[0].score, 6)}
            return predictions, lineage

        predictions, lineage = await run_in_threadpool(predict)
        rows = [p.to_dict() for p in predictions]
        answer = {key: rows[0][key] for key in ANSWER_KEYS if rows and key in rows[0]}
        return {"predictions": rows, "ranks": lineage, "answer": answer,
                "views": len(file)}  # fmt: skip

    @app.get("/api/records/{image_id}")
    def record(image_id: int) -> dict:
        with lock.reading():
            rows = collection.store.rows([image_id])
        if image_id not in rows:
            raise ApiError(404, f"no image with id {image_id}")
        row = rows[image_id]
        for internal in ("shard", "shard_row"):
            row.pop(internal, None)
        row["path"] = display_path(row["uri"], source_roots(collection.store.runs()))
        row = _public(row)
        return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}

    @app.get("/api/thumbnails/{image_id}")
    def thumbnail(image_id: int, size: int = 256) -> Response:
        if not 16 <= size <= 1024:
            raise ApiError(400, "size must be between 16 and 1024")
        with lock.reading():
            rows = collection.store.rows([image_id])
        if image_id not in rows:
            raise ApiError(404, f"no image with id {image_id}")
        key = _file_identity(rows[image_id]["uri"], size)
        made = thumbnails.get(0, [key]).get(key) if key else None
        if made is None:
            made = _thumbnail(collection, rows[image_id], image_id, size)
            if key:
                thumbnails.put(0, {key: made})
        return Response(made, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/taxa")
    def taxa(prefix: str = "", limit: int = 20) -> dict:
        if not 1 <= limit <= 200:
            raise ApiError(400, "limit must be between 1 and 200")
        key = prefix.strip().lower()
        with lock.reading():
            try:
                names = collection.taxon_names()
            except BioindexError:
                names = []
        starts = [n for n in names if n[0].lower().startswith(key)]
        inside = [n for n in names if key in n[0].lower() and n not in starts]
        found = (starts + inside)[:limit]
        return {"taxa": [{"name": name, "rank": rank} for name, rank in found]}

    def duplicate_groups_at(threshold: float) -> list[list[DuplicateMember]]:
        """The groups at `threshold`, kept per generation. They are found on a store of
        their own, at the generation it opens at: the search takes about a minute per
        million images, and as a reader of the served store it would hold up every request
        behind the next move to a newer generation for as long."""
        with lock.reading():
            generation = collection.store.generation()
        with finding_duplicates:  # a second caller waits for the first one's answer
            found = duplicate_groups.get(generation, [threshold]).get(threshold)
            if found is None:
                with Store.open(collection.store.path, read_only=True) as pinned:
                    at = pinned.generation()
                    found = _largest_first(find_duplicates(pinned, threshold))
                duplicate_groups.put(at, {threshold: found})  # kept if still current
        return found

    def prepare_head(method: str) -> None:
        """The store's few-shot head trained (or found cached) on a store of its own, as
        the duplicates are: training takes minutes on a large labelled store, and as a
        reader of the served store it held every request behind the next move to a newer
        generation. The served store is then handed the head (where the store's cache of
        heads cannot be written, it trained it a second time)."""
        generation = collection.store.generation()
        if (generation, method) in heads_ready:
            return
        with preparing_heads:
            if (generation, method) not in heads_ready:
                with Store.open(collection.store.path, read_only=True) as pinned:
                    collection.use_head(method, store_head(pinned, method), pinned.generation())
                heads_ready.add((generation, method))

    @app.get("/api/duplicates")
    def duplicates(threshold: float = 0.95, offset: int = 0, limit: int = 20) -> dict:
        """Groups of near-duplicate images, as `bioindex dedup` finds them: each an anchor,
        its exact copies and the images whose cosine to it reaches `threshold`; the groups
        with most images first. Found on the first call for a threshold (about a minute per
        million images on two cores), then paged from memory until the store changes."""
        if not 0.5 <= threshold <= 1.0:
            raise ApiError(400, "threshold must be between 0.5 and 1")
        if offset < 0 or not 1 <= limit <= MAX_GROUPS_PAGE:
            raise ApiError(400, f"offset must be 0 or more and limit between 1 and "
                                f"{MAX_GROUPS_PAGE}")  # fmt: skip
        key = round(threshold, 4)
        groups = duplicate_groups_at(key)
        page = groups[offset : offset + limit]
        with lock.reading():
            rows = collection.store.rows([m.image_id for group in page for m in group])
        return {
            "threshold": key, "groups": len(groups),
            "images": sum(len(group) for group in groups), "offset": offset,
            "results": [{"group": group[0].group, "images": len(group),
                         "members": [_duplicate_json(m, rows.get(m.image_id, {}))
                                     for m in group]}
                        for group in page],
        }  # fmt: skip

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        return metrics.text()

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        index = STATIC / "index.html"
        if not index.is_file():
            return PlainTextResponse("bioindex API: see /docs", status_code=200)
        return FileResponse(index, media_type="text/html")

    @app.get("/page.js", include_in_schema=False)
    def page_script() -> Response:
        return FileResponse(STATIC / "page.js", media_type="text/javascript")

    @app.get("/favicon.ico", include_in_schema=False)
    def icon() -> Response:
        # Every browser asks for one: a 404 here was an error in the page's console on
        # every load, where a curator looking for what went wrong would find it.
        return Response(FAVICON, media_type="image/svg+xml",
                        headers={"Cache-Control": "max-age=86400"})  # fmt: skip

    app.state.collection = collection
    return app


FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
           b'<circle cx="8" cy="8" r="7" fill="#2f6b46"/></svg>')


def _workbook_upload_text(data: bytes) -> str:
    """An uploaded workbook's first sheet as text: openpyxl reads files, so it goes through
    one that is gone when read."""
    import tempfile

    from bioindex.tables import workbook_text

    with tempfile.NamedTemporaryFile(suffix=".xlsx") as file:
        file.write(data)
        file.flush()
        try:
            return workbook_text(Path(file.name))
        except BioindexError as exc:
            raise ApiError(400, "species list: " + str(exc).replace(file.name, "upload")) from None


def _describe(errors: Any) -> str:
    """FastAPI's validation errors as one sentence: where, and what was wrong."""
    parts = []
    for error in list(errors)[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",)) or "body"
        parts.append(f"{where}: {str(error.get('msg', 'invalid')).lower()}")
    return "; ".join(parts) or "invalid request"


PAGE_FILTER_COLUMNS = ("institution_code", "country_code")


def _public_info(data: dict[str, Any]) -> dict[str, Any]:
    """`info` as a client sees it: where this server keeps its store, model and indexed
    folders is not the client's business (a folder by its name, a URL as it is)."""
    data = {k: v for k, v in data.items() if k not in ("store", "model_source")}
    model = str(data.get("model") or "")
    if model.startswith("local-dir:"):  # hf-hub:ORG/REPO and architectures name no path
        folder = model.removeprefix("local-dir:").rstrip(os.sep)
        data["model"] = "local-dir:" + os.path.basename(folder)
    if isinstance(data.get("last_run"), dict):
        sources = [s if is_remote(str(s)) else os.path.basename(str(s).rstrip(os.sep))
                   for s in data["last_run"].get("sources") or ()]  # fmt: skip
        data["last_run"] = {**data["last_run"], "sources": sources}
    return data


def _private_paths(collection: Collection) -> dict[str, str]:
    """Where this server keeps its store and model, each with what an error says instead
    (the messages are written for the store's owner at a terminal: "the catalog of
    /srv/… names no taxa")."""
    store = str(collection.store.path)
    said = {os.path.abspath(store): "this store", os.path.realpath(store): "this store"}
    if os.sep in store:  # a bare name ("serve -s store") is a word in every message, no path
        said[store] = "this store"
    for key in ("name", "source", "checkpoint"):  # hf-hub:ORG/REPO names no path
        value = str(collection.store.model.get(key) or "").removeprefix("local-dir:")
        if os.path.isabs(value):
            value = value.rstrip(os.sep)
            said[value] = said[os.path.realpath(value)] = os.path.basename(value)
    return said


def _without(private: dict[str, str], message: str) -> str:
    for path in sorted(private, key=len, reverse=True):  # a path inside another goes first
        message = message.replace(path, private[path])
    return message


def _public(row: dict[str, Any]) -> dict[str, Any]:
    """A row as a client sees it: a local file by its path from the indexed folder, never
    by where it lies on this server; media URLs as they are."""
    if row.get("uri") and not is_remote(str(row["uri"])):
        row = {k: v for k, v in row.items() if k != "uri"}
    return row


def _largest_first(members: list[DuplicateMember]) -> list[list[DuplicateMember]]:
    groups: dict[int, list[DuplicateMember]] = {}
    for member in members:
        groups.setdefault(member.group, []).append(member)
    return sorted(groups.values(), key=lambda group: (-len(group), group[0].group))


def _duplicate_json(member: DuplicateMember, row: dict[str, Any]) -> dict[str, Any]:
    """A group's member as a client sees it, with the names a card shows."""
    shown = {key: row[key] for key in ("scientific_name", "catalog_number", "institution_code")
             if row.get(key)}  # fmt: skip
    return _public({**member.to_dict(), **shown})


def _prepare_upload(collection: Collection, data: bytes, max_pixels: int) -> Any:
    try:
        return collection.image_pixels(data, max_pixels)
    except ImageTooLarge as exc:
        raise ApiError(413, exc.message) from exc
    except BioindexError as exc:
        raise ApiError(415, exc.message) from exc


def _thumbnail(collection: Collection, row: dict, image_id: int, size: int) -> bytes:
    """A JPEG of the stored image, at most `size` pixels a side."""
    from bioindex.images import open_image

    data = image_bytes(collection.store.path, row)
    if data is None:
        raise ApiError(404, f"the file of image {image_id} is no longer readable")
    try:
        image = open_image(data, draft=(size, size))
    except Exception as exc:
        raise ApiError(404, f"the file of image {image_id} no longer decodes") from exc
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def _file_identity(uri: str, size: int) -> tuple | None:
    """A plain local file's thumbnail key (its path, size and mtime as they are now: a file
    changed since is shrunk again); None for remote and archived images."""
    if is_remote(uri) or member_of(uri) is not None:
        return None
    try:
        info = os.stat(uri)
    except OSError:
        return None
    return uri, info.st_size, info.st_mtime_ns, size


