"""Calibration: does the classifier's probability mean what it says (expected calibration error, reliability bins).

An explanation is titled with the model's probability for the class it explains; a reader can
only trust that number, and tell a bad explanation from a bad model, when the model is calibrated
on the cases explained. Top-label calibration (Guo et al. 2017, "On calibration of modern neural
networks"): each case's confidence is its largest softmax probability and it counts as right when
that class is the label.

Binning: ``bins`` equal-width bins of ``[0, 1]``; a confidence on a bin edge falls in the lower
bin, 0 in the first (the counting is MONAI's :func:`monai.metrics.calibration_binning`).
``ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|`` over the non-empty bins. Known answers
(tested): a toy whose accuracy in every bin equals its confidence has ECE 0; a toy that says 0.99
on every case and is right on a quarter has ECE 0.74.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.metrics import calibration_binning

__all__ = ["Calibration", "calibration"]


@dataclass
class Calibration:
    """Top-label calibration of a classifier on a set of cases.

    Args:
        ece: expected calibration error in ``[0, 1]`` (0: every bin's accuracy equals its confidence).
        accuracy: fraction of cases whose top class is the label.
        mean_confidence: mean top-class probability.
        edges: ``(bins + 1,)`` bin edges, ``0 .. 1``.
        counts: ``(bins,)`` cases per bin.
        confidence: ``(bins,)`` mean confidence per bin (NaN where empty).
        bin_accuracy: ``(bins,)`` accuracy per bin (NaN where empty).
    """

    ece: float
    accuracy: float
    mean_confidence: float
    edges: torch.Tensor
    counts: torch.Tensor
    confidence: torch.Tensor
    bin_accuracy: torch.Tensor

    @property
    def bins(self) -> int:
        return int(self.counts.numel())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (NaN for empty bins, which :func:`~medcam_monai.explanation.to_json_value` writes as null)."""
        return {
            "ece": self.ece,
            "accuracy": self.accuracy,
            "mean_confidence": self.mean_confidence,
            "binning": f"{self.bins} equal-width bins of the top-class probability; an edge value falls in the lower bin",
            "edges": self.edges.tolist(),
            "counts": [int(c) for c in self.counts.tolist()],
            "confidence": self.confidence.tolist(),
            "accuracy_per_bin": self.bin_accuracy.tolist(),
        }


def calibration(
    probabilities: torch.Tensor, labels: torch.Tensor | Sequence[int], bins: int = 10
) -> Calibration:
    """Expected calibration error and the reliability bins of a classifier's top-class probabilities.

    Args:
        probabilities: ``(N, num_classes)`` softmax probabilities (each row sums to 1).
        labels: ``(N,)`` true classes.
        bins: number of equal-width confidence bins over ``[0, 1]``.

    Returns:
        A :class:`Calibration`.
    """
    p = torch.as_tensor(probabilities, dtype=torch.float32).detach().cpu()
    y = torch.as_tensor(labels, dtype=torch.long).flatten().cpu()
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[0] == 0:
        raise ValueError(
            f"Expected probabilities (N, num_classes) and labels (N,) for N >= 1 cases, got {tuple(p.shape)} and {tuple(y.shape)}."
        )
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}.")
    if not torch.allclose(p.sum(1), torch.ones(p.shape[0]), atol=1e-3) or p.min() < 0:
        raise ValueError("probabilities must be softmax outputs (non-negative rows summing to 1); pass logits.softmax(-1).")
    if (y < 0).any() or (y >= p.shape[1]).any():
        raise ValueError(f"labels must lie in 0 .. {p.shape[1] - 1} for {p.shape[1]} classes, got {sorted(set(y.tolist()))}.")
    confidence, predicted = p.max(1)
    correct = (predicted == y).float()
    mean_p, mean_acc, counts = (t[0, 0] for t in calibration_binning(confidence[None, None], correct[None, None], num_bins=bins))
    filled = counts > 0
    ece = float((counts[filled] * (mean_acc[filled] - mean_p[filled]).abs()).sum() / counts.sum())
    return Calibration(
        ece=ece,
        accuracy=float(correct.mean()),
        mean_confidence=float(confidence.mean()),
        edges=torch.linspace(0, 1, bins + 1),
        counts=counts.long(),
        confidence=mean_p,
        bin_accuracy=mean_acc,
    )
