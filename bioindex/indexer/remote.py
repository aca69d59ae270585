"""Remote media: concurrent, bounded downloads into a cache keyed by URL.

Each URL is fetched at most once per cache: a re-run (or a thumbnail request) reads the
cached file. A response is accepted only if it is 2xx, says it is an image (or generic
binary), and stays under the size cap; anything else is a failure with a reason.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_TIMEOUT = 20.0
DEFAULT_CONCURRENCY = 8
_ACCEPTED_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@dataclass
class Fetched:
    url: str
    path: Path | None = None
    error: str | None = None
    downloaded: bool = False


class MediaCache:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def path_for(self, url: str) -> Path:
        digest = hashlib.sha256(url.encode()).hexdigest()
        return self.root / digest[:2] / digest

    def cached(self, url: str) -> Path | None:
        path = self.path_for(url)
        return path if path.is_file() else None


def _download(url: str, target: Path, timeout: float, max_bytes: int) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "bioindex (media fetch)"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind and not kind.startswith(_ACCEPTED_TYPES):
            raise ValueError(f"not an image: Content-Type {kind}")
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise ValueError(f"too large: {int(length)} bytes (cap {max_bytes})")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
        size = 0
        try:
            with open(tmp, "wb") as handle:
                while chunk := response.read(1 << 16):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ValueError(f"too large: over {max_bytes} bytes")
                    handle.write(chunk)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def fetch(url: str, cache: MediaCache, *, timeout: float = DEFAULT_TIMEOUT,
          max_bytes: int = DEFAULT_MAX_BYTES, retries: int = 2) -> Fetched:  # fmt: skip
    cached = cache.cached(url)
    if cached is not None:
        return Fetched(url, cached)
    target = cache.path_for(url)
    error = ""
    for attempt in range(retries + 1):
        try:
            _download(url, target, timeout, max_bytes)
            return Fetched(url, target, downloaded=True)
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500 and exc.code != 429:
                break  # the server has answered; asking again will not change it
        except ValueError as exc:
            error = str(exc)
            break
        except (urllib.error.URLError, OSError) as exc:  # timeouts, refused, reset
            reason = getattr(exc, "reason", exc)
            error = f"{type(reason).__name__}: {reason}"
        if attempt < retries:
            time.sleep(0.5 * 2**attempt)
    return Fetched(url, error=error or "download failed")


def fetch_all(urls: Iterable[str], cache: MediaCache, *, concurrency: int = DEFAULT_CONCURRENCY,
              on_done: Callable[[Fetched], None] | None = None,
              **options: float) -> dict[str, Fetched]:  # fmt: skip
    unique = list(dict.fromkeys(urls))
    out: dict[str, Fetched] = {}
    if not unique:
        return out
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for result in pool.map(lambda u: fetch(u, cache, **options), unique):
            out[result.url] = result
            if on_done is not None:
                on_done(result)
    return out
