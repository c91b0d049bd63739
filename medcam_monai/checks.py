"""Checks of what goes into and comes out of an explained network; each error names the problem and the fix."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_image", "check_class_logits", "check_segmentation_output"]

_AXES = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, D, H, W)"}


def check_image(x: torch.Tensor, spatial_dims: int | None = None, name: str = "image") -> int:
    """Check a batch ``(B, C, *spatial)`` and return its number of spatial dimensions.

    Raises:
        TypeError: not a tensor.
        ValueError: empty batch, wrong number of dimensions, non-float dtype, NaN or Inf values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"The {name} must be a torch.Tensor of shape (B, C, *spatial), got {type(x).__name__}.")
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
            f"torch.nan_to_num before explaining."
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
