"""The networks the app explains, their label names, and where their weights are found.

Weights are never downloaded or committed: ``model/segmentation.pt`` and ``model/classifier.pt``
are state dicts a site puts there (its own trained weights for these definitions), or, for a
plumbing check only, the seeded untrained ones written by ``make_demo_weights.py``.
"""

from __future__ import annotations

import os

from monai.networks.nets import UNet
from monai.networks.nets.classifier import Classifier
from torch import nn

__all__ = [
    "SEGMENTATION_LABELS",
    "CLASSIFIER_LABELS",
    "CLASSIFIER_INPUT",
    "SEGMENTATION_WEIGHTS",
    "CLASSIFIER_WEIGHTS",
    "segmentation_network",
    "classifier_network",
    "weights_path",
]

# KiTS-style labels of the segmentation network (index = output channel; 0 is background).
SEGMENTATION_LABELS = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
# Classes of the volume classifier explained by Med-CAM.
CLASSIFIER_LABELS = {"no tumor": 0, "tumor": 1}
# The classifier has a fixed input grid: volumes are resized to it (and the mask resized back).
CLASSIFIER_INPUT = (32, 32, 32)

SEGMENTATION_WEIGHTS = "segmentation.pt"
CLASSIFIER_WEIGHTS = "classifier.pt"


def segmentation_network() -> nn.Module:
    """A small 3D MONAI UNet over one CT channel with the four ``SEGMENTATION_LABELS`` outputs."""
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=len(SEGMENTATION_LABELS),
        channels=(8, 16, 32, 64),
        strides=(2, 2, 2),
        num_res_units=1,
    )


def classifier_network() -> nn.Module:
    """A small 3D MONAI classifier of ``CLASSIFIER_INPUT`` volumes into ``CLASSIFIER_LABELS``."""
    return Classifier(
        in_shape=(1, *CLASSIFIER_INPUT),
        classes=len(CLASSIFIER_LABELS),
        channels=(8, 16, 32),
        strides=(2, 2, 2),
    )


def weights_path(model_dir: str, name: str) -> str:
    """Where the state dict ``name`` of the app lives."""
    return os.path.join(model_dir, name)
