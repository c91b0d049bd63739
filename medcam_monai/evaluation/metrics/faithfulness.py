"""Faithfulness: does the classifier keep its decision on the evidence alone, and over a new background?

These are Med-CAM's own scores (the evidence ``m * x`` and the robustness image
``m * x + (1 - m) * r`` its loss is built on); Quantus has no metric of them (its ``Sufficiency``
asks whether cases with similar explanations get the same prediction, a different question), so
they are ours.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medcam_monai.evaluation.metrics.common import (
    Background,
    MapLike,
    background_image,
    forward_logits,
    single_map,
    target_scores,
)
from medcam_monai.hooks import frozen

__all__ = ["decision_kept", "faithfulness"]


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
    m = single_map(mask, x).clamp(0, 1)
    r = background_image(x, background, seed)
    with frozen(model):
        logits = forward_logits(model, torch.cat([x, m * x, m * x + (1 - m) * r]), batch_size)
    lx, le, lr = logits.split(x.shape[0])
    t = lx.argmax(-1) if target is None else torch.as_tensor(target, dtype=torch.long, device=lx.device).flatten()
    out = {"target": t}
    for name, lg in (("x", lx), ("e", le), ("rob", lr)):
        out[f"probs_{name}"] = lg.softmax(-1)
        out[f"prob_{name}"] = target_scores(lg, t, True)
    out["kept_e"] = decision_kept(lx, le)
    out["kept_rob"] = decision_kept(lx, lr)
    out["confidence_gain"] = out["prob_e"] - out["prob_x"]
    return out
