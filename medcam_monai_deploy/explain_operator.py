"""An SDK operator: the volume from ``DICOMSeriesToVolumeOperator`` in, an explanation label map out,
shaped for ``DICOMSegmentationWriterOperator`` (which re-reads the series and places each frame).

Geometry: the SDK's ``Image`` holds ``(D, H, W)`` voxels and a RAS affine of the transposed
``(W, H, D)`` array, as MONAI's ITK reader gives. The operator builds that MetaTensor, runs the
pre-transforms, explains with gradients on, inverts the pre-transforms (same instances, so MONAI's
checks pass) and transposes back to ``(D, H, W)``: the label map lies on the source voxels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.data import MetaTensor
from monai.deploy.core import ConditionType, Fragment, Image, Operator, OperatorSpec
from monai.transforms import Compose

from medcam_monai.explanation import HEATMAP, Explanation
from medcam_monai.hooks import gradients_enabled

__all__ = ["ExplainOperator", "explanation_to_labels"]


def explanation_to_labels(map_: torch.Tensor, kind: str, levels: int) -> np.ndarray:
    """A ``(1, *spatial)`` map as uint8 labels: heatmaps (in ``[0, 1]``) in ``levels`` bands with the
    lowest unlabelled (label ``k`` for ``k/levels <= h < (k+1)/levels``), masks as ``{0, 1}``."""
    m = map_[0].detach().float()
    if kind == HEATMAP:
        out = torch.clamp(torch.floor(m.clamp(0, 1) * levels), max=levels - 1)
    else:
        out = m > 0.5
    return out.to(torch.uint8).cpu().numpy()


class ExplainOperator(Operator):
    """Explain the input volume and emit the explanation as a label ``Image`` (``seg_image``).

    Args:
        fragment: the application.
        explainer: ``x (1, 1, W, H, D) -> Explanation``, e.g. a ``SegHiResGradCAM`` (with
            ``normalize="max"``, ``relu=True``) or a ``MedCAM``; called with gradients enabled.
        pre_transforms: MONAI dict transforms on ``{"image": MetaTensor (1, W, H, D)}``; the
            invertible ones are inverted on the map.
        levels: heatmap bands (the lowest is unlabelled): segment ``k`` of the SEG is band ``k``.
    Named input ``image``; named output ``seg_image``.
    """

    def __init__(self, fragment: Fragment, *args, explainer: Callable[[torch.Tensor], Explanation],
                 pre_transforms: Compose | None = None, levels: int = 5, **kwargs) -> None:
        if levels < 2:
            raise ValueError(f"levels must be at least 2, got {levels}.")
        self.explainer = explainer
        self.pre_transforms = pre_transforms if pre_transforms is not None else Compose([])
        self.levels = int(levels)
        self.last_explanation: Explanation | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("image")
        spec.output("seg_image").condition(ConditionType.NONE)

    def explain_image(self, image: Image) -> Image:
        """The label map of ``image``'s explanation, on ``image``'s ``(D, H, W)`` voxels."""
        voxels = np.asarray(image.asnumpy(), dtype=np.float32)
        if voxels.ndim != 3:
            raise ValueError(f"Expected a (D, H, W) volume, got shape {voxels.shape}.")
        metadata = dict(image.metadata())
        affine = torch.as_tensor(np.asarray(metadata.get("affine", np.eye(4)), dtype=np.float64))
        volume = MetaTensor(torch.from_numpy(voxels.transpose(2, 1, 0).copy())[None], affine=affine)
        data = self.pre_transforms({"image": volume})
        with gradients_enabled():
            explanation = self.explainer(data["image"][None].clone())
        self.last_explanation = explanation
        result = explanation.map[0].detach().float()
        result = result.as_tensor() if isinstance(result, MetaTensor) else result
        inverted = self.pre_transforms.inverse(
            {"image": MetaTensor(result, meta=dict(data["image"].meta),
                                 applied_operations=list(data["image"].applied_operations))}
        )["image"]
        labels = explanation_to_labels(inverted, explanation.kind, self.levels).transpose(2, 1, 0)
        if labels.shape != voxels.shape:
            raise RuntimeError(f"The inverted map {labels.shape} is not on the volume's grid {voxels.shape}.")
        return Image(np.ascontiguousarray(labels), metadata)

    def compute(self, op_input, op_output, context) -> None:
        image = op_input.receive("image")
        if image is None:
            raise ValueError("ExplainOperator received no image.")
        op_output.emit(self.explain_image(image), "seg_image")
