"""Grad-CAM and HiResCAM for classifiers, on the same core as the segmentation CAMs.

The target is the class score ``Y = y_c`` (a logit, or its softmax/sigmoid probability).
"""

from __future__ import annotations

import time

import torch

from medcam_monai.cam.core import BaseCAM
from medcam_monai.cam.pixel_sets import class_probabilities, resolve_activation
from medcam_monai.checks import check_class_logits, check_image
from medcam_monai.explanation import HEATMAP, Explanation, like_input
from medcam_monai.hooks import LayerRecorder, frozen, gradients_enabled, resolve_layer
from medcam_monai.targets import TargetSpec, classifier_targets

__all__ = ["GradCAM", "HiResCAM"]


class _ClassifierCAM(BaseCAM):
    """Gradient CAM of a classifier for one or more classes per case (one forward pass).

    Arguments: see :class:`~medcam_monai.cam.core.BaseCAM`.
    """

    def __call__(self, x: torch.Tensor, target: TargetSpec = None) -> Explanation:
        """Explain ``x``.

        Args:
            x: ``(B, C_in, *spatial)`` batch (a ``MetaTensor`` keeps its metadata).
            target: None (the predicted class), an int, ``K`` ints, or a ``(B,)``/``(B, K)`` tensor
                (:func:`~medcam_monai.targets.classifier_targets`).

        Returns:
            An :class:`Explanation`: ``map`` ``(B, K, *spatial)``, ``layer_map`` ``(B, K, *grid)``,
            ``target`` ``(B, K)``, ``scores``: ``target_score`` ``(B, K)`` (``Y``) and ``probs``
            ``(B, num_classes)``.
        """
        start = time.perf_counter()
        check_image(x, network=self.model)
        xt = x.as_tensor() if hasattr(x, "as_tensor") else x
        with frozen(self.model), gradients_enabled():
            xt = xt.detach().clone()
            layer = self.layer_for(xt[:1])
            resolve_layer(self.model, layer)
            with LayerRecorder(self.model, [layer], as_leaf=True) as rec:
                out, acts = self.forward_recorded(rec, layer, xt)
            out = check_class_logits(out, xt.shape[0], min_classes=1)
            self.check_layer_depends_on_input(layer, xt, acts)
            activation = resolve_activation(self.activation, out.shape[1])
            cls = classifier_targets(target, out.detach())
            scores = class_probabilities(out, activation) if self.use_probabilities else out
            b = torch.arange(xt.shape[0])
            maps, values = [], []
            for k in range(cls.shape[1]):
                y = scores[b, cls[:, k]]
                grads = self.layer_gradient(y.sum(), acts, layer, retain=k < cls.shape[1] - 1)
                maps.append(self.layer_cam(grads, acts, xt.shape[2:]))
                values.append(y.detach())
        raw = torch.stack(maps, 1)
        layer_map, full_map = self.finish(raw, self.upsample_map(raw, xt.shape[2:]))
        return Explanation(
            map=like_input(x, full_map),
            kind=HEATMAP,
            method=self.method,
            target=cls,
            scores={"target_score": torch.stack(values, 1), "probs": class_probabilities(out.detach(), activation)},
            layer_map=layer_map,
            seconds=time.perf_counter() - start,
            settings={**self.settings(), "layer": layer},
        )


class GradCAM(_ClassifierCAM):
    """Grad-CAM: ``L = sum_k alpha_k A^k`` with ``alpha_k`` the spatial mean of ``dy_c/dA^k``."""

    method = "grad_cam"
    pooled = True


class HiResCAM(_ClassifierCAM):
    """HiResCAM: ``L = sum_k dy_c/dA^k * A^k`` element-wise (faithful to ``y_c``: for global average
    pooling then a linear head, ``sum_p L(p) = y_c - b_c``)."""

    method = "hires_cam"
    pooled = False
