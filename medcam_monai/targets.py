"""Which class each explanation is about: one resolver for every explainer.

Every explainer takes ``target=`` in the same forms (None, an int, ``K`` ints, a ``(B,)`` or
``(B, K)`` tensor) and turns it into a ``(B, K)`` long tensor here: ``K`` maps per case, one per
target class. What None means depends on the network: the predicted class of a classifier, every
foreground channel of a segmentation network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["TargetSpec", "classifier_targets", "segmentation_targets"]

TargetSpec = int | Sequence[int] | torch.Tensor | None


def _as_table(target: TargetSpec, batch: int, device: torch.device) -> torch.Tensor:
    """``target`` (not None) as ``(B, K)``: an int is one target for every case, a sequence ``K``
    targets for every case, a ``(B,)`` tensor one per case, a ``(B, K)`` tensor as it is."""
    t = torch.as_tensor(target, dtype=torch.long, device=device)
    if t.ndim == 0:
        t = t.view(1, 1).expand(batch, 1)
    elif t.ndim == 1 and not isinstance(target, torch.Tensor):
        t = t[None].expand(batch, -1)
    elif t.ndim == 1:
        t = t.expand(batch) if t.numel() == 1 else t
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] != batch or t.shape[1] == 0:
        raise ValueError(
            f"target must be an int, a list of ints (the same for every case), a (B,) tensor (one per case) or a "
            f"(B, K) tensor for B={batch}; got shape {tuple(t.shape)}."
        )
    return t.contiguous()


def _check_range(t: torch.Tensor, num_classes: int, has: str) -> torch.Tensor:
    """``t`` when every class is in ``0..num_classes-1``; ``has`` says what the network has, for the message."""
    bad = t[(t < 0) | (t >= num_classes)]
    if bad.numel():
        raise ValueError(f"Target class {int(bad[0])} is out of range: {has} (valid indices 0..{num_classes - 1}).")
    return t


def classifier_targets(target: TargetSpec, logits: torch.Tensor, max_targets: int | None = None) -> torch.Tensor:
    """Target classes ``(B, K)`` of a classifier with logits ``(B, num_classes)``.

    Args:
        target: None (the predicted class; class 0 of a single-logit binary classifier), an int, ``K``
            ints, or a ``(B,)``/``(B, K)`` tensor.
        logits: the classifier's output on the batch.
        max_targets: the most targets per case the explainer can take (Med-CAM: 1; then a list of ``B``
            ints is read as one class per case).
    """
    batch, n = logits.shape
    if target is None:
        default = logits.argmax(1) if n > 1 else torch.zeros(batch, dtype=torch.long, device=logits.device)
        return default[:, None]
    if max_targets == 1 and not isinstance(target, torch.Tensor) and isinstance(target, Sequence) and len(target) == batch > 1:
        target = torch.as_tensor(target)  # one class per case is the only reading for a one-target explainer
    t = _check_range(_as_table(target, batch, logits.device), n, f"the classifier has {n} classes")
    if max_targets is not None and t.shape[1] > max_targets:
        raise ValueError(
            f"Got {t.shape[1]} target classes per case; this explainer explains at most {max_targets} per call. "
            f"Give one class per case (an int, or a (B,) tensor)."
        )
    return t


def segmentation_targets(target: TargetSpec, batch: int, num_channels: int, device: torch.device) -> torch.Tensor:
    """Target classes ``(B, K)`` of a segmentation network with ``num_channels`` output channels.

    Args:
        target: None (every foreground channel ``1..C-1``; channel 0 of a single-channel net), an int,
            ``K`` ints (for every case), or a ``(B,)``/``(B, K)`` tensor.
    """
    if target is None:
        t = torch.arange(1 if num_channels > 1 else 0, num_channels, device=device)[None].expand(batch, -1).contiguous()
        return t
    return _check_range(_as_table(target, batch, device), num_channels, f"the network outputs {num_channels} class channel(s)")
