"""Med-CAM's loss terms as small pure functions, each returning one value per case ``(B,)``.

Norms are taken as means over the non-batch axes (``||m||_1 / N``), so a term's scale does not
depend on the image size and the same weights serve 2D and 3D inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "DISTANCES",
    "DECISIONS",
    "logit_margin",
    "decision_loss",
    "activation_distance",
    "activation_matching",
    "kl_divergence",
    "cross_entropy",
    "area",
    "binarisation",
    "total_variation",
]

DISTANCES = ("mse", "cosine")
DECISIONS = ("margin", "softmargin", "ce")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).float()


def activation_distance(a: torch.Tensor, b: torch.Tensor, distance: str = "mse") -> torch.Tensor:
    """Distance between two activations of shape ``(B, ...)``, per case ``(B,)``.

    ``mse``: mean of ``(a - b)^2``; ``cosine``: ``1 - cos(a, b)`` of the flattened activations.
    """
    if a.shape != b.shape:
        raise ValueError(f"activations differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = _flat(a), _flat(b)
    if distance == "mse":
        return (a - b).pow(2).mean(dim=1)
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8)
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}.")


def activation_matching(
    acts_x: Sequence[torch.Tensor],
    acts_e: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    distance: str = "mse",
) -> torch.Tensor:
    """``sum_l alpha_l * d(phi_l(x), phi_l(e))`` per case ``(B,)``.

    Args:
        acts_x: activations of the image per layer, each ``(B, ...)`` (already post-ReLU).
        acts_e: activations of the masked image, same shapes.
        weights: ``alpha_l`` per layer (default 1 each).
        distance: ``"mse"`` or ``"cosine"``.
    """
    if len(acts_x) != len(acts_e):
        raise ValueError(f"{len(acts_x)} activations of x but {len(acts_e)} of e")
    if not acts_x:
        raise ValueError("activation matching needs at least one layer")
    weights = [1.0] * len(acts_x) if weights is None else list(weights)
    if len(weights) != len(acts_x):
        raise ValueError(f"{len(weights)} layer weights for {len(acts_x)} layers")
    return sum(w * activation_distance(a, b, distance) for w, a, b in zip(weights, acts_x, acts_e))


def kl_divergence(logits_x: torch.Tensor, logits_e: torch.Tensor) -> torch.Tensor:
    """``KL(softmax f(x) || softmax f(e))`` per case ``(B,)`` from logits ``(B, num_classes)``."""
    log_p = F.log_softmax(logits_x.float(), dim=1)
    log_q = F.log_softmax(logits_e.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits ``(B, num_classes)`` against class indices ``(B,)``, per case."""
    return F.cross_entropy(logits.float(), target, reduction="none")


def logit_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``z_t - logsumexp_{j != t} z_j`` per case ``(B,)``: the log-odds ``log(p_t / (1 - p_t))`` of the target.

    Unlike ``p_t`` or the cross-entropy ``-log p_t = softplus(-margin)``, it does not saturate on a
    confident classifier: at ``p_t = 0.9999`` it is 9.2 and still moves one for one with the logits.
    """
    logits = logits.float()
    zt = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf"))
    return zt - torch.logsumexp(others, 1)


def decision_loss(kind: str, logits: torch.Tensor, target: torch.Tensor, kappa: torch.Tensor | float) -> torch.Tensor:
    """The term that keeps the decision on the evidence, per case ``(B,)``.

    - ``"margin"``: the hinge ``relu(kappa - margin)``: full gradient while the evidence is less
      confident than ``kappa`` (a log-odds), none beyond it, so the minimality terms alone shrink a
      mask that has more than it needs.
    - ``"softmargin"``: ``softplus(kappa - margin)``, the cross-entropy shifted by ``kappa``: a
      gradient of ``sigmoid(kappa - margin)`` everywhere (1e-2 instead of the cross-entropy's 1e-4
      at ``p = 0.9999`` when ``kappa = logit(0.99)``).
    - ``"ce"``: the paper's cross-entropy ``-log p_t`` (``kappa`` unused).

    Args:
        logits: ``(B, num_classes)``.
        target: ``(B,)`` class indices.
        kappa: the target log-odds, a number or ``(B,)``.
    """
    if kind == "ce":
        return cross_entropy(logits, target)
    if kind == "margin":
        return F.relu(kappa - logit_margin(logits, target))
    if kind == "softmargin":
        return F.softplus(kappa - logit_margin(logits, target))
    raise ValueError(f"decision must be one of {DECISIONS}, got {kind!r}.")


def area(mask: torch.Tensor) -> torch.Tensor:
    """``||m||_1 / N`` per case: the mean of a mask ``(B, 1, *spatial)`` in ``[0, 1]``."""
    return _flat(mask).abs().mean(dim=1)


def binarisation(mask: torch.Tensor) -> torch.Tensor:
    """``||m - m^2||_1 / N`` per case: 0 for a binary mask, at most 0.25 (all values 0.5)."""
    m = _flat(mask)
    return (m - m * m).abs().mean(dim=1)


def total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per case, for any number of spatial dims.

    The sum over spatial axes of the mean absolute difference between neighbours along that axis.
    Example: an ``n x n`` mask that is 1 on its left half and 0 on its right scores ``1 / (n - 1)``.
    """
    total = torch.zeros(mask.shape[0], device=mask.device, dtype=torch.float32)
    for axis in range(2, mask.ndim):
        if mask.shape[axis] > 1:
            total = total + _flat(torch.diff(mask, dim=axis)).abs().mean(dim=1)
    return total
