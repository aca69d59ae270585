"""Procedural pictures of the synthetic species: traits from the taxonomy, everything else random.

An organism is drawn facing right on its own transparent sprite (body shape, colour, pattern
clipped to the body, species detail), then flipped, rotated, scaled and placed on a noisy
background. Random pose, size, position, background, lighting and noise; deterministic from
the numpy Generator passed in.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from bioindex.demo.tree import SPECIES, Species

SPRITE = 96
CANVAS = 128


def _shape_points(shape: str) -> list[tuple[float, float]]:
    c = SPRITE / 2
    if shape == "oval":
        return [(c + 34 * math.cos(t), c + 21 * math.sin(t))
                for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]  # fmt: skip
    if shape == "triangle":
        return [(c + 36, c), (c - 30, c - 30), (c - 30, c + 30)]
    if shape == "star":
        points = []
        for i in range(10):
            radius = 37 if i % 2 == 0 else 16
            angle = i * math.pi / 5
            points.append((c + radius * math.cos(angle), c + radius * math.sin(angle)))
        return points
    if shape == "diamond":
        return [(c + 38, c), (c, c - 25), (c - 38, c), (c, c + 25)]
    raise ValueError(shape)


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue % 360) / 360, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def _pattern_layer(pattern: str, points, dark, rng: np.random.Generator) -> Image.Image:
    layer = Image.new("RGBA", (SPRITE, SPRITE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if pattern == "striped":
        phase = rng.uniform(0, 10)
        for x in np.arange(-10 + phase, SPRITE, 11):
            draw.rectangle((x, 0, x + 4.5, SPRITE), fill=dark)
    elif pattern == "spotted":
        for gx in range(6, SPRITE, 13):
            for gy in range(6, SPRITE, 13):
                x, y = gx + rng.uniform(-2, 2), gy + rng.uniform(-2, 2)
                draw.ellipse((x - 3.5, y - 3.5, x + 3.5, y + 3.5), fill=dark)
    elif pattern == "ringed":
        c = SPRITE / 2
        for scale in (0.72, 0.42):
            ring = [(c + (x - c) * scale, c + (y - c) * scale) for x, y in points]
            draw.polygon(ring, outline=dark, width=4)
    return layer


def _detail(draw: ImageDraw.ImageDraw, detail: str, shape: str) -> None:
    c = SPRITE / 2
    front = {"oval": 30, "triangle": 22, "star": 14, "diamond": 26}[shape]
    if detail == "eye":
        x, y = c + front - 8, c - 6
        draw.ellipse((x - 7, y - 7, x + 7, y + 7), fill=(255, 255, 255, 255),
                     outline=(0, 0, 0, 255), width=2)  # fmt: skip
        draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=(0, 0, 0, 255))
    elif detail == "antennae":
        base = c + front - 4
        for dy in (-1, 1):
            draw.line((base, c + 4 * dy, SPRITE - 3, c + 26 * dy), fill=(20, 20, 20, 255), width=4)
            draw.ellipse((SPRITE - 8, c + 26 * dy - 5, SPRITE - 1, c + 26 * dy + 2),
                         fill=(20, 20, 20, 255))  # fmt: skip
    elif detail == "tail":
        draw.polygon([(c - 20, c), (2, c - 17), (2, c + 17)], fill=(20, 20, 20, 255))


def draw_sprite(species: Species, rng: np.random.Generator) -> Image.Image:
    """The organism facing right on a transparent square."""
    points = _shape_points(species.shape)
    hue = species.hue + rng.uniform(-6, 6)
    saturation, value = rng.uniform(0.7, 0.95), rng.uniform(0.72, 0.95)
    body_colour = _rgb(hue, saturation, value)
    dark = (*_rgb(hue, saturation, value * 0.32), 255)

    sprite = Image.new("RGBA", (SPRITE, SPRITE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(sprite)
    if species.detail == "tail":  # behind the body
        _detail(draw, "tail", species.shape)
    mask = Image.new("L", (SPRITE, SPRITE), 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    body = Image.new("RGBA", (SPRITE, SPRITE), (*body_colour, 255))
    body.alpha_composite(_pattern_layer(species.pattern, points, dark, rng))
    sprite.paste(body, (0, 0), mask)
    ImageDraw.Draw(sprite).polygon(points, outline=dark, width=2)
    if species.detail != "tail":
        _detail(ImageDraw.Draw(sprite), species.detail, species.shape)
    return sprite


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    top = rng.uniform(0, 1, 3) * 0.5 + 0.45
    bottom = np.clip(top + rng.uniform(-0.25, 0.25, 3), 0, 1)
    ramp = np.linspace(0, 1, size)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp) * 255
    pixels = np.broadcast_to(pixels, (size, size, 3)).copy()
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 6))):  # clutter: grey pebbles and twigs
        grey = int(rng.integers(90, 200))
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(2, 9)
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(grey, grey, grey - 10))
        else:
            draw.line((x, y, x + rng.uniform(-25, 25), y + rng.uniform(-25, 25)),
                      fill=(grey - 30, grey - 40, grey - 50), width=2)  # fmt: skip
    return image


def draw_empty_frame(rng: np.random.Generator, size: int = CANVAS) -> Image.Image:
    """A background with no organism on it: a camera trap's empty frame."""
    return _background(rng, size)


