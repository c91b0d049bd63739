"""The small core every gradient CAM shares; each method overrides only how channels are weighted.

For a target ``Y`` and the feature maps ``A^k`` of a layer (``k`` over channels, positions ``p``):

- element-wise methods (HiResCAM, Seg-HiRes-Grad CAM): ``L(p) = sum_k dY/dA^k(p) * A^k(p)``;
- pooled methods (Grad-CAM, Seg-Grad CAM): ``L(p) = sum_k alpha_k * A^k(p)`` with
  ``alpha_k = (1/Z) sum_p dY/dA^k(p)``, ``Z`` the number of layer positions.

``L`` is the raw map at layer resolution (``Explanation.layer_map``); ``Explanation.map`` is ``L``
resized linearly to the input grid. ReLU and normalisation are off by default (raw maps) and, when
asked, are applied to each of the two maps after resizing, so the direct and sliding-window routes
give the same result.

The layer's output is replaced by a detached leaf (:class:`~medcam_monai.hooks.LayerRecorder`), so no
graph is built before the layer and parameters stay frozen; the network is left exactly as found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from medcam_monai.cam.layers import as_feature_map, default_layer
from medcam_monai.cam.pixel_sets import class_probabilities
from medcam_monai.cam.postprocess import NORMALIZE_MODES, normalize_map, upsample
from medcam_monai.hooks import LayerRecorder, resolve_layer, unwrap_model

__all__ = [
    "BaseCAM",
    "LayerNotUsedError",
    "LayerIndependentOfInputError",
    "target_gradient",
    "target_value",
]


class LayerNotUsedError(ValueError):
    """The chosen layer did not run, or the network's output does not depend on it."""


class LayerIndependentOfInputError(ValueError):
    """The chosen layer's output does not change with the input (a constant, an embedding table)."""


