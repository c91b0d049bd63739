"""Seg-HiRes-Grad CAM of a segmentation network, returned as heatmap bands on the image's grid."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import (
    DivisiblePadd,
    ScaleIntensityRanged,
    Spacingd,
    SqueezeDimd,
)

from lib.infers.explain_task import VOLUME, ExplainTask, invalid_input, parse_class
from lib.transforms import HeatmapLevelsd, heatmap_level_names
from medcam_monai.cam import SegHiResGradCAM
from medcam_monai.explanation import Explanation

__all__ = ["SegHiResGradCAMHeatmap", "PIXEL_SETS"]

PIXEL_SETS = ("predicted", "image")


class SegHiResGradCAMHeatmap(ExplainTask):
    """Where the segmentation network found the evidence for one class, as ``levels`` heatmap bands.

    Request parameters (defaults in ``/info``): ``class`` (label name or index), ``pixels``
    (``"predicted"``: the voxels predicted as the class, the paper's default; ``"image"``: every
    voxel). ``levels`` (bands of the normalised map; the lowest is left unlabelled) is fixed per
    server because the band names are the task's labels in ``/info``.

    Pre-processing mirrors the network's: RAS orientation, ``pixdim`` spacing, a CT window scaled
    to ``[0, 1]``, padding to a multiple of 8. Volumes larger than ``roi_size`` are explained window
    by window through a ``SlidingWindowInferer``, exactly as they are segmented.
    """

    def __init__(self, path: str, network: torch.nn.Module, labels: dict[str, int], target: str = "tumor",
                 levels: int = 5, pixdim=(1.5, 1.5, 1.5), window=(-57.0, 164.0), roi_size=(96, 96, 96),
                 layer: str | None = None) -> None:
        parse_class(target, labels, "target")  # fail at start-up, not at the first request
        self.seg_labels = dict(labels)
        self.pixdim = tuple(float(p) for p in pixdim)
        self.window = tuple(float(w) for w in window)
        self.layer = layer
        self.levels = int(levels)
        super().__init__(
            path=path,
            network=network,
            labels=heatmap_level_names(levels),
            description="Seg-HiRes-Grad CAM: where the segmentation network's evidence for a class lies",
            config={"class": target, "pixels": "predicted"},
        )
        self.roi_size = list(roi_size)

    def pre_transforms(self, data=None):
        return [
            *self.loading_transforms(),
            Spacingd(keys=VOLUME, pixdim=self.pixdim, mode="bilinear"),
            ScaleIntensityRanged(keys=VOLUME, a_min=self.window[0], a_max=self.window[1], b_min=0.0, b_max=1.0,
                                 clip=True),
            DivisiblePadd(keys=VOLUME, k=8),
        ]

    def explain(self, network: torch.nn.Module, x: torch.Tensor, data: dict) -> Explanation:
        target = parse_class(data.get("class"), self.seg_labels)
        pixels = str(data.get("pixels", "predicted"))
        if pixels not in PIXEL_SETS:
            raise invalid_input(f"pixels must be one of {PIXEL_SETS}, got {pixels!r}.")
        inferer = self.inferer(data)
        cam = SegHiResGradCAM(
            network,
            layer=self.layer,
            relu=True,  # the paper's ReLU: only evidence for the class
            normalize="max",  # [0, 1] per case, so bands mean the same on every image
            inferer=inferer if isinstance(inferer, SlidingWindowInferer) else None,
        )
        return cam(x, target=target, pixels=pixels)

    def describe(self, explanation: Explanation, data: dict) -> dict[str, Any]:
        target = int(explanation.target[0, 0])
        name = next(k for k, v in self.seg_labels.items() if v == target)
        return {"class_name": name, "levels": self.labels}

    def post_transforms(self, data=None):
        return [HeatmapLevelsd(keys="pred", levels=self.levels), SqueezeDimd(keys="pred", dim=0)]
