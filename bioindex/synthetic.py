"""Synthetic unit vectors shaped like image embeddings, for index tests and benchmarks.

Uniform or isotropic random vectors have almost no neighbour structure (every point is
about equally far from every other), which makes any approximate index look broken. Real
embeddings are anisotropic (variance concentrated in a few directions) and clustered
(species, sites, specimens photographed many times). So:

1. a random rotation R of R^dim (QR of a Gaussian matrix);
2. a decaying spectrum: dimension i (1-based) is scaled by i^-decay before rotating;
3. `centres` cluster centres drawn from that spectrum, with Dirichlet(1) weights so that
   some clusters are big and many are small;
4. each point is its centre plus `spread` times noise from the same spectrum, rotated by R
   and scaled to unit length.

The same `seed` always gives the same centres and rotation; `part` picks an independent
stream of points from them, so base vectors and held-out queries share clusters without
sharing points.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

DEFAULT_CENTRES = 2000
DEFAULT_SPREAD = 0.6
DEFAULT_DECAY = 0.75


class ClusteredVectors:
    def __init__(self, dim: int, centres: int = DEFAULT_CENTRES, spread: float = DEFAULT_SPREAD,
                 decay: float = DEFAULT_DECAY, seed: int = 0):  # fmt: skip
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.spread = spread
        self.seed = seed
        self.scale = (np.arange(1, dim + 1, dtype=np.float32) ** -decay).astype(np.float32)
        self.rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)).astype(np.float32))
        self.centres = rng.standard_normal((centres, dim), dtype=np.float32) * self.scale
        self.weights = rng.dirichlet(np.ones(centres))

    def batches(self, n: int, part: int = 0, batch: int = 65536) -> Iterator[np.ndarray]:
        """n unit vectors (float32) in batches; `part` selects an independent stream."""
        rng = np.random.default_rng([self.seed, part + 1])
        for start in range(0, n, batch):
            size = min(batch, n - start)
            labels = rng.choice(len(self.centres), size, p=self.weights)
            noise = rng.standard_normal((size, self.dim), dtype=np.float32) * self.scale
            points = (self.centres[labels] + self.spread * noise) @ self.rotation
            points /= np.linalg.norm(points, axis=1, keepdims=True)
            yield points

    def sample(self, n: int, part: int = 0) -> np.ndarray:
        return np.concatenate(list(self.batches(n, part))) if n else np.empty((0, self.dim))


def neighbour_profile(
    vectors: np.ndarray, queries: np.ndarray, ranks: tuple[int, ...] = (1, 10, 100)
) -> dict[str, float]:
    """Median cosine of each query's r-th nearest vector, for r in `ranks` (exact search;
    a query that is itself among `vectors` should be left out by the caller)."""
    scores = np.asarray(queries, np.float32) @ np.asarray(vectors, np.float32).T
    top = -np.sort(-scores, axis=1)[:, : max(ranks)]
    return {
        f"top{r}": round(float(np.median(top[:, r - 1])), 3) for r in ranks if r <= top.shape[1]
    }
