"""An Ignite handler that explains every case of a MONAI evaluator run, inside that run.

The explanation comes from the same run as the prediction: the bundle's preprocessing made the
input, its network (weights loaded by its ``CheckpointLoader``) is explained, its inferer is reused
for sliding windows, and the writers of :mod:`medcam_monai.io` save the map on the source image's
grid next to one JSON record per case.

Example bundle config entry (``configs/inference.json``)::

    {
        "_target_": "medcam_monai.handlers.ExplanationHandler",
        "explainer": "medcam",
        "explainer_kwargs": {"steps": 300, "weights": "bach"},
        "writers": ["nifti", "png", {"name": "dicom_seg", "segmentation_type": "BINARY"}],
        "output_dir": "$@output_dir + '/explanations'"
    }

and ``"@explanation"`` in the evaluator's ``val_handlers``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.inferers import SlidingWindowInferer
from torch import nn

from medcam_monai.explanation import Explanation, to_json_value
from medcam_monai.hooks import gradients_enabled, resolve_layer, unwrap_model
from medcam_monai.io.reference import SOURCE_META_KEY

__all__ = [
    "EXPLAINERS",
    "WRITER_SUFFIXES",
    "ExplanationHandler",
    "build_explainer",
    "check_layers",
    "gather_records",
    "case_id_of",
]

# name -> "module:attribute"; imported on first use so that a bundle only pays for what it names
EXPLAINERS: dict[str, str] = {
    "medcam": "medcam_monai.medcam:MedCAM",
    "seg_hires_grad_cam": "medcam_monai.cam:SegHiResGradCAM",
    "seg_grad_cam": "medcam_monai.cam:SegGradCAM",
    "grad_cam": "medcam_monai.cam:GradCAM",
    "hires_cam": "medcam_monai.cam:HiResCAM",
}

# file suffix of each registered writer's output
WRITER_SUFFIXES: dict[str, str] = {
    "nifti": ".nii.gz",
    "dicom_seg": ".seg.dcm",
    "parametric_map": ".pm.dcm",
    "slicer_seg": ".seg.nrrd",
    "png": ".png",
    "wsi": ".tif",
    "geojson": ".geojson",
}

_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".svs", ".dcm", ".mha")


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_explainer(name: str, network: nn.Module, **kwargs: Any) -> Callable[..., Explanation]:
    """Build the explainer registered as ``name`` in :data:`EXPLAINERS` for ``network``.

    Args:
        name: one of :data:`EXPLAINERS` (``"medcam"``, ``"seg_hires_grad_cam"``, ``"seg_grad_cam"``,
            ``"grad_cam"``, ``"hires_cam"``).
        network: the network to explain; DDP is unwrapped, TorchScript is refused with the reason.
        kwargs: the explainer's own arguments (e.g. ``layers``, ``steps`` for Med-CAM).

    Raises:
        ValueError: an unknown name, listing the known ones.
        TypeError: a TorchScript network (hooks do not run on it).
    """
    if name not in EXPLAINERS:
        raise ValueError(f"Unknown explainer {name!r}; choose one of {sorted(EXPLAINERS)}.")
    cls = _import(EXPLAINERS[name])
    if "inferer" in kwargs and not _accepts(cls.__init__, "inferer"):
        kwargs = {k: v for k, v in kwargs.items() if k != "inferer"}  # classifiers see whole images
    return cls(unwrap_model(network), **kwargs)


_LAYER_ARGS = ("layers", "layer", "target_layers", "target_layer")


def check_layers(network: nn.Module, kwargs: Mapping[str, Any]) -> None:
    """Resolve every layer named in an explainer's arguments now, so a wrong name fails before the
    first case (with the nearest valid names) instead of after a dataset's worth of inference."""
    for key in _LAYER_ARGS:
        names = kwargs.get(key)
        if names is None:
            continue
        for name in [names] if isinstance(names, str) else names:
            resolve_layer(network, name)


def case_id_of(image: Any, fallback: str) -> str:
    """A file-name-safe case id: the source file (or DICOM folder) name without its suffix."""
    meta = getattr(image, "meta", None) or {}
    source = meta.get("filename_or_obj")
    if isinstance(source, (list, tuple)):
        source = source[0] if source else None
    if not source:
        return fallback
    name = Path(str(source).rstrip("/\\")).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or fallback


