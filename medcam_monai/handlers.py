"""An Ignite handler that explains every case of a MONAI evaluator run, inside that run.

The explanation comes from the same run as the prediction: the bundle's preprocessing made the
input, its network (weights loaded by its ``CheckpointLoader``) is explained, its inferer is reused
for sliding windows, and the writers of :mod:`medcam_monai.io` save the map on the source image's
grid next to one JSON record per case.

Example bundle config entry (``configs/inference.json``)::

    {
        "_target_": "medcam_monai.handlers.ExplanationHandler",
        "explainer": "medcam",
        "explainer_kwargs": {"steps": 300, "weights": "bach", "layer": "layer4"},
        "writers": ["nifti", "png", {"name": "dicom_seg", "segmentation_type": "BINARY"}],
        "output_dir": "$@output_dir + '/explanations'"
    }

and ``"@explanation"`` in the evaluator's ``val_handlers``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.inferers import SlidingWindowInferer
from torch import nn

from medcam_monai.explanation import Explanation, like_input, to_json_value
from medcam_monai.hooks import gradients_enabled, resolve_layer
from medcam_monai.io.atomic import check_writable_dir
from medcam_monai.io.formats import case_id
from medcam_monai.io.reference import SOURCE_META_KEY
from medcam_monai.registry import build_explainer, explainer_spec

__all__ = ["ExplanationHandler"]


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _gather(records: list[dict]) -> list[dict]:
    """Every rank's records on every rank (MONAI's string all-gather of their JSON)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(records)
    from monai.utils import string_list_all_gather

    return [json.loads(r) for r in string_list_all_gather([json.dumps(r) for r in records]) if r]


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
        explainer: a name in :data:`medcam_monai.registry.EXPLAINERS`, or a built explainer (any
            callable ``(x, target=None, **options) -> Explanation``).
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
        use_inferer: build named explainers of segmentation networks with ``engine.inferer`` when it
            is a ``SlidingWindowInferer``, so they run window by window exactly as the bundle infers
            (and with flat memory on whole volumes).
        call_kwargs: extra arguments of each explainer call, e.g. ``{"pixels": "predicted"}`` for
            the segmentation CAMs.
        records_file: name of the gathered records file written by rank 0 at the end of the run.
        name: logger name.

    Writers have the shape of ``medcam_monai.io.WRITERS``: ``writer(explanation, source, path,
    **kwargs) -> path``, called with the case (batch size 1, its maps carrying the network input's
    affine), the source reference of the loading transform (``batch[f"source_{image_key}"]`` or
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
        if isinstance(explainer, str):
            explainer_spec(explainer)  # an unknown name fails here, listing the known ones
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
        from medcam_monai.io.writers import WRITERS

        if spec["name"] not in WRITERS:
            raise ValueError(f"Unknown writer {spec['name']!r}; choose one of {sorted(WRITERS)}.")
        return spec["name"], WRITERS[spec["name"]], kwargs

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``: checks at ``STARTED``, explain at ``ITERATION_COMPLETED``, gather at ``COMPLETED``."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        # fail before the first case: wrong folder, TorchScript network, wrong layer name
        check_writable_dir(self.output_dir, "choose a writable folder, e.g. override `output_dir` on the command line: --output_dir /tmp/explanations")
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
            layers = kwargs.get("layer")
            for layer in [layers] if isinstance(layers, str) else layers or []:
                resolve_layer(network, layer)  # a wrong name fails before the first case, naming the nearest ones
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
        # evaluators run under no_grad/inference_mode: re-enable autograd on a normal (cloned) tensor
        with gradients_enabled():
            x = x.clone()
            return self.explainer(x, target=target, **self.call_kwargs)

    def __call__(self, engine: Engine) -> None:
        batch, output = self._cases(engine)
        if not batch:
            return
        images = [item[self.image_key] for item in batch]
        x = torch.stack([torch.as_tensor(img).float() for img in images]).to(self._device(engine))
        explanation = self._explain(x, self._targets(batch))
        iteration = engine.state.iteration
        for i, (item, out, image) in enumerate(zip(batch, output, images)):
            case = self._with_meta(explanation[i], image)
            source_name = (getattr(image, "meta", None) or {}).get("filename_or_obj")
            if isinstance(source_name, (list, tuple)):
                source_name = source_name[0] if source_name else None
            cid = self._unique_id(case_id(source_name, f"rank{_rank()}_iter{iteration:05d}_case{i}"))
            source = self._source(item, image)
            outputs = {}
            for writer_name, writer, kwargs in self.writers:
                outputs[writer_name] = self._write(writer_name, writer, kwargs, case, source, cid)
            self._record(case, cid, image, item, out, outputs, iteration)

    # -- per case -------------------------------------------------------------------------------------
    def _unique_id(self, cid: str) -> str:
        base, n = cid, 1
        while cid in self._ids:
            n += 1
            cid = f"{base}_{n}"
        self._ids.add(cid)
        return cid

    @staticmethod
    def _with_meta(case: Explanation, image: Any) -> Explanation:
        """Give the case's maps the source image's metadata (affine, file name, applied operations)."""
        if not isinstance(image, MetaTensor):
            return case
        case.map, case.soft_map, case.evidence = (
            None if t is None else like_input(image, t.cpu()) for t in (case.map, case.soft_map, case.evidence)
        )
        return case

    def _source(self, item: Mapping, image: Any) -> Any:
        """The source reference of the loading transform, else the network input itself."""
        source = item.get(f"source_{self.image_key}")
        if source is None:
            source = (getattr(image, "meta", None) or {}).get(SOURCE_META_KEY)
        return image if source is None else source

    def _write(self, writer_name, writer, kwargs, case, source, cid) -> Any:
        from medcam_monai.io.writers import WRITER_SUFFIXES

        folder = self.output_dir / writer_name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{cid}{WRITER_SUFFIXES.get(writer_name, '')}"
        try:
            result = writer(case, source, path, **kwargs)
        except Exception as e:
            if self.writer_errors == "raise":
                raise
            self.logger.warning("writer %r skipped case %s: %s", writer_name, cid, e)
            return None
        if isinstance(result, (list, tuple)):
            return [str(r) for r in result]
        return None if result is None else str(result)

    def _record(self, case, cid, image, item, out, outputs, iteration) -> None:
        record = case.to_records()[0]
        meta = getattr(image, "meta", None) or {}
        source = meta.get("filename_or_obj")
        record.update(
            {
                "case_id": cid,
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
        path = self.output_dir / "records" / f"{cid}.json"
        path.write_text(json.dumps(record, indent=2))
        self.records.append(record)
        self.logger.info(
            "explained %s with %s (target %s) -> %s",
            cid,
            record["method"],
            record["target"],
            ", ".join(f"{k}: {v}" for k, v in outputs.items()) or path,
        )

    # -- end of run ----------------------------------------------------------------------------------
    def _completed(self, engine: Engine) -> None:
        self.all_records = sorted(_gather(self.records), key=lambda r: (r["case_id"], r["rank"]))
        if _rank() == 0:
            path = self.output_dir / self.records_file
            path.write_text(json.dumps(self.all_records, indent=2))
            self.logger.info("%d explanation records gathered in %s", len(self.all_records), path)
