"""Making scores mean what they say: temperature scaling and expected calibration error.

A classifier's probabilities are softmax(T · logits). Temperature scaling (Guo et al., 2017,
"On Calibration of Modern Neural Networks") fits the one number T by minimising the negative
log-likelihood of held-out labelled examples; it changes no ranking, only how sure the
probabilities say they are. Expected calibration error (ECE) is the gap between confidence
and accuracy, averaged over equal-width confidence bins and weighted by each bin's share.

The NLL scores the probability of the true class wherever it ranks; the top-label log loss
scores only the top answer's probability against whether it is right (what a curator is
shown, and what ECE measures; "top-label calibration", Gupta & Ramdas, ICLR 2022). The two
agree when the top answer is usually right. Where it is usually wrong but the truth ranks
close behind it (zero-shot under a collection's own look), the NLL's T is several times too
sharp for the top answer, and only the top-label fit calibrates it.

`combined` pools zero-shot and the neighbour vote. Their plain average was never calibrated:
under a collection's own look zero-shot's calibrated softmax is nearly flat, so the average
halved the vote's confidence and called 99% of answers uncertain while 78% were right
(ECE 0.43). The pool is instead softmax(a · cosine + b · vote share), its two weights fitted
by the NLL on held-out labelled images — stacking (Wolpert, 1992) as a conditional logit
with one weight per method (McFadden, 1974): convex in (a, b), so one fit, no folds. The
weights say what each method is worth on the store's own look (b = 0 where the text alone
is as good).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def top_label_log_loss(logits: np.ndarray, truth: np.ndarray, temperature: float) -> float:
    """Log loss of the top answer's probability under softmax(T · logits), against whether
    the top answer is `truth` (the answer itself does not depend on T)."""
    scaled = temperature * logits
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    confidence = 1.0 / np.exp(scaled).sum(axis=1)  # the top answer's exp(0) over the sum
    confidence = np.clip(confidence, 1e-12, 1 - 1e-12)
    right = logits.argmax(axis=1) == truth
    return float(-np.where(right, np.log(confidence), np.log1p(-confidence)).mean())


Loss = Callable[[np.ndarray, np.ndarray, float], float]


def fit_temperature(logits: np.ndarray, truth: np.ndarray, low: float = 0.1,
                    high: float = 1000.0, loss: Loss = negative_log_likelihood,
                    ) -> float:  # fmt: skip
    """The T in [low, high] that minimises `loss` (the NLL, or top_label_log_loss) of
    `truth` (class indexes) under softmax(T · logits) (fit_scale)."""
    if not len(truth):
        raise ValueError("no examples to fit a temperature on")
    return fit_scale(lambda t: loss(logits, truth, t), low, high)


def fit_scale(loss_at: Callable[[float], float], low: float, high: float) -> float:
    """The scale in [low, high] that minimises `loss_at`: a coarse log-spaced scan, then
    golden-section search around the best point (the NLL is convex in T for fixed logits;
    the top-label loss need not be, and the scan picks its basin)."""
    grid = np.geomspace(low, high, 61)
    losses = [loss_at(t) for t in grid]
    best = int(np.argmin(losses))
    a, b = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if loss_at(np.exp(c)) < loss_at(np.exp(d)):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def brier_score(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared distance of probabilities as they are (a vote's shares, not a softmax)
    from the one-hot truth. What a vote's scale is fitted by: the top answer's log loss
    took labels drawn from a vote at scale 40 for one at 1.7 (the vote's top answer moves
    with its scale: top-1 30% where 40 gives 51%), and the NLL, which a truth no neighbour
    voted for sends to its floor, left the demo world's 5-shot stores' votes at ECE 0.057
    (pooled over five draws; the Brier score's 0.030, the top-label loss's 0.034)."""
    onehot = np.zeros_like(probabilities)
    onehot[np.arange(len(truth)), truth] = 1.0
    return float(((probabilities - onehot) ** 2).sum(axis=1).mean())


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


@dataclass(frozen=True)
class Pool:
    """combined's weights: a per unit of zero-shot's cosine to a label, b per unit of the
    neighbours' vote share for it."""

    text: float
    votes: float

    def logits(self, cosines: np.ndarray, votes: np.ndarray) -> np.ndarray:
        return self.text * cosines + self.votes * votes

    def probabilities(self, cosines: np.ndarray, votes: np.ndarray) -> np.ndarray:
        """[images, labels] from the [images, labels] cosines and vote shares."""
        return softmax(self.logits(cosines, votes))


POOL_BOUND = 1000.0  # past any logit scale a CLIP model learns (theirs is capped at 100)


def fit_pool(cosines: np.ndarray, votes: np.ndarray, truth: np.ndarray) -> Pool:
    """The non-negative weights minimising the NLL of `truth` (label indexes) under
    Pool(a, b).probabilities(cosines, votes). The NLL is convex in (a, b), and its gradient
    is the features' mean under the truth less their mean under the model, so L-BFGS-B
    with bounds (a vote never counts against the taxon it names) finds the minimum."""
    if not len(truth):
        raise ValueError("no examples to fit the pool on")
    rows = np.arange(len(truth))
    features = np.stack([cosines, votes])  # [2, images, labels]

    def loss(weights: np.ndarray) -> tuple[float, np.ndarray]:
        logits = np.tensordot(weights, features, axes=1)
        logits = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        p = np.exp(logits - log_norm[:, None])
        expected = (features * p).sum(axis=2)  # [2, images]
        nll = float((log_norm - logits[rows, truth]).mean())
        return nll, (expected - features[:, rows, truth]).mean(axis=1)

    from scipy.optimize import minimize  # 0.6 s to import: every command opening a store paid it

    found = minimize(loss, np.ones(2), jac=True, method="L-BFGS-B",
                     bounds=[(0.0, POOL_BOUND)] * 2)  # fmt: skip
    return Pool(float(found.x[0]), float(found.x[1]))
