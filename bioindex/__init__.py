"""bioindex: search biological image collections with BioCLIP, FAISS and DuckDB.

The package root stays free of heavy imports so that `bioindex --help` is instant;
`Collection` is loaded on first use.
"""

from bioindex.blas import choose_openblas_core
from bioindex.errors import BioindexError

choose_openblas_core()  # before anything imports faiss (see bioindex.blas)

__all__ = ["BioindexError", "Collection"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Collection":
        from bioindex.collection import Collection

        return Collection
    raise AttributeError(name)
