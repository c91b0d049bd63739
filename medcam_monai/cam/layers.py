"""Which layer a CAM is taken at: documented defaults per MONAI segmentation family, token maps.

The default is the deepest feature level of the network (the coarsest encoder output, where the
features are most semantic), named as a ``named_modules()`` entry so the network is never edited:

============== ============================================= ===========================================
family         default layer                                 why
============== ============================================= ===========================================
UNet           innermost ``model.1(.submodule.1)*.submodule`` the bottom block inside the nested skips
AttentionUnet  same walk as UNet                             the bottom ``ConvBlock``
BasicUNet      ``down_4``                                    the last encoder stage (stride 16)
SegResNet      ``down_layers.<last>``                        the last encoder stage
DynUNet        ``bottleneck``                                the deepest block
UNETR          ``vit``                                       ViT tokens ``(B, N, D)``, reshaped to the
                                                             patch grid (``encoder10`` does not exist)
SwinUNETR      ``encoder10``                                 the conv block on the deepest Swin stage
============== ============================================= ===========================================

Other networks fall back to :func:`~medcam_monai.hooks.deepest_layer`: the last-run layer with the
smallest spatial output that is not the network's output; for a ViT (tokens after its patch
embedding) the last token layer whose patch tokens reach the decision (a class-token ViT:
``blocks.<last>.norm1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medcam_monai.hooks import deepest_layer, unwrap_model

__all__ = ["DEFAULT_LAYERS", "default_layer", "tokens_to_grid", "as_feature_map"]

DEFAULT_LAYERS = {
    "BasicUNet": "down_4",
    "DynUNet": "bottleneck",
    "UNETR": "vit",
    "SwinUNETR": "encoder10",
}


def _nested_unet_bottom(model: nn.Module) -> str | None:
    """The bottom block of MONAI's recursive ``UNet``/``AttentionUnet`` (``model[1]`` holds the skips)."""
    modules = dict(model.named_modules())
    name = "model.1"
    if not hasattr(modules.get(name), "submodule"):
        return None
    while True:
        sub = f"{name}.submodule"
        block = modules[sub]
        if isinstance(block, nn.Sequential) and len(block) > 1 and hasattr(block[1], "submodule"):
            name = f"{sub}.1"
        else:
            return sub


def default_layer(model: nn.Module, x: torch.Tensor | None = None) -> str:
    """The documented default layer of ``model`` (see the module docstring).

    Args:
        model: the network (DDP unwrapped).
        x: an example input ``(B, C, *spatial)``, needed only for networks outside the table.
    """
    model = unwrap_model(model)
    family = type(model).__name__
    if family in ("UNet", "AttentionUnet"):
        bottom = _nested_unet_bottom(model)
        if bottom is not None:
            return bottom
    if family == "SegResNet" and hasattr(model, "down_layers"):
        return f"down_layers.{len(model.down_layers) - 1}"
    if family in DEFAULT_LAYERS and DEFAULT_LAYERS[family] in dict(model.named_modules()):
        return DEFAULT_LAYERS[family]
    if x is None:
        raise ValueError(f"No default layer is known for {family}: pass `layer=` or an example input.")
    return deepest_layer(model, x)


# leading tokens that are not patches: a class token, timm's register tokens (4 in its *_reg4 ViTs)
MAX_PREFIX_TOKENS = 8


def tokens_to_grid(tokens: torch.Tensor, input_spatial: Sequence[int]) -> torch.Tensor:
    """Reshape transformer tokens ``(B, N, D)`` to a feature map ``(B, D, *grid)``.

    The grid is the input divided by an isotropic patch size ``p`` (``N == prod(input // p)``), the
    finest such grid; up to :data:`MAX_PREFIX_TOKENS` leading tokens (a class token, timm's register
    tokens) are dropped. Token order is row-major over the grid, as in MONAI's
    ``PatchEmbeddingBlock`` and timm's ViTs.
    """
    n_tokens = tokens.shape[1]
    for p in range(1, max(input_spatial) + 1):
        if any(s % p for s in input_spatial):
            continue
        grid = [s // p for s in input_spatial]
        prefix = n_tokens - torch.Size(grid).numel()
        if not 0 <= prefix <= MAX_PREFIX_TOKENS:
            continue
        body = tokens[:, prefix:]
        return body.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
    raise ValueError(
        f"Cannot place {n_tokens} tokens on a grid for an input of spatial size {tuple(input_spatial)}: "
        f"no isotropic patch size divides it into {n_tokens} patches, or fewer after at most "
        f"{MAX_PREFIX_TOKENS} class or register tokens. Choose a convolutional layer instead."
    )


def as_feature_map(t: torch.Tensor, input_spatial: Sequence[int]) -> torch.Tensor:
    """A layer output as ``(B, D, *grid)``: feature maps pass through, tokens are placed on their grid."""
    dims = len(input_spatial)
    if t.ndim == dims + 2:
        return t
    if t.ndim == 3:
        return tokens_to_grid(t, input_spatial)
    raise ValueError(
        f"The layer output has shape {tuple(t.shape)}: neither a feature map (B, C, {'*spatial' if dims else ''}) "
        f"with {dims} spatial dims nor transformer tokens (B, N, D). Choose another layer."
    )
