"""Checks of what goes into and comes out of an explained network; each error names the problem and the fix.

- :func:`check_image`: a batch ``(B, C, *spatial)`` of finite floats;
- :func:`check_network_input`: that batch against what the network takes (its first layer's
  ``in_channels`` and spatial dims), before the network raises a raw torch error;
- :func:`check_not_constant` and :func:`first_constant_step`: a constant network input explains
  nothing, and the step of the preprocessing that made it constant is named;
- :func:`check_class_logits`, :func:`check_segmentation_output`: what the network returned;
- :func:`task_of_output`, :func:`task_of_metadata`: whether a network classifies or segments.

Problems the user can fix are :class:`~medcam_monai.errors.InputError` subclasses (exit code 2 on the
command line); their ``kind`` lets the command line add the flag that fixes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medcam_monai.errors import InputError

__all__ = [
    "CLASSIFICATION",
    "SEGMENTATION",
    "NetworkInputError",
    "ConstantInputError",
    "check_image",
    "check_network_input",
    "check_batch_axis",
    "network_input_spec",
    "check_not_constant",
    "first_constant_step",
    "check_class_logits",
    "check_segmentation_output",
    "task_of_output",
    "task_of_metadata",
]

# the task names of medcam_monai.registry (kept equal; registry imports nothing from here)
CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"

_AXES = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, D, H, W)"}


def check_image(x: torch.Tensor, spatial_dims: int | None = None, name: str = "image", network: nn.Module | None = None) -> int:
    """Check a batch ``(B, C, *spatial)`` and return its number of spatial dimensions.

    Args:
        x: the batch.
        spatial_dims: the expected number of spatial dims (None: 1 to 3).
        name: what the input is called in messages.
        network: the network it goes into: its first layer's dims and channels are checked too
            (:func:`check_network_input`), so a ``(C, H, W)`` image without batch axis is named as such.

    Raises:
        TypeError: not a tensor.
        ValueError: empty batch, wrong number of dimensions, non-float dtype, NaN or Inf values;
            :class:`NetworkInputError` for an input the network does not take.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"The {name} must be a torch.Tensor of shape (B, C, *spatial), got {type(x).__name__}.")
    if network is not None:
        check_batch_axis(network, x.shape, name=name)
    if spatial_dims is None:
        spatial_dims = x.ndim - 2
        if spatial_dims not in _AXES:
            raise ValueError(
                f"The {name} must be a batch (B, C, *spatial) with 1 to 3 spatial dims, got shape "
                f"{tuple(x.shape)}. Add the batch and channel axes, e.g. x[None, None] for one 2D image."
            )
    elif x.ndim != spatial_dims + 2:
        raise ValueError(
            f"The {name} has shape {tuple(x.shape)} but spatial_dims={spatial_dims} expects "
            f"{_AXES.get(spatial_dims, f'{spatial_dims + 2} dims')}. Add the missing batch/channel axes "
            f"or set spatial_dims={x.ndim - 2}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"The {name} batch is empty (shape {tuple(x.shape)}): pass at least one case.")
    if any(s == 0 for s in x.shape[1:]):
        raise ValueError(f"The {name} has an empty channel or spatial axis: shape {tuple(x.shape)}.")
    if not torch.is_floating_point(x):
        raise ValueError(f"The {name} must be floating point, got {x.dtype}: convert it with x.float().")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).reshape(x.shape[0], -1).sum(1)
        cases = [int(i) for i in torch.nonzero(bad).flatten()[:5]]
        raise ValueError(
            f"The {name} holds NaN or Inf values ({int(bad.sum())} voxels, in case(s) {cases}). "
            f"Fix the preprocessing (e.g. ScaleIntensity on a constant image) or replace them with "
            f"torch.nan_to_num before explaining (on the command line: --nan-to-num)."
        )
    return spatial_dims


