"""DICOM codes, algorithm identification and display colours for visual explanations.

Property type by explainer (DICOM CID 7469, category SCT 309825002 "Spatial and Relational
Concept"):

- ``DCM 130402 "Class activation"``: a map that weighs a layer's feature maps for one class with no
  gradient (CAM).
- ``DCM 130403 "Gradient-weighted class activation"``: the Grad-CAM family, whose weights come from
  the gradient of the class score (Grad-CAM, HiResCAM, Seg-Grad CAM, Seg-HiRes-Grad CAM).
- ``DCM 130404 "Saliency"``: any map of which input pixels matter to the decision. Med-CAM's mask
  is found by optimising a mask against the classifier's output, not by weighting activations,
  so "Saliency" is the honest code for it; unknown methods get it too.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

import medcam_monai

__all__ = [
    "CATEGORY",
    "property_type_for",
    "algorithm_identification",
    "default_color",
    "MANUFACTURER",
    "software_version",
]

CATEGORY = Code("309825002", "SCT", "Spatial and Relational Concept")
MANUFACTURER = "medcam-monai"

_GRADIENT = {"grad_cam", "gradcam", "hires_cam", "hirescam", "seg_grad_cam", "seggradcam", "seg_hires_grad_cam", "seghiresgradcam", "grad_cam_pp", "gradcam++"}
_ACTIVATION = {"cam", "class_activation", "score_cam", "scorecam"}

# Distinct, colour-blind-safe-ish colours (Okabe-Ito) for segments 1, 2, ...
_PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167)]


def software_version() -> str:
    return str(getattr(medcam_monai, "__version__", "0.0.0"))


def property_type_for(method: str) -> Code:
    """The DICOM property type code for an explainer name (see module docstring)."""
    key = method.lower().replace("-", "_").replace(" ", "_")
    if key in _GRADIENT or "grad" in key:
        return codes.DCM.GradientWeightedClassActivation
    if key in _ACTIVATION:
        return codes.DCM.ClassActivation
    return codes.DCM.Saliency


def algorithm_identification(method: str) -> hd.AlgorithmIdentificationSequence:
    """AUTOMATIC algorithm identification naming this package, its version and the explainer."""
    return hd.AlgorithmIdentificationSequence(
        name=f"{MANUFACTURER} {method}",
        version=software_version(),
        family=codes.DCM.ArtificialIntelligence,
    )


def default_color(index: int) -> tuple[int, int, int]:
    """Display colour (RGB 0-255) of segment/channel ``index`` (0-based)."""
    return _PALETTE[index % len(_PALETTE)]
