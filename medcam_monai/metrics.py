"""How right is an explanation: faithfulness, minimality, deletion/insertion, localisation, sanity.

Every metric takes plain tensors, so it scores any method's maps (Med-CAM masks, CAM heatmaps,
maps from other libraries); where a map is expected an :class:`~medcam_monai.explanation.Explanation`
is accepted too (its ``map`` is used). Maps are ``(B, K, *spatial)`` (``K`` maps per case, 1 for
Med-CAM), ground-truth regions ``(B, 1 or K, *spatial)``, images ``(B, C, *spatial)``; per-map
results are ``(B, K)``, per-case results ``(B,)``. Classifiers are called in eval mode without
gradients, inside :func:`~medcam_monai.hooks.frozen`, so they are left as found.

Known answers (tested): a map equal to the true region has IoU 1, pointing 1, energy inside 1; an
empty map has IoU 0 (1 when the region is empty too), pointing 0, energy 0; a map of the wrong
region scores 0 on all three.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, stats
from torch import nn

from medcam_monai.explanation import Explanation
from medcam_monai.hooks import frozen, resolve_layer, unwrap_model
from medcam_monai.medcam.backgrounds import BACKGROUNDS, make_background

__all__ = [
    "as_map",
    "decision_kept",
    "faithfulness",
    "area_fraction",
    "connected_components",
    "minimality",
    "PerturbationCurve",
    "deletion_curve",
    "insertion_curve",
    "top_fraction_mask",
    "iou",
    "pointing_game",
    "energy_inside",
    "localisation",
    "spearman_correlation",
    "ssim",
    "randomization_layers",
    "SanityCheckResult",
    "cascading_randomization",
]

MapLike = torch.Tensor | Explanation
Background = str | float | torch.Tensor


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


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


def _region(truth: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Ground truth ``(B, 1 or K, *spatial)`` as a boolean tensor broadcast to ``like``'s shape."""
    truth = as_map(truth)
    if truth.shape[0] != like.shape[0] or truth.shape[2:] != like.shape[2:] or truth.shape[1] not in (1, like.shape[1]):
        raise ValueError(
            f"The true region has shape {tuple(truth.shape)}, expected (B, 1 or K, *spatial) = "
            f"({like.shape[0]}, 1 or {like.shape[1]}, {', '.join(map(str, like.shape[2:]))}) to match the map."
        )
    return (truth > 0.5).expand_as(like)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(*t.shape[:2], -1)


def _rank(saliency: torch.Tensor, seed: int) -> torch.Tensor:
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


def _target_scores(logits: torch.Tensor, target: torch.Tensor, probability: bool) -> torch.Tensor:
    values = logits.softmax(-1) if probability else logits
    return values.gather(-1, target[:, None].to(values.device))[:, 0]


def _forward(model: nn.Module, x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """Logits ``(B, num_classes)`` of ``x`` in chunks of ``batch_size`` (all at once when None)."""
    step = batch_size or x.shape[0]
    with torch.no_grad():
        outs = [model(x[i : i + step]) for i in range(0, x.shape[0], step)]
    outs = [o[0] if isinstance(o, (tuple, list)) else o for o in outs]
    return torch.cat(outs).float()


def _background(x: torch.Tensor, background: Background, seed: int) -> torch.Tensor:
    """The image that replaces removed pixels: a Med-CAM background name, a constant, or a tensor."""
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {sorted(BACKGROUNDS)}, a number or a tensor, got {background!r}.")
        gens = [torch.Generator().manual_seed(seed + i) for i in range(x.shape[0])]
        return make_background(x, background, gens)
    if isinstance(background, torch.Tensor):
        return background.to(x).expand_as(x)
    return torch.full_like(x, float(background))


def _single_map(saliency: MapLike, x: torch.Tensor) -> torch.Tensor:
    s = as_map(saliency)
    if s.shape[1] != 1 or s.shape[0] != x.shape[0] or s.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"Expected one map per case of shape ({x.shape[0]}, 1, {', '.join(map(str, x.shape[2:]))}) "
            f"to match the image {tuple(x.shape)}, got {tuple(s.shape)}. Select one target's map, e.g. map[:, k:k+1]; "
            f"resample a map made at another resolution to the input first."
        )
    return s.to(x.device)


