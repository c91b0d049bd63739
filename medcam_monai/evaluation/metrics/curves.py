"""Deletion and insertion curves (Petsiuk et al. 2018): the target's score as the most salient pixels are removed or added."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medcam_monai.evaluation.metrics.common import (
    Background,
    MapLike,
    background_image,
    forward_logits,
    rank_pixels,
    single_map,
    target_scores,
)
from medcam_monai.hooks import frozen

__all__ = ["PerturbationCurve", "deletion_curve", "insertion_curve"]


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
    s = single_map(saliency, x)
    base = background_image(x, baseline, seed)
    rank = rank_pixels(s.reshape(x.shape[0], -1), seed)  # (B, N)
    n = rank.shape[-1]
    fractions = torch.linspace(0, 1, steps + 1)
    counts = torch.round(fractions * n).long().to(x.device)
    scores = []
    with frozen(model):
        t = forward_logits(model, x, batch_size).argmax(-1) if target is None else None
        if target is not None:
            t = torch.as_tensor(target, dtype=torch.long, device=x.device).flatten()
        for b in range(x.shape[0]):
            chosen = (rank[b][None] < counts[:, None]).reshape(steps + 1, 1, *x.shape[2:])  # (S+1, 1, *spatial)
            if mode == "deletion":
                images = torch.where(chosen, base[b : b + 1], x[b : b + 1])
            else:
                images = torch.where(chosen, x[b : b + 1], base[b : b + 1])
            logits = forward_logits(model, images, batch_size)
            scores.append(target_scores(logits, t[b].expand(steps + 1), probability))
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
