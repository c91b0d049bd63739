"""Bring one case of an Explanation onto its source image's grid, and sanitise values."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from medcam_monai.explanation import MASK, Explanation
from medcam_monai.io.grid import (
    apply_correspondence,
    contiguous,
    spatial_affine,
    voxel_correspondence,
)
from medcam_monai.io.reference import SourceReference

__all__ = ["map_on_source", "on_grid", "sanitize", "normalize_unit", "select_case"]


def select_case(explanation: Explanation, case: int) -> Explanation:
    """Return case ``case`` of ``explanation`` (batch size 1), with a clear error if absent."""
    if not isinstance(explanation, Explanation):
        raise TypeError(f"Writers take an Explanation, got {type(explanation).__name__}.")
    if len(explanation) == 1 and case in (0, -1):
        return explanation
    return explanation[case]


def sanitize(values: np.ndarray, what: str = "map") -> np.ndarray:
    """Replace NaN by 0 and +/-Inf by the largest/smallest finite value, warning with counts.

    highdicom would store NaN in a FRACTIONAL SEG as 0 and skip its range check, and a Parametric
    Map with NaN has no valid window; doing it here makes every writer agree.
    """
    finite = np.isfinite(values)
    if finite.all():
        return values
    n_nan, n_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    good = values[finite]
    hi = float(good.max()) if good.size else 0.0
    lo = float(good.min()) if good.size else 0.0
    warnings.warn(f"The {what} holds {n_nan} NaN and {n_inf} Inf voxels; writing NaN as 0 and Inf as the finite max/min.", stacklevel=3)
    return np.nan_to_num(values, nan=0.0, posinf=hi, neginf=lo)


def normalize_unit(values: np.ndarray) -> np.ndarray:
    """Min-max scale each channel of ``(K, ...)`` into ``[0, 1]`` (a constant channel becomes 0)."""
    out = np.empty_like(values, dtype=np.float32)
    for k in range(values.shape[0]):
        v = values[k].astype(np.float32, copy=False)
        lo, hi = float(v.min()), float(v.max())
        out[k] = (v - lo) / (hi - lo) if hi > lo else 0.0
    return out


def on_grid(data: torch.Tensor, affine: np.ndarray, spatial_shape: tuple[int, ...], *, nearest: bool) -> np.ndarray:
    """Put ``(C, *spatial)`` values onto the grid ``(affine, spatial_shape)`` as float32 numpy.

    ``data`` is a MetaTensor carrying its own affine, or a plain tensor already on that grid. Grids
    that hold the same voxels in another axis order or direction are matched exactly (transpose and
    flip); others are resampled by affine with MONAI's ``SpatialResample`` (``nearest`` or bilinear),
    which undoes every MONAI spatial transform that records its effect in the affine (the same
    result as ``Invertd`` up to interpolation at the edges).

    Raises:
        ValueError: the values have no affine and a different shape or dimensionality than the grid.
    """
    spatial = tuple(data.shape[1:])
    target = tuple(int(s) for s in spatial_shape)
    if len(spatial) != len(target):
        raise ValueError(f"The explanation map is {len(spatial)}D {spatial} but the source is {len(target)}D {target}.")
    dst = spatial_affine(affine, len(target))
    if not isinstance(data, MetaTensor):
        if spatial != target:
            raise ValueError(
                f"The explanation map {spatial} has no affine and does not match the source grid {target}. Keep the map a "
                f"MetaTensor (the explainers do when the input is one) or invert the preprocessing with invert_to_source first."
            )
        return data.detach().cpu().float().numpy()
    src = data.affine.detach().cpu().numpy().astype(np.float64)
    if src.ndim == 3:
        src = src[0]
    src = spatial_affine(src, len(spatial))
    values = data.as_tensor().detach().cpu().float()
    match = voxel_correspondence(src, spatial, dst, target)
    if match is not None:
        return contiguous(apply_correspondence(values.numpy(), *match))
    moved = SpatialResample(mode="nearest" if nearest else "bilinear", padding_mode="zeros", dtype=torch.float64)(
        MetaTensor(values, affine=torch.as_tensor(src)), dst_affine=torch.as_tensor(dst), spatial_size=target
    )
    return np.asarray(moved.as_tensor().numpy(), dtype=np.float32)


def map_on_source(explanation: Explanation, source: SourceReference, case: int = 0) -> np.ndarray:
    """Return case ``case``'s map on the source grid, as finite float32 ``(K, *source.spatial_shape)``.

    A map in the network's space (a MetaTensor whose affine differs from the source's: the bundle
    resampled, reoriented, cropped or resized the input) is resampled by affine, nearest for masks
    and bilinear for heatmaps (see :func:`on_grid`). A map already inverted with
    :func:`~medcam_monai.io.inversion.invert_to_source` (or ``Invertd``), or a plain tensor of the
    source's shape, is used as is. NaN/Inf are sanitised (:func:`sanitize`).
    """
    one = select_case(explanation, case)
    return sanitize(on_grid(one.map[0], source.affine_array, source.spatial_shape, nearest=one.kind == MASK))
