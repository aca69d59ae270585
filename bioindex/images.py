"""Turning image bytes into upright RGB pictures, whatever mode the file was saved in."""

from __future__ import annotations

import io
import math
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, features

from bioindex.errors import BioindexError, ImageTooLarge

# iPhones save HEIC by default, so a folder of field photos is often all .heic; Pillow reads
# it through pillow-heif's opener, and AVIF itself where it was built with libavif (11.3+).
pillow_heif.register_heif_opener()
# Pillow refuses any image over 2 x Image.MAX_IMAGE_PIXELS (179 MP) from its header, as a
# decompression bomb, and warns past half that. A herbarium sheet scanned at 1200 dpi is
# ~270 MP: it was refused, though a JPEG decodes at 1/2, 1/4 or 1/8 scale (Image.draft), a
# JPEG 2000 at any of the lower resolutions it holds and a pyramidal TIFF from a smaller
# page, in a fraction of the memory. So the guard is bioindex's own (`bounded_load`): no
# image is decoded to more than DECODE_PIXELS; one of those over it is decoded at the least
# reduced scale under it, any other format over it is refused. Pillow's check is moved out
# of the way up to JPEG's own limit (65535 x 65535); every decode here goes through ours.
DECODE_PIXELS = 2 * 89_478_485
REDUCED_SCALES = (2, 4, 8, 16, 32)
if Image.MAX_IMAGE_PIXELS is not None:  # (None: a host program turned the check off)
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, 65535 * 65535 // 2 + 1)
# JPEG 2000: the masters of many herbaria and libraries, and what IIIF image servers keep.
JPEG2000_SUFFIXES = (frozenset({".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx"})
                     if features.check("jpg_2000") else frozenset())  # fmt: skip
TIFF_LEVELS = 16  # pages of a pyramidal TIFF looked at: 1/2 to 1/32768
JPEG2000_HEAD = 1 << 16  # bytes read to find a codestream's COD marker (after any jp2 boxes)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif",
                              ".heic", ".heif"} | ({".avif"} if features.check("avif") else set())
                             | JPEG2000_SUFFIXES)  # fmt: skip


# Pictures and films a camera makes that are not read: a folder of them is worth a word
# rather than silence (a camera trap's videos, a photographer's raw files).
UNREAD_MEDIA = frozenset({
    ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".orf", ".rw2",
    ".raf", ".pef", ".srw", ".x3f", ".3fr", ".erf", ".kdc", ".mrw", ".rwl", ".iiq", ".jp2",
    ".jxl", ".psd", ".svg", ".avif", ".mp4", ".mov", ".avi", ".mkv", ".m4v", ".mts", ".wmv",
    ".3gp"} - IMAGE_EXTENSIONS)  # fmt: skip


