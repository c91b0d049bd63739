"""The model-parameter randomisation test (Adebayo et al. 2018): an explanation must change with the weights.

How this relates to Quantus's ``MPRT`` (``tests/test_metrics_quantus.py``, shared 2D cases):
both randomise the same layers (those with parameters; Quantus: those with ``reset_parameters``,
the same set for standard layers) from the output down, by ``torch.manual_seed`` then the layer's
``reset_parameters``. One layer at a time (``cascade=False`` with ``seed = s + 1`` against
``MPRT(layer_order="independent", seed=s)``) the random weights and the Spearman correlations are
identical. In the cascade the first step is identical; later steps differ because Quantus reseeds
every layer with the same seed (layers of one shape get the same random weights) while ours uses
``seed + i``; the test checks the relation instead (both fall for a gradient map, both stay 1 for
a map that ignores the model).

Ours is kept because the explainer is called as ``(model, x) -> map`` on torch tensors, so
explainers that need the bundle's sliding-window inferer and 3D volumes run (Quantus's
``explain_func`` gets numpy arrays, and Quantus 0.6 accepts batched 1D and 2D inputs only);
binary masks (Med-CAM's) are compared by IoU as well as rank correlation and SSIM (the ranks of a
binary mask are nearly all ties); layers without ``reset_parameters`` are randomised too; and
the caller's global random state is left as found (Quantus calls ``torch.manual_seed``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medcam_monai.evaluation.metrics.common import MapLike, as_map, flatten_maps
from medcam_monai.evaluation.metrics.localisation import top_fraction_mask
from medcam_monai.evaluation.metrics.similarity import spearman_correlation, ssim
from medcam_monai.hooks import resolve_layer, unwrap_model

__all__ = ["randomization_layers", "SanityCheckResult", "cascading_randomization"]


def randomization_layers(model: nn.Module) -> list[str]:
    """Names of the layers that hold their own parameters, from the output back to the input.

    The order of ``named_modules()`` (definition order) is taken as the forward order, reversed,
    which is the cascade order of Adebayo et al. (top layer first).
    """
    model = unwrap_model(model)
    names = [name for name, m in model.named_modules() if name and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def _randomise(module: nn.Module, seed: int) -> None:
    """Re-initialise the module's own parameters with its initialiser (``reset_parameters``).

    Modules without one get Gaussian values with the spread of their current weights. The global
    RNG is left untouched (``fork_rng``), so the caller's random state does not depend on the check.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
            return
        for p in module.parameters(recurse=False):
            std = float(p.std()) if p.numel() > 1 else 0.0
            p.normal_(0.0, std if math.isfinite(std) and std > 0 else 0.02)


@dataclass
class SanityCheckResult:
    """Similarity between the original explanation and the explanation of randomised models.

    Args:
        layers: the layer randomised at each step (cumulatively when ``cascade``), output first.
        cascade: whether step ``i`` keeps the randomisations of steps ``< i``.
        spearman: ``(L, B)`` rank correlation with the original map (0 for a constant map).
        ssim: ``(L, B)`` structural similarity with the original map.
        iou: ``(L, B)`` IoU of the original's and the randomised map's binary masks (a binary map
            as it is, a heatmap's top ``top_fraction`` pixels).
        original: ``(B, K, *spatial)`` the explanation of the untouched model.
        maps: the ``L`` randomised explanations, when kept.
    """

    layers: list[str]
    cascade: bool
    spearman: torch.Tensor
    ssim: torch.Tensor
    iou: torch.Tensor
    original: torch.Tensor
    maps: list[torch.Tensor] = field(default_factory=list)

    def passed(self, threshold: float = 0.5, metric: str = "spearman") -> torch.Tensor:
        """``(B,)`` bool: the explanation of the fully randomised model is dissimilar (below ``threshold``).

        An explanation that does not change when the weights it should depend on are random is
        not explaining the model (an edge detector passes no sanity check).
        """
        values = getattr(self, metric)
        return values[-1] < threshold

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: layer names and per-step similarity lists."""
        return {
            "layers": list(self.layers),
            "cascade": self.cascade,
            **{k: getattr(self, k).tolist() for k in ("spearman", "ssim", "iou")},
        }


def _is_binary(m: torch.Tensor) -> bool:
    return bool(((m == 0) | (m == 1)).all())


def cascading_randomization(
    model: nn.Module,
    x: torch.Tensor,
    explainer: Callable[[nn.Module, torch.Tensor], MapLike],
    layers: Sequence[str] | None = None,
    cascade: bool = True,
    top_fraction: float = 0.1,
    keep_maps: bool = False,
    seed: int = 0,
) -> SanityCheckResult:
    """Model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps").

    The explanation must change when the classifier's weights are randomised. The model is
    deep-copied (the caller's model is never modified); layers are re-initialised one after the
    other from the output down (``cascade``: each step keeps the earlier randomisations;
    otherwise each layer is randomised alone on a fresh copy) and the explanation of each
    randomised copy is compared with the original.

    Args:
        model: the classifier (DDP is unwrapped).
        x: ``(B, C, *spatial)`` images to explain.
        explainer: ``(model, x) -> map`` returning ``(B, K, *spatial)`` (or an Explanation), e.g.
            ``lambda m, x: MedCAM(m, ...)(x)``; it is called once on the copy before any
            randomisation and once per step.
        layers: ``named_modules()`` names to randomise, in the order given (default
            :func:`randomization_layers`: every layer with parameters, output first).
        cascade: cumulative randomisation (the paper's cascading test) or one layer at a time.
        top_fraction: heatmaps are compared by IoU of their top ``top_fraction`` pixels.
        keep_maps: keep every randomised map in the result.
        seed: seeds the re-initialisation (step ``i`` uses ``seed + i``).
    """
    base = copy.deepcopy(unwrap_model(model))
    names = list(layers) if layers is not None else randomization_layers(base)
    if not names:
        raise ValueError(f"{type(base).__name__} has no layer with parameters to randomise.")
    for name in names:
        resolve_layer(base, name)  # fail before any work, naming the nearest valid layers

    def binarise(m: torch.Tensor) -> torch.Tensor:
        return m if _is_binary(m) else top_fraction_mask(m, top_fraction)

    original = as_map(explainer(base, x)).cpu()
    spear, sims, ious, maps = [], [], [], []
    work = base
    for i, name in enumerate(names):
        if not cascade:
            work = copy.deepcopy(base)
        _randomise(resolve_layer(work, name), seed + i)
        current = as_map(explainer(work, x)).cpu()
        if current.shape != original.shape:
            raise ValueError(f"The explainer returned shape {tuple(current.shape)} after randomising {name!r}, "
                             f"but {tuple(original.shape)} for the original model.")
        spear.append(spearman_correlation(original, current))
        sims.append(ssim(original, current))
        a, b = binarise(original), binarise(current)
        inter, union = flatten_maps(a * b).sum(-1).sum(-1), flatten_maps(((a + b) > 0).float()).sum(-1).sum(-1)
        ious.append(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)))
        if keep_maps:
            maps.append(current)
    return SanityCheckResult(
        layers=names,
        cascade=cascade,
        spearman=torch.stack(spear),
        ssim=torch.stack(sims),
        iou=torch.stack(ious),
        original=original,
        maps=maps,
    )
