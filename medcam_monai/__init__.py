"""medcam-monai: why a MONAI model decided, written where clinicians look."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medcam-monai")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

from medcam_monai.explanation import HEATMAP, MASK, Explanation
from medcam_monai.medcam import EarlyStopping, LossWeights, MedCAM

__all__ = ["__version__", "Explanation", "MASK", "HEATMAP", "MedCAM", "LossWeights", "EarlyStopping"]
