"""The project's explainers: one table that the handler, the CLI, the evaluation, the report and the
writers all read.

Each entry says what an explainer is called in configs (``name``), where its class lives (imported on
first use, so reading the table costs nothing), how people call it (``display_name``), which networks it
explains (``task``), what it returns (``kind``) and which DICOM property type (CID 7469) names its maps:

- ``DCM 130403 "Gradient-weighted class activation"``: the Grad-CAM family, whose channel weights come
  from the gradient of the class score (Grad-CAM, HiResCAM, Seg-Grad CAM, Seg-HiRes-Grad CAM);
- ``DCM 130404 "Saliency"``: any map of which input pixels matter to the decision. Med-CAM's mask is
  found by optimising a mask against the classifier's output, not by weighting activations, so
  "Saliency" is the honest code for it, and for explainers outside this table.

Every explainer has one call surface: ``explainer(x, target=None, **options)`` returning an
:class:`~medcam_monai.explanation.Explanation`, and takes its layer as ``layer=``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLASSIFICATION",
    "SEGMENTATION",
    "TASKS",
    "ExplainerSpec",
    "EXPLAINERS",
    "explainer_spec",
    "build_explainer",
    "methods_for",
    "display_name",
]

CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"
TASKS = (CLASSIFICATION, SEGMENTATION)

# DICOM CID 7469 property types (scheme DCM), by code value
SALIENCY = "130404"
GRADIENT_WEIGHTED_CLASS_ACTIVATION = "130403"


@dataclass(frozen=True)
class ExplainerSpec:
    """One explainer of the project.

    Args:
        name: the name used in configs, records and file names (``"seg_hires_grad_cam"``).
        import_path: ``"module:Class"`` of its class.
        display_name: the name people use (``"Seg-HiRes-Grad CAM"``).
        task: ``"classification"`` or ``"segmentation"``: the networks it explains.
        kind: ``"mask"`` (a binary evidence mask) or ``"heatmap"``.
        property_code: DICOM CID 7469 code value (scheme DCM) of its maps.
        default_for_task: the explainer used for its task when none is named.
    """

    name: str
    import_path: str
    display_name: str
    task: str
    kind: str
    property_code: str
    default_for_task: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"ExplainerSpec.task must be one of {TASKS}, got {self.task!r}.")
        if self.kind not in ("mask", "heatmap"):
            raise ValueError(f"ExplainerSpec.kind must be 'mask' or 'heatmap', got {self.kind!r}.")

    def load(self) -> type:
        """The explainer's class (imports its module)."""
        module, _, attr = self.import_path.partition(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def takes_inferer(self) -> bool:
        """Segmentation explainers run through the bundle's (sliding-window) inferer; classifiers see whole images."""
        return self.task == SEGMENTATION


EXPLAINERS: dict[str, ExplainerSpec] = {
    spec.name: spec
    for spec in (
        ExplainerSpec("medcam", "medcam_monai.medcam:MedCAM", "Med-CAM", CLASSIFICATION, "mask", SALIENCY, True),
        ExplainerSpec("grad_cam", "medcam_monai.cam:GradCAM", "Grad-CAM", CLASSIFICATION, "heatmap", GRADIENT_WEIGHTED_CLASS_ACTIVATION),
        ExplainerSpec("hires_cam", "medcam_monai.cam:HiResCAM", "HiResCAM", CLASSIFICATION, "heatmap", GRADIENT_WEIGHTED_CLASS_ACTIVATION),
        ExplainerSpec("seg_hires_grad_cam", "medcam_monai.cam:SegHiResGradCAM", "Seg-HiRes-Grad CAM", SEGMENTATION, "heatmap",
                      GRADIENT_WEIGHTED_CLASS_ACTIVATION, True),
        ExplainerSpec("seg_grad_cam", "medcam_monai.cam:SegGradCAM", "Seg-Grad CAM", SEGMENTATION, "heatmap",
                      GRADIENT_WEIGHTED_CLASS_ACTIVATION),
    )
}


def explainer_spec(name: str) -> ExplainerSpec:
    """The entry called ``name``.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if name not in EXPLAINERS:
        raise ValueError(f"Unknown explainer {name!r}; choose one of {sorted(EXPLAINERS)}.")
    return EXPLAINERS[name]


def methods_for(task: str) -> tuple[str, ...]:
    """The explainers of ``task``, the task's default first."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    specs = [s for s in EXPLAINERS.values() if s.task == task]
    return tuple(s.name for s in sorted(specs, key=lambda s: not s.default_for_task))


def display_name(method: str) -> str:
    """The display name of a registered explainer, else ``method`` itself."""
    spec = EXPLAINERS.get(method)
    return spec.display_name if spec is not None else method


def build_explainer(name: str, network: Any, **kwargs: Any):
    """Build the explainer ``name`` for ``network``.

    Args:
        name: one of :data:`EXPLAINERS`.
        network: the network to explain; DDP is unwrapped, TorchScript is refused with the reason.
        kwargs: the explainer's own arguments (``layer``, ``steps`` for Med-CAM, ...). An ``inferer``
            is passed only to explainers of segmentation networks; classifiers see whole images.

    Raises:
        ValueError: an unknown name.
        TypeError: a TorchScript network (hooks do not run on it).
    """
    from medcam_monai.hooks import unwrap_model

    spec = explainer_spec(name)
    if not spec.takes_inferer:
        kwargs.pop("inferer", None)
    return spec.load()(unwrap_model(network), **kwargs)
