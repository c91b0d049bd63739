"""Gradient CAMs: Seg-HiRes-Grad CAM and Seg-Grad CAM for segmentation networks (whole inputs or
through a sliding-window inferer), Grad-CAM and HiResCAM for classifiers."""

from medcam_monai.cam.classification import GradCAM, HiResCAM
from medcam_monai.cam.core import BaseCAM, LayerIndependentOfInputError, LayerNotUsedError
from medcam_monai.cam.layers import DEFAULT_LAYERS, default_layer, tokens_to_grid
from medcam_monai.cam.pixel_sets import Box, Mask, PixelSet, Point, Predicted, WholeImage
from medcam_monai.cam.postprocess import normalize_map, upsample
from medcam_monai.cam.segmentation import EmptyPixelSetWarning, SegGradCAM, SegHiResGradCAM, WholeInputRoute
from medcam_monai.cam.sliding import SlidingWindowRoute, plan_windows

__all__ = [
    "SegHiResGradCAM",
    "SegGradCAM",
    "GradCAM",
    "HiResCAM",
    "BaseCAM",
    "PixelSet",
    "Predicted",
    "WholeImage",
    "Box",
    "Point",
    "Mask",
    "EmptyPixelSetWarning",
    "LayerNotUsedError",
    "LayerIndependentOfInputError",
    "DEFAULT_LAYERS",
    "default_layer",
    "tokens_to_grid",
    "normalize_map",
    "upsample",
    "plan_windows",
    "SlidingWindowRoute",
    "WholeInputRoute",
]
