"""What every metric shares: maps and regions as plain tensors, pixel ranks, classifier scores, backgrounds."""

from __future__ import annotations

import torch
from torch import nn

from medcam_monai.explanation import Explanation
from medcam_monai.perturbation import BACKGROUNDS, make_background

__all__ = [
    "MapLike",
    "Background",
    "as_map",
    "as_region",
    "flatten_maps",
    "rank_pixels",
    "target_scores",
    "forward_logits",
    "background_image",
    "single_map",
]

MapLike = torch.Tensor | Explanation
Background = str | float | torch.Tensor


def as_map(value: MapLike) -> torch.Tensor:
    """The ``(B, K, *spatial)`` map of an :class:`Explanation`, or the tensor itself, as a plain tensor."""
    value = value.map if isinstance(value, Explanation) else value
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"Expected a map tensor (B, K, *spatial) or an Explanation, got {type(value).__name__}.")
    if hasattr(value, "as_tensor"):  # MetaTensor: metadata is not needed to score, and slows every op
        value = value.as_tensor()
    if value.ndim < 3:
        raise ValueError(f"A map must be (B, K, *spatial), got shape {tuple(value.shape)}.")
    return value.detach().float()


def as_region(truth: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Ground truth ``(B, 1 or K, *spatial)`` as a boolean tensor broadcast to ``like``'s shape."""
    truth = as_map(truth)
    if truth.shape[0] != like.shape[0] or truth.shape[2:] != like.shape[2:] or truth.shape[1] not in (1, like.shape[1]):
        raise ValueError(
            f"The true region has shape {tuple(truth.shape)}, expected (B, 1 or K, *spatial) = "
            f"({like.shape[0]}, 1 or {like.shape[1]}, {', '.join(map(str, like.shape[2:]))}) to match the map."
        )
    return (truth > 0.5).expand_as(like)


def flatten_maps(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(*t.shape[:2], -1)


def rank_pixels(saliency: torch.Tensor, seed: int) -> torch.Tensor:
    """Rank of every element of each row of ``saliency`` ``(R, N)``: 0 for the largest value.

    Ties (every pixel of a binary mask) are broken by a fixed pseudo-random order drawn from
    ``seed``: deterministic, and without the raster-order bias (top rows first) that a plain stable
    sort would give.
    """
    n = saliency.shape[-1]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(saliency.device)
    order = perm[torch.sort(-saliency[:, perm], dim=-1, stable=True).indices]
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(n, device=saliency.device).expand_as(order).contiguous())
    return rank


def target_scores(logits: torch.Tensor, target: torch.Tensor, probability: bool) -> torch.Tensor:
    values = logits.softmax(-1) if probability else logits
    return values.gather(-1, target[:, None].to(values.device))[:, 0]


def forward_logits(model: nn.Module, x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """Logits ``(B, num_classes)`` of ``x`` in chunks of ``batch_size`` (all at once when None)."""
    step = batch_size or x.shape[0]
    with torch.no_grad():
        outs = [model(x[i : i + step]) for i in range(0, x.shape[0], step)]
    outs = [o[0] if isinstance(o, (tuple, list)) else o for o in outs]
    return torch.cat(outs).float()


def background_image(x: torch.Tensor, background: Background, seed: int) -> torch.Tensor:
    """The image that replaces removed pixels: a Med-CAM background name, a constant, or a tensor."""
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {sorted(BACKGROUNDS)}, a number or a tensor, got {background!r}.")
        gens = [torch.Generator().manual_seed(seed + i) for i in range(x.shape[0])]
        return make_background(x, background, gens)
    if isinstance(background, torch.Tensor):
        return background.to(x).expand_as(x)
    return torch.full_like(x, float(background))


def single_map(saliency: MapLike, x: torch.Tensor) -> torch.Tensor:
    s = as_map(saliency)
    if s.shape[1] != 1 or s.shape[0] != x.shape[0] or s.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"Expected one map per case of shape ({x.shape[0]}, 1, {', '.join(map(str, x.shape[2:]))}) "
            f"to match the image {tuple(x.shape)}, got {tuple(s.shape)}. Select one target's map, e.g. map[:, k:k+1]; "
            f"resample a map made at another resolution to the input first."
        )
    return s.to(x.device)
