"""The evidence fill: what a Med-CAM mask puts where it removes the image.

The evidence is ``e = m * x + (1 - m) * b``. The paper's ``e = m * x`` is the fill ``b = 0``, the
zero of the network's input space. That zero is a neutral "nothing here" only where it is an
in-distribution value, e.g. after mean normalisation (zero is the mean intensity). After a [0, 1]
intensity scaling it is black, which classifiers never saw: measured on marker images, ResNet-18
classified a black image as a *marker class* in 100% of cases, and masks found with the zero fill
kept their decision over a new background in only 50% of cases (with the blurred fill: 100%),
because the black context had become part of the "evidence" (docs/benchmarks.md, Med-CAM).

Fills (``fill=`` of :class:`~medcam_monai.medcam.MedCAM`):

- ``"zero"``: the paper's fill.
- ``"mean"``: one value per channel: ``value`` (e.g. the data set's mean), else each image's mean.
- ``"blur"``: a Gaussian-blurred copy of the image (:func:`~medcam_monai.perturbation.blur`):
  in distribution, but without the fine evidence.
- a tensor broadcastable to the image (``(C,)`` channel values or a whole image), or a callable
  ``x -> b``.
- ``"auto"``: ``"zero"`` when zero is in distribution for the input (:func:`zero_in_distribution`),
  else ``"blur"``. A bundle's preprocessing says it without looking at images:
  :func:`fill_from_preprocessing`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import torch

from medcam_monai.perturbation import blur, channel_mean

__all__ = ["FILLS", "Fill", "zero_in_distribution", "fill_from_preprocessing", "resolve_fill", "make_fill", "describe_fill"]

FILLS = ("auto", "zero", "mean", "blur")
Fill = Union[str, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def zero_in_distribution(x: torch.Tensor) -> bool:
    """Whether zero is an ordinary value of ``x`` ``(B, C, *spatial)``: every channel is mean-normalised.

    True when, for every channel over the whole batch, the mean is within a quarter of a standard
    deviation of zero and the channel has negative values (a [0, 1]-scaled image has neither).
    """
    flat = x.detach().float().transpose(0, 1).reshape(x.shape[1], -1)
    mean, std = flat.mean(1), flat.std(1, unbiased=False).clamp_min(1e-6)
    return bool((mean.abs() < 0.25 * std).all() and (flat.amin(1) < 0).all())


def _transforms(preprocessing: Any) -> list:
    if preprocessing is None:
        return []
    if hasattr(preprocessing, "transforms"):  # monai Compose
        return [t for item in preprocessing.transforms for t in _transforms(item)]
    if isinstance(preprocessing, Mapping):
        if "transforms" in preprocessing:  # a Compose's config
            return _transforms(preprocessing["transforms"])
        return [preprocessing]
    if isinstance(preprocessing, Iterable) and not isinstance(preprocessing, (str, bytes)):
        return [t for item in preprocessing for t in _transforms(item)]
    return [preprocessing]


def _get(t: Any, *names: str) -> Any:
    """A setting of a transform object (or of its wrapped array transform) or of its config dict."""
    for name in names:
        if isinstance(t, Mapping):
            if name in t:
                return t[name]
            continue
        for obj in (t, getattr(t, "scaler", None), getattr(t, "normalizer", None)):
            if obj is not None and hasattr(obj, name):
                return getattr(obj, name)
    return None


def _intensity_zero(t: Any) -> str | None:
    """What zero is after transform ``t``: ``"mean"``, ``"minimum"``, or None if ``t`` does not say."""
    name = t.get("_target_", "") if isinstance(t, Mapping) else type(t).__name__
    name = str(name).rsplit(".", 1)[-1].rstrip("d")
    if name == "NormalizeIntensity":
        # subtrahend None: each image's mean is subtracted; a given subtrahend is a data-set mean
        return "mean"
    if name == "ScaleIntensityRange" or name == "ScaleIntensityRangePercentile":
        b_min = _get(t, "b_min")
        return "minimum" if b_min is not None and float(b_min) >= 0 else None
    if name == "ScaleIntensity":
        minv = _get(t, "minv")
        return "minimum" if minv is not None and float(minv) >= 0 else None
    return None


def fill_from_preprocessing(preprocessing: Any) -> str:
    """The fill a bundle's preprocessing implies: ``"zero"``, ``"blur"`` or ``"auto"`` (cannot tell).

    The last intensity transform decides: ``NormalizeIntensity(d)`` makes zero the mean intensity
    (the paper's setting: ``"zero"``); ``ScaleIntensityRange(d)``/``ScaleIntensity(d)`` onto a range
    starting at 0 or above makes zero the darkest value (``"blur"``).

    Args:
        preprocessing: a MONAI ``Compose``, a list of transforms, or their config dicts (``_target_``).

    Example (a bundle's ``inference.json``)::

        "fill": "$medcam_monai.medcam.fill_from_preprocessing(@preprocessing)"
    """
    zero = None
    for t in _transforms(preprocessing):
        zero = _intensity_zero(t) or zero
    return {"mean": "zero", "minimum": "blur"}.get(zero, "auto")


def resolve_fill(fill: Fill, x: torch.Tensor) -> Fill:
    """``fill`` with ``"auto"`` replaced by ``"zero"`` or ``"blur"`` for the input ``x``."""
    if isinstance(fill, str):
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, a tensor or a callable, got {fill!r}.")
        if fill == "auto":
            return "zero" if zero_in_distribution(x) else "blur"
    elif not (isinstance(fill, torch.Tensor) or callable(fill)):
        raise ValueError(f"fill must be one of {FILLS}, a tensor or a callable, got {type(fill).__name__}.")
    return fill


def describe_fill(fill: Fill) -> str:
    """A JSON-friendly name of a fill setting."""
    if isinstance(fill, str):
        return fill
    if isinstance(fill, torch.Tensor):
        return f"tensor{tuple(fill.shape)}"
    return getattr(fill, "__name__", type(fill).__name__)


def make_fill(
    x: torch.Tensor, fill: Fill, sigma: float | None = None, value: torch.Tensor | Iterable[float] | float | None = None
) -> torch.Tensor:
    """The values ``b`` ``(B, C, *spatial)`` that replace removed voxels: ``e = m * x + (1 - m) * b``.

    Args:
        x: the images ``(B, C, *spatial)``.
        fill: ``"zero"``, ``"mean"``, ``"blur"``, ``"auto"``, a tensor broadcastable to ``x`` (a 1-D
            tensor holds one value per channel), or a callable ``x -> b``.
        sigma: the blur's standard deviation in voxels (default 1/16 of the smallest side).
        value: ``"mean"``: one value per channel (or one for all), e.g. the data set's mean; None
            uses each image's channel means.
    """
    fill = resolve_fill(fill, x)
    if isinstance(fill, torch.Tensor):
        b = fill.to(x)
        if b.ndim == 1:
            b = b.view(1, -1, *([1] * (x.ndim - 2)))
    elif callable(fill) and not isinstance(fill, str):
        b = fill(x)
        if not isinstance(b, torch.Tensor):
            raise ValueError(f"the fill callable must return a tensor, got {type(b).__name__}.")
        b = b.to(x)
    elif fill == "zero":
        b = torch.zeros_like(x)
    elif fill == "mean":
        if value is None:
            b = channel_mean(x)
        else:
            b = torch.as_tensor(value, dtype=x.dtype, device=x.device).reshape(1, -1, *([1] * (x.ndim - 2)))
    else:  # "blur"
        b = blur(x, sigma)
    try:
        return torch.broadcast_to(b, x.shape).detach().clone()
    except RuntimeError as err:
        raise ValueError(
            f"the fill of shape {tuple(b.shape)} does not broadcast to the image {tuple(x.shape)}: give one value "
            f"per channel ({x.shape[1]}), one image ({tuple(x.shape[1:])}) or one per case."
        ) from err