def target_gradient(
    logits: torch.Tensor, masks: torch.Tensor, classes: torch.Tensor, activation: str, use_probabilities: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dY/dlogits`` and ``Y`` for ``Y = sum_{p in M} s_c(p)`` per case, at fixed logits.

    Args:
        logits: ``(B, C, *spatial)`` (detached).
        masks: ``(B, *spatial)`` booleans, the pixel set ``M`` per case.
        classes: ``(B,)`` target class per case.
        activation: ``"softmax"`` or ``"sigmoid"``, used when ``use_probabilities``.
        use_probabilities: ``s`` is the class probability instead of the logit.

    Returns:
        ``(B, C, *spatial)`` gradient and ``(B,)`` target values. ``sum(g * logits_of_a_graph)`` has the
        same gradient as ``Y`` with respect to anything before the logits; this is what lets the
        sliding-window route back-propagate one window at a time.
    """
    b = torch.arange(logits.shape[0], device=logits.device)
    weights = masks.to(logits.dtype)
    if not use_probabilities:
        g = torch.zeros_like(logits)
        g[b, classes] = weights
        return g, (weights * logits[b, classes]).flatten(1).sum(1)
    with torch.enable_grad():
        z = logits.detach().requires_grad_(True)
        y = (weights * class_probabilities(z, activation)[b, classes]).flatten(1).sum(1)
        (g,) = torch.autograd.grad(y.sum(), z)
    return g, y.detach()


def target_value(
    logits: torch.Tensor, masks: torch.Tensor, classes: torch.Tensor, activation: str, use_probabilities: bool
) -> torch.Tensor:
    """``Y`` per case ``(B,)`` (see :func:`target_gradient`), without building the gradient."""
    b = torch.arange(logits.shape[0], device=logits.device)
    scores = class_probabilities(logits, activation)[b, classes] if use_probabilities else logits[b, classes]
    return (masks.to(logits.dtype) * scores).flatten(1).sum(1)


class BaseCAM:
    """Shared machinery of the gradient CAMs.

    Args:
        model: the network; never changed (parameters, buffers, modes, hooks), also on errors.
            DDP is unwrapped; TorchScript is refused.
        layer: a ``named_modules()`` name; default: the family's deepest feature level
            (:func:`~medcam_monai.cam.layers.default_layer`).
        relu: apply ReLU to the maps (after resizing). Off by default: raw, signed maps.
        normalize: None (raw), ``"max"`` or ``"minmax"`` per case and target
            (:func:`~medcam_monai.cam.postprocess.normalize_map`).
        use_probabilities: ``Y`` sums probabilities (softmax/sigmoid) instead of logits.
        activation: ``"auto"`` (softmax for several channels, sigmoid for one), ``"softmax"`` or
            ``"sigmoid"`` (multi-label nets); used for probabilities and thresholds.
        align_corners: of the linear resize of the layer map to the input grid.
        check_layer: check (one extra no-grad forward of one case) that the layer's output changes
            with the input.
    """

    method = "cam"
    pooled = False  # True: weights are the spatial mean of the gradients (Grad-CAM)

    def __init__(
        self,
        model: torch.nn.Module,
        layer: str | None = None,
        relu: bool = False,
        normalize: str | None = None,
        use_probabilities: bool = False,
        activation: str = "auto",
        align_corners: bool = False,
        check_layer: bool = True,
    ) -> None:
        self.model = unwrap_model(model)
        if layer is not None:
            resolve_layer(self.model, layer)
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}.")
        if activation not in ("auto", "softmax", "sigmoid"):
            raise ValueError(f"activation must be 'auto', 'softmax' or 'sigmoid', got {activation!r}.")
        self.layer = layer
        self.relu = relu
        self.normalize = normalize
        self.use_probabilities = use_probabilities
        self.activation = activation
        self.align_corners = align_corners
        self.check_layer = check_layer

    # -- what each method overrides ----------------------------------------------------------------
    def channel_weights(self, grads: torch.Tensor, positions: float) -> torch.Tensor:
        """Weights multiplying ``A`` for gradients ``(n, D, *grid)``: the gradients themselves
        (element-wise), or their sum over positions divided by ``positions`` (pooled, Grad-CAM)."""
        if self.pooled:
            dims = tuple(range(2, grads.ndim))
            return grads.sum(dim=dims, keepdim=True) / positions
        return grads

    @staticmethod
    def combine(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        """``sum_k weights_k * A^k`` -> ``(n, *grid)``."""
        return (weights * acts).sum(1)

    # -- shared steps ------------------------------------------------------------------------------
    def settings(self) -> dict:
        return {
            "method": self.method,
            "layer": self.layer,
            "relu": self.relu,
            "normalize": self.normalize,
            "use_probabilities": self.use_probabilities,
            "activation": self.activation,
            "upsample": "linear",
            "align_corners": self.align_corners,
        }

    def layer_for(self, x: torch.Tensor) -> str:
        """The layer explained: the one given, else the family default (found with one example ``x``)."""
        return self.layer if self.layer is not None else default_layer(self.model, x)

    def forward_recorded(self, recorder: LayerRecorder, layer: str, x: torch.Tensor):
        """The network's output on ``x`` and the layer's output recorded by ``recorder``."""
        recorder.outputs.clear()
        out = self.model(x)
        if layer not in recorder.outputs:
            raise LayerNotUsedError(
                f"Layer {layer!r} did not run in the forward pass of {type(self.model).__name__}: it is "
                f"defined but not used. Choose a layer that the forward pass calls."
            )
        return out, recorder.outputs[layer]

    def check_layer_depends_on_input(self, layer: str, x: torch.Tensor, acts: torch.Tensor) -> None:
        """Raise when the layer's output for ``x[:1]`` is unchanged by a random perturbation of it."""
        if not self.check_layer:
            return
        gen = torch.Generator(device="cpu").manual_seed(0)
        noise = torch.randn(x[:1].shape, generator=gen).to(x)
        scale = float(x[:1].std()) + 1.0
        with LayerRecorder(self.model, [layer]) as rec, torch.no_grad():
            self.model(x[:1] + scale * noise)
            perturbed = rec.outputs[layer]
        if torch.equal(perturbed, acts[:1].detach()):
            raise LayerIndependentOfInputError(
                f"The output of layer {layer!r} does not depend on the input (unchanged when the input is "
                f"perturbed): it is a constant, an embedding or a parameter-only module, so a CAM of it "
                f"explains nothing. Choose a feature layer, e.g. the default (layer=None)."
            )

    def layer_gradient(self, y: torch.Tensor, acts: torch.Tensor, layer: str, retain: bool) -> torch.Tensor:
        """``dy/dA`` for the recorded layer output ``acts`` (a leaf), with a clear error when ``y`` does not depend on it."""
        grad = None
        if y.requires_grad:
            (grad,) = torch.autograd.grad(y, acts, retain_graph=retain, allow_unused=True)
        if grad is None:
            raise LayerNotUsedError(
                f"The network's output does not depend on layer {layer!r} (no gradient reaches it): the "
                f"layer runs but its output is not used on the way to the output. Choose a layer on the "
                f"path to the output."
            )
        return grad

    def layer_cam(self, grads: torch.Tensor, acts: torch.Tensor, input_spatial: Sequence[int]) -> torch.Tensor:
        """The raw CAM ``(n, *grid)`` of one target from the layer's gradients and activations."""
        g, a = as_feature_map(grads, input_spatial), as_feature_map(acts.detach(), input_spatial)
        positions = math.prod(a.shape[2:])
        return self.combine(self.channel_weights(g, positions), a)

    def finish(self, layer_map: torch.Tensor | None, full_map: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """ReLU and normalisation, each map on its own."""
        maps = []
        for m in (layer_map, full_map):
            if m is not None:
                m = torch.relu(m) if self.relu else m
                m = normalize_map(m, self.normalize)
            maps.append(m)
        return maps[0], maps[1]

    def upsample_map(self, layer_map: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """A layer-resolution map resized (linearly) to the input grid ``size``."""
        return upsample(layer_map, size, self.align_corners)