def check_class_logits(out: object, batch: int, what: str = "classifier", min_classes: int = 2) -> torch.Tensor:
    """Check that a classifier returned ``(B, num_classes)`` logits, ``num_classes >= min_classes``,
    and return them (the first tensor of a tuple output)."""
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"The {what} must return a tensor of logits (B, num_classes), got {type(out).__name__}.")
    if out.ndim != 2 or out.shape[0] != batch:
        raise ValueError(
            f"The {what} returned shape {tuple(out.shape)}, expected logits (B, num_classes) with B={batch}. "
            f"A segmentation network (B, C, *spatial) is explained with SegHiResGradCAM; a network with "
            f"a pooled output of shape (B, C, 1, 1) needs a flatten at its end."
        )
    if out.shape[1] < min_classes:
        raise ValueError(
            f"The {what} returned {out.shape[1]} class logit per case; at least {min_classes} are needed "
            f"(softmax over classes). Wrap a single-logit binary classifier to return [-z, z]/2."
        )
    return out


def check_segmentation_output(out: object, x_shape: Sequence[int]) -> torch.Tensor:
    """The network's class logits ``(B, C, *spatial)`` on the input grid ``x_shape``.

    A tuple/list output (deep supervision) gives its first tensor.

    Raises:
        TypeError: no tensor output.
        ValueError: no class channel, another batch size or another spatial grid than the input.
    """
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"The segmentation network returned {type(out).__name__}; expected a tensor of class logits "
            f"(B, C, *spatial). Wrap it, e.g. lambda x: net(x)['pred']."
        )
    x_shape = tuple(x_shape)
    if out.ndim == len(x_shape) - 1 and tuple(out.shape[1:]) == x_shape[2:]:
        raise ValueError(
            f"The network output {tuple(out.shape)} has no class channel: a segmentation CAM needs logits "
            f"(B, C, *spatial). Add the channel axis (out[:, None]) for a single-class net."
        )
    if out.ndim != len(x_shape) or out.shape[0] != x_shape[0]:
        raise ValueError(
            f"The network output {tuple(out.shape)} is not (B, C, *spatial) for the input {x_shape}: a "
            f"segmentation CAM needs one class channel axis and the input's spatial axes. A classifier "
            f"(B, num_classes) is explained with GradCAM or HiResCAM."
        )
    if tuple(out.shape[2:]) != x_shape[2:]:
        raise ValueError(
            f"The network output's grid {tuple(out.shape[2:])} differs from its input's {x_shape[2:]}; "
            f"pixel sets are defined on the input grid, so the output must have the input's spatial size."
        )
    return out


