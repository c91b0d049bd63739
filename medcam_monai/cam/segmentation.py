"""Seg-Grad CAM and Seg-HiRes-Grad CAM for segmentation networks, on whole inputs or through a
MONAI sliding-window inferer.

The target is ``Y = sum_{p in M} y_c(p)`` for a class ``c`` and a pixel set ``M`` per case (logits by
default, probabilities with ``use_probabilities``). The two methods differ only in how the layer's
channels are weighted (see :mod:`medcam_monai.cam.core`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import torch

from medcam_monai.cam.core import BaseCAM, target_gradient
from medcam_monai.cam.pixel_sets import PixelSet, resolve_activation, resolve_pixel_set
from medcam_monai.explanation import HEATMAP, Explanation, like_input
from medcam_monai.hooks import LayerRecorder, frozen, gradients_enabled, resolve_layer
from medcam_monai.validation import check_image

__all__ = [
    "SegHiResGradCAM",
    "SegGradCAM",
    "EmptyPixelSetWarning",
    "check_segmentation_output",
    "resolve_seg_classes",
]


class EmptyPixelSetWarning(UserWarning):
    """A case's pixel set is empty: its map is all zeros."""


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


def resolve_seg_classes(classes, batch: int, num_channels: int, device: torch.device) -> torch.Tensor:
    """Target classes ``(B, K)``.

    Args:
        classes: None (every foreground channel ``1..C-1``; channel 0 of a single-channel net), an
            int, a sequence of ``K`` ints (for every case), or a ``(B,)``/``(B, K)`` tensor.
    """
    if classes is None:
        t = torch.arange(1 if num_channels > 1 else 0, num_channels, device=device)[None].expand(batch, -1)
    else:
        t = torch.as_tensor(classes, dtype=torch.long, device=device)
        if t.ndim == 0:
            t = t.view(1, 1).expand(batch, 1)
        elif t.ndim == 1 and not isinstance(classes, torch.Tensor):
            t = t[None].expand(batch, -1)
        elif t.ndim == 1:
            t = t[:, None]
        if t.ndim != 2 or t.shape[0] != batch or t.shape[1] == 0:
            raise ValueError(
                f"classes must be an int, a list of ints or a (B, K) tensor for B={batch}; got shape {tuple(t.shape)}."
            )
    bad = t[(t < 0) | (t >= num_channels)]
    if bad.numel():
        raise ValueError(
            f"Class {int(bad[0])} is out of range: the network outputs {num_channels} class channel(s) "
            f"(valid indices 0..{num_channels - 1})."
        )
    return t.contiguous()


