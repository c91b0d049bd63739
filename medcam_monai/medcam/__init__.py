"""Med-CAM: minimal binary evidence masks for frozen classifiers (2D and 3D)."""

from medcam_monai.medcam.config import PRESETS, EarlyStopping, LossWeights
from medcam_monai.medcam.explainer import LOSS_TERMS, MaskedInputError, MedCAM

__all__ = [
    "MedCAM",
    "MaskedInputError",
    "LossWeights",
    "PRESETS",
    "EarlyStopping",
    "LOSS_TERMS",
]
