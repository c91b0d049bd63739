"""Explaining cases with any bundle: its own preprocessing, weights, inferer and evaluator, the
:class:`~medcam_monai.handlers.ExplanationHandler` writing the outputs, and the records returned
in memory. The command line, the pipeline step and the demo all explain through :func:`explain_with_bundle`.

A bundle of this project names its handler in its config (``explanation``). Any other bundle in
the model-zoo layout is explained as it is: the shipped fragment (:func:`fragment_path`, the same
file users pass to ``python -m monai.bundle run``) attaches the handler to its evaluator, and the
service only overrides config items, never edits the bundle:

1. the bundle's config is read as text to find where its cases, loading transform and weights are
   (:mod:`medcam_monai.bundle.config`);
2. the user's files replace its datalist; DICOM series and slide regions get the project's loaders;
   the fixes the user asked for (:class:`~medcam_monai.bundle.inputs.InputOptions`) are inserted;
3. before anything runs, the weights file is checked and every case goes through the preprocessing
   (:func:`~medcam_monai.bundle.inputs.check_cases`): unreadable files and images the network cannot
   take are reported (skipped, or raised with ``fail_fast``);
4. the task comes from ``metadata.json``'s ``network_data_format`` outputs, else from the network's
   output on the first case; it chooses the explainer (Med-CAM for classifiers, Seg-HiRes-Grad CAM
   for segmentation networks) unless ``method`` names one;
5. the bundle runs as ``python -m monai.bundle run`` runs it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from medcam_monai.bundle.config import (
    BundleConfigError,
    bundle_file,
    checkpoint_loaders,
    config_get,
    evaluator_input,
    follow,
    load_config,
    own_explanation_handler,
    reference,
)
from medcam_monai.bundle.inputs import CaseFailure, InputOptions, WSIRegion, adjust_transforms, check_cases, loader_for
from medcam_monai.bundle.locate import find_bundle, read_metadata
from medcam_monai.bundle.workflow import build_item, make_workflow, start_workflow
from medcam_monai.errors import InputError

__all__ = [
    "WSIRegion",
    "InputOptions",
    "ExplainedCases",
    "loader_for",
    "explain_with_bundle",
    "records_path",
    "fragment_path",
    "FRAGMENT_HANDLER",
]

# the handler's id in the shipped fragment
FRAGMENT_HANDLER = "medcam_explanation"
_CHECKED_LOADER = "medcam_monai.bundle.weights.CheckedCheckpointLoader"


def fragment_path() -> Path:
    """The installed config fragment that attaches the explanation handler to any bundle's evaluator."""
    return Path(str(resources.files("medcam_monai").joinpath("configs", "explain.json")))


def records_path(output: str | os.PathLike) -> Path:
    """Where the handler gathers the records of a run writing to ``output``."""
    return Path(output) / "explanations" / "explanations.json"


class ExplainedCases(list):
    """The records of the explained cases (a list, as the handler wrote them), with what else happened.

    Attributes:
        failures: one dict per case that could not be explained: ``case_id``, ``source``, ``error``,
            ``error_type``, ``input_problem`` (a problem with the input, not a crash).
        bundle: the bundle folder used; method, task: the explainer and the network's task.
    """

    def __init__(self, records=(), failures=(), bundle: Path | None = None, method: str | None = None, task: str | None = None):
        super().__init__(records)
        self.failures = list(failures)
        self.bundle, self.method, self.task = bundle, method, task