class _SegmentationCAM(BaseCAM):
    """Gradient CAM of a segmentation network for a class and a pixel set per case.

    Args:
        model, layer, relu, normalize, use_probabilities, activation, align_corners, check_layer: see
            :class:`~medcam_monai.cam.core.BaseCAM`.
        inferer: a ``monai.inferers.SlidingWindowInferer`` (the bundle's): the input is explained
            window by window with its ``roi_size``, ``overlap``, ``mode``, ``sigma_scale``,
            ``sw_batch_size`` (see :func:`~medcam_monai.cam.sliding.sliding_window_cam`). None: the
            whole input goes through the network at once.
    """

    def __init__(self, model, layer=None, relu=False, normalize=None, use_probabilities=False,
                 activation="auto", align_corners=False, check_layer=True, inferer=None) -> None:
        super().__init__(model, layer, relu, normalize, use_probabilities, activation, align_corners, check_layer)
        if inferer is not None:
            from monai.inferers import SlidingWindowInferer

            if not isinstance(inferer, SlidingWindowInferer):
                raise TypeError(f"inferer must be a monai.inferers.SlidingWindowInferer or None, got {type(inferer).__name__}.")
        self.inferer = inferer

    def __call__(
        self,
        x: torch.Tensor,
        classes: int | Sequence[int] | torch.Tensor | None = None,
        pixels: PixelSet | str | torch.Tensor | None = "predicted",
    ) -> Explanation:
        """Explain ``x``.

        Args:
            x: ``(B, C_in, *spatial)`` image batch, 2D or 3D (a ``MetaTensor`` keeps its metadata).
            classes: target classes, see :func:`resolve_seg_classes`; ``K`` targets give ``K`` map
                channels from one forward pass (one backward each).
            pixels: the pixel set ``M``: ``"predicted"`` (default), ``"image"``, a mask tensor, or a
                :class:`~medcam_monai.cam.pixel_sets.PixelSet` (``Predicted``, ``Box``, ``Point``,
                ``Mask``, ``WholeImage``).

        Returns:
            An :class:`Explanation` with ``map`` ``(B, K, *spatial)``, ``layer_map`` ``(B, K, *grid)``
            (None in the sliding route when windows do not fall on the layer's grid), ``target``
            ``(B, K)`` and ``scores``: ``pixels`` (size of ``M``) and ``target_score`` (``Y``), each ``(B, K)``.
        """
        start = time.perf_counter()
        check_image(x)
        pixel_set = resolve_pixel_set(pixels)
        xt = x.as_tensor() if hasattr(x, "as_tensor") else x
        with frozen(self.model), gradients_enabled():
            xt = xt.detach().clone()  # a tensor made under inference_mode cannot join a graph
            if self.inferer is None:
                result = self._direct(xt, classes, pixel_set)
            else:
                from medcam_monai.cam.sliding import sliding_window_cam

                result = sliding_window_cam(self, xt, classes, pixel_set, self.inferer)
        layer_map, full_map = self._finish(result["layer_map"], result["map"])
        empty = result["pixels"] == 0
        if bool(empty.any()):
            where = [(int(b), int(result["classes"][b, k])) for b, k in torch.nonzero(empty)[:5]]
            warnings.warn(
                f"The pixel set is empty for (case, class) {where}: Y = 0 and its map is all zeros. Check "
                f"the class, or give a Box/Point/Mask instead of the predicted pixels.",
                EmptyPixelSetWarning,
                stacklevel=2,
            )
        settings = {**self.settings(), "layer": result["layer"], "pixels": pixel_set.describe(), **result.get("settings", {})}
        return Explanation(
            map=like_input(x, full_map),
            kind=HEATMAP,
            method=self.method,
            target=result["classes"],
            scores={"pixels": result["pixels"], "target_score": result["target_score"], "empty": empty},
            layer_map=layer_map,
            seconds=time.perf_counter() - start,
            settings=settings,
        )

    def _direct(self, x: torch.Tensor, classes, pixel_set: PixelSet) -> dict:
        layer = self._layer_name(x[:1])
        resolve_layer(self.model, layer)
        with LayerRecorder(self.model, [layer], as_leaf=True) as rec:
            out, acts = self._forward(rec, layer, x)
        out = check_segmentation_output(out, x.shape)
        self._check_depends_on_input(layer, x, acts)
        activation = resolve_activation(self.activation, out.shape[1])
        cls = resolve_seg_classes(classes, x.shape[0], out.shape[1], x.device)
        logits = out.detach()
        masks = pixel_set.masks(logits, cls, activation)
        maps, values = [], []
        n_targets = cls.shape[1]
        for k in range(n_targets):
            g, y = target_gradient(logits, masks[:, k], cls[:, k], activation, self.use_probabilities)
            grads = self._gradient((g * out).sum(), acts, layer, retain=k < n_targets - 1)
            maps.append(self._layer_cam(grads, acts, x.shape[2:]))
            values.append(y)
        layer_map = torch.stack(maps, 1)
        return {
            "layer": layer,
            "layer_map": layer_map,
            "map": self._upsample(layer_map, x.shape[2:]),
            "classes": cls,
            "pixels": masks.flatten(2).sum(-1),
            "target_score": torch.stack(values, 1),
        }


class SegHiResGradCAM(_SegmentationCAM):
    """Seg-HiRes-Grad CAM: ``L(p) = sum_k dY/dA^k(p) * A^k(p)`` for ``Y = sum_{p in M} y_c(p)``.

    Element-wise gradients keep the map faithful to ``Y``: with a 1x1 convolution head of bias ``b``
    on the layer, ``L = M * (y_c - b_c)`` exactly. Arguments: see :class:`_SegmentationCAM`.

    Example::

        cam = SegHiResGradCAM(net, inferer=SlidingWindowInferer((96, 96, 96), overlap=0.25))
        e = cam(ct, classes=[1, 2], pixels="predicted")   # e.map: (1, 2, D, H, W)
    """

    method = "seg_hires_grad_cam"
    pooled = False


class SegGradCAM(_SegmentationCAM):
    """Seg-Grad CAM: each channel weighted by the spatial mean of ``dY/dA^k``.

    With a 1x1 convolution head of bias ``b``: ``L = (|M| / Z) * (y_c - b_c)`` everywhere, ``Z`` the
    number of layer positions. Arguments: see :class:`_SegmentationCAM`.
    """

    method = "seg_grad_cam"
    pooled = True
