"""Med-CAM: minimal binary evidence masks for frozen classifiers (2D and 3D), per image or amortised."""

from medcam_monai.medcam.config import PRESETS, EarlyStopping, LossWeights
from medcam_monai.medcam.explainer import LOSS_TERMS, UNET_FORMAT, MaskedInputError, MedCAM
from medcam_monai.medcam.fills import FILLS, fill_from_preprocessing, make_fill, zero_in_distribution

__all__ = [
    "MedCAM",
    "MaskedInputError",
    "LossWeights",
    "PRESETS",
    "EarlyStopping",
    "LOSS_TERMS",
    "UNET_FORMAT",
    "FILLS",
    "make_fill",
    "fill_from_preprocessing",
    "zero_in_distribution",
]