# ---------------------------------------------------------------------------------------------
# Faithfulness
# ---------------------------------------------------------------------------------------------


def decision_kept(logits_x: torch.Tensor, logits_other: torch.Tensor) -> torch.Tensor:
    """Whether the predicted class is the same on both inputs.

    Args:
        logits_x: ``(B, num_classes)`` logits or probabilities on the original images.
        logits_other: ``(B, num_classes)`` on the explained/perturbed images.

    Returns:
        ``(B,)`` bool.
    """
    return logits_x.argmax(-1) == logits_other.argmax(-1)


def faithfulness(
    model: nn.Module,
    x: torch.Tensor,
    mask: MapLike,
    target: torch.Tensor | Sequence[int] | None = None,
    background: Background = "blur",
    batch_size: int | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Does the classifier decide the same on the evidence alone, and on the evidence over a new background?

    With ``e = m * x`` (the evidence) and ``rob = m * x + (1 - m) * r`` (the robustness image,
    ``r`` the background), as Med-CAM's loss and scores define them.

    Args:
        model: classifier returning ``(B, num_classes)`` logits.
        x: ``(B, C, *spatial)`` images.
        mask: ``(B, 1, *spatial)`` mask in ``[0, 1]`` (binary or soft), or an Explanation.
        target: ``(B,)`` classes to score; default the decision on ``x``.
        background: ``r``: a Med-CAM background name (``"blur"``, the default: a blurred copy of
            ``x``, in distribution; ``"constant"``, ``"uniform"``, ...), a number, or a tensor.
        batch_size: classifier batch size (None: the whole batch at once).
        seed: seeds random backgrounds.

    Returns:
        ``prob_x``, ``prob_e``, ``prob_rob``: ``(B,)`` probability of the target;
        ``probs_x``, ``probs_e``, ``probs_rob``: ``(B, num_classes)``; ``kept_e``, ``kept_rob``:
        ``(B,)`` bool, the decision on ``x`` is the one on ``e`` / ``rob``; ``confidence_gain``:
        ``prob_e - prob_x``; ``target``: ``(B,)``.
    """
    m = _single_map(mask, x).clamp(0, 1)
    r = _background(x, background, seed)
    with frozen(model):
        logits = _forward(model, torch.cat([x, m * x, m * x + (1 - m) * r]), batch_size)
    lx, le, lr = logits.split(x.shape[0])
    t = lx.argmax(-1) if target is None else torch.as_tensor(target, dtype=torch.long, device=lx.device).flatten()
    out = {"target": t}
    for name, lg in (("x", lx), ("e", le), ("rob", lr)):
        out[f"probs_{name}"] = lg.softmax(-1)
        out[f"prob_{name}"] = _target_scores(lg, t, True)
    out["kept_e"] = decision_kept(lx, le)
    out["kept_rob"] = decision_kept(lx, lr)
    out["confidence_gain"] = out["prob_e"] - out["prob_x"]
    return out


# ---------------------------------------------------------------------------------------------
# Minimality
# ---------------------------------------------------------------------------------------------


def area_fraction(mask: MapLike, threshold: float = 0.5) -> torch.Tensor:
    """Fraction of the image the binarised mask covers.

    Args:
        mask: ``(B, K, *spatial)`` mask or map (or an Explanation).
        threshold: pixels above it count as mask.

    Returns:
        ``(B, K)`` float in ``[0, 1]``.
    """
    return (_flat(as_map(mask)) > threshold).float().mean(-1)


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


# ---------------------------------------------------------------------------------------------
# Deletion and insertion
# ---------------------------------------------------------------------------------------------


@dataclass
class PerturbationCurve:
    """A deletion or insertion curve per case.

    Args:
        mode: ``"deletion"`` or ``"insertion"``.
        fractions: ``(S + 1,)`` fraction of pixels removed/inserted, ``0`` to ``1``.
        scores: ``(B, S + 1)`` target probability (or logit) at each fraction.
        auc: ``(B,)`` area under the curve (trapezoid rule over ``fractions``). Deletion: lower
            is better; insertion: higher is better.
        target: ``(B,)`` the class scored.
    """

    mode: str
    fractions: torch.Tensor
    scores: torch.Tensor
    auc: torch.Tensor
    target: torch.Tensor


def _perturbation_curve(
    mode: str,
    model: nn.Module,
    x: torch.Tensor,
    saliency: MapLike,
    target: torch.Tensor | Sequence[int] | None,
    steps: int,
    baseline: Background,
    batch_size: int,
    probability: bool,
    seed: int,
) -> PerturbationCurve:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    s = _single_map(saliency, x)
    base = _background(x, baseline, seed)
    rank = _rank(s.reshape(x.shape[0], -1), seed)  # (B, N)
    n = rank.shape[-1]
    fractions = torch.linspace(0, 1, steps + 1)
    counts = torch.round(fractions * n).long().to(x.device)
    scores = []
    with frozen(model):
        t = _forward(model, x, batch_size).argmax(-1) if target is None else None
        if target is not None:
            t = torch.as_tensor(target, dtype=torch.long, device=x.device).flatten()
        for b in range(x.shape[0]):
            chosen = (rank[b][None] < counts[:, None]).reshape(steps + 1, 1, *x.shape[2:])  # (S+1, 1, *spatial)
            if mode == "deletion":
                images = torch.where(chosen, base[b : b + 1], x[b : b + 1])
            else:
                images = torch.where(chosen, x[b : b + 1], base[b : b + 1])
            logits = _forward(model, images, batch_size)
            scores.append(_target_scores(logits, t[b].expand(steps + 1), probability))
    scores = torch.stack(scores).cpu()
    return PerturbationCurve(
        mode=mode, fractions=fractions, scores=scores, auc=torch.trapezoid(scores, fractions, dim=-1), target=t.cpu()
    )


def deletion_curve(
    model: nn.Module,
    x: torch.Tensor,
    saliency: MapLike,
    target: torch.Tensor | Sequence[int] | None = None,
    steps: int = 20,
    baseline: Background = "blur",
    batch_size: int = 32,
    probability: bool = True,
    seed: int = 0,
) -> PerturbationCurve:
    """Remove pixels from the most to the least salient and follow the target's score (Petsiuk et al. 2018).

    A faithful map makes the score fall fast (low AUC). Pixels are ranked by the map, all channels
    of a pixel together; a binary mask's pixels tie and are taken in a fixed pseudo-random order
    (from ``seed``), mask pixels before the rest. At step ``i`` the top ``round(i / steps * N)``
    pixels are replaced by the baseline.

    Args:
        model: classifier returning ``(B, num_classes)`` logits.
        x: ``(B, C, *spatial)`` images.
        saliency: ``(B, 1, *spatial)`` heatmap or mask at the input's resolution (or an Explanation).
        target: ``(B,)`` classes to score; default the decision on ``x``.
        steps: number of steps ``S`` (the curve has ``S + 1`` points, fractions ``0 .. 1``).
        baseline: what removed pixels become: ``"blur"`` (default: a blurred copy of ``x``, which
            stays in distribution and so does not reward maps for making the image strange),
            ``"constant"`` (each channel's mean), any Med-CAM background name, a number (e.g. 0)
            or a tensor shaped like ``x``.
        batch_size: classifier batch size; the ``S + 1`` images of a case are sent in chunks.
        probability: score the softmax probability of the target (else its logit).
        seed: tie-breaking order and random baselines.
    """
    return _perturbation_curve("deletion", model, x, saliency, target, steps, baseline, batch_size, probability, seed)


def insertion_curve(
    model: nn.Module,
    x: torch.Tensor,
    saliency: MapLike,
    target: torch.Tensor | Sequence[int] | None = None,
    steps: int = 20,
    baseline: Background = "blur",
    batch_size: int = 32,
    probability: bool = True,
    seed: int = 0,
) -> PerturbationCurve:
    """Start from the baseline and insert pixels of ``x`` from the most to the least salient.

    A faithful map makes the score rise fast (high AUC). Same arguments and ranking as
    :func:`deletion_curve`; at step ``i`` the top ``round(i / steps * N)`` pixels come from ``x``
    and the rest from the baseline.
    """
    return _perturbation_curve("insertion", model, x, saliency, target, steps, baseline, batch_size, probability, seed)


# ---------------------------------------------------------------------------------------------
# Localisation
# ---------------------------------------------------------------------------------------------


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
    flat = _flat(h)
    frac = torch.as_tensor(fraction, dtype=torch.float32, device=h.device)
    frac = frac.reshape(-1, 1) if frac.ndim == 1 else frac
    counts = torch.round(frac.expand(*flat.shape[:2]) * flat.shape[-1])
    rank = _rank(flat.reshape(-1, flat.shape[-1]), seed).reshape(flat.shape)
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
    t = _region(truth, m)
    inter = _flat(m & t).sum(-1).float()
    union = _flat(m | t).sum(-1).float()
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
    t = _region(truth, h)
    if tolerance > 0:
        structure = ndimage.generate_binary_structure(h.ndim - 2, h.ndim - 2)
        grown = [
            [ndimage.binary_dilation(t[b, k].cpu().numpy(), structure, iterations=tolerance) for k in range(t.shape[1])]
            for b in range(t.shape[0])
        ]
        t = torch.from_numpy(np.asarray(grown)).to(h.device)
    flat_h, flat_t = _flat(h), _flat(t)
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
    t = _region(truth, h)
    total = _flat(h).sum(-1)
    inside = _flat(h * t).sum(-1)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))


def localisation(map: MapLike, truth: torch.Tensor, threshold: float = 0.5, tolerance: int = 0) -> dict[str, torch.Tensor]:
    """:func:`iou`, :func:`pointing_game` and :func:`energy_inside` as ``{"iou", "pointing", "energy"}``, each ``(B, K)``."""
    return {
        "iou": iou(map, truth, threshold),
        "pointing": pointing_game(map, truth, tolerance),
        "energy": energy_inside(map, truth),
    }


# ---------------------------------------------------------------------------------------------
# Sanity check: cascading model randomisation (Adebayo et al. 2018)
# ---------------------------------------------------------------------------------------------


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


def randomization_layers(model: nn.Module) -> list[str]:
    """Names of the layers that hold their own parameters, from the output back to the input.

    The order of ``named_modules()`` (definition order) is taken as the forward order, reversed,
    which is the cascade order of Adebayo et al. (top layer first).
    """
    model = unwrap_model(model)
    names = [name for name, m in model.named_modules() if name and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def _randomise(module: nn.Module, seed: int) -> None:
    """Re-initialise the module's own parameters with its initialiser (``reset_parameters``).

    Modules without one get Gaussian values with the spread of their current weights. The global
    RNG is left untouched (``fork_rng``), so the caller's random state does not depend on the check.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
            return
        for p in module.parameters(recurse=False):
            std = float(p.std()) if p.numel() > 1 else 0.0
            p.normal_(0.0, std if math.isfinite(std) and std > 0 else 0.02)


@dataclass
class SanityCheckResult:
    """Similarity between the original explanation and the explanation of randomised models.

    Args:
        layers: the layer randomised at each step (cumulatively when ``cascade``), output first.
        cascade: whether step ``i`` keeps the randomisations of steps ``< i``.
        spearman: ``(L, B)`` rank correlation with the original map (0 for a constant map).
        ssim: ``(L, B)`` structural similarity with the original map.
        iou: ``(L, B)`` IoU of the original's and the randomised map's binary masks (a binary map
            as it is, a heatmap's top ``top_fraction`` pixels).
        original: ``(B, K, *spatial)`` the explanation of the untouched model.
        maps: the ``L`` randomised explanations, when kept.
    """

    layers: list[str]
    cascade: bool
    spearman: torch.Tensor
    ssim: torch.Tensor
    iou: torch.Tensor
    original: torch.Tensor
    maps: list[torch.Tensor] = field(default_factory=list)

    def passed(self, threshold: float = 0.5, metric: str = "spearman") -> torch.Tensor:
        """``(B,)`` bool: the explanation of the fully randomised model is dissimilar (below ``threshold``).

        An explanation that does not change when the weights it should depend on are random is
        not explaining the model (an edge detector passes no sanity check).
        """
        values = getattr(self, metric)
        return values[-1] < threshold

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: layer names and per-step similarity lists."""
        return {
            "layers": list(self.layers),
            "cascade": self.cascade,
            **{k: getattr(self, k).tolist() for k in ("spearman", "ssim", "iou")},
        }


def _is_binary(m: torch.Tensor) -> bool:
    return bool(((m == 0) | (m == 1)).all())


def cascading_randomization(
    model: nn.Module,
    x: torch.Tensor,
    explainer: Callable[[nn.Module, torch.Tensor], MapLike],
    layers: Sequence[str] | None = None,
    cascade: bool = True,
    top_fraction: float = 0.1,
    keep_maps: bool = False,
    seed: int = 0,
) -> SanityCheckResult:
    """Model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps").

    The explanation must change when the classifier's weights are randomised. The model is
    deep-copied (the caller's model is never modified); layers are re-initialised one after the
    other from the output down (``cascade``: each step keeps the earlier randomisations;
    otherwise each layer is randomised alone on a fresh copy) and the explanation of each
    randomised copy is compared with the original.

    Args:
        model: the classifier (DDP is unwrapped).
        x: ``(B, C, *spatial)`` images to explain.
        explainer: ``(model, x) -> map`` returning ``(B, K, *spatial)`` (or an Explanation), e.g.
            ``lambda m, x: MedCAM(m, ...)(x)``; it is called once on the copy before any
            randomisation and once per step.
        layers: ``named_modules()`` names to randomise, in the order given (default
            :func:`randomization_layers`: every layer with parameters, output first).
        cascade: cumulative randomisation (the paper's cascading test) or one layer at a time.
        top_fraction: heatmaps are compared by IoU of their top ``top_fraction`` pixels.
        keep_maps: keep every randomised map in the result.
        seed: seeds the re-initialisation (step ``i`` uses ``seed + i``).
    """
    base = copy.deepcopy(unwrap_model(model))
    names = list(layers) if layers is not None else randomization_layers(base)
    if not names:
        raise ValueError(f"{type(base).__name__} has no layer with parameters to randomise.")
    for name in names:
        resolve_layer(base, name)  # fail before any work, naming the nearest valid layers

    def binarise(m: torch.Tensor) -> torch.Tensor:
        return m if _is_binary(m) else top_fraction_mask(m, top_fraction)

    original = as_map(explainer(base, x)).cpu()
    spear, sims, ious, maps = [], [], [], []
    work = base
    for i, name in enumerate(names):
        if not cascade:
            work = copy.deepcopy(base)
        _randomise(resolve_layer(work, name), seed + i)
        current = as_map(explainer(work, x)).cpu()
        if current.shape != original.shape:
            raise ValueError(f"The explainer returned shape {tuple(current.shape)} after randomising {name!r}, "
                             f"but {tuple(original.shape)} for the original model.")
        spear.append(spearman_correlation(original, current))
        sims.append(ssim(original, current))
        a, b = binarise(original), binarise(current)
        inter, union = _flat(a * b).sum(-1).sum(-1), _flat(((a + b) > 0).float()).sum(-1).sum(-1)
        ious.append(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)))
        if keep_maps:
            maps.append(current)
    return SanityCheckResult(
        layers=names,
        cascade=cascade,
        spearman=torch.stack(spear),
        ssim=torch.stack(sims),
        iou=torch.stack(ious),
        original=original,
        maps=maps,
    )