def gather_records(records: list[dict]) -> list[dict]:
    """All ranks' case records on every rank (``all_gather_object``); ``records`` when not distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(records)
    gathered: list[list[dict] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, list(records))
    return [r for part in gathered for r in (part or [])]


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class ExplanationHandler:
    """Explain each case of a ``SupervisedEvaluator`` and save the explanation where it is used.

    Attached to an evaluator, it runs on ``Events.ITERATION_COMPLETED``: it takes the network
    inputs of the iteration from ``engine.state.batch`` (decollated or not; postprocessing never
    touches them there), re-enables autograd inside the evaluator's ``no_grad``/``inference_mode``
    on a cloned input, explains the cases with the chosen explainer (the evaluator's network,
    DDP unwrapped, or ``network``), calls the writers, and saves one JSON record per case
    (``<output_dir>/records/<case_id>.json``). On
    ``Events.COMPLETED`` the records of all ranks are gathered and rank 0 writes
    ``<output_dir>/<records_file>``; every rank writes its own cases' files, so a torchrun run with
    a ``DistributedSampler`` shards the work.

    Args:
        explainer: a name in :data:`EXPLAINERS`, or a built explainer (any callable
            ``(x, target=None, ...) -> Explanation``).
        explainer_kwargs: arguments to build the named explainer (ignored for a built one).
        writers: writers to call per case, each a name in ``medcam_monai.io.WRITERS``, a dict
            ``{"name": ..., **kwargs}``, or a callable with the same signature as those writers.
        output_dir: folder for the writers' files and the records; created when missing.
        network: the network to explain; default ``engine.network`` (unwrapped from DDP).
        image_key: key of the network input in the batch.
        label_key: key of the label in the batch (used by ``target="label"`` and recorded).
        pred_key: key of the prediction in the output (recorded as probabilities / argmax).
        target: what to explain: ``None`` or ``"pred"`` the network's own decision (explainer
            default), ``"label"`` the batch's label, or a fixed class index.
        writer_errors: ``"raise"`` (default) stops the run when a writer fails (e.g. a DICOM
            writer given a PNG source); ``"warn"`` logs it and records ``null`` for that output.
        use_inferer: build named explainers that take an ``inferer`` (the segmentation CAMs) with
            ``engine.inferer`` when it is a ``SlidingWindowInferer``, so they run window by window
            exactly as the bundle infers (and with flat memory on whole volumes).
        call_kwargs: extra arguments of each explainer call, e.g. ``{"pixels": "predicted"}`` for
            the segmentation CAMs.
        records_file: name of the gathered records file written by rank 0 at the end of the run.
        name: logger name.

    Writers have the shape of ``medcam_monai.io.WRITERS``: ``writer(explanation, source, path,
    **kwargs) -> path``, called with the case (batch size 1, its maps carrying the network input's
    affine), the source reference of the loading transform (``batch[f"{image_key}_source"]`` or
    ``image.meta["medcam_source"]``; the input MetaTensor when there is none) and
    ``<output_dir>/<writer name>/<case_id><suffix>``. The writers resample the map back onto the
    source grid themselves.
    """

    def __init__(
        self,
        explainer: str | Callable[..., Explanation] = "medcam",
        explainer_kwargs: Mapping[str, Any] | None = None,
        writers: Sequence[str | Mapping[str, Any] | Callable] = (),
        output_dir: str | os.PathLike = "./eval/explanations",
        network: nn.Module | None = None,
        image_key: str = "image",
        label_key: str | None = "label",
        pred_key: str = "pred",
        target: str | int | None = None,
        writer_errors: str = "raise",
        use_inferer: bool = True,
        call_kwargs: Mapping[str, Any] | None = None,
        records_file: str = "explanations.json",
        name: str = "medcam_monai.ExplanationHandler",
    ) -> None:
        if isinstance(explainer, str) and explainer not in EXPLAINERS:
            raise ValueError(f"Unknown explainer {explainer!r}; choose one of {sorted(EXPLAINERS)}.")
        if isinstance(target, str) and target not in ("pred", "label"):
            raise ValueError(f"target must be None, 'pred', 'label' or a class index, got {target!r}.")
        self.explainer_spec = explainer
        self.explainer_kwargs = dict(explainer_kwargs or {})
        self.explainer: Callable[..., Explanation] | None = None if isinstance(explainer, str) else explainer
        self.writers = [self._resolve_writer(w) for w in writers]
        self.output_dir = Path(output_dir)
        self.network = network
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        self.target = target
        if writer_errors not in ("raise", "warn"):
            raise ValueError(f"writer_errors must be 'raise' or 'warn', got {writer_errors!r}.")
        self.writer_errors = writer_errors
        self.use_inferer = use_inferer
        self.call_kwargs = dict(call_kwargs or {})
        self.records_file = records_file
        self.logger = logging.getLogger(name)
        self.records: list[dict] = []
        self.all_records: list[dict] = []
        self._ids: set[str] = set()

    # -- configuration --------------------------------------------------------------------------
    @staticmethod
    def _resolve_writer(spec: str | Mapping[str, Any] | Callable) -> tuple[str, Callable, dict]:
        if callable(spec):
            return getattr(spec, "__name__", "writer"), spec, {}
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"A writer is a name, a dict with a 'name' key, or a callable; got {spec!r}.")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        from medcam_monai.io import WRITERS

        if spec["name"] not in WRITERS:
            raise ValueError(f"Unknown writer {spec['name']!r}; choose one of {sorted(WRITERS)}.")
        return spec["name"], WRITERS[spec["name"]], kwargs

    def _check_output_dir(self) -> None:
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            probe = self.output_dir / f".write_test_{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise PermissionError(
                f"Cannot write explanations to {str(self.output_dir)!r} ({e.strerror or e}). Choose a writable "
                f"folder, e.g. override `output_dir` on the command line: --output_dir /tmp/explanations."
            ) from e

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``: checks at ``STARTED``, explain at ``ITERATION_COMPLETED``, gather at ``COMPLETED``."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        # fail before the first case: wrong folder, TorchScript network, wrong layer name
        self._check_output_dir()
        (self.output_dir / "records").mkdir(exist_ok=True)
        self.records, self.all_records, self._ids = [], [], set()
        if self.explainer is None:
            network = self.network if self.network is not None else getattr(engine, "network", None)
            if network is None:
                raise ValueError("ExplanationHandler needs a network: attach it to an evaluator or pass `network`.")
            kwargs = dict(self.explainer_kwargs)
            inferer = getattr(engine, "inferer", None)
            if self.use_inferer and "inferer" not in kwargs and isinstance(inferer, SlidingWindowInferer):
                kwargs["inferer"] = inferer
            check_layers(network, kwargs)
            self.explainer = build_explainer(self.explainer_spec, network, **kwargs)

    # -- per iteration ----------------------------------------------------------------------------
    def _cases(self, engine: Engine) -> tuple[list[dict], list[dict]]:
        batch, output = engine.state.batch, engine.state.output
        batch = decollate_batch(batch, detach=True) if isinstance(batch, Mapping) else list(batch)
        if isinstance(output, Mapping):
            output = decollate_batch(output, detach=True)
        output = list(output) if isinstance(output, (list, tuple)) else [{}] * len(batch)
        return batch, output

    def _device(self, engine: Engine) -> torch.device:
        network = self.network if self.network is not None else getattr(engine, "network", None)
        if network is not None:
            for p in network.parameters():
                return p.device
        return torch.device(getattr(engine.state, "device", None) or "cpu")

    def _targets(self, batch: list[dict]) -> Any:
        if self.target in (None, "pred"):
            return None
        if self.target == "label":
            if self.label_key is None or any(self.label_key not in item for item in batch):
                raise KeyError(f"target='label' but the batch has no {self.label_key!r} key; use target='pred'.")
            return torch.stack([torch.as_tensor(item[self.label_key]).flatten()[0].long() for item in batch])
        return int(self.target)

    def _explain(self, x: torch.Tensor, target: Any) -> Explanation:
        kwargs = dict(self.call_kwargs)
        if target is not None:
            # Med-CAM calls it `target`, the gradient CAMs `classes`
            kwargs["target" if _accepts(self.explainer, "target") else "classes"] = target
        # evaluators run under no_grad/inference_mode: re-enable autograd on a normal (cloned) tensor
        with gradients_enabled():
            x = x.clone()
            return self.explainer(x, **kwargs)

    def __call__(self, engine: Engine) -> None:
        batch, output = self._cases(engine)
        if not batch:
            return
        images = [item[self.image_key] for item in batch]
        x = torch.stack([torch.as_tensor(img).float() for img in images]).to(self._device(engine))
        explanation = self._explain(x, self._targets(batch))
        iteration = engine.state.iteration
        for i, (item, out, image) in enumerate(zip(batch, output, images)):
            case = explanation[i]
            case = self._with_meta(case, image)
            case_id = self._unique_id(case_id_of(image, f"rank{_rank()}_iter{iteration:05d}_case{i}"))
            source = self._source(item, image)
            outputs = {}
            for writer_name, writer, kwargs in self.writers:
                outputs[writer_name] = self._write(writer_name, writer, kwargs, case, source, case_id)
            self._record(case, case_id, image, item, out, outputs, iteration)

    # -- per case -------------------------------------------------------------------------------------
    def _unique_id(self, case_id: str) -> str:
        base, n = case_id, 1
        while case_id in self._ids:
            n += 1
            case_id = f"{base}_{n}"
        self._ids.add(case_id)
        return case_id

    @staticmethod
    def _with_meta(case: Explanation, image: Any) -> Explanation:
        """Give the case's maps the source image's metadata (affine, file name, applied operations)."""
        if not isinstance(image, MetaTensor):
            return case
        meta, ops = dict(image.meta), list(image.applied_operations)

        def like(t):
            if t is None:
                return None
            t = t.as_tensor() if isinstance(t, MetaTensor) else t
            return MetaTensor(t.detach().cpu(), meta=meta, applied_operations=ops)

        case.map, case.soft_map, case.evidence = like(case.map), like(case.soft_map), like(case.evidence)
        return case

    def _source(self, item: Mapping, image: Any) -> Any:
        """The source reference of the loading transform, else the network input itself."""
        source = item.get(f"{self.image_key}_source")
        if source is None:
            source = (getattr(image, "meta", None) or {}).get(SOURCE_META_KEY)
        return image if source is None else source

    def _write(self, writer_name, writer, kwargs, case, source, case_id) -> Any:
        folder = self.output_dir / writer_name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{case_id}{WRITER_SUFFIXES.get(writer_name, '')}"
        try:
            result = writer(case, source, path, **kwargs)
        except Exception as e:
            if self.writer_errors == "raise":
                raise
            self.logger.warning("writer %r skipped case %s: %s", writer_name, case_id, e)
            return None
        if isinstance(result, (list, tuple)):
            return [str(r) for r in result]
        return None if result is None else str(result)

    def _record(self, case, case_id, image, item, out, outputs, iteration) -> None:
        record = case.to_records()[0]
        meta = getattr(image, "meta", None) or {}
        source = meta.get("filename_or_obj")
        record.update(
            {
                "case_id": case_id,
                "source": None if source is None else str(source),
                "rank": _rank(),
                "iteration": int(iteration),
                "outputs": outputs,
            }
        )
        if self.label_key and self.label_key in item:
            record["label"] = to_json_value(item[self.label_key])
        pred = out.get(self.pred_key) if isinstance(out, Mapping) else None
        if isinstance(pred, torch.Tensor) and pred.ndim == 1:  # classifier output (probabilities/logits)
            record["pred"] = to_json_value(pred)
            record["pred_class"] = int(pred.argmax())
        path = self.output_dir / "records" / f"{case_id}.json"
        path.write_text(json.dumps(record, indent=2))
        self.records.append(record)
        self.logger.info(
            "explained %s with %s (target %s) -> %s",
            case_id,
            record["method"],
            record["target"],
            ", ".join(f"{k}: {v}" for k, v in outputs.items()) or path,
        )

    # -- end of run ----------------------------------------------------------------------------------
    def _completed(self, engine: Engine) -> None:
        self.all_records = sorted(gather_records(self.records), key=lambda r: (r["case_id"], r["rank"]))
        if _rank() == 0:
            path = self.output_dir / self.records_file
            path.write_text(json.dumps(self.all_records, indent=2))
            self.logger.info("%d explanation records gathered in %s", len(self.all_records), path)
