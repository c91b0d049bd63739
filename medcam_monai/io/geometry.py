"""Bring one case of an Explanation onto its source image's grid, and sanitise values."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from medcam_monai.explanation import MASK, Explanation
from medcam_monai.io.reference import SourceReference

__all__ = ["map_on_source", "sanitize", "normalize_unit", "select_case"]


def select_case(explanation: Explanation, case: int) -> Explanation:
    """Return case ``case`` of ``explanation`` (batch size 1), with a clear error if absent."""
    if not isinstance(explanation, Explanation):
        raise TypeError(f"Writers take an Explanation, got {type(explanation).__name__}.")
    if len(explanation) == 1 and case in (0, -1):
        return explanation
    return explanation[case]


def _spatial_affine(affine: np.ndarray, spatial_dims: int) -> np.ndarray:
    """Reduce MONAI's 4x4 affine of a 2D image to the in-plane ``3x3``."""
    if affine.shape[0] == spatial_dims + 1:
        return affine
    if spatial_dims == 2 and affine.shape[0] == 4:
        return affine[[0, 1, 3]][:, [0, 1, 3]]
    raise ValueError(f"Cannot use a {affine.shape} affine for a {spatial_dims}D map.")


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
        v = values[k].astype(np.float32)
        lo, hi = float(v.min()), float(v.max())
        out[k] = (v - lo) / (hi - lo) if hi > lo else 0.0
    return out


def map_on_source(explanation: Explanation, source: SourceReference, case: int = 0) -> np.ndarray:
    """Return case ``case``'s map resampled onto the source grid, as float32 ``(K, *source.spatial_shape)``.

    When the map is a MetaTensor whose affine differs from the source's (the bundle resampled,
    reoriented, cropped or resized the input), it is resampled by affine with MONAI's
    ``SpatialResample`` (nearest for masks, bilinear for heatmaps): this undoes every MONAI spatial
    transform that records its effect in the affine, the same result as ``Invertd``. A map already
    inverted (e.g. by ``Invertd``) or a plain tensor of the source's shape is used as is.

    Raises:
        ValueError: the map has no affine and a different shape or dimensionality than the source.
    """
    one = select_case(explanation, case)
    m = one.map[0].detach().cpu()
    spatial = tuple(m.shape[1:])
    target = tuple(source.spatial_shape)
    if len(spatial) != len(target):
        raise ValueError(f"The explanation map is {len(spatial)}D {spatial} but the source is {len(target)}D {target}.")
    dst = _spatial_affine(source.affine_array, len(target))
    if isinstance(m, MetaTensor):
        src = m.affine.detach().cpu().numpy().astype(np.float64)
        if src.ndim == 3:
            src = src[0]
        src = _spatial_affine(src, len(spatial))
        if spatial == target and np.allclose(src, dst, atol=1e-4):
            return sanitize(m.as_tensor().float().numpy())
        m = MetaTensor(m.as_tensor().float(), affine=torch.as_tensor(src))
        mode = "nearest" if explanation.kind == MASK else "bilinear"
        out = SpatialResample(mode=mode, padding_mode="zeros", dtype=torch.float64)(
            m, dst_affine=torch.as_tensor(dst), spatial_size=target
        )
        return sanitize(np.asarray(out.as_tensor().numpy(), dtype=np.float32))
    if spatial != target:
        raise ValueError(
            f"The explanation map {spatial} has no affine and does not match the source grid {target}. Keep the map a "
            f"MetaTensor (the explainers do when the input is one) or invert the preprocessing with Invertd first."
        )
    return sanitize(m.float().numpy())
