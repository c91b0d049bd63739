"""Training a bundle's weights with its own ``configs/train.json``: the one way the project trains."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medcam_monai.bundle.workflow import run_workflow

__all__ = ["train_bundle", "ensure_weights"]


def train_bundle(
    bundle: str | os.PathLike,
    root: str | os.PathLike,
    *,
    epochs: int | None = None,
    num_cases: int | None = None,
    image_size: int | None = None,
    dataset_dir: str | os.PathLike | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """Train ``bundle`` into ``root`` (``models/model.pt``, stand-in data) and return the weights' path.

    The configs are read from the bundle itself; ``root`` is its ``bundle_root``, so a bundle folder
    shipped read-only can be trained elsewhere. On the real dataset at ``dataset_dir`` when present,
    else on the bundle's stand-in data.

    Args:
        bundle: a bundle name or folder.
        root: where ``models/`` (and stand-in data) go.
        epochs, num_cases, image_size, dataset_dir: the bundle's settings of the same names (None:
            the bundle's own).
        progress: show the bundle's progress bars.
        overrides: any other config ids and values.
    """
    root = Path(root)
    settings: dict[str, Any] = {"bundle_root": str(root), "progress": progress, **overrides}
    for key, value in (("epochs", epochs), ("num_cases", num_cases), ("image_size", image_size), ("dataset_dir", dataset_dir)):
        if value is not None:
            settings[key] = str(value) if key == "dataset_dir" else value
    run_workflow(bundle, "train.json", **settings)
    weights = root / "models" / "model.pt"
    if not weights.is_file():
        raise RuntimeError(f"Training {bundle} finished but wrote no {weights}.")
    return weights


def ensure_weights(
    bundle: str | os.PathLike, root: str | os.PathLike, weights: str | os.PathLike | None = None, **train_options: Any
) -> Path:
    """The bundle's trained weights: ``weights`` if given, ``<root>/models/model.pt`` if it exists, else
    trained now with :func:`train_bundle` (``train_options`` are its keyword arguments)."""
    from medcam_monai.bundle.weights import check_weights_file

    if weights is not None:
        check_weights_file(weights)
        return Path(weights)
    path = Path(root) / "models" / "model.pt"
    if path.is_file():
        return path
    return train_bundle(bundle, root, **train_options)
