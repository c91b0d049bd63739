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

from medcam_monai.bundle.config import BundleConfigError
from medcam_monai.bundle.explain import ExplainedCases, explain_with_bundle, fragment_path, records_path
from medcam_monai.bundle.inputs import InputOptions, WSIRegion, loader_for
from medcam_monai.bundle.locate import (
    BUNDLES_DIR,
    find_bundle,
    is_project_bundle,
    project_bundles,
    read_metadata,
    untrusted_bundle_warning,
)
from medcam_monai.bundle.train import ensure_weights, train_bundle
from medcam_monai.bundle.workflow import config_files, root_cause, run_workflow

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
