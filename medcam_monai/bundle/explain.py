"""Explaining cases with a bundle: its own preprocessing, weights, inferer and evaluator, the
:class:`~medcam_monai.handlers.ExplanationHandler` writing the outputs, and the records returned
in memory. The command line, the pipeline step and the demo all explain through :func:`explain_with_bundle`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcam_monai.bundle.workflow import run_workflow
from medcam_monai.io.formats import DEFAULT_WRITERS

__all__ = ["WSIRegion", "loader_for", "explain_with_bundle", "records_path"]


@dataclass(frozen=True)
class WSIRegion:
    """Which region of a whole-slide image to explain.

    Args:
        level: pyramid level to read.
        location: ``(y, x)`` of the region's top-left in level-0 pixels.
        size: region side at ``level`` (None: the whole level).
    """

    level: int = 0
    location: tuple[int, int] = (0, 0)
    size: int | None = None


def loader_for(kind: str, wsi: WSIRegion | None = None, series_uid: str | None = None) -> dict[str, Any] | None:
    """The loading transform (a config dict) for inputs that the bundle's own loader cannot read with
    what writers need: DICOM series (:class:`~medcam_monai.io.LoadDicomd`) and whole-slide regions
    (:class:`~medcam_monai.io.LoadWSId`); None for files the bundle reads itself."""
    if kind == "dicom":
        loader: dict[str, Any] = {"_target_": "medcam_monai.io.LoadDicomd", "keys": "image"}
        if series_uid is not None:
            loader["series_uid"] = series_uid
        return loader
    if kind == "wsi":
        wsi = wsi or WSIRegion()
        return {
            "_target_": "medcam_monai.io.LoadWSId",
            "keys": "image",
            "level": wsi.level,
            "location": list(wsi.location),
            "size": None if wsi.size is None else [wsi.size, wsi.size],
        }
    return None


def explain_with_bundle(
    bundle: str | os.PathLike,
    output: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    datalist: list[dict[str, Any]] | None = None,
    kind: str | None = None,
    writers: Sequence[str | dict[str, Any]] | None = None,
    weights: str | os.PathLike | None = None,
    steps: int | None = None,
    target: int | None = None,
    layer: str | None = None,
    image_size: int | None = None,
    wsi: WSIRegion | None = None,
    series_uid: str | None = None,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run the bundle's ``configs/inference.json`` with its explanation handler and return the records.

    Args:
        bundle: a bundle name or folder.
        output: the folder for the explanations (``<output>/explanations/...``).
        root: the bundle root holding ``models/model.pt`` (default: the bundle folder).
        datalist: the cases (``[{"image": path}]``); None: the bundle's own datalist.
        kind: the inputs' kind (:mod:`medcam_monai.io.formats`): chooses the loader and default writers.
        writers: output formats (default: those that fit ``kind``; the bundle's own without a datalist).
        weights: a state dict of the bundle's network (default ``<root>/models/model.pt``).
        steps: Med-CAM optimisation steps.
        target: the class to explain (default: the prediction).
        layer: the layer to explain, a ``named_modules()`` name.
        image_size: the network's input size, for a bundle trained at another.
        wsi: the region of a whole-slide input.
        series_uid: the series to read from a DICOM folder holding several.
        progress: show the bundle's progress bars.
        overrides: any other config ids and values.

    Returns:
        One record per case, as the handler wrote them (also in ``<output>/explanations/``).
    """
    override: dict[str, Any] = {"output_dir": str(output), "progress": progress}
    if root is not None:
        override["bundle_root"] = str(root)
    if datalist is not None:
        override["datalist"] = datalist
        loader = loader_for(kind, wsi, series_uid) if kind else None
        if loader is not None:  # files the bundle's own loader reads (NIfTI, PNG) keep its loader
            override["preprocessing#transforms#0"] = loader
        if writers is None and kind is not None:
            writers = DEFAULT_WRITERS[kind]
    if writers is not None:
        override["explanation#writers"] = list(writers)
    if weights is not None:
        override["ckpt_path"] = str(weights)
    if steps is not None:
        override["medcam_steps"] = steps
    if target is not None:
        override["explanation#target"] = target
    if image_size is not None:
        override["image_size"] = image_size
    if layer:
        override["explanation#explainer_kwargs#layer"] = layer
    override.update(overrides or {})
    workflow = run_workflow(bundle, "inference.json", **override)
    handler = workflow.parser.get_parsed_content("explanation")
    return list(handler.all_records)


def records_path(output: str | os.PathLike) -> Path:
    """Where the handler gathers the records of a run writing to ``output``."""
    return Path(output) / "explanations" / "explanations.json"
