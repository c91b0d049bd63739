"""MONAI Label app that explains models for the image a reviewer has open (3D Slicer, OHIF).

Infer tasks (``/infer/<name>``):

- ``seg_hires_grad_cam``: Seg-HiRes-Grad CAM of the segmentation network for one class, as heatmap
  bands (label map) on the image's own grid.
- ``medcam``: the Med-CAM evidence mask of the volume classifier's decision, on the image's grid.

App configuration (``monailabel start_server --conf KEY VALUE``): ``model_dir`` (default
``<app>/model``), ``target`` (segmentation class explained by default, ``tumor``), ``levels``
(heatmap bands, 5), ``medcam_steps`` (300), ``threads`` (torch CPU threads; default torch's own).

Explanations are never saved as the image's label in the datastore: an explanation is not an
annotation, and saving one would overwrite the reviewer's ground truth.
"""

from __future__ import annotations

import logging
import os

import torch
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

import medcam_monai
from lib.infers import MedCAMMask, SegHiResGradCAMHeatmap
from lib.networks import (
    CLASSIFIER_INPUT,
    CLASSIFIER_LABELS,
    CLASSIFIER_WEIGHTS,
    SEGMENTATION_LABELS,
    SEGMENTATION_WEIGHTS,
    classifier_network,
    segmentation_network,
    weights_path,
)

logger = logging.getLogger(__name__)


class MedCAMExplainApp(MONAILabelApp):
    """The explain app: two explain tasks and the datastore's next-sample strategies."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = conf or {}
        self.model_dir = conf.get("model_dir", os.path.join(app_dir, "model"))
        if conf.get("threads"):
            torch.set_num_threads(int(conf["threads"]))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="medcam-monai explain",
            description="Explanations (Seg-HiRes-Grad CAM heatmaps, Med-CAM evidence masks) of the open image",
            version=medcam_monai.__version__,
        )

    def init_infers(self):
        infers = {
            "seg_hires_grad_cam": SegHiResGradCAMHeatmap(
                path=weights_path(self.model_dir, SEGMENTATION_WEIGHTS),
                network=segmentation_network(),
                labels=SEGMENTATION_LABELS,
                target=self.conf.get("target", "tumor"),
                levels=int(self.conf.get("levels", 5)),
            ),
            "medcam": MedCAMMask(
                path=weights_path(self.model_dir, CLASSIFIER_WEIGHTS),
                network=classifier_network(),
                labels=CLASSIFIER_LABELS,
                input_size=CLASSIFIER_INPUT,
                steps=int(self.conf.get("medcam_steps", 300)),
            ),
        }
        for name, task in infers.items():
            if not task.is_valid():
                logger.warning(f"{name}: no weights at {task.path[-1]}; the task is not offered until they are there")
        return infers

    def init_strategies(self):
        return {"random": Random(), "first": First()}

    def infer(self, request, datastore=None):
        return super().infer({**request, "save_label": False}, datastore)
