"""DICOM codes, algorithm identification and display colours for visual explanations.

Property types by explainer come from :mod:`medcam_monai.registry` (category SCT 309825002 "Spatial
and Relational Concept", type from DICOM CID 7469); explainers outside the registry are "Saliency".
"""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

import medcam_monai
from medcam_monai.registry import EXPLAINERS, SALIENCY

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

# Distinct, colour-blind-safe-ish colours (Okabe-Ito) for segments 1, 2, ...
_PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167)]


def software_version() -> str:
    return str(getattr(medcam_monai, "__version__", "0.0.0"))


def property_type_for(method: str) -> Code:
    """The DICOM property type code of an explainer's maps (see :mod:`medcam_monai.registry`)."""
    spec = EXPLAINERS.get(method)
    value = spec.property_code if spec is not None else SALIENCY
    meaning = {c.value: c for c in (codes.DCM.Saliency, codes.DCM.ClassActivation, codes.DCM.GradientWeightedClassActivation)}
    return meaning[value]


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
