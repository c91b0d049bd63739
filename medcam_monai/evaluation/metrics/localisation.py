"""Localisation against a known true region: top pixels at a given area, IoU, pointing game, energy inside.

How these relate to Quantus (``tests/test_metrics_quantus.py`` checks each on shared 2D cases):

- :func:`pointing_game` equals Quantus's ``PointingGame(normalise=False, abs=False)`` wherever the
  map's maximum is one pixel. Where several pixels tie at the maximum (a binary mask, a flat
  map), Quantus counts a hit when any of them is inside, ours when more than half are, so a large
  mask does not win by chance: ours <= Quantus. For an empty region ours gives NaN (no point to
  find); Quantus 0.6 reports a hit (it writes NaN into a boolean array, which reads True).
- :func:`energy_inside` equals ``RelevanceMassAccuracy(normalise=False, abs=False)`` for
  non-negative maps; ours counts negative values as 0 (a signed map's negative evidence is not
  mass inside or outside).
- :func:`iou` of :func:`top_fraction_mask` at the true area and Quantus's
  ``RelevanceRankAccuracy`` (RRA) count the same pixels: the top ``K`` (``K`` = the region's
  size) inside the region, ``I``. RRA is ``I / K``, our IoU ``I / (2K - I)``, so
  ``IoU = RRA / (2 - RRA)``.

Ours are kept because the evaluation scores 3D volumes (Quantus 0.6 accepts batched 1D and 2D
inputs only), ``K`` maps per case, a pointing tolerance (the region grown by ``tolerance``
pixels), and stays in torch on the maps' device with no numpy round trip.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from medcam_monai.evaluation.metrics.common import MapLike, as_map, as_region, flatten_maps, rank_pixels

__all__ = ["top_fraction_mask", "iou", "pointing_game", "energy_inside", "localisation"]


def top_fraction_mask(heatmap: MapLike, fraction: float | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Binary mask of the ``fraction`` most salient pixels of each map (ties in a fixed order).

    To compare a heatmap with a true region at equal area, pass ``fraction=area_fraction(truth)``.

    Args:
        heatmap: ``(B, K, *spatial)`` (or an Explanation).
        fraction: a number, or ``(B,)`` / ``(B, K)`` per case/map.
        seed: tie-breaking order.

    Returns:
        ``(B, K, *spatial)`` float ``{0, 1}``.
    """
    h = as_map(heatmap)
    flat = flatten_maps(h)
    frac = torch.as_tensor(fraction, dtype=torch.float32, device=h.device)
    frac = frac.reshape(-1, 1) if frac.ndim == 1 else frac
    counts = torch.round(frac.expand(*flat.shape[:2]) * flat.shape[-1])
    rank = rank_pixels(flat.reshape(-1, flat.shape[-1]), seed).reshape(flat.shape)
    return (rank < counts[..., None]).float().reshape(h.shape)


def iou(mask: MapLike, truth: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Intersection over union of the binarised mask and the true region.

    Args:
        mask: ``(B, K, *spatial)`` mask (or an Explanation); for a heatmap pick the threshold or
            binarise it first with :func:`top_fraction_mask`.
        truth: ``(B, 1 or K, *spatial)`` true evidence (``> 0.5`` is inside).
        threshold: mask pixels above it are inside.

    Returns:
        ``(B, K)`` in ``[0, 1]``; 1 when both are empty (nothing to find, nothing claimed).
    """
    m = as_map(mask) > threshold
    t = as_region(truth, m)
    inter = flatten_maps(m & t).sum(-1).float()
    union = flatten_maps(m | t).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def pointing_game(heatmap: MapLike, truth: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Whether the map's maximum lies in the true region (Zhang et al. 2016).

    When several pixels share the maximum (a binary mask, a constant map), it is a hit when more
    than half of them lie in the region, so an empty or full map does not hit by chance.

    Args:
        heatmap: ``(B, K, *spatial)`` (or an Explanation).
        truth: ``(B, 1 or K, *spatial)`` true evidence.
        tolerance: grow the region by this many pixels first (the original game used 15 px).

    Returns:
        ``(B, K)`` float: 1 hit, 0 miss, NaN where the region is empty (no point to find).
    """
    h = as_map(heatmap)
    t = as_region(truth, h)
    if tolerance > 0:
        structure = ndimage.generate_binary_structure(h.ndim - 2, h.ndim - 2)
        grown = [
            [ndimage.binary_dilation(t[b, k].cpu().numpy(), structure, iterations=tolerance) for k in range(t.shape[1])]
            for b in range(t.shape[0])
        ]
        t = torch.from_numpy(np.asarray(grown)).to(h.device)
    flat_h, flat_t = flatten_maps(h), flatten_maps(t)
    peak = flat_h == flat_h.amax(-1, keepdim=True)
    inside = (peak & flat_t).sum(-1).float() / peak.sum(-1).float()
    hit = (inside > 0.5).float()
    return torch.where(flat_t.any(-1), hit, torch.full_like(hit, math.nan))


def energy_inside(heatmap: MapLike, truth: torch.Tensor) -> torch.Tensor:
    """Share of the map's positive energy that lies in the true region (energy-based pointing game).

    Args:
        heatmap: ``(B, K, *spatial)`` (or an Explanation); negative values count as 0.
        truth: ``(B, 1 or K, *spatial)`` true evidence.

    Returns:
        ``(B, K)`` in ``[0, 1]``; 0 for an all-zero map (it points at nothing).
    """
    h = as_map(heatmap).clamp_min(0)
    t = as_region(truth, h)
    total = flatten_maps(h).sum(-1)
    inside = flatten_maps(h * t).sum(-1)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))


def localisation(map: MapLike, truth: torch.Tensor, threshold: float = 0.5, tolerance: int = 0) -> dict[str, torch.Tensor]:
    """:func:`iou`, :func:`pointing_game` and :func:`energy_inside` as ``{"iou", "pointing", "energy"}``, each ``(B, K)``."""
    return {
        "iou": iou(map, truth, threshold),
        "pointing": pointing_game(map, truth, tolerance),
        "energy": energy_inside(map, truth),
    }
