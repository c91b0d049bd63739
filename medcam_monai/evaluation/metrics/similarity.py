"""Similarity of two maps: rank correlation and structural similarity (used by the sanity check).

:func:`spearman_correlation` is Quantus's ``correlation_spearman`` (both are scipy's ranks;
``tests/test_metrics_quantus.py`` compares them) except for a flat map, where ours gives 0 (no
ranking to agree with) and scipy NaN. :func:`ssim` is kept in torch because it runs on 2D and 3D
maps of a whole batch at once; Quantus's ``ssim`` calls scikit-image per 2D pair.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from medcam_monai.evaluation.metrics.common import MapLike, as_map

__all__ = ["spearman_correlation", "ssim"]


def spearman_correlation(a: MapLike, b: MapLike) -> torch.Tensor:
    """Spearman rank correlation of two maps per case (all map channels together).

    Args:
        a, b: ``(B, K, *spatial)`` maps of the same shape.

    Returns:
        ``(B,)`` in ``[-1, 1]``; 0 when either map is constant (no ranking to agree with).
    """
    x = as_map(a).reshape(as_map(a).shape[0], -1).cpu().numpy()
    y = as_map(b).reshape(as_map(b).shape[0], -1).cpu().numpy()
    out = []
    for u, v in zip(x, y):
        if np.ptp(u) == 0 or np.ptp(v) == 0:
            out.append(0.0)
            continue
        out.append(float(np.corrcoef(stats.rankdata(u), stats.rankdata(v))[0, 1]))
    return torch.tensor(out)


def _normalise(m: torch.Tensor) -> torch.Tensor:
    flat = m.reshape(m.shape[0], -1)
    low, high = flat.amin(-1), flat.amax(-1)
    shape = (-1, *([1] * (m.ndim - 1)))
    return (m - low.view(shape)) / (high - low).clamp_min(1e-12).view(shape)


def ssim(a: MapLike, b: MapLike, window: int = 7) -> torch.Tensor:
    """Structural similarity of two maps per case, each min-max scaled to ``[0, 1]`` first.

    A uniform ``window``-wide window as scikit-image's default, constants ``(0.01, 0.03)``, mean
    over all windows and map channels.

    Args:
        a, b: ``(B, K, *spatial)`` maps (2D or 3D) of the same shape.
        window: window side, reduced to the smallest spatial side when larger.

    Returns:
        ``(B,)``, 1 for identical maps.
    """
    x, y = _normalise(as_map(a)), _normalise(as_map(b))
    d = x.ndim - 2
    if d not in (2, 3):
        raise ValueError(f"ssim needs 2D or 3D maps, got shape {tuple(x.shape)}.")
    w = min(window, *x.shape[2:])
    pool = F.avg_pool2d if d == 2 else F.avg_pool3d
    b_, k = x.shape[:2]
    x, y = x.reshape(b_ * k, 1, *x.shape[2:]), y.reshape(b_ * k, 1, *y.shape[2:])
    mx, my = pool(x, w, 1), pool(y, w, 1)
    vx, vy, cxy = pool(x * x, w, 1) - mx**2, pool(y * y, w, 1) - my**2, pool(x * y, w, 1) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.reshape(b_, -1).mean(-1)
