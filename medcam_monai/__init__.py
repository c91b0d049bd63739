"""medcam-monai: why a MONAI model decided, written where clinicians look.

The public API, imported on first use (``import medcam_monai`` loads neither torch nor MONAI)::

    from medcam_monai import MedCAM, SegHiResGradCAM, SegGradCAM, GradCAM, HiResCAM, Explanation
    from medcam_monai import write_dicom_seg, write_parametric_map, write_nifti, ExplanationHandler

The rooms, lowest first (a room imports only the rooms before it):

- ``explanation``, ``hooks``, ``checks``, ``targets``, ``perturbation``, ``registry``, ``errors``:
  the one object every explainer returns, networks by layer name and left as found, input checks,
  target classes, perturbation backgrounds, the table of explainers, the user-fixable error;
- ``medcam/`` and ``cam/``: the explainers;
- ``io/``: loading sources and writing explanations where clinicians look;
- ``data/``: dataset manifests, stand-in data and phantoms;
- ``handlers``: the Ignite handler that explains inside a bundle's own evaluator;
- ``bundle/``: the one service that finds, trains and runs bundles;
- ``evaluation/``: metrics, the evaluation runner and its report;
- ``pipeline/``: the PACS step;
- ``cli``, ``demo``: the command line.
"""

from importlib.metadata import PackageNotFoundError, version

from medcam_monai.lazy import lazy_exports

try:
    __version__ = version("medcam-monai")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

# public name -> module holding it
_EXPORTS = {
    "Explanation": "medcam_monai.explanation",
    "MASK": "medcam_monai.explanation",
    "HEATMAP": "medcam_monai.explanation",
    "MedCAM": "medcam_monai.medcam",
    "LossWeights": "medcam_monai.medcam",
    "EarlyStopping": "medcam_monai.medcam",
    "SegHiResGradCAM": "medcam_monai.cam",
    "SegGradCAM": "medcam_monai.cam",
    "GradCAM": "medcam_monai.cam",
    "HiResCAM": "medcam_monai.cam",
    "ExplanationHandler": "medcam_monai.handlers",
    "write_nifti": "medcam_monai.io",
    "write_dicom_seg": "medcam_monai.io",
    "write_parametric_map": "medcam_monai.io",
    "write_slicer_seg": "medcam_monai.io",
    "write_png_overlay": "medcam_monai.io",
    "write_wsi_overlay": "medcam_monai.io",
    "write_geojson": "medcam_monai.io",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
