"""The demo world for identification: collection looks, home ranges, several views of one
specimen, and species held out of a store's labels (benchmarks/identify.py, tests).

- A *look* is how one collection's pictures differ from what the model was trained on: its
  light ("yellow-light": a warm lamp that dims green and blue) or its film ("slide-film": every
  hue turned 40°, as faded slides drift). The demo model reads family from colour, so a look
  misleads zero-shot while the collection's own labelled pictures share it.
- Each species lives in one of three regions; the three species of a genus (look-alikes that
  differ in one detail) live in three different ones.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageEnhance

from bioindex.demo.draw import draw_organism, draw_views
from bioindex.demo.tree import DETAILS, SPECIES, Species

LOOKS = ("true-colour", "yellow-light", "slide-film")
# (name, latitude, longitude): three far-apart home regions.
REGIONS = (("East Africa", -1.3, 36.8), ("Amazonia", -3.1, -60.0), ("Malay Peninsula", 3.1, 101.7))
CLOCK_START = datetime(2024, 5, 1, 6, 0, 0)  # a camera's first frame (write_world clock=)
RANGE_KM = 150.0  # records scatter this far (one standard deviation) from a region's centre


def apply_look(image: Image.Image, look: str) -> Image.Image:
    if look == "true-colour":
        return image
    if look == "yellow-light":
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) * np.array([1.0, 0.75, 0.45])
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if look == "slide-film":
        hsv = np.asarray(image.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(40 * 256 / 360)) % 256
        return Image.fromarray(hsv, "HSV").convert("RGB")
    raise ValueError(f"unknown look {look!r}; choose one of {', '.join(LOOKS)}")


def region_of(species: Species) -> tuple[str, float, float]:
    """The species' home region: the detail picks it, shifted by genus, so the three
    species of a genus never share one."""
    genus = SPECIES.index(species) // len(DETAILS)
    return REGIONS[(DETAILS.index(species.detail) + genus) % len(REGIONS)]


def place_in_range(species: Species, rng: np.random.Generator) -> tuple[float, float]:
    """A point scattered around the species' home region (degrees, rounded to 4 places)."""
    _, lat, lon = region_of(species)
    dlat = rng.normal(0, RANGE_KM) / 111.2
    dlon = rng.normal(0, RANGE_KM) / (111.2 * max(math.cos(math.radians(lat)), 0.1))
    return round(lat + dlat, 4), round(lon + dlon, 4)


def held_out_species(fraction: float = 0.2, seed: int = 0) -> list[Species]:
    """`fraction` of the species, at most one per genus (so every genus stays known)."""
    genera = len(SPECIES) // len(DETAILS)
    count = min(genera, round(fraction * len(SPECIES)))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(genera, count, replace=False)
    return [SPECIES[g * len(DETAILS) + int(rng.integers(len(DETAILS)))] for g in sorted(chosen)]


def held_out_genera(count: int = 3, seed: int = 0) -> list[Species]:
    """Every species of `count` genera, each from another family (so every family stays
    known)."""
    per_family = 2 * len(DETAILS)  # two genera of three species
    families = len(SPECIES) // per_family
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(families, min(count, families), replace=False))
    # One genus a family, drawn once: drawn per species, a family's three held-out species
    # came from both its genera, and neither genus was missing.
    starts = [f * per_family + int(rng.integers(2)) * len(DETAILS) for f in chosen]
    return [SPECIES[start + d] for start in starts for d in range(len(DETAILS))]


def draw_pictures(species: Sequence[Species], per_species: int, seed: int, look: str
                  ) -> list[tuple[Species, Image.Image]]:  # fmt: skip
    rng = np.random.default_rng(seed)
    return [(s, apply_look(draw_organism(s, rng), look)) for s in species
            for _ in range(per_species)]  # fmt: skip


def draw_specimens(species: Sequence[Species], per_species: int, views: int, seed: int,
                   look: str) -> list[tuple[Species, list[Image.Image]]]:  # fmt: skip
    """`per_species` specimens of each species, each seen `views` times."""
    rng = np.random.default_rng(seed)
    return [(s, [apply_look(v, look) for v in draw_views(s, rng, views)])
            for s in species for _ in range(per_species)]  # fmt: skip


def write_world(folder: str | os.PathLike[str], species: Sequence[Species], per_species: int,
                seed: int, look: str = "true-colour", frames: int = 1,
                clock: bool = False) -> Path:  # fmt: skip
    """Labelled pictures of `species` (in `look`) in folder/images, and folder/occurrences.csv
    with their names and a place in each species' home range. `frames` > 1: each picture is
    a camera trap's burst of that many frames (the scene shifted a few pixels and lit a
    little brighter or darker each frame), one record each, sharing an eventID; `clock`:
    sharing no identifier, only the time they were taken (2 s apart; bursts 5 minutes
    apart), as a table of an SD card's frames gives them."""
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    rows = []
    for number, (kind, picture) in enumerate(draw_pictures(species, per_species, seed, look)):
        lat, lon = place_in_range(kind, rng)
        taxon = kind.taxon
        for frame, image in enumerate(burst(picture, frames)):
            name = f"w{seed}-{number:05d}" + (f"-f{frame}" if frames > 1 else "") + ".png"
            image.save(root / "images" / name)
            together = (
                {"eventDate": (CLOCK_START + timedelta(minutes=5 * number, seconds=2 * frame))
                 .isoformat()} if clock else
                {"occurrenceID": f"urn:world:{seed}:{number}" + (f":{frame}" if frames > 1
                                                                   else "")})  # fmt: skip
            rows.append({"file": name, **together,
                         "scientificName": taxon.scientific_name, "kingdom": taxon.kingdom,
                         "phylum": taxon.phylum, "class": taxon.class_, "order": taxon.order,
                         "family": taxon.family, "genus": taxon.genus,
                         "specificEpithet": taxon.epithet, "vernacularName": taxon.common_name,
                         "decimalLatitude": lat, "decimalLongitude": lon,
                         **({"eventID": f"urn:world:{seed}:burst:{number}"}
                            if frames > 1 and not clock else {})})  # fmt: skip
    with open(root / "occurrences.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def burst(picture: Image.Image, frames: int) -> list[Image.Image]:
    """The picture, then frames − 1 more of the same scene: shifted 2 px right and 1 up per
    frame, and 4% brighter or darker by turns."""
    out = [picture]
    for frame in range(1, frames):
        moved = ImageChops.offset(picture, 2 * frame, -frame)
        out.append(ImageEnhance.Brightness(moved).enhance(1 + 0.04 * (-1) ** frame))
    return out
