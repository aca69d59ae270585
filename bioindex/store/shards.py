"""Vector shards: embeddings/shard-<generation>.npy, float16 [rows, dim], L2-normalised.

A shard is written once and never changed. Before a shard's rows are read, its size and
quick fingerprint are checked against the snapshot's record, so a truncated, lost or
swapped shard is an error naming it, never a wrong answer.
"""

from __future__ import annotations

import mmap
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bioindex.errors import BioindexError
from bioindex.store import files
from bioindex.store.layout import SHARD_DIR


def shard_name(generation: int) -> str:
    return f"shard-{generation:09d}.npy"


def write(root: Path, generation: int, vectors: np.ndarray) -> dict[str, Any]:
    """Write a shard; returns its snapshot record."""
    name = shard_name(generation)
    path = root / SHARD_DIR / name
    files.save_npy(path, np.asarray(vectors, dtype=np.float16))
    return {"file": f"{SHARD_DIR}/{name}", "rows": len(vectors), **files.identity(path)}


def widen(half: np.ndarray) -> np.ndarray:
    """A float32 copy of float16 rows. numpy converts halves one value at a time (69 µs
    for a re-rank's 80 × 512 on this project's machine); torch's vectorised copy takes 17
    where it is already loaded (a server, a Python session with its model: importing it
    would cost a command more than it saves), and the bits moved by numpy's vectorised
    integer operations 23 (faiss's float16 decoder, used before, 36-48)."""
    if half.dtype != np.float16 or half.ndim != 2 or not half.size:
        return np.asarray(half, dtype=np.float32)
    torch = sys.modules.get("torch")
    if torch is not None:
        half = np.require(half, requirements="CW")
        out = np.empty(half.shape, dtype=np.float32)
        torch.from_numpy(out).copy_(torch.from_numpy(half))
        return out
    return _widen_bits(half)


def _widen_bits(half: np.ndarray) -> np.ndarray:
    """float16 → float32 by moving the bits: exponent and mantissa shifted into place and
    rebased by 2^112 (the two formats' exponent biases differ by 112; a multiply, so zeros
    and subnormal halves come out right too), the sign put back. Infinities and NaNs (all
    exponent bits set) would come out finite, so those few values are converted by numpy."""
    bits = half.view(np.uint16).astype(np.uint32)
    out_bits = bits & 0x7FFF
    out_bits <<= 13
    special = out_bits.max() >= 0x7C00 << 13
    out = out_bits.view(np.float32)
    out *= np.float32(2.0**112)
    bits &= 0x8000
    bits <<= 16
    out_bits |= bits
    if special:
        found = (half.view(np.uint16) & 0x7C00) == 0x7C00
        out[found] = half[found].astype(np.float32)
    return out


class Shards:
    """The shards of one generation, mapped on first use and kept mapped (shards never
    change, so a mapping stays valid for the life of the process)."""

    def __init__(self, root: Path, records: list[dict[str, Any]]):
        self.root = root
        self.records = {Path(r["file"]).name: r for r in records}
        self._mapped: dict[str, np.ndarray] = {}

    def update(self, records: list[dict[str, Any]]) -> None:
        self.records = {Path(r["file"]).name: r for r in records}
        self._mapped = {k: v for k, v in self._mapped.items() if k in self.records}

    def get(self, name: str) -> np.ndarray:
        """A shard's rows, verified, mapped with MADV_RANDOM: without it each 1 KB row read
        faults in the kernel's readahead window (128 KB), and re-ranking over a 10 GB store
        maps gigabytes."""
        if name not in self._mapped:
            shard = self.load(name)
            mapping = getattr(shard, "_mmap", None)
            if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
                mapping.madvise(mmap.MADV_RANDOM)
            # A plain array over the same mapping: numpy's memmap subclass costs ~10 µs a
            # gather in bookkeeping, and a re-rank gathers from every shard.
            self._mapped[name] = np.asarray(shard)
        return self._mapped[name]

    def load(self, name: str) -> np.ndarray:
        """A shard mapped for a sequential pass, verified against its record."""
        record = self.records.get(name)
        path = self.root / SHARD_DIR / name
        if record is None:
            raise BioindexError(f"store {self.root}: no shard {name} in this generation")
        wrong = files.problem(path, record)
        if wrong is None:
            try:
                data = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                wrong = f"unreadable ({exc})"
            else:
                if data.shape[0] != record.get("rows", data.shape[0]):
                    wrong = f"{data.shape[0]} rows, expected {record['rows']}"
        if wrong is not None:
            raise BioindexError(f"store {self.root}: vector shard {SHARD_DIR}/{name} is "
                                f"{wrong}; run bioindex check --store {self.root} --repair")
        return data
