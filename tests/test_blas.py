"""faiss's bundled OpenBLAS gets kernels that fit the CPU (bioindex.blas)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bioindex.blas import cpu_flags, openblas_core

SHOW = "import bioindex, faiss, os; print(os.environ.get('OPENBLAS_CORETYPE'))"


def _run(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    return subprocess.run([sys.executable, "-c", SHOW], env={**clean, **env},
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip


def test_kernels_follow_the_cpu_flags() -> None:
    assert openblas_core({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"}) \
        == "SkylakeX"  # fmt: skip
    assert openblas_core({"avx512f", "avx2", "fma"}) == "Haswell"  # no BW/DQ/VL: not SKX
    assert openblas_core({"sse4_2"}) is None


@pytest.mark.skipif(not sys.platform.startswith("linux") or openblas_core(cpu_flags()) is None,
                    reason="OpenBLAS is left to choose on this CPU")  # fmt: skip
def test_importing_bioindex_picks_the_kernels_before_faiss_loads() -> None:
    # The detected kernels of faiss-cpu 1.15.1's OpenBLAS ran 5.6x slower here.
    assert _run({}) == openblas_core(cpu_flags())
    assert _run({"OPENBLAS_CORETYPE": "Haswell"}) == "Haswell"  # the user's choice stays