def draw_organism(species: Species, rng: np.random.Generator, size: int = CANVAS) -> Image.Image:
    """One photo-like picture of `species`: random pose, size, place, background, noise."""
    return photograph(draw_sprite(species, rng), rng, size)


def draw_views(species: Species, rng: np.random.Generator, views: int, size: int = CANVAS
               ) -> list[Image.Image]:  # fmt: skip
    """Several pictures of one specimen (one sprite: the same hue, shade and pattern
    phase), each with its own pose, background, light and noise."""
    sprite = draw_sprite(species, rng)
    return [photograph(sprite, rng, size) for _ in range(views)]


def photograph(sprite: Image.Image, rng: np.random.Generator, size: int = CANVAS) -> Image.Image:
    """The organism's sprite posed on a noisy background."""
    if rng.random() < 0.5:
        sprite = sprite.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    sprite = sprite.rotate(rng.uniform(0, 360), resample=Image.Resampling.BICUBIC, expand=True)
    scale = rng.uniform(0.55, 0.95) * size / SPRITE
    side = max(8, int(sprite.width * scale))
    sprite = sprite.resize((side, side), Image.Resampling.BICUBIC)
    canvas = _background(rng, size)
    margin = side // 4
    x = int(rng.integers(-margin, max(-margin + 1, size - side + margin)))
    y = int(rng.integers(-margin, max(-margin + 1, size - side + margin)))
    canvas.paste(sprite, (x, y), sprite)
    if rng.random() < 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    light = Image.new("RGB", canvas.size, tuple(int(v) for v in rng.integers(0, 30, 3)))
    canvas = ImageChops.add(canvas, light) if rng.random() < 0.5 else canvas
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels += rng.normal(0, rng.uniform(2, 9), pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_dataset(
    per_species: int, seed: int, size: int = CANVAS, species: tuple[Species, ...] = SPECIES
) -> list[tuple[Species, Image.Image]]:
    """`per_species` pictures of every species, deterministic from `seed`."""
    rng = np.random.default_rng(seed)
    return [(s, draw_organism(s, rng, size)) for s in species for _ in range(per_species)]


def contact_sheet(path: str | Path, seed: int = 0, columns: int = 12) -> None:
    """All species side by side (one picture each): for eyeballing the traits."""
    pictures = draw_dataset(1, seed)
    rows = math.ceil(len(pictures) / columns)
    sheet = Image.new("RGB", (columns * CANVAS, rows * CANVAS), "white")
    for i, (_, image) in enumerate(pictures):
        sheet.paste(image, ((i % columns) * CANVAS, (i // columns) * CANVAS))
    sheet.save(path)
