"""Remote media: fetched under a URL policy, into a cache keyed by URL, while embedding runs.

Media URLs come from archives and manifests written by other people, so a fetch is held to
a policy: http and https only; the host is resolved once and every address must be public
(no loopback, private, link-local, shared, multicast, reserved or unspecified address)
unless private URLs are allowed (a museum's intranet media server is a real case); the
connection goes to the very address that was checked, so a second DNS answer cannot swap it
(DNS rebinding), and every redirect hop is checked the same way. A file has one deadline for
all its attempts and redirects, a size cap, and is kept only when it is an image by its
Content-Type or by its first bytes. A failure says "could not connect" whether a port was
closed or a host unreachable, so failures do not map someone's network.

Each URL is fetched at most once per cache: a rerun (or a thumbnail request) reads the
cached file.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_TIMEOUT = 20.0
DEFAULT_CONCURRENCY = 8
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 1 << 16
# The first bytes of the formats PIL reads for us (checked when Content-Type does not say).
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*",
          b"BM", b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")  # fmt: skip
# HEIF (a phone's HEIC) and AVIF: an ISO box "ftyp" whose major brand says which.
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1",
                b"avif", b"avis")  # fmt: skip


def looks_like_image(head: bytes) -> bool:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return True
    return head.startswith(_MAGIC)


@dataclass(frozen=True)
class FetchPolicy:
    """How media URLs are fetched. `timeout` is the whole deadline of one file: every
    attempt, redirect and byte of it."""

    timeout: float = DEFAULT_TIMEOUT
    max_bytes: int = DEFAULT_MAX_BYTES
    allow_private: bool = False
    max_redirects: int = 5
    retries: int = 2


class Refused(ValueError):
    """The policy does not allow this URL (not retried)."""


class _Status(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(f"HTTP {code} {reason}".strip())
        self.code = code


@dataclass
class Fetched:
    url: str
    path: Path | None = None
    error: str | None = None
    downloaded: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)  # learnt on the way (IIIF labels)


class MediaCache:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def path_for(self, url: str) -> Path:
        digest = hashlib.sha256(url.encode()).hexdigest()
        return self.root / digest[:2] / digest

    def cached(self, url: str) -> Path | None:
        path = self.path_for(url)
        return path if path.is_file() else None

    def sweep(self) -> int:
        """Delete partial downloads. Only the store's one writer downloads, so at the start
        and end of its run every .tmp file is left over from a run that was killed."""
        removed = 0
        for tmp in self.root.glob("*/*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
        return removed


def public_addresses(host: str, port: int, allow_private: bool = False) -> list[str]:
    """The addresses `host` resolves to; Refused when any of them is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise OSError("host not found") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not is_public(getattr(ip, "ipv4_mapped", None) or ip):
                raise Refused(f"refused: {host} is not a public address; --allow-private-urls "
                              f"fetches from private networks")  # fmt: skip
    return addresses


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Routable on the internet: not loopback, private, link-local (cloud metadata at
    169.254.169.254), shared, reserved, unspecified or multicast."""
    return ip.is_global and not ip.is_multicast


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the address that was checked, whatever the name resolves to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


Opened = tuple[http.client.HTTPConnection, socket.socket, http.client.HTTPResponse]


def _open(url: str, policy: FetchPolicy, deadline: float, accept: str = "image/*") -> Opened:
    """A 2xx response for `url` (with its connection and socket), every redirect hop held
    to the policy."""
    for _ in range(policy.max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise Refused(f"refused: {parts.scheme or 'no'} scheme (http and https only)")
        if not parts.hostname:
            raise Refused("refused: the URL names no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = public_addresses(parts.hostname, port, policy.allow_private)[0]
        kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        connection = kind(parts.hostname, port, address, _left(deadline))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", target, headers={"User-Agent": "bioindex (media fetch)",
                                                   "Accept": accept})  # fmt: skip
        # Kept: a response that closes the connection takes the socket from `connection`.
        sock = connection.sock
        response = connection.getresponse()
        if response.status in _REDIRECTS:
            location = response.getheader("Location")
            connection.close()
            if not location:
                raise _Status(response.status, "redirect without a Location")
            url = urljoin(url, location)
            continue
        if not 200 <= response.status < 300:
            connection.close()
            raise _Status(response.status, response.reason)
        return connection, sock, response
    raise Refused(f"refused: more than {policy.max_redirects} redirects")


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _download(url: str, target: Path, policy: FetchPolicy, deadline: float) -> None:
    connection, sock, response = _open(url, policy, deadline)
    try:
        kind = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        length = response.getheader("Content-Length") or ""
        if length.isdigit() and int(length) > policy.max_bytes:
            raise ValueError(f"too large: {int(length)} bytes (cap {policy.max_bytes})")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".{os.getpid()}.{threading.get_ident()}.tmp")
        size = 0
        try:
            with open(tmp, "wb") as handle:
                while True:
                    # read1 returns what one receive brings, so a server that drips a byte
                    # at a time cannot stretch a read past the deadline.
                    sock.settimeout(_left(deadline))
                    chunk = response.read1(_CHUNK)
                    if not chunk:
                        break
                    if size == 0 and not kind.startswith("image/") and not looks_like_image(chunk):
                        raise ValueError(f"not an image: Content-Type {kind or 'missing'} and "
                                         f"not an image format")  # fmt: skip
                    size += len(chunk)
                    if size > policy.max_bytes:
                        raise ValueError(f"too large: over {policy.max_bytes} bytes")
                    handle.write(chunk)
            if size == 0:
                raise ValueError("empty response")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        connection.close()


def fetch(url: str, cache: MediaCache, policy: FetchPolicy = FetchPolicy()) -> Fetched:
    cached = cache.cached(url)
    if cached is not None:
        return Fetched(url, cached)
    target = cache.path_for(url)
    deadline = time.monotonic() + policy.timeout
    error = "download failed"
    for attempt in range(policy.retries + 1):
        try:
            _download(url, target, policy, deadline)
            return Fetched(url, target, downloaded=True)
        except _Status as exc:
            error = str(exc)
            if exc.code < 500 and exc.code != 429:
                break  # the server has answered; asking again will not change it
        except (Refused, ValueError) as exc:
            error = str(exc)
            break
        except TimeoutError:
            error = f"timed out after {policy.timeout:g}s"
            break
        except (OSError, http.client.HTTPException) as exc:
            # Refused, reset and unreachable read the same: failures do not map ports.
            error = "host not found" if str(exc) == "host not found" else "could not connect"
        if attempt < policy.retries:
            pause = min(0.5 * 2**attempt, deadline - time.monotonic())
            if pause <= 0:
                error = f"timed out after {policy.timeout:g}s"
                break
            time.sleep(pause)
    return Fetched(url, error=error)


def read_json(url: str, policy: FetchPolicy, max_bytes: int = 4 << 20) -> Any:
    """A small JSON document (a IIIF manifest or info.json) under the same policy as media:
    public addresses only, one deadline, a size cap. Raises ValueError with the reason."""
    deadline = time.monotonic() + policy.timeout
    try:
        connection, sock, response = _open(url, policy, deadline,
                                           accept="application/ld+json, application/json")
        try:
            body = bytearray()
            while True:
                sock.settimeout(_left(deadline))
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    raise ValueError(f"larger than {max_bytes >> 20} MiB")
        finally:
            connection.close()
    except TimeoutError:
        raise ValueError(f"timed out after {policy.timeout:g}s") from None
    except _Status as exc:
        raise ValueError(str(exc)) from None
    except Refused as exc:
        raise ValueError(str(exc)) from None
    except (OSError, http.client.HTTPException):
        raise ValueError("could not connect") from None
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        raise ValueError("not JSON") from None


Getter = Callable[[str, "MediaCache", FetchPolicy], Fetched]


class Downloads:
    """Fetches URLs on a thread pool from the moment it is made, and hands the results
    over as they finish, so a slow server holds back only its own files. At most `window`
    results are in flight or waiting to be taken."""

    def __init__(self, urls: Sequence[str], cache: MediaCache, policy: FetchPolicy,
                 concurrency: int = DEFAULT_CONCURRENCY, window: int = 256,
                 get: Getter | None = None):  # fmt: skip
        self.total = len(urls)
        self._get = get or fetch
        self._done: queue.Queue[Fetched] = queue.Queue()
        self._slots = threading.BoundedSemaphore(max(window, concurrency))
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency),
                                        thread_name_prefix="bioindex-fetch")  # fmt: skip
        self._feeder = threading.Thread(target=self._feed, args=(list(urls), cache, policy),
                                        name="bioindex-fetch-feed", daemon=True)  # fmt: skip
        self._feeder.start()

    def _feed(self, urls: list[str], cache: MediaCache, policy: FetchPolicy) -> None:
        for url in urls:
            while not self._slots.acquire(timeout=0.2):
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                return
            self._pool.submit(self._one, url, cache, policy)

    def _one(self, url: str, cache: MediaCache, policy: FetchPolicy) -> None:
        try:
            result = self._get(url, cache, policy)
        except Exception as exc:  # noqa: BLE001 - a failed fetch is a result, never a crash
            result = Fetched(url, error=f"{type(exc).__name__}: {exc}")
        self._done.put(result)

    def waves(self, size: int, linger: float = 1.0) -> Iterator[list[Fetched]]:
        """The results in groups: at most `size`, or what has arrived once none came for
        `linger` seconds."""
        taken = 0
        while taken < self.total:
            wave = [self._done.get()]
            while len(wave) < size and taken + len(wave) < self.total:
                try:
                    wave.append(self._done.get(timeout=linger))
                except queue.Empty:
                    break
            for _ in wave:
                self._slots.release()
            taken += len(wave)
            yield wave

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
