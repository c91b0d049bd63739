"""Pixel sets ``M``: where, in the network's output, the target class ``c`` is summed.

Each pixel set turns the network's logits ``(B, C, *spatial)`` (the whole-volume blended logits in
the sliding-window route) and the classes ``(B, K)`` into boolean masks ``(B, K, *spatial)``, one
per case and target. Coordinates are voxel indices on the network's input grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "PixelSet",
    "Predicted",
    "WholeImage",
    "Box",
    "Point",
    "Mask",
    "resolve_pixel_set",
    "resolve_activation",
    "class_probabilities",
]


def resolve_activation(activation: str, num_channels: int) -> str:
    """``"auto"`` is softmax over channels for ``C > 1`` and sigmoid for a single-channel binary net."""
    if activation == "auto":
        return "softmax" if num_channels > 1 else "sigmoid"
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'auto', 'softmax' or 'sigmoid', got {activation!r}.")
    return activation


def class_probabilities(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """Probabilities ``(B, C, ...)`` from logits: softmax over channels, or a per-channel sigmoid."""
    return torch.softmax(logits, dim=1) if activation == "softmax" else torch.sigmoid(logits)


def _per_case(value, batch: int) -> list:
    """One entry per case: a single spec is shared, a list of ``batch`` specs is per case."""
    if len(value) and isinstance(value[0], (list, tuple)):
        return list(value)
    return [value] * batch


class PixelSet:
    """Base class: :meth:`masks` returns ``(B, K, *spatial)`` booleans."""

    def masks(self, logits: torch.Tensor, classes: torch.Tensor, activation: str) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-friendly description for the explanation's settings."""
        return {"type": type(self).__name__}

    @property
    def needs_prediction(self) -> bool:
        """Whether the set depends on the network's output (then the whole input is predicted first)."""
        return False


class Predicted(PixelSet):
    """The pixels predicted as class ``c``.

    Args:
        threshold: None: argmax over channels for softmax nets, ``sigmoid > 0.5`` for sigmoid nets
            (single-channel binary or multi-label). A number: ``probability_c > threshold`` with the
            explainer's activation.
    """

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = threshold

    @property
    def needs_prediction(self) -> bool:
        return True

    def masks(self, logits, classes, activation):
        b = torch.arange(logits.shape[0], device=logits.device)[:, None]
        if self.threshold is None and activation == "softmax":
            return logits.argmax(1, keepdim=True) == classes.view(*classes.shape, *[1] * (logits.ndim - 2))
        probs = class_probabilities(logits, activation)
        threshold = 0.5 if self.threshold is None else self.threshold
        return probs[b, classes] > threshold

    def describe(self):
        return {"type": "Predicted", "threshold": self.threshold}


class WholeImage(PixelSet):
    """Every pixel of the image (``Y`` is the class score summed over the whole output)."""

    def masks(self, logits, classes, activation):
        return torch.ones((*classes.shape, *logits.shape[2:]), dtype=torch.bool, device=logits.device)


class Box(PixelSet):
    """An axis-aligned box ``start <= index < end`` per spatial axis.

    Args:
        start: first voxel index per spatial axis, or one such list per case.
        end: one past the last index per spatial axis (same form as ``start``).
    """

    def __init__(self, start: Sequence, end: Sequence) -> None:
        self.start, self.end = start, end

    def masks(self, logits, classes, activation):
        batch, spatial = logits.shape[0], logits.shape[2:]
        out = torch.zeros((*classes.shape, *spatial), dtype=torch.bool, device=logits.device)
        starts, ends = _per_case(self.start, batch), _per_case(self.end, batch)
        if len(starts) != batch or len(ends) != batch:
            raise ValueError(f"Box needs one start/end for all cases or one per case (batch of {batch}).")
        for i, (s, e) in enumerate(zip(starts, ends)):
            if len(s) != len(spatial) or len(e) != len(spatial):
                raise ValueError(f"Box corners {s}, {e} must have {len(spatial)} coordinates (spatial size {tuple(spatial)}).")
            if any(not 0 <= a < b <= n for a, b, n in zip(s, e, spatial)):
                raise ValueError(
                    f"Box start={list(s)} end={list(e)} is empty or outside the image of spatial size "
                    f"{tuple(spatial)}: need 0 <= start < end <= size on every axis."
                )
            out[(i, slice(None), *[slice(a, b) for a, b in zip(s, e)])] = True
        return out

    def describe(self):
        return {"type": "Box", "start": list(self.start), "end": list(self.end)}


class Point(PixelSet):
    """A single voxel (the class score at one point), or one per case.

    Args:
        index: voxel index per spatial axis, or one such list per case.
    """

    def __init__(self, index: Sequence) -> None:
        self.index = index

    def masks(self, logits, classes, activation):
        if len(self.index) and not isinstance(self.index[0], (list, tuple)):
            points = [self.index] * logits.shape[0]
        else:
            points = list(self.index)
        if len(points) != logits.shape[0]:
            raise ValueError(f"Point needs one index for all cases or one per case (batch of {logits.shape[0]}).")
        return Box([list(p) for p in points], [[int(c) + 1 for c in p] for p in points]).masks(logits, classes, activation)

    def describe(self):
        return {"type": "Point", "index": list(self.index)}


class Mask(PixelSet):
    """A user mask: nonzero voxels are in the set.

    Args:
        mask: ``(*spatial)``, ``(B, 1 or K, *spatial)`` or ``(1, 1 or K, *spatial)``; broadcast over
            cases and targets.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = torch.as_tensor(mask)

    def masks(self, logits, classes, activation):
        spatial = logits.shape[2:]
        m = self.mask.to(logits.device) != 0
        if m.ndim == len(spatial):
            m = m[None, None]
        if m.ndim != len(spatial) + 2 or tuple(m.shape[2:]) != tuple(spatial):
            raise ValueError(
                f"The user mask has shape {tuple(self.mask.shape)}; expected (*spatial) or (B, 1 or K, *spatial) "
                f"with spatial size {tuple(spatial)} (the network input's grid)."
            )
        try:
            return m.expand(*classes.shape, *spatial).clone()
        except RuntimeError as e:
            raise ValueError(
                f"The user mask of shape {tuple(m.shape)} does not broadcast to {tuple(classes.shape)} cases x targets."
            ) from e

    def describe(self):
        return {"type": "Mask", "voxels": int((self.mask != 0).sum())}


def resolve_pixel_set(spec: PixelSet | str | torch.Tensor | None) -> PixelSet:
    """``None``/``"predicted"`` -> :class:`Predicted`, ``"image"`` -> :class:`WholeImage`, a tensor ->
    :class:`Mask`; a :class:`PixelSet` passes through."""
    if spec is None or (isinstance(spec, str) and spec == "predicted"):
        return Predicted()
    if isinstance(spec, str) and spec in ("image", "whole", "whole_image"):
        return WholeImage()
    if isinstance(spec, PixelSet):
        return spec
    if isinstance(spec, torch.Tensor):
        return Mask(spec)
    raise ValueError(
        f"Unknown pixel set {spec!r}: use 'predicted', 'image', a mask tensor, or Predicted(threshold), "
        f"Box(start, end), Point(index), Mask(mask), WholeImage()."
    )
