"""How well a segmentation network segments the cases explained: per-class Dice and the share of voxels per class.

An explanation of a class the network does not segment, or of a network that gives every voxel to
the background, says little about the explainer; these numbers let the report say so. Dice is
MONAI's :func:`monai.metrics.compute_dice` on one-hot label maps with ``ignore_empty=False``: 1
where a class is neither true nor predicted, 0 where it is predicted but not true.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

__all__ = ["ClassOverlap", "class_fractions", "class_overlap"]


@dataclass
class ClassOverlap:
    """Per-case, per-class agreement of predicted and true label maps.

    Args:
        dice: ``(N, C)`` Dice of each class, or None when no true label map is known.
        predicted_fraction: ``(N, C)`` share of each case's voxels predicted as each class.
        true_fraction: ``(N, C)`` share of voxels of each class in the true label map, or None.
    """

    dice: torch.Tensor | None
    predicted_fraction: torch.Tensor
    true_fraction: torch.Tensor | None

    @property
    def num_classes(self) -> int:
        return int(self.predicted_fraction.shape[1])

    def to_dict(self) -> dict[str, Any]:
        """Per class: mean over cases (JSON-friendly)."""
        mean = lambda t: None if t is None else t.mean(0).tolist()
        return {
            "num_classes": self.num_classes,
            "dice_mean": mean(self.dice),
            "predicted_fraction_mean": mean(self.predicted_fraction),
            "true_fraction_mean": mean(self.true_fraction),
        }


def class_fractions(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Share of voxels of each class: ``(N, 1, *spatial)`` label map -> ``(N, C)``."""
    return one_hot(labels.long(), num_classes, dim=1).flatten(2).float().mean(-1)


def class_overlap(predicted: torch.Tensor, truth: torch.Tensor | None, num_classes: int) -> ClassOverlap:
    """Per-class Dice and voxel shares of predicted (and true) label maps.

    Args:
        predicted: ``(N, 1, *spatial)`` predicted label map (the network's argmax).
        truth: ``(N, 1, *spatial)`` true label map, or None.
        num_classes: the network's output channels ``C``.
    """
    if predicted.ndim < 3 or predicted.shape[1] != 1:
        raise ValueError(f"Expected a label map (N, 1, *spatial), got shape {tuple(predicted.shape)}.")
    if truth is not None and truth.shape != predicted.shape:
        raise ValueError(f"The true label map has shape {tuple(truth.shape)}, the prediction {tuple(predicted.shape)}.")
    dice = None
    if truth is not None:
        p, t = one_hot(predicted.long(), num_classes, dim=1), one_hot(truth.long(), num_classes, dim=1)
        dice = compute_dice(p, t, include_background=True, ignore_empty=False)
    return ClassOverlap(
        dice=dice,
        predicted_fraction=class_fractions(predicted, num_classes),
        true_fraction=None if truth is None else class_fractions(truth, num_classes),
    )
