"""Which OpenBLAS kernels faiss runs: chosen before faiss is first imported.

The faiss-cpu wheel bundles its own OpenBLAS (0.3.15 in faiss-cpu 1.15.1), older than the
Xeons it now runs on: on this project's machine (AVX-512, AMX) it picks kernels that
multiply at 35 GFLOPS where its Skylake-X kernels reach 194 (numpy's newer OpenBLAS: 192).
Every k-means training and batched search of an IVF build is such a multiplication: an
IVF1024,SQ8 over 200k × 512 vectors built in 21.9 s with the detected kernels and in
4.9 s with Skylake-X's (docs/benchmarks.md). OPENBLAS_CORETYPE is read once, when the
library loads, so it is set here, at bioindex's import, and only when the user has not
set it. Single-query searches do not use BLAS and are unaffected.
"""

from __future__ import annotations

import os
import platform
import sys

ENV = "OPENBLAS_CORETYPE"
# Flags each kernel family needs; the first the CPU has wins.
CORES = (("SkylakeX", {"avx512f", "avx512bw", "avx512dq", "avx512vl"}),
         ("Haswell", {"avx2", "fma"}))  # fmt: skip


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def openblas_core(flags: set[str]) -> str | None:
    """The OpenBLAS kernel family for a CPU with these flags (None: leave it to OpenBLAS)."""
    return next((core for core, needs in CORES if needs <= flags), None)


def choose_openblas_core() -> None:
    if ENV in os.environ or "faiss" in sys.modules:
        return
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return
    core = openblas_core(cpu_flags())
    if core:
        os.environ[ENV] = core
