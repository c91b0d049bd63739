"""The one service that knows how to run a bundle: find it, read its metadata, run its configs with
overrides, train it, and explain cases with it (records returned in memory).

- :mod:`~medcam_monai.bundle.locate`: the project's bundles by name, anyone's by folder;
- :mod:`~medcam_monai.bundle.workflow`: a config run as ``python -m monai.bundle run`` does;
- :mod:`~medcam_monai.bundle.train`: training with the bundle's ``configs/train.json``;
- :mod:`~medcam_monai.bundle.explain`: explaining with its ``configs/inference.json``;
- :mod:`~medcam_monai.bundle.weights`: loading weights with clear errors.

The command line, the pipeline step, the demo and the evaluation all go through it.
"""

from medcam_monai.bundle.explain import WSIRegion, explain_with_bundle, loader_for, records_path
from medcam_monai.bundle.locate import BUNDLES_DIR, find_bundle, project_bundles, read_metadata
from medcam_monai.bundle.train import ensure_weights, train_bundle
from medcam_monai.bundle.workflow import config_files, root_cause, run_workflow

__all__ = [
    "BUNDLES_DIR",
    "find_bundle",
    "project_bundles",
    "read_metadata",
    "run_workflow",
    "root_cause",
    "config_files",
    "train_bundle",
    "ensure_weights",
    "explain_with_bundle",
    "records_path",
    "loader_for",
    "WSIRegion",
]