def walk_images(root: Path, unread: Counter[str] | None = None) -> Iterator[Path]:
    """The image files under a folder (by extension; hidden ones and anything not a regular
    file left out), in path order. `unread` counts the left-out files of UNREAD_MEDIA kinds
    by extension."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            suffix = Path(name).suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                path = Path(directory) / name
                if _regular(path):  # a FIFO or device named *.jpg would hang the reader
                    yield path
            elif unread is not None and suffix in UNREAD_MEDIA:
                unread[suffix] += 1


def unread_note(unread: Counter[str]) -> str:
    """One line on the media files folders hold that were not read."""
    kinds = ", ".join(f"{suffix} ({count})" for suffix, count in unread.most_common(5))
    return (f"left out {sum(unread.values())} files that bioindex does not read: "
            f"{kinds} (camera raw, video or another format; convert photos to JPEG, PNG or "
            f"TIFF to index them)")


def image_files(path: str | os.PathLike[str]) -> list[Path]:
    """The image files a path names: itself, or those under a folder, in path order."""
    root = Path(path)
    if root.is_dir():
        return list(walk_images(root))
    if not root.is_file():
        raise BioindexError(f"{path} is not a file or folder")
    return [root]


def expand_folders(paths: Iterable[str | os.PathLike[str]]) -> list[str | os.PathLike[str]]:
    """Each path as given, but a folder as the image files under it (in path order): what
    `classify photos/` means. Missing paths stay, for the caller to report."""
    return [file for path in paths
            for file in (walk_images(Path(path)) if Path(path).is_dir() else [path])]


def not_an_image_file(path: str | os.PathLike[str]) -> BioindexError:
    """The error for a query image that is not a readable file."""
    if Path(path).expanduser().is_dir():
        return BioindexError(f"image {path} is a folder; give an image file")
    return BioindexError(f"image {path} does not exist")


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
# PIL names the file it failed on by the handle's repr: "<_io.BytesIO object at 0x…>", or
# "<_io.BufferedReader name='a.jpg'>" for an opened path.
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ (?:object at 0x[0-9a-fA-F]+|name=[^>]*)>")


def names_a_picture(word: str) -> bool:
    """Whether a search box's `word` is a picture to search with, not text: a name ending
    like an image file, there or not (a mistyped path searched as text answered with
    look-alikes of the file's name instead of an error), unless it has spaces and no such
    file ("a photo of a cat.jpg"); or a path to a folder (image search says it is one)."""
    path = Path(word)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return not any(c.isspace() for c in word) or path.is_file()
    return ("/" in word or os.sep in word) and path.is_dir()


def describe_error(exc: BaseException) -> str:
    """A decode failure in words: its kind and message, without the object reprs PIL puts
    in ("cannot identify image file <_io.BytesIO object at 0x…>")."""
    message = _OBJECT_REPR.sub("", str(exc)).strip() or "no details"
    return f"{type(exc).__name__}: {message.splitlines()[0]}"


def open_image(source: bytes | str | Path, *, max_pixels: int | None = None,
               draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode fully (so truncation is an error here, not later) and return upright RGB.

    `max_pixels`: decode to no more than this (and never more than DECODE_PIXELS): a JPEG,
    JPEG 2000 or pyramidal TIFF over it at reduced scale, anything else refused
    (ImageTooLarge) from its header, before any decoding (`bounded_load`).
    `draft`: let such an image decode at a reduced scale still at least this size, and a
    HEIC give its own thumbnail where it holds one that large (thumbnails)."""
    if draft is not None and isinstance(source, bytes) and pillow_heif.is_supported(source):
        small = _heif_thumbnail(source, max(draft))
        if small is not None:
            return to_rgb(small)
    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    with stream:
        image = Image.open(stream)
        if draft is not None:
            decode_smaller(image, draft, "RGB")
        bounded_load(image, max_pixels)
    image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def bounded_load(image: Image.Image, max_pixels: int | None = None) -> None:
    """Decode an opened image to at most `max_pixels` (never more than DECODE_PIXELS): a
    JPEG, JPEG 2000 or pyramidal TIFF over it at a reduced scale (on top of any already asked
    for), anything else refused (ImageTooLarge) before decoding."""
    cap = DECODE_PIXELS if max_pixels is None else min(max_pixels, DECODE_PIXELS)
    width, height = image.size
    if width * height > cap:
        scale = next((s for s in REDUCED_SCALES
                      if -(-width // s) * -(-height // s) <= cap), 0)  # fmt: skip
        if scale:
            width, height = decode_smaller(image, (width // scale, height // scale), image.mode)
    if width * height > cap:
        raise ImageTooLarge(f"image of {width}x{height} pixels is over the {cap / 1e6:.3g} MP "
                            f"cap on one decode (a decompression bomb guard; a JPEG, JPEG 2000 "
                            f"or pyramidal TIFF is read at reduced scale past it: `vips "
                            f"tiffsave IN OUT.tif --tile --pyramid` makes one)")  # fmt: skip
    image.load()


def decode_smaller(image: Image.Image, size: tuple[int, int], mode: str | None = None
                   ) -> tuple[int, int]:  # fmt: skip
    """Let the decoder leave out detail, keeping at least `size` (width, height) where the
    format allows: a JPEG at 1/2-1/8 scale (Image.draft), a pyramidal TIFF from a smaller
    page, a JPEG 2000 at a lower resolution its codestream holds; other formats decode in
    full. The size the decode will have (a JPEG 2000 says its own only once loaded)."""
    if image.format in ("JPEG", "MPO"):
        image.draft(mode, size)
    elif image.format == "TIFF":
        image.seek(tiff_level(image, size))
    elif image.format == "JPEG2000":
        n = jpeg2000_reduction(image, size)
        image.reduce = n  # type: ignore[method-assign]
        half = 1 << n >> 1
        return (image.width + half) >> n, (image.height + half) >> n
    return image.size


def tiff_level(image: Image.Image, size: tuple[int, int]) -> int:
    """The page of a pyramidal TIFF (an IIIF server's master: the picture again at 1/2,
    1/4, … on the following pages) with the fewest pixels still at least `size`; only pages
    the shape of the first count, so a TIFF of several pictures stays on its first. Only
    the first TIFF_LEVELS pages are looked at: a stranger's file may chain a million."""
    image.seek(0)
    width, height = image.size
    best, fewest = 0, width * height
    for page in range(1, TIFF_LEVELS):
        try:
            image.seek(page)
        except EOFError:
            break
        w, h = image.size
        if abs(w * height - h * width) <= max(width, height) and w >= size[0] \
                and h >= size[1] and w * h < fewest:  # fmt: skip
            best, fewest = page, w * h
    return best


def jpeg2000_reduction(image: Image.Image, size: tuple[int, int]) -> int:
    """How many times a JPEG 2000 may be halved while decoding and still be at least `size`:
    no more than the wavelet levels its codestream has, and only where Pillow's idea of the
    reduced size (rounded) is OpenJPEG's (ceiling) — where they differ (802 px at 1/8:
    100 against 101) the decode fails as "broken data stream"."""
    width, height = image.size
    best = 0
    for n in range(1, jpeg2000_levels(image) + 1):
        ceil_w, ceil_h = -(-width // (1 << n)), -(-height // (1 << n))
        if ceil_w < size[0] or ceil_h < size[1]:
            break
        half = 1 << n >> 1
        if ((width + half) >> n, (height + half) >> n) == (ceil_w, ceil_h):
            best = n
    return best


def jpeg2000_levels(image: Image.Image) -> int:
    """The decomposition levels of an opened JPEG 2000 (its codestream's COD marker), 0 when
    not found: how often it can be halved while decoding."""
    stream = image.fp
    if stream is None:
        return 0
    at = stream.tell()
    stream.seek(0)
    head = stream.read(JPEG2000_HEAD)
    stream.seek(at)
    p = head.find(b"\xff\x4f\xff\x51")  # SOC then SIZ: the main header's start
    if p < 0:
        return 0
    p += 2
    while p + 10 <= len(head) and head[p] == 0xFF and head[p + 1] != 0x90:  # SOT: tiles
        if head[p + 1] == 0x52:  # COD: Lcod, Scod, progression, layers (2), MCT, levels
            return head[p + 9]
        p += 2 + int.from_bytes(head[p + 2 : p + 4], "big")
    return 0


def _heif_thumbnail(data: bytes, box: int) -> Image.Image | None:
    """The smallest thumbnail a HEIF file holds that still fills `box` (a phone's HEIC
    carries one: decoded in ~6 ms where the 12 MP picture takes ~400), or None."""
    try:
        heif = pillow_heif.open_heif(io.BytesIO(data))
        boxes = list(heif.info.get("thumbnails") or [])
        fitting = [i for i, side in enumerate(boxes) if side >= box]
        if not fitting:
            return None
        index = min(fitting, key=lambda i: boxes[i])
        return heif[heif.primary_index].get_thumbnail(index).to_pillow()
    except Exception:  # a damaged thumbnail: the picture itself is decoded instead
        return None


def to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        # PIL's own convert clips 16/32-bit values at 255, which turns most scans white.
        return Image.fromarray(_to_uint8(np.asarray(image), mode)).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent cut-outs (common for specimen photos) go on white, not on the
        # undefined colour hidden under alpha, which is often black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    values = array.astype(np.float64)
    if mode in _SIXTEEN_BIT_MODES:
        scaled = values / 257.0
    else:
        top = float(values.max()) if values.size else 0.0
        scaled = values if top <= 255.0 else values * (255.0 / top)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# EXIF tags (Exif 2.32): the Exif and GPS sub-IFDs, when a picture was taken, and where.
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_TAKEN, _DIGITIZED, _TAKEN_OFFSET = 0x9003, 0x9004, 0x9011
_EXIF_DATE = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_UTC_OFFSET = re.compile(r"^[+-]\d{2}:\d{2}$")


def photo_facts(image: Image.Image) -> dict[str, Any]:
    """What a camera wrote in a photo's EXIF, as Darwin Core: eventDate (when it was taken,
    with its UTC offset when the camera gave one) and decimalLatitude/decimalLongitude
    (from its GPS). Camera traps stamp the time, phones also the place; a plain folder of
    their photos is then searchable by date and place with no metadata file. Anything
    missing, malformed or impossible (a date of zeros, a fix at 0,0) is left out."""
    try:
        exif = image.getexif()
        facts: dict[str, Any] = {}
        taken = exif.get_ifd(_EXIF_IFD)
        stamp = _EXIF_DATE.match(str(taken.get(_TAKEN) or taken.get(_DIGITIZED) or ""))
        if stamp and stamp[1] != "0000" and "01" <= stamp[2] <= "12" and stamp[3] != "00":
            offset = str(taken.get(_TAKEN_OFFSET) or "").strip()
            facts["eventDate"] = ("{}-{}-{}T{}:{}:{}".format(*stamp.groups())
                                  + (offset if _UTC_OFFSET.match(offset) else ""))  # fmt: skip
        gps = exif.get_ifd(_GPS_IFD)
        lat = _degrees(gps.get(2), gps.get(1), "S", 90.0)
        lon = _degrees(gps.get(4), gps.get(3), "W", 180.0)
        if lat is not None and lon is not None and (lat, lon) != (0.0, 0.0):
            facts["decimalLatitude"], facts["decimalLongitude"] = lat, lon
        return facts
    except Exception:  # a stranger's EXIF: whatever is wrong with it, the photo still counts
        return {}


def quiet_image_warnings() -> None:
    """Pillow's own warnings about a file's damaged metadata ("Tag data larger than
    file", "Corrupt EXIF data") off in this process: indexing a stranger's collection
    printed a traceback-like pair of lines per damaged photo, which was decoded anyway.
    (A decompression bomb warns as a RuntimeWarning, which stays.)"""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


def photo_facts_of(data: bytes) -> dict[str, Any]:
    """photo_facts of an image's bytes, from its header alone (nothing is decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return photo_facts(image)
    except Exception:  # not an image Pillow opens: no facts, the decode stage will say why
        return {}


def _degrees(value: Any, ref: Any, negative: str, bound: float) -> float | None:
    """Degrees, minutes, seconds (EXIF rationals) and a hemisphere letter, as a signed
    decimal degree within ±bound; None when not all there."""
    if not value or len(value) != 3 or not ref:
        return None
    degrees, minutes, seconds = (float(part) for part in value)
    decimal = degrees + minutes / 60 + seconds / 3600
    if str(ref).strip().upper().startswith(negative):
        decimal = -decimal
    return round(decimal, 7) if math.isfinite(decimal) and abs(decimal) <= bound else None
