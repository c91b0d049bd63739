"""Post-processing that turns an explanation map, back on the image's grid, into a label map
that the MONAI Label module of 3D Slicer shows as an overlay (it loads every result as segments)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["heatmap_level_names", "HeatmapLevelsd", "Binarized"]


def heatmap_level_names(levels: int, prefix: str = "CAM") -> dict[str, int]:
    """Segment names of the label values made by :class:`HeatmapLevelsd`.

    ``levels`` equal bins of the normalised heatmap: bin 0 (the lowest) is left unlabelled so the
    image stays visible, bins 1..levels-1 become labels, e.g. ``"CAM 20-40%": 1`` for 5 levels.
    """
    if levels < 2:
        raise ValueError(f"levels must be at least 2 (background and one band), got {levels}.")
    step = 100 / levels
    return {f"{prefix} {round(k * step)}-{round((k + 1) * step)}%": k for k in range(1, levels)}


class HeatmapLevelsd(MapTransform):
    """Bin a heatmap in ``[0, 1]`` into ``levels`` bands: label ``k`` for ``k/levels <= h < (k+1)/levels``.

    A continuous map cannot be a segmentation, and Slicer's MONAI Label module shows results only as
    segments: iso-bands keep the map's shape readable there (one colour per band). Values outside
    ``[0, 1]`` (e.g. interpolation overshoot) are clamped first. The MetaTensor's affine is kept.
    """

    def __init__(self, keys: KeysCollection, levels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        heatmap_level_names(levels)  # validates levels
        self.levels = int(levels)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            h = d[key].clamp(0, 1)
            d[key] = torch.clamp(torch.floor(h * self.levels), max=self.levels - 1).to(torch.uint8)
        return d


class Binarized(MapTransform):
    """``x > threshold`` as uint8 labels ``{0, value}``: a mask that went through a linear
    resampling back to the image grid becomes binary again (0.5 = the nearest-neighbour boundary)."""

    def __init__(self, keys: KeysCollection, threshold: float = 0.5, value: int = 1,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = float(threshold)
        self.value = int(value)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = ((d[key] > self.threshold) * self.value).to(torch.uint8)
        return d
