"""Turning a raw layer map into the delivered heatmap: upsampling, optional ReLU and normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["LINEAR_MODES", "upsample", "normalize_map", "NORMALIZE_MODES"]

LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
NORMALIZE_MODES = (None, "max", "minmax")


def upsample(maps: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Linear (bi-/tri-linear) resize of ``(B, K, *grid)`` to ``(B, K, *size)``.

    ``align_corners=False`` (the default) treats each layer cell as covering ``stride`` input voxels,
    which is how strided convolutions and pooling place features.
    """
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode=LINEAR_MODES[len(size)], align_corners=align_corners)


def normalize_map(maps: torch.Tensor, mode: str | None) -> torch.Tensor:
    """Normalise each ``(case, target)`` map of ``(B, K, *spatial)`` on its own.

    Args:
        mode: None (raw), ``"max"`` (divide by the largest absolute value: in ``[-1, 1]``, signs and
            zero kept) or ``"minmax"`` (``(L - min) / (max - min)`` in ``[0, 1]``). Larger stays larger
            in both (never an inverted scale); a constant map becomes zeros, never NaN.
    """
    if mode is None:
        return maps
    flat = maps.reshape(*maps.shape[:2], -1)
    if mode == "max":
        scale = flat.abs().amax(-1, keepdim=True)
        out = torch.where(scale > 0, flat / scale.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    elif mode == "minmax":
        low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
        span = high - low
        out = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    else:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {mode!r}.")
    return out.reshape(maps.shape)
