"""Making scores mean what they say: temperature scaling and expected calibration error.

A classifier's probabilities are softmax(T · logits). Temperature scaling (Guo et al., 2017,
"On Calibration of Modern Neural Networks") fits the one number T by minimising the negative
log-likelihood of held-out labelled examples; it changes no ranking, only how sure the
probabilities say they are. Expected calibration error (ECE) is the gap between confidence
and accuracy, averaged over equal-width confidence bins and weighted by each bin's share.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, truth: np.ndarray, temperature: float) -> float:
    scaled = temperature * logits
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled).sum(axis=1))
    return float((log_norm - scaled[np.arange(len(truth)), truth]).mean())


def fit_temperature(logits: np.ndarray, truth: np.ndarray, low: float = 0.1,
                    high: float = 1000.0) -> float:  # fmt: skip
    """The T in [low, high] that minimises the NLL of `truth` (class indexes) under
    softmax(T · logits): a coarse log-spaced scan, then golden-section search around the
    best point (the NLL is convex in T for fixed logits)."""
    if not len(truth):
        raise ValueError("no examples to fit a temperature on")
    grid = np.geomspace(low, high, 61)
    losses = [negative_log_likelihood(logits, truth, t) for t in grid]
    best = int(np.argmin(losses))
    a, b = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if negative_log_likelihood(logits, truth, np.exp(c)) < negative_log_likelihood(
            logits, truth, np.exp(d)
        ):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray,
                               bins: int = ECE_BINS) -> float:  # fmt: skip
    """ECE of the top prediction: sum over bins of share × |accuracy − mean confidence|."""
    if not len(truth):
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            error += chosen.mean() * abs(correct[chosen].mean() - confidence[chosen].mean())
    return float(error)
