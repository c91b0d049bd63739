"""Seg-Grad CAM and Seg-HiRes-Grad CAM for segmentation networks, on whole inputs or through a
MONAI sliding-window inferer.

The target is ``Y = sum_{p in M} y_c(p)`` for a class ``c`` and a pixel set ``M`` per case (logits by
default, probabilities with ``use_probabilities``). The two methods differ only in how the layer's
channels are weighted (see :mod:`medcam_monai.cam.core`). How the input reaches the network is a
route: :class:`WholeInputRoute` (one forward pass) or
:class:`~medcam_monai.cam.sliding.SlidingWindowRoute` (the bundle's sliding-window inferer); both
use only the CAM's public steps.
"""

from __future__ import annotations

import time
import warnings

import torch

from medcam_monai.cam.core import BaseCAM, target_gradient
from medcam_monai.cam.pixel_sets import PixelSet, resolve_activation, resolve_pixel_set
from medcam_monai.cam.sliding import SlidingWindowRoute
from medcam_monai.checks import check_image, check_segmentation_output
from medcam_monai.explanation import HEATMAP, Explanation, like_input
from medcam_monai.hooks import LayerRecorder, frozen, gradients_enabled, resolve_layer
from medcam_monai.targets import TargetSpec, segmentation_targets

__all__ = ["SegHiResGradCAM", "SegGradCAM", "EmptyPixelSetWarning", "WholeInputRoute"]


class EmptyPixelSetWarning(UserWarning):
    """A case's pixel set is empty: its map is all zeros."""


class WholeInputRoute:
    """The whole input through the network at once (one forward pass, one backward per target)."""

    def describe(self, result: dict) -> dict:
        """Settings of the route for the explanation's record (none for a whole input)."""
        return {}

    def run(self, cam: BaseCAM, x: torch.Tensor, target: TargetSpec, pixel_set: PixelSet) -> dict:
        """See :meth:`~medcam_monai.cam.sliding.SlidingWindowRoute.run`."""
        layer = cam.layer_for(x[:1])
        resolve_layer(cam.model, layer)
        with LayerRecorder(cam.model, [layer], as_leaf=True) as rec:
            out, acts = cam.forward_recorded(rec, layer, x)
        out = check_segmentation_output(out, x.shape)
        cam.check_layer_depends_on_input(layer, x, acts)
        activation = resolve_activation(cam.activation, out.shape[1])
        cls = segmentation_targets(target, x.shape[0], out.shape[1], x.device)
        logits = out.detach()
        masks = pixel_set.masks(logits, cls, activation)
        maps, values = [], []
        n_targets = cls.shape[1]
        for k in range(n_targets):
            g, y = target_gradient(logits, masks[:, k], cls[:, k], activation, cam.use_probabilities)
            grads = cam.layer_gradient((g * out).sum(), acts, layer, retain=k < n_targets - 1)
            maps.append(cam.layer_cam(grads, acts, x.shape[2:]))
            values.append(y)
        layer_map = torch.stack(maps, 1)
        return {
            "layer": layer,
            "layer_map": layer_map,
            "map": cam.upsample_map(layer_map, x.shape[2:]),
            "classes": cls,
            "pixels": masks.flatten(2).sum(-1),
            "target_score": torch.stack(values, 1),
        }


class _SegmentationCAM(BaseCAM):
    """Gradient CAM of a segmentation network for a class and a pixel set per case.

    Args:
        model, layer, relu, normalize, use_probabilities, activation, align_corners, check_layer: see
            :class:`~medcam_monai.cam.core.BaseCAM`.
        inferer: a ``monai.inferers.SlidingWindowInferer`` (the bundle's): the input is explained
            window by window with its ``roi_size``, ``overlap``, ``mode``, ``sigma_scale``,
            ``sw_batch_size`` (see :class:`~medcam_monai.cam.sliding.SlidingWindowRoute`). None: the
            whole input goes through the network at once.
    """

    def __init__(self, model, layer=None, relu=False, normalize=None, use_probabilities=False,
                 activation="auto", align_corners=False, check_layer=True, inferer=None) -> None:
        super().__init__(model, layer, relu, normalize, use_probabilities, activation, align_corners, check_layer)
        self.inferer = inferer
        self.route = WholeInputRoute() if inferer is None else SlidingWindowRoute(inferer)

    def __call__(
        self,
        x: torch.Tensor,
        target: TargetSpec = None,
        pixels: PixelSet | str | torch.Tensor | None = "predicted",
    ) -> Explanation:
        """Explain ``x``.

        Args:
            x: ``(B, C_in, *spatial)`` image batch, 2D or 3D (a ``MetaTensor`` keeps its metadata).
            target: target classes (:func:`~medcam_monai.targets.segmentation_targets`; None: every
                foreground channel); ``K`` targets give ``K`` map channels from one forward pass (one
                backward each).
            pixels: the pixel set ``M``: ``"predicted"`` (default), ``"image"``, a mask tensor, or a
                :class:`~medcam_monai.cam.pixel_sets.PixelSet` (``Predicted``, ``Box``, ``Point``,
                ``Mask``, ``WholeImage``).

        Returns:
            An :class:`Explanation` with ``map`` ``(B, K, *spatial)``, ``layer_map`` ``(B, K, *grid)``
            (None in the sliding route when windows do not fall on the layer's grid), ``target``
            ``(B, K)`` and ``scores``: ``pixels`` (size of ``M``) and ``target_score`` (``Y``), each ``(B, K)``.
        """
        start = time.perf_counter()
        check_image(x, network=self.model)
        pixel_set = resolve_pixel_set(pixels)
        xt = x.as_tensor() if hasattr(x, "as_tensor") else x
        with frozen(self.model), gradients_enabled():
            xt = xt.detach().clone()  # a tensor made under inference_mode cannot join a graph
            result = self.route.run(self, xt, target, pixel_set)
        layer_map, full_map = self.finish(result["layer_map"], result["map"])
        empty = result["pixels"] == 0
        if bool(empty.any()):
            where = [(int(b), int(result["classes"][b, k])) for b, k in torch.nonzero(empty)[:5]]
            warnings.warn(
                f"The pixel set is empty for (case, class) {where}: Y = 0 and its map is all zeros. Check "
                f"the class, or give a Box/Point/Mask instead of the predicted pixels.",
                EmptyPixelSetWarning,
                stacklevel=2,
            )
        settings = {**self.settings(), "layer": result["layer"], "pixels": pixel_set.describe(), **self.route.describe(result)}
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


class SegHiResGradCAM(_SegmentationCAM):
    """Seg-HiRes-Grad CAM: ``L(p) = sum_k dY/dA^k(p) * A^k(p)`` for ``Y = sum_{p in M} y_c(p)``.

    Element-wise gradients keep the map faithful to ``Y``: with a 1x1 convolution head of bias ``b``
    on the layer, ``L = M * (y_c - b_c)`` exactly. Arguments: see :class:`_SegmentationCAM`.

    Example::

        cam = SegHiResGradCAM(net, inferer=SlidingWindowInferer((96, 96, 96), overlap=0.25))
        e = cam(ct, target=[1, 2], pixels="predicted")   # e.map: (1, 2, D, H, W)
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
