"""A small, fixed, synthetic tree of life whose ranks decide what an organism looks like.

    kingdom  → body plan group      (Animalia: smooth shapes, Plantae: pointed shapes)
    order    → body shape           (oval, triangle, star, diamond)
    family   → body colour          (eight hues)
    genus    → surface pattern      (stripes, spots, rings, plain)
    species  → one detail           (an eye, antennae, a tail)

2 kingdoms, 2 phyla, 2 classes, 4 orders, 8 families, 16 genera, 48 species. The names are
invented (only the two kingdom names are real) and never change: the demo model was trained
on exactly this tree, so it is data, not a function of any seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from bioindex.taxonomy import Taxon

SHAPES = ("oval", "triangle", "star", "diamond")
PATTERNS = ("striped", "spotted", "ringed", "plain")
DETAILS = ("eye", "antennae", "tail")

# (kingdom, phylum, class, [(order, shape)])
_UPPER = (
    ("Animalia", "Pictozoa", "Formaria", (("Ovaliformes", "oval"), ("Trigoniformes", "triangle"))),
    ("Plantae", "Pictophyta", "Formopsida", (("Stellales", "star"), ("Rhombales", "diamond"))),
)
# family name, colour word, hue (degrees), genus stem — two families per order, in order.
_FAMILIES = (
    ("Rubridae", "red", 0, "Rubr"),
    ("Aurantidae", "orange", 30, "Aurant"),
    ("Flavidae", "yellow", 55, "Flav"),
    ("Viridae", "green", 120, "Virid"),
    ("Cyanaceae", "cyan", 180, "Cyan"),
    ("Caeruleaceae", "blue", 225, "Caerul"),
    ("Purpuraceae", "purple", 275, "Purpur"),
    ("Roseolaceae", "pink", 320, "Roseol"),
)
_GENUS_SUFFIX = {"striped": "ostria", "spotted": "opunctus", "ringed": "annulus",
                 "plain": "oplanus"}  # fmt: skip
_EPITHETS = {"eye": "oculatus", "antennae": "antennatus", "tail": "caudatus"}
_DETAIL_WORDS = {"eye": "white-eyed", "antennae": "horned", "tail": "tailed"}
_SHAPE_NOUNS = {"oval": "drop", "triangle": "wedge", "star": "starwort", "diamond": "lozenge"}


@dataclass(frozen=True)
class Species:
    taxon: Taxon
    shape: str
    colour: str
    hue: int
    pattern: str
    detail: str

    @property
    def name(self) -> str:
        return self.taxon.scientific_name


def _build() -> tuple[Species, ...]:
    species: list[Species] = []
    family_iter = iter(_FAMILIES)
    for kingdom, phylum, class_, orders in _UPPER:
        for order, shape in orders:
            for _ in range(2):
                family, colour, hue, stem = next(family_iter)
                # Each family gets two of the four patterns, rotating so every pattern appears
                # in several families (pattern alone must not give the family away).
                offset = (len(species) // 6) % 4
                for pattern in (PATTERNS[offset], PATTERNS[(offset + 2) % 4]):
                    genus = stem + _GENUS_SUFFIX[pattern]
                    for detail in DETAILS:
                        common = f"{_DETAIL_WORDS[detail]} {colour} {pattern} {_SHAPE_NOUNS[shape]}"
                        taxon = Taxon(kingdom, phylum, class_, order, family, genus,
                                      _EPITHETS[detail], common)  # fmt: skip
                        species.append(Species(taxon, shape, colour, hue, pattern, detail))
    return tuple(species)


SPECIES: tuple[Species, ...] = _build()


def by_name() -> dict[str, Species]:
    return {s.name: s for s in SPECIES}
