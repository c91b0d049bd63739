"""Med-CAM: the minimal evidence a volume classifier needs for its decision, as a mask on the
image's grid."""

from __future__ import annotations

from typing import Any

import torch
from monai.transforms import (
    Resized,
    ScaleIntensityRanged,
    SqueezeDimd,
)

from lib.infers.explain_task import VOLUME, ExplainTask, invalid_input, parse_class
from lib.transforms import Binarized
from medcam_monai.explanation import Explanation
from medcam_monai.medcam import MedCAM

__all__ = ["MedCAMMask"]


def _steps(value: Any) -> int:
    try:
        steps = int(value)
    except (TypeError, ValueError):
        raise invalid_input(f"steps must be a whole number, got {value!r}.") from None
    if not 1 <= steps <= 5000:
        raise invalid_input(f"steps must be between 1 and 5000, got {steps}.")
    return steps


class MedCAMMask(ExplainTask):
    """The evidence mask of the classifier's decision (or of a chosen class) for the open volume.

    Request parameters (defaults in ``/info``): ``class`` (``""``: the class the classifier
    predicts, else a class name or index) and ``steps`` (the most optimisation steps; Med-CAM trains
    a small U-Net per image, ~300 steps by default, and stops early once the mask settles).

    The volume is oriented to RAS, windowed to ``[0, 1]`` and resized to the classifier's fixed
    input; the mask is resized back and re-binarised. The result record holds the classifier's
    probability of the class on the image and on the evidence alone, whether the decision was kept,
    and the mask's area fraction: a reviewer should read the mask together with them.
    """

    def __init__(self, path: str, network: torch.nn.Module, labels: dict[str, int], input_size,
                 window=(-57.0, 164.0), steps: int = 300, seed: int = 0) -> None:
        self.class_labels = dict(labels)
        self.input_size = tuple(int(s) for s in input_size)
        self.window = tuple(float(w) for w in window)
        self.seed = int(seed)
        super().__init__(
            path=path,
            network=network,
            labels={"evidence": 1},
            description="Med-CAM: the minimal evidence the classifier needs for its decision",
            config={"class": "", "steps": _steps(steps)},
        )

    def pre_transforms(self, data=None):
        return [
            *self.loading_transforms(),
            ScaleIntensityRanged(keys=VOLUME, a_min=self.window[0], a_max=self.window[1], b_min=0.0, b_max=1.0,
                                 clip=True),
            Resized(keys=VOLUME, spatial_size=self.input_size, mode="trilinear"),
        ]

    def explain(self, network: torch.nn.Module, x: torch.Tensor, data: dict) -> Explanation:
        requested = data.get("class")
        target = None if requested in (None, "") else parse_class(requested, self.class_labels)
        explainer = MedCAM(network, steps=_steps(data.get("steps")), seed=self.seed)
        return explainer(x.as_tensor() if hasattr(x, "as_tensor") else x, target=target)

    def describe(self, explanation: Explanation, data: dict) -> dict[str, Any]:
        target = int(explanation.target[0, 0])
        return {"class_name": next(k for k, v in self.class_labels.items() if v == target)}

    def post_transforms(self, data=None):
        # the inverse Resized interpolates linearly: 0.5 restores the mask's edge
        return [Binarized(keys="pred", threshold=0.5), SqueezeDimd(keys="pred", dim=0)]
