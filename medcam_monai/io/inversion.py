"""Bring an explanation back onto the source grid with MONAI's own inversion of the preprocessing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from monai.data import MetaTensor, decollate_batch
from monai.transforms import Compose, Invertd
from monai.transforms.utils import convert_applied_interp_mode

from medcam_monai.explanation import MASK, Explanation
from medcam_monai.io.geometry import select_case

__all__ = ["invert_to_source"]

_MAP_KEY = "__medcam_map"


def _one_image(image: MetaTensor, case: int) -> MetaTensor:
    if not isinstance(image, MetaTensor):
        raise TypeError(
            f"invert_to_source needs the network input as a MetaTensor (it carries applied_operations), got "
            f"{type(image).__name__}. Pass the image as the bundle's preprocessing left it, or call the writers with the map "
            f"in network space (they resample it by affine)."
        )
    if image.is_batch:
        return decollate_batch(image)[case]
    return image


def invert_to_source(
    explanation: Explanation,
    image: MetaTensor,
    preprocessing: Compose | Sequence[Callable] | Callable,
    *,
    key: str = "image",
    case: int = 0,
) -> Explanation:
    """Invert the bundle's preprocessing on one case's maps, with MONAI's ``Invertd``.

    The maps are given ``image``'s ``applied_operations`` and meta and run back through
    ``preprocessing.inverse`` (``Orientationd``, ``Spacingd``, ``Resized``, ``SpatialPadd``, crops, ...),
    nearest-neighbour for masks and (bi/tri)linear for heatmaps whatever mode the bundle used for its
    image. The result lies on the grid the loader produced, with its affine (``original_affine``) and
    ``spatial_shape``, so the writers use it as is.

    Args:
        explanation: the Explanation (``map`` is ``(B, K, *spatial)`` in the network's input space).
        image: the network input of that case, ``(C, *spatial)`` (or the batch, with ``case``), as a
            MetaTensor whose ``applied_operations`` record the preprocessing.
        preprocessing: the transforms that made ``image`` (a bundle's ``preprocessing`` Compose, or a
            sequence of dictionary transforms), invertible ones recorded in ``applied_operations``.
        key: the key ``preprocessing`` applied to the image.
        case: which case of ``explanation`` (and of a batched ``image``).

    Returns:
        An Explanation of one case whose ``map`` (and ``soft_map``/``evidence``, when present and of
        the map's size) is ``(1, K, *source spatial)`` on the source grid.

    Raises:
        TypeError: ``image`` is not a MetaTensor.
    """
    one = select_case(explanation, case)
    source_image = _one_image(image, case)
    if not isinstance(preprocessing, Compose):
        preprocessing = Compose(list(preprocessing) if isinstance(preprocessing, Sequence) else [preprocessing])
    operations = list(source_image.applied_operations)
    if not operations:
        return one
    nearest = one.kind == MASK
    if not nearest:
        operations = convert_applied_interp_mode(operations, mode="bilinear", align_corners=None)
    # Invertd reads the transform record from the original key's MetaTensor only: an empty carrier
    # holds it, so the network input itself is neither copied nor changed
    carrier = MetaTensor(torch.zeros(0), meta=dict(source_image.meta), applied_operations=operations)
    invert = Invertd(_MAP_KEY, transform=preprocessing, orig_keys=key, nearest_interp=nearest)

    def back(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or tuple(t.shape[2:]) != tuple(one.map.shape[2:]):
            return t  # absent, or not a map of the input (e.g. a layer-resolution CAM)
        return invert({key: carrier, _MAP_KEY: MetaTensor(t[0].detach().cpu().float())})[_MAP_KEY][None]

    return replace(one, map=back(one.map), soft_map=back(one.soft_map), evidence=back(one.evidence))
