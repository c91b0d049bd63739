"""Deletion and insertion curves (Petsiuk et al. 2018): the target's score as the most salient pixels are removed or added.

Why ours and not Quantus's ``PixelFlipping`` / ``RegionPerturbation``: on 2D images the three agree
(``tests/test_metrics_quantus.py``, to 1e-5): our deletion curve with ``steps = N / k`` is
``PixelFlipping(features_in_step=k)`` after each step; for a map constant on ``p x p`` patches,
``RegionPerturbation(patch_size=p)`` is ``p(x)`` minus our curve; our insertion curve is pixel
flipping started from the baseline image (Quantus has no insertion metric). Ours is kept for what
Quantus 0.6 does not do: 3D volumes (it accepts batched 1D and 2D inputs only); a segmentation
network scored through its sliding-window inferer (the runner's ``PixelSetScore``); the ``S + 1``
images of a case sent to the model as torch batches on its device, with no numpy round trip per
step; in-distribution backgrounds (a blurred copy of the image); and an AUC over the fractions
``0 .. 1`` that includes the untouched image (Quantus's AUC helper calls ``np.trapz``, which
NumPy 2.4, the NumPy of this project's environment, no longer has).
"""

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

__all__ = ["MODES", "PerturbationCurve", "perturbation_curve", "deletion_curve", "insertion_curve"]


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


MODES = ("deletion", "insertion")


def perturbation_curve(
    model: nn.Module,
    x: torch.Tensor,
    saliency: MapLike,
    mode: str,
    target: torch.Tensor | Sequence[int] | None = None,
    steps: int = 20,
    baseline: Background = "blur",
    batch_size: int = 32,
    probability: bool = True,
    seed: int = 0,
) -> PerturbationCurve:
    """Follow the target's score as pixels are removed (deletion) or added (insertion), most salient first.

    Deletion starts from ``x`` and replaces its pixels by the baseline; a faithful map makes the
    score fall fast (low AUC). Insertion starts from the baseline and puts back the pixels of
    ``x``; a faithful map makes the score rise fast (high AUC). Pixels are ranked by the map, all
    channels of a pixel together; a binary mask's pixels tie and are taken in a fixed pseudo-random
    order (from ``seed``), mask pixels before the rest. At step ``i`` the top
    ``round(i / steps * N)`` pixels are removed (deletion) or come from ``x`` (insertion).

    Args:
        model: classifier returning ``(B, num_classes)`` logits.
        x: ``(B, C, *spatial)`` images.
        saliency: ``(B, 1, *spatial)`` heatmap or mask at the input's resolution (or an Explanation).
        mode: ``"deletion"`` or ``"insertion"``.
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
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    s = single_map(saliency, x)
    base = background_image(x, baseline, seed)
    # insertion is deletion with the roles of the image and the baseline swapped
    start, end = (x, base) if mode == "deletion" else (base, x)
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
            images = torch.where(chosen, end[b : b + 1], start[b : b + 1])
            logits = forward_logits(model, images, batch_size)
            scores.append(target_scores(logits, t[b].expand(steps + 1), probability))
    scores = torch.stack(scores).cpu()
    return PerturbationCurve(
        mode=mode, fractions=fractions, scores=scores, auc=torch.trapezoid(scores, fractions, dim=-1), target=t.cpu()
    )


def deletion_curve(model: nn.Module, x: torch.Tensor, saliency: MapLike, target=None, **options) -> PerturbationCurve:
    """:func:`perturbation_curve` in ``"deletion"`` mode (Petsiuk et al. 2018): lower AUC is better."""
    return perturbation_curve(model, x, saliency, "deletion", target, **options)


def insertion_curve(model: nn.Module, x: torch.Tensor, saliency: MapLike, target=None, **options) -> PerturbationCurve:
    """:func:`perturbation_curve` in ``"insertion"`` mode (Petsiuk et al. 2018): higher AUC is better."""
    return perturbation_curve(model, x, saliency, "insertion", target, **options)
