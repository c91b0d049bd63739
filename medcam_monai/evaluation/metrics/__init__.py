"""How right is an explanation: faithfulness, minimality, deletion/insertion, localisation, sanity,
one module per family; and how good is the model explained: calibration, accuracy against chance,
per-class overlap of a segmentation (so a reader can tell a bad explanation from a bad model).

Every metric takes plain tensors, so it scores any method's maps (Med-CAM masks, CAM heatmaps,
maps from other libraries); where a map is expected an :class:`~medcam_monai.explanation.Explanation`
is accepted too (its ``map`` is used). Maps are ``(B, K, *spatial)`` (``K`` maps per case, 1 for
Med-CAM), ground-truth regions ``(B, 1 or K, *spatial)``, images ``(B, C, *spatial)``; per-map
results are ``(B, K)``, per-case results ``(B,)``. Classifiers are called in eval mode without
gradients, inside :func:`~medcam_monai.hooks.frozen`, so they are left as found.

Known answers (tested): a map equal to the true region has IoU 1, pointing 1, energy inside 1; an
empty map has IoU 0 (1 when the region is empty too), pointing 0, energy 0; a map of the wrong
region scores 0 on all three.

Each module says how it relates to Quantus (``tests/test_metrics_quantus.py`` compares them on
shared 2D cases) and why ours is kept: 3D volumes, segmentation networks behind a sliding-window
inferer, K maps per case, torch on the model's device with no numpy round trip.
"""

from medcam_monai.evaluation.metrics.calibration import Calibration, calibration
from medcam_monai.evaluation.metrics.chance import ChanceTest, chance_test
from medcam_monai.evaluation.metrics.common import as_map
from medcam_monai.evaluation.metrics.curves import (
    MODES,
    PerturbationCurve,
    deletion_curve,
    insertion_curve,
    perturbation_curve,
)
from medcam_monai.evaluation.metrics.faithfulness import decision_kept, faithfulness
from medcam_monai.evaluation.metrics.localisation import (
    energy_inside,
    iou,
    localisation,
    pointing_game,
    top_fraction_mask,
)
from medcam_monai.evaluation.metrics.minimality import area_fraction, connected_components, minimality
from medcam_monai.evaluation.metrics.overlap import ClassOverlap, class_fractions, class_overlap
from medcam_monai.evaluation.metrics.sanity import SanityCheckResult, cascading_randomization, randomization_layers
from medcam_monai.evaluation.metrics.similarity import spearman_correlation, ssim

__all__ = [
    "as_map",
    "decision_kept",
    "faithfulness",
    "area_fraction",
    "connected_components",
    "minimality",
    "MODES",
    "PerturbationCurve",
    "perturbation_curve",
    "deletion_curve",
    "insertion_curve",
    "top_fraction_mask",
    "iou",
    "pointing_game",
    "energy_inside",
    "localisation",
    "spearman_correlation",
    "ssim",
    "randomization_layers",
    "SanityCheckResult",
    "cascading_randomization",
    "Calibration",
    "calibration",
    "ChanceTest",
    "chance_test",
    "ClassOverlap",
    "class_fractions",
    "class_overlap",
]