def _failure_record(failure: CaseFailure, key: str, index: int) -> dict:
    from medcam_monai.io.formats import case_id

    source = failure.case.get(key)
    return {
        "case_id": case_id(source, f"case{index}"),
        "status": "failed",
        "source": None if source is None else str(source),
        "error": str(failure.error),
        "error_type": type(failure.error).__name__,
        "input_problem": failure.input_problem,
        "rank": 0,
        "iteration": 0,
    }


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
    method: str | None = None,
    pixels: Any = None,
    inputs: InputOptions | None = None,
    fail_fast: bool = True,
) -> ExplainedCases:
    """Run the bundle's ``configs/inference.json`` with the explanation handler and return the records.

    Args:
        bundle: a bundle name (the project's) or folder (anyone's, in the model-zoo layout).
        output: the folder for the explanations (``<output>/explanations/...``) and the bundle's own outputs.
        root: the bundle root holding ``models/model.pt`` (default: the bundle folder).
        datalist: the cases (``[{"image": path}]``, optionally with ``"label"``: the known class, recorded); None: the bundle's own datalist.
        kind: the inputs' kind (:mod:`medcam_monai.io.formats`): chooses the loader and default writers.
        writers: output formats (default: those that fit ``kind``; the bundle's own without a datalist).
        weights: a state dict of the bundle's network (default: what its ``CheckpointLoader`` loads).
        steps: Med-CAM optimisation steps.
        target: the class to explain (default: the prediction; every foreground class of a segmentation).
        layer: the layer to explain, a ``named_modules()`` name.
        image_size: the network's input size, for a bundle of this project trained at another.
        wsi: the region of a whole-slide input.
        series_uid: the series to read from a DICOM folder holding several.
        progress: show the bundle's progress bars.
        overrides: any other config ids and values.
        method: the explainer (a name in :data:`medcam_monai.registry.EXPLAINERS`; default: the task's).
        pixels: the segmentation CAMs' pixel set (see :class:`~medcam_monai.handlers.ExplanationHandler`).
        inputs: how the files go into the bundle (:class:`InputOptions`; ``kind``, ``wsi``, ``series_uid``
            given separately take precedence).
        fail_fast: raise the first case that cannot be explained; False: record it and go on.

    Returns:
        The records of the explained cases (also in ``<output>/explanations/``), with ``.failures``.

    Raises:
        InputError: a problem the user can fix (bundle, config, weights, input, options), before anything
            is written when it concerns the bundle or the options.
    """
    from medcam_monai.checks import task_of_metadata
    from medcam_monai.handlers import RecordStore, network_task
    from medcam_monai.io.formats import DEFAULT_WRITERS
    from medcam_monai.registry import explainer_spec, methods_for

    folder = find_bundle(bundle)
    options = inputs or InputOptions()
    options = replace(options, kind=kind or options.kind, wsi=wsi or options.wsi, series_uid=series_uid or options.series_uid)
    own = own_explanation_handler(load_config([bundle_file(folder, "inference.json")]))
    extra = [] if own else [fragment_path()]
    raw = load_config([bundle_file(folder, "inference.json"), *extra])
    handler = own or FRAGMENT_HANDLER
    out_dir = Path(output) / "explanations"

    override: dict[str, Any] = {"output_dir": str(output), "progress": progress, f"{handler}#output_dir": str(out_dir)}
    if root is not None:
        override["bundle_root"] = str(root)
    if image_size is not None:
        override["image_size"] = image_size
    place = evaluator_input(raw, folder)
    key = place.image_key
    if datalist is not None:
        # a case's known class ("label") rides along: the handler records it, so a record can say
        # whether the prediction is right (the demo's case lines)
        datalist = [{key: d.get(key, d.get("image")), **({"label": d["label"]} if "label" in d else {})} for d in datalist]
        override[place.data_id] = datalist
        if writers is None and options.kind is not None:
            writers = DEFAULT_WRITERS[options.kind]
    if place.transforms_id is not None:
        adjusted = adjust_transforms(config_get(raw, place.transforms_id), key, options)
        if adjusted is not None:
            override[place.transforms_id] = adjusted
    elif datalist is not None and options != InputOptions(kind=options.kind, wsi=options.wsi):
        raise BundleConfigError(f"The preprocessing of {str(folder)!r} is not a plain Compose of transforms: its loader cannot be chosen.")
    loaders = checkpoint_loaders(raw, place.handlers_id)
    for loader in loaders:
        override[f"{loader}#_target_"] = _CHECKED_LOADER  # the same loader, with errors that say what to do
        if weights is not None:
            override[f"{loader}#load_path"] = str(weights)
    if not loaders:
        if weights is None:
            raise BundleConfigError(
                f"The inference config of {str(folder)!r} loads no weights (no CheckpointLoader in its handlers or a "
                f"'checkpointloader' entry): its network would be explained untrained. Pass the weights file "
                f"(--weights FILE, a state dict of its network_def)."
            )
        load = f"medcam_monai.bundle.weights.CheckedCheckpointLoader(load_path={str(weights)!r}, load_dict={{'model': @network}}, map_location='cpu')(@evaluator)"
        override["initialize"] = [*(config_get(raw, "initialize") or []), f"${load}"]
    for config_id, value in (overrides or {}).items():
        override[config_id] = value
    if writers is not None:
        override[f"{handler}#writers"] = list(writers)
    if place.transforms_id is not None:  # inverting maps and naming the step that made an input constant
        override[f"{handler}#preprocessing"] = "@" + place.transforms_id.rsplit("#", 1)[0]
    override[f"{handler}#image_key"] = key
    override[f"{handler}#case_errors"] = "raise" if fail_fast else "skip"

    workflow = make_workflow(folder, "inference.json", extra, **override)
    # checks before anything runs or is written: weights, every case, the task and the options
    for loader in loaders:
        from medcam_monai.bundle.weights import check_weights_file

        check_weights_file(build_item(workflow, f"{loader}#load_path", folder))
    if weights is not None and not loaders:
        from medcam_monai.bundle.weights import check_weights_file

        check_weights_file(weights)
    network = build_item(workflow, "network_def" if "network_def" in raw else "network", folder)
    inferer_id = reference(config_get(raw, "evaluator#inferer")) or "evaluator#inferer"
    inferer = build_item(workflow, inferer_id, folder) if inferer_id in workflow.parser else None
    failures: list[CaseFailure] = []
    first = None
    if datalist is not None and place.transforms_id is not None:
        preprocessing = build_item(workflow, place.transforms_id.rsplit("#", 1)[0], folder)
        good, failures, first = check_cases(datalist, key, preprocessing, network, fail_fast, place.transforms_id, inferer)
        workflow.parser[place.data_id] = good
    task = task_of_metadata(read_metadata(folder))
    if task is None and first is not None:
        task = network_task(network, first[None], inferer)
    bundle_method = follow(raw, f"{handler}#explainer")[1]
    if method is not None:
        try:
            spec = explainer_spec(method)
        except ValueError as e:
            raise InputError(str(e)) from None
        if task is not None and spec.task != task:
            raise InputError(
                f"{spec.display_name} (--method {method}) explains {spec.task} networks; {folder.name} is a {task} "
                f"network: choose one of {', '.join(methods_for(task))}."
            )
    name = method or (bundle_method if bundle_method not in (None, "auto") else None) or (methods_for(task)[0] if task else "auto")
    if name != "auto" and pixels is not None and explainer_spec(name).task != "segmentation":
        raise InputError(f"--pixels chooses where a segmentation network's class score is summed; {folder.name} is explained "
                         f"with {explainer_spec(name).display_name}, which explains a classifier's decision over the whole image.")
    if steps is not None and name not in ("medcam", "auto"):
        raise InputError(f"--steps sets Med-CAM's optimisation steps; {explainer_spec(name).display_name} has none.")
    own_kwargs = follow(raw, f"{handler}#explainer_kwargs")[1]
    if name == bundle_method and isinstance(own_kwargs, dict):
        kwargs: dict[str, Any] = dict(own_kwargs)
    else:  # another explainer than the bundle's own: its settings do not apply
        kwargs = {"progress": progress} if name == "medcam" else {}
    kwargs.update({k: v for k, v in (("layer", layer), ("steps", steps)) if v is not None and v != ""})
    workflow.parser[f"{handler}#explainer"] = name
    workflow.parser[f"{handler}#explainer_kwargs"] = kwargs
    if task is not None:
        workflow.parser[f"{handler}#task"] = task
    if target is not None:
        workflow.parser[f"{handler}#target"] = target
    if pixels is not None:
        workflow.parser[f"{handler}#pixels"] = pixels

    if failures:
        store = RecordStore(out_dir)
        store.begin()
        try:
            for i, failure in enumerate(failures):
                store.put(_failure_record(failure, key, i))
        finally:
            store.end()
    failed = [_failure_record(f, key, i) for i, f in enumerate(failures)]
    if datalist is not None and not workflow.parser[place.data_id]:
        return ExplainedCases([], failed, folder, name, task)
    start_workflow(workflow, folder)
    workflow.run()
    workflow.finalize()
    explanation = workflow.parser.get_parsed_content(handler)
    return ExplainedCases(explanation.all_records, failed + list(explanation.all_failures), folder, explanation.method or name, explanation.task or task)