class NetworkInputError(InputError):
    """An input the network cannot take (its shape, channels or dimensions).

    Attributes:
        kind: ``"batch"`` (no batch axis), ``"dims"`` (2D/3D mismatch; ``"slice"`` when a volume meets
            a 2D network), ``"channels"`` (``"rgb"``/``"grey"``/``"volume"`` when one of those fixes
            applies); the command line adds its flag for it.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ConstantInputError(InputError):
    """Every value of the network input is the same: a map of it would explain nothing."""

    kind = "constant"


_CONV = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3, nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}


def network_input_spec(network: nn.Module) -> tuple[int | None, int | None]:
    """``(spatial_dims, in_channels)`` the network takes, from its first convolution (None when it
    starts with something else: a linear layer, a custom module)."""
    for module in network.modules():
        for cls, dims in _CONV.items():
            if isinstance(module, cls):
                return dims, int(module.in_channels)
        if isinstance(module, nn.Linear):
            return None, None
    return None, None


def check_batch_axis(network: nn.Module, x_shape: Sequence[int], name: str = "image") -> None:
    """Raise :class:`NetworkInputError` for one image ``(C, *spatial)`` given where a batch belongs: its
    dims are one more than the network's spatial dims and its first axis is the network's ``in_channels``."""
    dims, in_channels = network_input_spec(network)
    shape = tuple(int(s) for s in x_shape)
    if dims is not None and len(shape) == dims + 1 and shape[0] == in_channels:
        raise NetworkInputError(
            f"The {name} has shape {shape} but the network takes batches (B, C, *spatial) of {dims}D images with "
            f"{in_channels} channel(s): it has no batch axis. Add it: x[None] (shape {(1, *shape)}).",
            "batch",
        )


def check_network_input(network: nn.Module, x_shape: Sequence[int], batched: bool = True, name: str = "image") -> None:
    """Raise :class:`NetworkInputError` when an input of shape ``x_shape`` does not fit the network's first
    convolution (its spatial dims and ``in_channels``), naming the fix.

    The first convolution is the first one registered, which is the input layer of the usual
    families (MONAI, timm, torchvision) but not of every network: use it to explain a failure of
    the network on an input (as :func:`medcam_monai.handlers.check_network_takes` does), not to refuse one.

    Args:
        network: the network (its modules are read).
        x_shape: ``(B, C, *spatial)`` (``batched``) or ``(C, *spatial)`` of one case.
        batched: whether ``x_shape`` has the batch axis.
        name: what the input is called in messages.
    """
    shape = tuple(int(s) for s in x_shape)
    dims, in_channels = network_input_spec(network)
    if dims is None:
        return
    if batched:
        check_batch_axis(network, shape, name)
    case = shape[1:] if batched else shape
    spatial = case[1:]
    if len(spatial) != dims:
        if dims == 2 and len(spatial) == 3:
            raise NetworkInputError(
                f"The {name} is a 3D volume (channels, spatial) = {case} but the network is 2D (its first layer "
                f"takes {in_channels}-channel 2D images). Explain one slice of it: pick a slice index along the "
                f"last axis (0..{spatial[-1] - 1}; on the command line: --slice K).",
                "slice",
            )
        raise NetworkInputError(
            f"The {name} has {len(spatial)} spatial dims (channels, spatial) = {case} but the network takes "
            f"{dims}D images with {in_channels} channel(s).",
            "dims",
        )
    channels = case[0]
    if channels != in_channels:
        if channels == 1 and in_channels == 3:
            fix, kind = "repeat the grey channel three times (on the command line: --rgb)", "rgb"
        elif channels in (3, 4) and in_channels == 1 and len(spatial) == 2:
            fix, kind = "average the colour channels to one grey channel (on the command line: --grey)", "grey"
        elif in_channels == 1:
            fix, kind = (f"it looks like a 4D image (volumes along the channel axis): choose one volume 0..{channels - 1} "
                         f"(on the command line: --volume N)"), "volume"
        else:
            fix, kind = "give an image with the channels the bundle was trained on", "channels"
        raise NetworkInputError(
            f"The {name} has {channels} channel(s) (shape {case}, channels first) but the network's first layer "
            f"takes in_channels={in_channels}: {fix}.",
            kind,
        )


def check_not_constant(x: torch.Tensor, name: str = "network input", why: str = "") -> None:
    """Raise :class:`ConstantInputError` when every value of ``x`` is the same.

    A constant input has no evidence to find: Med-CAM would keep the decision with any mask and a
    CAM has nothing to weigh (a 16-bit image clipped by an 8-bit intensity window, a 1x1 image
    resized, a blank slice). ``why`` (e.g. from :func:`first_constant_step`) says how it happened.
    """
    if x.numel() == 0:
        return
    lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        raise ConstantInputError(
            f"The {name} is constant (every value is {lo:g}, shape {tuple(x.shape)}): an explanation of it would "
            f"show nothing. {why}".strip()
        )


def _is_constant(value: Any) -> bool | None:
    t = value if isinstance(value, torch.Tensor) else None
    if t is None:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            return None
    if t.numel() == 0 or not (torch.is_floating_point(t) or t.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool)):
        return None
    t = t.float()
    return bool(t.min() == t.max())


def first_constant_step(transforms: Sequence[Callable], data: Mapping, key: str = "image") -> tuple[int | None, str]:
    """Re-run ``transforms`` one by one on ``data`` and say which one made ``data[key]`` constant.

    Args:
        transforms: the preprocessing's transforms (a ``Compose``'s ``.transforms``), in order.
        data: the case as the preprocessing receives it (``{"image": path}``).
        key: the image's key.

    Returns:
        The index of that transform (None when the source itself is constant or it cannot tell) and one
        sentence naming it (its class and settings) and the value range before it, or saying that the
        source image itself is constant; empty when it cannot tell.
    """
    d: Any = dict(data)
    before = None
    for i, t in enumerate(transforms):
        try:
            d = t(d)
        except Exception:  # noqa: BLE001 - a diagnosis only: the caller reports the constant input itself
            return None, ""
        value = d.get(key) if isinstance(d, Mapping) else None
        if value is None:
            continue
        constant = _is_constant(value)
        if constant is None:
            continue
        v = torch.as_tensor(value).float()
        if constant:
            name = type(t).__name__
            settings = {k: getattr(t, k) for k in ("a_min", "a_max", "b_min", "b_max", "clip", "minv", "maxv", "spatial_size")
                        if hasattr(t, k)}
            settings.update({k: getattr(getattr(t, "scaler", None), k) for k in ("a_min", "a_max", "b_min", "b_max", "clip")
                             if hasattr(getattr(t, "scaler", None), k)})
            if before is None:
                return None, f"The source image itself is constant (every value {float(v.min()):g}) when loaded by {name}."
            detail = ", ".join(f"{k}={v_}" for k, v_ in settings.items())
            return i, (
                f"It became constant at step {i} of the bundle's preprocessing, {name}({detail}): before it the values "
                f"ranged {before[0]:g}..{before[1]:g} over shape {before[2]}. The image does not fit what the bundle "
                f"expects (e.g. a 16-bit image into an 8-bit intensity window, or an image too small to resize): "
                f"convert it to what the bundle was trained on, or override that step's settings."
            )
        before = (float(v.min()), float(v.max()), tuple(v.shape))
    return None, ""


def task_of_output(out: object, x_shape: Sequence[int]) -> str:
    """``"classification"`` for logits ``(B, num_classes)``, ``"segmentation"`` for ``(B, C, *spatial)``
    on the input's spatial grid (a tuple output: its first tensor).

    Raises:
        ValueError: any other output, naming its shape.
    """
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if isinstance(out, Mapping):
        out = next((v for v in out.values() if isinstance(v, torch.Tensor)), out)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"The network returned {type(out).__name__}; cannot tell whether it classifies or segments.")
    x_shape = tuple(x_shape)
    if out.ndim == 2:
        return CLASSIFICATION
    if out.ndim == len(x_shape) and tuple(out.shape[2:]) == x_shape[2:]:
        return SEGMENTATION
    raise ValueError(
        f"The network maps an input {x_shape} to {tuple(out.shape)}: neither class logits (B, num_classes) nor a "
        f"segmentation (B, C, *spatial) on the input grid, so no explainer of this project fits it. Name the task "
        f"with metadata.json's network_data_format outputs or choose the method (--method)."
    )


def task_of_metadata(metadata: Mapping | None) -> str | None:
    """The task a bundle's ``metadata.json`` declares in ``network_data_format.outputs`` (None if it does not).

    ``format`` ``"segmentation"``/``"labels"`` or ``type`` ``"image"`` is a segmentation network; ``type``
    ``"probabilities"``/``"logits"`` or ``format`` ``"classes"`` a classifier (the model zoo's words).
    """
    outputs = ((metadata or {}).get("network_data_format") or {}).get("outputs") or {}
    if not isinstance(outputs, Mapping) or not outputs:
        return None
    first = outputs.get("pred") if isinstance(outputs.get("pred"), Mapping) else next(iter(outputs.values()))
    if not isinstance(first, Mapping):
        return None
    fmt, kind = str(first.get("format", "")).lower(), str(first.get("type", "")).lower()
    if fmt in ("segmentation", "labels", "label", "mask") or (kind == "image" and fmt not in ("classes", "class")):
        return SEGMENTATION
    if kind in ("probabilities", "probability", "logits", "scores") or fmt in ("classes", "class", "classification"):
        return CLASSIFICATION
    return None
