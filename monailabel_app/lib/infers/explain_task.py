"""What every explain task shares: gradients back on, weights required, the map returned on the
image's own grid with a JSON record of the explanation.

MONAI Label's ``BasicInferTask.run_inferer`` runs the network under ``torch.no_grad()``; CAMs and
Med-CAM need gradients, so :meth:`ExplainTask.run_inferer` replaces it and runs the explainer
inside :func:`medcam_monai.hooks.gradients_enabled`. The explanation map, in the network's input
space, carries the pre-transforms' applied operations, and the base task's inverse pass
(``inverse_transforms`` returns ``[]``: every invertible pre-transform, latest first) puts it back on
the grid, orientation and affine of the image as loaded.
"""

from __future__ import annotations

import logging
import os
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import CopyItemsd, EnsureChannelFirstd, EnsureTyped, LoadImaged, Orientationd
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from medcam_monai.explanation import Explanation
from medcam_monai.hooks import gradients_enabled

__all__ = ["ExplainTask", "parse_class", "invalid_input", "VOLUME"]

# The key the loaded image is processed under. Not "image": MONAI Label keeps the image's path as
# "image_path", and MONAI 1.6's Spacingd updates every "image_*" entry as a metadata dict.
VOLUME = "volume"

logger = logging.getLogger(__name__)


def invalid_input(message: str) -> MONAILabelException:
    """The error MONAI Label reports to the client for a bad request parameter."""
    return MONAILabelException(MONAILabelError.INVALID_INPUT, message)


def parse_class(value: Any, labels: Mapping[str, int], name: str = "class") -> int:
    """A class given by name (``"tumor"``) or index (``2`` or ``"2"``) as its index in ``labels``."""
    if isinstance(value, bool):
        raise invalid_input(f"{name} must be a label name or index, got {value!r}.")
    if isinstance(value, str) and value in labels:
        return int(labels[value])
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise invalid_input(f"Unknown {name} {value!r}; choose one of {sorted(labels)} or their indices.") from None
    if index not in labels.values():
        raise invalid_input(f"{name} index {index} is not one of {dict(labels)}.")
    return index


class ExplainTask(BasicInferTask):
    """Base of the explain tasks: subclasses give the pre-transforms, :meth:`explain` and the
    post-transforms that turn the inverted map into labels.

    Args:
        path: the network's state dict (``{"model": state_dict}`` or a bare state dict). Required: a
            task without its weights is not offered in ``/info`` and refuses to run, instead of
            explaining an untrained network.
        network: the network definition the weights are loaded into.
        labels: label names -> values of the returned label map (what Slicer names the segments).
        description: shown in MONAI Label clients.
        config: defaults of the request parameters (shown in ``/info`` and editable in Slicer).
    """

    def __init__(self, path: str, network: torch.nn.Module, labels: dict[str, int], description: str,
                 config: dict[str, Any] | None = None) -> None:
        base_config = {"result_extension": ".nii.gz", "result_dtype": "uint8"}
        super().__init__(
            path=path,
            network=network,
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=3,
            description=description,
            config={**base_config, **(config or {})},
            input_key=VOLUME,
        )

    # -- weights ----------------------------------------------------------------------------------
    def is_valid(self) -> bool:
        return bool(self.path) and os.path.exists(self.path[-1])

    def _get_network(self, device, data):
        if not self.is_valid():
            raise MONAILabelException(
                MONAILabelError.INFERENCE_ERROR,
                f"No weights at {self.path[-1] if self.path else None}: put the network's state dict there "
                f"(or, for a plumbing check only, run monailabel_app/make_demo_weights.py).",
            )
        return super()._get_network(device, data)

    # -- the explanation ----------------------------------------------------------------------------
    @abstractmethod
    def explain(self, network: torch.nn.Module, x: torch.Tensor, data: dict) -> Explanation:
        """Explain the pre-processed batch ``x`` (1, C, *spatial) with ``network``; ``data`` holds the
        request parameters merged over :meth:`config`. Runs with gradients enabled."""

    @staticmethod
    def loading_transforms() -> list:
        """The head every explain task's pre-transforms share: the reviewer's image, copied to
        :data:`VOLUME` (float, channel first, RAS). The copy keeps MONAI Label's ``image`` key out of
        the spatial transforms (``Spacingd`` would treat its ``image_path`` string as metadata)."""
        return [
            LoadImaged(keys="image", image_only=True),
            CopyItemsd(keys="image", names=VOLUME),
            EnsureTyped(keys=VOLUME, dtype=torch.float32),
            EnsureChannelFirstd(keys=VOLUME),
            Orientationd(keys=VOLUME, axcodes="RAS"),
        ]

    def inverse_transforms(self, data=None):
        return []  # every invertible pre-transform: the map goes back to the image's grid

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu") -> dict:
        image = data[self.input_key]
        if not isinstance(image, MetaTensor):
            raise MONAILabelException(
                MONAILabelError.INFERENCE_ERROR,
                "The pre-transforms must give a MetaTensor image: its applied operations are what brings the "
                "explanation back to the image's grid.",
            )
        # BasicInferTask runs networks under no_grad; a CAM needs dY/dA and Med-CAM trains its mask.
        # The network is loaded and the input cloned in here too: tensors made under a caller's
        # inference_mode can never join a graph.
        with gradients_enabled():
            network = self._get_network(device, data)
            x = image[None].to(torch.device(device)).clone()
            explanation = self.explain(network, x, data)
        result = explanation.map[0].detach().float().cpu()
        result = result.as_tensor() if isinstance(result, MetaTensor) else result
        data[self.output_label_key] = MetaTensor(
            result, meta=dict(image.meta), applied_operations=list(image.applied_operations)
        )
        record = explanation.to_records()[0]
        data[self.output_json_key] = {"explanation": {**record, **self.describe(explanation, data)}}
        logger.info(f"{explanation.method}: {explanation.seconds:.2f} s")
        return data

    def describe(self, explanation: Explanation, data: dict) -> dict[str, Any]:
        """Extra, human-readable fields of the result record (e.g. the class name)."""
        return {}
