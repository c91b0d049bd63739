"""Minimality: how much of the image a mask covers, and in how many pieces.

:func:`area_fraction` times the pixel count is Quantus's ``EffectiveComplexity(eps=threshold,
abs=False, normalise=False)`` (``tests/test_metrics_quantus.py``); it is one line of torch that
works in 3D, so it stays ours. Quantus has no count of connected pieces.
"""

from __future__ import annotations

import torch
from scipy import ndimage

from medcam_monai.evaluation.metrics.common import MapLike, as_map, flatten_maps

__all__ = ["area_fraction", "connected_components", "minimality"]


def area_fraction(mask: MapLike, threshold: float = 0.5) -> torch.Tensor:
    """Fraction of the image the binarised mask covers.

    Args:
        mask: ``(B, K, *spatial)`` mask or map (or an Explanation).
        threshold: pixels above it count as mask.

    Returns:
        ``(B, K)`` float in ``[0, 1]``.
    """
    return (flatten_maps(as_map(mask)) > threshold).float().mean(-1)


def connected_components(mask: MapLike, threshold: float = 0.5, connectivity: int = 1) -> torch.Tensor:
    """Number of connected pieces of the binarised mask (2D or 3D).

    Args:
        mask: ``(B, K, *spatial)`` mask or map (or an Explanation).
        threshold: pixels above it count as mask.
        connectivity: 1 joins face neighbours only (4 in 2D, 6 in 3D); ``spatial_dims`` joins
            diagonal neighbours too (8 / 26), as ``scipy.ndimage.generate_binary_structure``.

    Returns:
        ``(B, K)`` long; 0 for an empty mask.
    """
    binary = (as_map(mask) > threshold).cpu().numpy()
    structure = ndimage.generate_binary_structure(binary.ndim - 2, connectivity)
    counts = [[ndimage.label(binary[b, k], structure=structure)[1] for k in range(binary.shape[1])] for b in range(binary.shape[0])]
    return torch.tensor(counts, dtype=torch.long)


def minimality(mask: MapLike, threshold: float = 0.5, connectivity: int = 1) -> dict[str, torch.Tensor]:
    """:func:`area_fraction` and :func:`connected_components` as ``{"area_fraction", "components"}``, each ``(B, K)``."""
    return {
        "area_fraction": area_fraction(mask, threshold),
        "components": connected_components(mask, threshold, connectivity),
    }
