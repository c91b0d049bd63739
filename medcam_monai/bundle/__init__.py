"""The one service that knows how to run a bundle: find it, read its metadata, run its configs with
overrides, train it, and explain cases with it (records returned in memory).

- :mod:`~medcam_monai.bundle.locate`: the project's bundles by name, anyone's by path, who wrote it;
- :mod:`~medcam_monai.bundle.config`: a bundle's config read as text (cases, loader, weights, handler);
- :mod:`~medcam_monai.bundle.workflow`: a config run as ``python -m monai.bundle run`` does;
- :mod:`~medcam_monai.bundle.train`: training with the bundle's ``configs/train.json``;
- :mod:`~medcam_monai.bundle.inputs`: the user's files into the bundle, checked case by case;
- :mod:`~medcam_monai.bundle.explain`: explaining with its ``configs/inference.json`` (any bundle in the
  model-zoo layout, through the shipped config fragment when it has no explanation handler);
- :mod:`~medcam_monai.bundle.weights`: loading weights with clear errors.

The command line, the pipeline step, the demo and the evaluation all go through it.
"""

from medcam_monai.lazy import lazy_exports

# public name -> submodule holding it; loaded on first use, so that `import medcam_monai.bundle`
# (the command line's parser, the pipeline) does not load torch and MONAI
_EXPORTS = {
    "BundleConfigError": ".config",
    "ExplainedCases": ".explain",
    "explain_with_bundle": ".explain",
    "fragment_path": ".explain",
    "records_path": ".explain",
    "InputOptions": ".inputs",
    "WSIRegion": ".inputs",
    "loader_for": ".inputs",
    "BUNDLES_DIR": ".locate",
    "find_bundle": ".locate",
    "is_project_bundle": ".locate",
    "project_bundles": ".locate",
    "read_metadata": ".locate",
    "untrusted_bundle_warning": ".locate",
    "ensure_weights": ".train",
    "train_bundle": ".train",
    "config_files": ".workflow",
    "root_cause": ".workflow",
    "run_workflow": ".workflow",
}

__all__ = [
    "BUNDLES_DIR",
    "find_bundle",
    "is_project_bundle",
    "untrusted_bundle_warning",
    "project_bundles",
    "read_metadata",
    "run_workflow",
    "root_cause",
    "config_files",
    "train_bundle",
    "ensure_weights",
    "explain_with_bundle",
    "ExplainedCases",
    "InputOptions",
    "BundleConfigError",
    "fragment_path",
    "records_path",
    "loader_for",
    "WSIRegion",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
