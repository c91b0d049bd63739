"""Evaluate a bundle's explainers end to end: weights (trained if missing), cases, every method
scored, and the report folder written (``medcam-monai evaluate``)."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medcam_monai.bundle import ensure_weights
from medcam_monai.evaluation.data import load_evaluation_data
from medcam_monai.evaluation.report import write_report
from medcam_monai.evaluation.runner import (
    classification_explainers,
    evaluate_classification,
    evaluate_segmentation,
    segmentation_explainers,
)
from medcam_monai.registry import CLASSIFICATION, methods_for

__all__ = ["evaluate_bundle"]


def _versions() -> dict[str, str]:
    import monai

    import medcam_monai

    return {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "medcam_monai": medcam_monai.__version__, "platform": platform.platform()}


def evaluate_bundle(
    bundle: str | os.PathLike,
    output: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    dataset_dir: str | os.PathLike | None = None,
    split: str = "test",
    cases: int = 8,
    methods: Sequence[str] | None = None,
    steps: int = 150,
    curve_steps: int | None = None,
    baseline: str = "blur",
    sanity_cases: int = 2,
    sanity_stages: int = 3,
    epochs: int | None = None,
    train_cases: int | None = None,
    image_size: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    arguments: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Explain ``cases`` cases of ``split`` with every method, score them and write the report.

    Args:
        bundle: a bundle name or folder.
        output: the report folder (``report.md``, ``figures/``, ``results.json``, ``cases.csv``,
            ``settings.json``).
        root: where ``models/`` and stand-in data go (default ``<output>/bundle``).
        weights: a state dict of the bundle's network (default ``<root>/models/model.pt``, trained if missing).
        dataset_dir: the real dataset (``data_manifests/``); stand-in data when absent.
        split, cases: which cases.
        methods: the explainers (default: every one of the bundle's task, :func:`~medcam_monai.registry.methods_for`).
        steps: Med-CAM optimisation steps.
        curve_steps: deletion/insertion steps (default 20 for classifiers, 10 for segmentation).
        baseline: what deleted pixels become, and the robustness background.
        sanity_cases, sanity_stages: the model-randomisation check (0 cases: skip).
        epochs, train_cases, image_size: training settings when the bundle must be trained.
        batch_size: cases explained together.
        seed: seeds backgrounds, tie-breaking and training.
        arguments: the caller's arguments, recorded in ``settings.json``.

    Returns:
        The paths :func:`~medcam_monai.evaluation.report.write_report` wrote.
    """
    start = time.perf_counter()
    out = Path(output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = Path(root).resolve() if root else out / "bundle"
    torch.manual_seed(seed)
    weights = ensure_weights(bundle, root, weights, epochs=epochs, num_cases=train_cases, image_size=image_size,
                             dataset_dir=dataset_dir, progress=False)
    trained_s = time.perf_counter() - start
    data = load_evaluation_data(bundle, root, weights, cases, split, image_size, dataset_dir)
    cfg = data.config
    methods = list(methods or methods_for(data.task))
    if data.task == CLASSIFICATION:
        medcam_kwargs = {**cfg["explainer_kwargs"], "steps": steps, "progress": False, "seed": seed, "background": baseline}
        explainers = classification_explainers(methods, medcam_kwargs)
        result = evaluate_classification(
            data.network, data.images, data.truth, explainers, data.labels, curve_steps or 20, baseline,
            batch_size=batch_size, sanity_cases=sanity_cases, sanity_stages=sanity_stages, seed=seed,
        )
        layer = medcam_kwargs.get("layer")
        explainer_settings = {"medcam": medcam_kwargs, "cam_layer": layer[0] if isinstance(layer, list) else layer}
    else:
        explainers = segmentation_explainers(methods, cfg["explainer_kwargs"], cfg["inferer"], cfg["explain_class"], cfg["pixels"])
        result = evaluate_segmentation(
            data.network, data.images, data.truth, explainers, cfg["explain_class"], cfg["inferer"],
            curve_steps or 10, baseline, sanity_cases, sanity_stages, seed, label_map=data.label_map,
        )
        explainer_settings = {"cam": cfg["explainer_kwargs"], "explain_class": cfg["explain_class"], "pixels": cfg["pixels"]}
    settings = {
        "argv": list(sys.argv),
        "arguments": dict(arguments or {}),
        "bundle": cfg["bundle"],
        "task": data.task,
        "dataset": cfg["dataset"],
        "data": _standin_source(cfg["dataset"]) if cfg["standin"] else f"real, from {dataset_dir}",
        "split": cfg["split"],
        "image_size": cfg["image_size"],
        "network": cfg["network"],
        "weights": cfg["weights"],
        "methods": methods,
        "explainers": explainer_settings,
        "ground_truth": None if data.truth is None else ("phantom evidence" if cfg["standin"] else "label map"),
        "training_seconds": round(trained_s, 1),
        "versions": _versions(),
        "threads": torch.get_num_threads(),
    }
    settings["seconds"] = round(time.perf_counter() - start, 1)
    return write_report(result, out, settings)


def _standin_source(dataset: str) -> str:
    """Where a stand-in dataset's cases come from: the generator's module (generated pictures, or real
    anatomy from a wheel for ``medcam_monai.data.anatomy``)."""
    from medcam_monai.data.standins import STANDINS

    standin = STANDINS.get(dataset)
    module = "medcam_monai.data.phantoms" if standin is None or ":" not in standin.generator else standin.generator.partition(":")[0]
    return f"stand-in ({module})"
