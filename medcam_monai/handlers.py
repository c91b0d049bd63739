"""An Ignite handler that explains every case of a MONAI evaluator run, inside that run.

The explanation comes from the same run as the prediction: the bundle's preprocessing made the
input, its network (weights loaded by its ``CheckpointLoader``) is explained, its inferer is reused
for sliding windows, and the writers of :mod:`medcam_monai.io` save the map on the source image's
grid next to one JSON record per case.

Any bundle: attach it without editing the bundle with the shipped config fragment
(``medcam-monai fragment`` prints its path)::

    python -m monai.bundle run --config_file "['configs/inference.json', '<fragment>']"

or name it in a bundle's own config (``configs/inference.json``)::

    {
        "_target_": "medcam_monai.handlers.ExplanationHandler",
        "explainer": "medcam",
        "explainer_kwargs": {"steps": 300, "weights": "bach", "layer": "layer4"},
        "writers": ["nifti", "png", {"name": "dicom_seg", "segmentation_type": "BINARY"}],
        "output_dir": "$@output_dir + '/explanations'"
    }

and ``"@explanation"`` in the evaluator's ``val_handlers``.

The output folder is safe to share: every file is written atomically (temporary file, then
``os.replace``), each case has one record ``records/<case_id>.json``, and the index
(``explanations.json``, and ``failures.json`` for cases that could not be explained) is updated
case by case under a file lock, so two runs into one folder keep all their cases and a killed run
leaves an index of the cases it finished. Leftover temporary files of a killed run are removed by
the next run that finds the folder idle.
"""

from __future__ import annotations

import errno
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

from medcam_monai.checks import (
    CLASSIFICATION,
    ConstantInputError,
    check_network_input,
    check_not_constant,
    first_constant_step,
    task_of_metadata,
    task_of_output,
)
from medcam_monai.errors import InputError
from medcam_monai.explanation import Explanation, like_input, to_json_value
from medcam_monai.hooks import frozen, gradients_enabled, resolve_layer, unwrap_model
from medcam_monai.io.atomic import atomic_path, check_writable_dir
from medcam_monai.io.formats import case_id
from medcam_monai.io.reference import SOURCE_META_KEY
from medcam_monai.registry import TASKS, build_explainer, explainer_spec, methods_for

__all__ = [
    "ExplanationHandler",
    "RecordStore",
    "OutputWriteError",
    "EmptyPixelSetError",
    "AUTO",
    "SLICE_META_KEY",
    "network_task",
    "check_network_takes",
]

AUTO = "auto"  # explainer / writers chosen per bundle and input
# meta of a slice taken from a volume for a 2D network (medcam_monai.bundle.inputs.SelectSliced):
# its maps get the slice axis back so that writers place them in the volume
SLICE_META_KEY = "medcam_slice"
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class OutputWriteError(InputError):
    """The output folder filled up (or a quota was hit) while writing; what was kept is named."""


class EmptyPixelSetError(InputError):
    """The pixel set of a segmentation CAM is empty for every target of a case: its map would be all zeros."""


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


def _io_inverter() -> Callable | None:
    """``medcam_monai.io.invert_to_source`` when the installed io package has it.

    Contract: ``invert_to_source(explanation, image, preprocessing, key=image_key) -> Explanation`` returns the case's
    maps on the source image's grid, inverting the bundle's spatial preprocessing with MONAI's own
    inversion from ``image.applied_operations``; writers then take the geometry from the stock
    ``MetaTensor`` metadata of ``image`` (``original_affine``, ``spatial_shape``, ``filename_or_obj``).
    """
    try:
        from medcam_monai.io import invert_to_source
    except (ImportError, AttributeError):
        return None
    return invert_to_source


# ".<final name>.<random>.part<suffixes>" (medcam_monai.io.atomic.atomic_path) and ".medcam_write_test_<pid>"
_TEMPORARY = re.compile(r"^\..+\.part(\.[A-Za-z0-9]+)*$|^\.medcam_write_test_\d+$")


def _is_stale_temporary(path: Path) -> bool:
    """A temporary file of :func:`~medcam_monai.io.atomic.atomic_path` or of a writability probe."""
    return bool(_TEMPORARY.match(path.name))


class RecordStore:
    """The explanation folder's records and index.

    Layout: ``records/<case_id>.json`` (one per case, success or failure), ``<index_file>`` (the
    successful records, sorted by case id) and ``<failures_file>`` (the failed ones; absent when none).
    The index is a view of the records: :meth:`put` writes a record and moves its case into the right
    list under an exclusive file lock, so concurrent runs and ranks never lose each other's cases.

    Args:
        folder: the explanation folder (created when missing).
        index_file, failures_file: file names of the two lists in ``folder``.
    """

    def __init__(self, folder: str | os.PathLike, index_file: str = "explanations.json", failures_file: str = "failures.json") -> None:
        from filelock import FileLock  # torch's own dependency: a well-kept cross-platform lock

        self.folder = Path(folder)
        self.records_dir = self.folder / "records"
        self.index = self.folder / index_file
        self.failures = self.folder / failures_file
        self._lock = FileLock(str(self.folder / ".explanations.lock"))
        self._run_fd: int | None = None

    # -- a run's lifetime ---------------------------------------------------------------------------------
    def begin(self) -> None:
        """Check the folder is writable and join it as a run: when no other run is active, remove the
        temporary files a killed run left and rebuild the index from the records (a kill between a
        record and its index entry is repaired here)."""
        self.end()  # a run that raised never reached end(): its lock goes before this one is taken
        check_writable_dir(self.folder, "choose a writable folder, e.g. override `output_dir` on the command line: --output_dir /tmp/explanations")
        self.records_dir.mkdir(exist_ok=True)
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): leftovers stay, the index is still locked per update
            return
        fd = os.open(self.folder / ".medcam-run.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        if alone:
            self.remove_leftovers()
            self.rebuild()
        fcntl.flock(fd, fcntl.LOCK_SH)  # other runs see this one active until end() (or its death)
        self._run_fd = fd

    def end(self) -> None:
        """Leave the folder (a killed process leaves it too: the kernel drops its lock)."""
        if self._run_fd is not None:
            os.close(self._run_fd)
            self._run_fd = None

    def remove_leftovers(self) -> list[Path]:
        """Delete temporary files of killed runs in the folder and its writers' folders (never anything
        else, never deeper); return them."""
        removed = []
        for path in [*self.folder.glob(".*"), *self.folder.glob("*/.*")]:
            if path.is_file() and not path.is_symlink() and _is_stale_temporary(path):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # -- records ----------------------------------------------------------------------------------------------
    def _write_json(self, path: Path, value: Any) -> None:
        try:
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(value, indent=2))
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise self.full(path, e) from None
            raise

    def full(self, path: str | os.PathLike, e: OSError) -> OutputWriteError:
        """The error for a full disk while writing ``path``, naming what was kept."""
        kept = len(self._read_list(self.index))
        return OutputWriteError(
            f"{e.strerror or 'No space left on device'} while writing {str(path)!r}. Kept: {kept} explained case(s) "
            f"listed in {str(self.index)!r} with their outputs; every file there is complete (written to a "
            f"temporary name first), nothing is half-written. Free space, or choose another output folder."
        )

    @staticmethod
    def _read_list(path: Path) -> list[dict]:
        try:
            value = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return []
        return [r for r in value if isinstance(r, dict) and "case_id" in r] if isinstance(value, list) else []

    def read_records(self) -> list[dict]:
        """Every readable record of the folder (unreadable ones are skipped)."""
        records = []
        for path in sorted(self.records_dir.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(record, dict) and "case_id" in record:
                records.append(record)
        return records

    def put(self, record: dict) -> Path:
        """Write ``record`` (``records/<case_id>.json``) and enter its case in the index or the failures."""
        path = self.records_dir / f"{record['case_id']}.json"
        self._write_json(path, record)
        with self._lock:
            done = [r for r in self._read_list(self.index) if r["case_id"] != record["case_id"]]
            failed = [r for r in self._read_list(self.failures) if r["case_id"] != record["case_id"]]
            (failed if record.get("status") == "failed" else done).append(record)
            self._write_lists(done, failed)
        return path

    def rebuild(self) -> tuple[list[dict], list[dict]]:
        """Rebuild the index and the failures from the records; return both lists."""
        records = self.read_records()
        with self._lock:
            done = [r for r in records if r.get("status") != "failed"]
            failed = [r for r in records if r.get("status") == "failed"]
            self._write_lists(done, failed)
        return done, failed

    def _write_lists(self, done: list[dict], failed: list[dict]) -> None:
        self._write_json(self.index, sorted(done, key=lambda r: (r["case_id"], r.get("rank", 0))))
        if failed:
            self._write_json(self.failures, sorted(failed, key=lambda r: r["case_id"]))
        else:
            self.failures.unlink(missing_ok=True)  # a view of the records: no failed record, no list


class ExplanationHandler:
    """Explain each case of a ``SupervisedEvaluator`` and save the explanation where it is used.

    Attached to an evaluator, it runs on ``Events.ITERATION_COMPLETED``: it takes the network
    inputs of the iteration from ``engine.state.batch`` (decollated or not; postprocessing never
    touches them there), re-enables autograd inside the evaluator's ``no_grad``/``inference_mode``
    on a cloned input, explains the cases with the chosen explainer (the evaluator's network,
    DDP unwrapped, or ``network``), calls the writers, and saves one JSON record per case
    (``<output_dir>/records/<case_id>.json``, entered in ``<output_dir>/<records_file>`` at once, see
    :class:`RecordStore`). Every rank writes its own cases' files, so a torchrun run with a
    ``DistributedSampler`` shards the work; on ``Events.COMPLETED`` the records of all ranks are
    gathered in :attr:`all_records`.

    Before the network sees a batch (``Events.GET_BATCH_COMPLETED``) its shape is checked against the
    network's first layer, so a wrong channel count or a volume into a 2D network is a clear error
    instead of a torch one. A case whose network input is constant, or whose pixel set is empty for
    every target, is not explained (an all-zero map would look like a result): it fails with the reason.

    Args:
        explainer: a name in :data:`medcam_monai.registry.EXPLAINERS`, ``"auto"`` (the default
            explainer of the network's task: Med-CAM for classifiers, Seg-HiRes-Grad CAM for
            segmentation networks), or a built explainer (any callable
            ``(x, target=None, **options) -> Explanation``).
        explainer_kwargs: arguments to build the named explainer (ignored for a built one).
        writers: writers to call per case, each a name in ``medcam_monai.io.WRITERS``, a dict
            ``{"name": ..., **kwargs}``, or a callable with the same signature as those writers; or
            ``"auto"``: the writers that fit each case's input (:data:`medcam_monai.io.formats.DEFAULT_WRITERS`).
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
        records_file: name of the index of explained cases in ``output_dir``.
        name: logger name.
        task: ``"classification"`` or ``"segmentation"`` when ``explainer="auto"``; None: from
            ``metadata``, else from the network's output shape on the first batch.
        metadata: the bundle's ``metadata.json`` content (``"@_meta_"`` in a config).
        pixels: the segmentation CAMs' pixel set: ``"predicted"``, ``"image"``, ``{"box": [start, end]}``,
            ``{"point": index}`` (voxel indices of the network input), ``{"mask": path}`` (an image file
            on any grid with an affine: resampled onto each case's network input) or a ``PixelSet``.
            None: ``call_kwargs``' or the explainer's default.
        preprocessing: the bundle's preprocessing (``"@preprocessing"``): inverted to put maps on the
            source grid of inputs loaded by stock MONAI transforms, and re-run to say which step made
            an input constant.
        case_errors: ``"raise"`` (default): a case that cannot be explained stops the run;
            ``"skip"``: it gets a failed record (``status: "failed"``, ``error``) and the run goes on.
            A full disk always stops the run.
        failures_file: name of the list of failed cases in ``output_dir``.

    Writers have the shape of ``medcam_monai.io.WRITERS``: ``writer(explanation, source, path,
    **kwargs) -> path``, called with the case (batch size 1, its maps carrying the network input's
    affine), the source reference of the loading transform (``batch[f"source_{image_key}"]`` or
    ``image.meta["medcam_source"]``; the input MetaTensor when there is none) and
    ``<output_dir>/<writer name>/<case_id><suffix>``.
    """

    def __init__(
        self,
        explainer: str | Callable[..., Explanation] = "medcam",
        explainer_kwargs: Mapping[str, Any] | None = None,
        writers: Sequence[str | Mapping[str, Any] | Callable] | str = (),
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
        task: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        pixels: Any = None,
        preprocessing: Any = None,
        case_errors: str = "raise",
        failures_file: str = "failures.json",
    ) -> None:
        if isinstance(explainer, str) and explainer != AUTO:
            explainer_spec(explainer)  # an unknown name fails here, listing the known ones
        if isinstance(target, str) and target not in ("pred", "label"):
            raise ValueError(f"target must be None, 'pred', 'label' or a class index, got {target!r}.")
        if task is not None and task not in TASKS:
            raise ValueError(f"task must be None, 'classification' or 'segmentation', got {task!r}.")
        for label, value, allowed in (("writer_errors", writer_errors, ("raise", "warn")), ("case_errors", case_errors, ("raise", "skip"))):
            if value not in allowed:
                raise ValueError(f"{label} must be one of {allowed}, got {value!r}.")
        self.explainer_spec = explainer
        self.explainer_kwargs = dict(explainer_kwargs or {})
        self.explainer: Callable[..., Explanation] | None = None if isinstance(explainer, str) else explainer
        self.method: str | None = None if isinstance(explainer, str) else getattr(explainer, "method", None)
        self.auto_writers = isinstance(writers, str) and writers == AUTO
        self.writers = [] if self.auto_writers else [self._resolve_writer(w) for w in writers]
        self.output_dir = Path(output_dir)
        self.network = network
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        self.target = target
        self.writer_errors = writer_errors
        self.use_inferer = use_inferer
        self.call_kwargs = dict(call_kwargs or {})
        self.records_file = records_file
        self.task = task or task_of_metadata(metadata)
        self.pixels = pixels
        self.preprocessing = preprocessing
        self.case_errors = case_errors
        self.store = RecordStore(self.output_dir, records_file, failures_file)
        self.logger = logging.getLogger(name)
        self.records: list[dict] = []
        self.failures: list[dict] = []
        self.all_records: list[dict] = []
        self.all_failures: list[dict] = []
        self._ids: set[str] = set()
        self._masks: dict[str, Any] = {}
        self._shapes_ok: set[tuple[int, int]] = set()

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
        """Register on ``engine``: checks at ``STARTED`` and ``GET_BATCH_COMPLETED``, explain at
        ``ITERATION_COMPLETED``, gather at ``COMPLETED``."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._check_batch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _network(self, engine: Engine) -> nn.Module:
        network = self.network if self.network is not None else getattr(engine, "network", None)
        if network is None:
            raise ValueError("ExplanationHandler needs a network: attach it to an evaluator or pass `network`.")
        return network

    def _started(self, engine: Engine) -> None:
        # fail before the first case: wrong folder, TorchScript network, wrong layer name
        self.store.begin()
        self.records, self.failures, self.all_records, self.all_failures, self._ids = [], [], [], [], set()
        if self.explainer is None and (self.explainer_spec != AUTO or self.task is not None):
            self._build(engine)

    def _build(self, engine: Engine, x: torch.Tensor | None = None) -> None:
        """Build the named explainer; for ``"auto"`` the task's default (found from the output of ``x`` if unknown)."""
        network = self._network(engine)
        name = self.explainer_spec
        inferer = getattr(engine, "inferer", None)
        if name == AUTO:
            if self.task is None:
                self.task = network_task(network, x, inferer)
            name = methods_for(self.task)[0]
        spec = explainer_spec(name)
        if self.pixels is not None and spec.task == CLASSIFICATION:
            raise InputError(
                f"A pixel set (pixels={self.pixels!r}) chooses where a segmentation map's class score is summed; "
                f"{spec.display_name} explains a classifier's decision over the whole image. Leave pixels unset."
            )
        kwargs = dict(self.explainer_kwargs)
        if self.use_inferer and "inferer" not in kwargs and isinstance(inferer, SlidingWindowInferer):
            kwargs["inferer"] = inferer
        layers = kwargs.get("layer")
        for layer in [layers] if isinstance(layers, str) else layers or []:
            resolve_layer(network, layer)  # a wrong name fails before the first case, naming the nearest ones
        try:
            self.explainer = build_explainer(name, network, **kwargs)
        except TypeError as e:
            if "unexpected keyword" not in str(e):
                raise
            raise ValueError(f"explainer_kwargs {sorted(self.explainer_kwargs)} do not fit {spec.display_name}: {e}") from None
        self.method = name
        self.logger.info("explaining with %s (%s network)", spec.display_name, spec.task)

    # -- per iteration ----------------------------------------------------------------------------
    def _check_batch(self, engine: Engine) -> None:
        """Before the evaluator's forward: a batch of a new shape is tried on the network (one window,
        no gradients), so an input it cannot take is an error naming shape and channels, not a torch one."""
        batch = engine.state.batch
        image = batch.get(self.image_key) if isinstance(batch, Mapping) else None
        if isinstance(image, torch.Tensor) and (image.shape[1], image.ndim) not in self._shapes_ok:
            x = torch.as_tensor(image[:1]).float().to(self._device(engine))
            check_network_takes(self._network(engine), x, getattr(engine, "inferer", None), name=f"batch {tuple(image.shape)}")
            self._shapes_ok.add((image.shape[1], image.ndim))

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

    def _explain(self, x: torch.Tensor, target: Any, images: list) -> Explanation:
        # evaluators run under no_grad/inference_mode: re-enable autograd on a normal (cloned) tensor
        kwargs = dict(self.call_kwargs)
        if self.pixels is not None:
            kwargs["pixels"] = self._pixel_set(images)
        with gradients_enabled():
            x = x.clone()
            return self.explainer(x, target=target, **kwargs)

    def __call__(self, engine: Engine) -> None:
        batch, output = self._cases(engine)
        if not batch:
            return
        images = [item[self.image_key] for item in batch]
        x = torch.stack([torch.as_tensor(img).float() for img in images]).to(self._device(engine))
        if self.explainer is None:
            self._build(engine, x)
        iteration = engine.state.iteration
        cids = [self._unique_id(case_id(_source_name(img), f"rank{_rank()}_iter{iteration:05d}_case{i}")) for i, img in enumerate(images)]
        keep = []
        for i, (cid, image) in enumerate(zip(cids, images)):
            try:
                self._check_case(x[i], cid, image)
                keep.append(i)
            except InputError as e:
                self._fail(cid, image, e, iteration)
        if not keep:
            return
        targets = self._targets([batch[i] for i in keep])
        try:
            explanation = self._explain(x[keep], targets, [images[i] for i in keep])
        except (OutputWriteError, KeyboardInterrupt):
            raise
        except Exception as e:
            if self.case_errors == "raise":
                raise
            for i in keep:
                self._fail(cids[i], images[i], e, iteration)
            return
        for j, i in enumerate(keep):
            self._finish_case(engine, explanation[j], cids[i], images[i], batch[i], output[i], x[i], iteration)

    # -- per case -------------------------------------------------------------------------------------
    def _finish_case(self, engine, case: Explanation, cid: str, image: Any, item: Mapping, out: Any, x: torch.Tensor, iteration: int) -> None:
        try:
            empty = case.scores.get("empty")
            if isinstance(empty, torch.Tensor) and empty.numel() and bool(empty.all()):
                raise EmptyPixelSetError(self._empty_message(engine, case, cid, x))
            case = self._with_meta(case, image)
            outputs = self._write_outputs(case, item, image, cid)
        except (OutputWriteError, KeyboardInterrupt):
            raise
        except Exception as e:
            if self.case_errors == "raise":
                raise
            self._fail(cid, image, e, iteration)
            return
        self._record(case, cid, image, item, out, outputs, iteration)

    def _unique_id(self, cid: str) -> str:
        base, n = cid, 1
        while cid in self._ids:
            n += 1
            cid = f"{base}_{n}"
        self._ids.add(cid)
        return cid

    @staticmethod
    def _with_meta(case: Explanation, image: Any) -> Explanation:
        """Give the case's maps the source image's metadata (affine, file name, applied operations); a
        slice of a volume gets its slice axis back (its affine already places it in the volume)."""
        if not isinstance(image, MetaTensor):
            return case
        sliced = SLICE_META_KEY in image.meta
        case.map, case.soft_map, case.evidence = (
            None if t is None else like_input(image, t.cpu()[..., None] if sliced else t.cpu())
            for t in (case.map, case.soft_map, case.evidence)
        )
        return case

    def _source(self, item: Mapping, image: Any) -> Any:
        """The source reference of the loading transform, else the network input itself."""
        source = item.get(f"source_{self.image_key}")
        if source is None:
            source = (getattr(image, "meta", None) or {}).get(SOURCE_META_KEY)
        return image if source is None else source

    def _writers_for(self, image: Any) -> list[tuple[str, Callable, dict]]:
        if not self.auto_writers:
            return self.writers
        from medcam_monai.io.formats import DEFAULT_WRITERS, input_kind

        name = _source_name(image)
        kind = input_kind(name) if name and os.path.exists(name) else None
        return [self._resolve_writer(w) for w in DEFAULT_WRITERS.get(kind, ["nifti"])]

    def _write_outputs(self, case: Explanation, item: Mapping, image: Any, cid: str) -> dict[str, Any]:
        source = self._source(item, image)
        if source is image and self.preprocessing is not None:
            # a stock loader (no reference of ours): put the maps on the source grid with MONAI's inversion
            invert = _io_inverter()
            if invert is not None:
                case = invert(case, image, self.preprocessing, key=self.image_key)
        return {name: self._write(name, writer, kwargs, case, source, cid) for name, writer, kwargs in self._writers_for(image)}

    def _write(self, writer_name, writer, kwargs, case, source, cid) -> Any:
        from medcam_monai.io.writers import WRITER_SUFFIXES

        folder = self.output_dir / writer_name
        path = folder / f"{cid}{WRITER_SUFFIXES.get(writer_name, '')}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            result = writer(case, source, path, **kwargs)
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise self.store.full(path, e) from None
            if self.writer_errors == "raise":
                raise
            self.logger.warning("writer %r skipped case %s: %s", writer_name, cid, e)
            return None
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
        source = _source_name(image)
        record.update(
            {
                "case_id": cid,
                "status": "ok",
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
        path = self.store.put(record)
        self.records.append(record)
        self.logger.info(
            "explained %s with %s (target %s) -> %s",
            cid,
            record["method"],
            record["target"],
            ", ".join(f"{k}: {v}" for k, v in outputs.items()) or path,
        )

    def _fail(self, cid: str, image: Any, error: BaseException, iteration: int) -> None:
        """A case that could not be explained: raise (``case_errors="raise"``) or record why and go on."""
        if self.case_errors == "raise":
            raise error
        source = _source_name(image)
        record = {
            "case_id": cid,
            "status": "failed",
            "source": None if source is None else str(source),
            "error": f"{error}",
            "error_type": type(error).__name__,
            "input_problem": isinstance(error, (InputError, ValueError)),
            "rank": _rank(),
            "iteration": int(iteration),
        }
        self.store.put(record)
        self.failures.append(record)
        self.logger.error("case %s not explained: %s", cid, error)

    # -- reasons ---------------------------------------------------------------------------------------
    def _check_case(self, x: torch.Tensor, cid: str, image: Any) -> None:
        """A constant network input is refused, naming the preprocessing step that made it constant
        (the preprocessing is re-run on the source only on this error path)."""
        name = f"network input of case {cid}"
        try:
            check_not_constant(x, name)
        except ConstantInputError:
            source = _source_name(image)
            transforms = getattr(self.preprocessing, "transforms", None)
            why = first_constant_step(transforms, {self.image_key: source}, self.image_key)[1] if source and transforms else ""
            check_not_constant(x, name, why)

    def _empty_message(self, engine: Engine, case: Explanation, cid: str, x: torch.Tensor) -> str:
        """Which class the network predicts where, for a pixel set that is empty for every target."""
        classes = [int(c) for c in case.target[0]]
        inferer = getattr(engine, "inferer", None)
        network = unwrap_model(self._network(engine))
        with gradients_enabled(), torch.no_grad():  # outside the evaluator's inference mode, no graph
            out = inferer(x[None], network) if inferer is not None else network(x[None])
        out = out[0] if isinstance(out, (tuple, list)) else out
        out = out.as_tensor() if hasattr(out, "as_tensor") else out
        labels = out.argmax(1)[0] if out.shape[1] > 1 else (torch.sigmoid(out[0, 0]) > 0.5).long()
        total = labels.numel()
        found = []
        for c in torch.unique(labels).tolist():
            where = torch.nonzero(labels == c)
            lo, hi = where.min(0).values.tolist(), (where.max(0).values + 1).tolist()
            found.append(f"class {c} in {100 * len(where) / total:.1f}% of voxels (box {lo}..{hi})")
        present = [c for c in torch.unique(labels).tolist() if c not in classes] or [0]
        return (
            f"Case {cid}: the pixel set is empty for class {', '.join(map(str, classes))}: the network predicts it nowhere "
            f"in this input, so its map would be all zeros and nothing is written. The network predicts "
            f"{'; '.join(found)} on its input grid {tuple(labels.shape)}. Explain a class it predicts (target={present[-1]}; "
            f"on the command line --target {present[-1]}), the whole image (pixels='image'; --pixels image) or a region "
            f"(pixels={{'box': [start, end]}}; --pixels box:X0,Y0,...:X1,Y1,...) in voxels of that grid."
        )

    def _pixel_set(self, images: list) -> Any:
        """The handler's ``pixels`` as the explainers take it, a mask file resampled onto each case's grid."""
        from medcam_monai.cam.pixel_sets import Box, Point, resolve_pixel_set

        spec = self.pixels
        if isinstance(spec, Mapping):
            if set(spec) == {"box"}:
                start, end = spec["box"]
                return Box(list(start), list(end))
            if set(spec) == {"point"}:
                return Point(list(spec["point"]))
            if set(spec) == {"mask"}:
                return torch.stack([self._mask_on(spec["mask"], img) for img in images])
            raise ValueError(f"pixels must be 'predicted', 'image', {{'box': [start, end]}}, {{'point': index}} or {{'mask': path}}; got {spec!r}.")
        return resolve_pixel_set(spec)

    def _mask_on(self, path: str, image: Any) -> torch.Tensor:
        """A mask file on ``image``'s grid ``(1, *spatial)``: resampled by affine (nearest) when both have one."""
        from monai.transforms import LoadImage, SpatialResample

        if path not in self._masks:
            if not os.path.isfile(path):
                raise InputError(f"Mask file {path!r} does not exist.")
            self._masks[path] = LoadImage(image_only=True, ensure_channel_first=True)(path)
        mask = self._masks[path]
        spatial = tuple(image.shape[1:])
        if isinstance(image, MetaTensor) and isinstance(mask, MetaTensor):
            mask = SpatialResample(mode="nearest", padding_mode="zeros")(
                mask[:1].float(), dst_affine=image.affine, spatial_size=spatial
            )
        if tuple(mask.shape[1:]) != spatial:
            raise InputError(f"The mask {path!r} has shape {tuple(mask.shape[1:])}, the network input {spatial}, and no affine maps one onto the other.")
        if not bool((torch.as_tensor(mask) != 0).any()):
            raise InputError(f"The mask {path!r} holds no voxel inside the network input's field of view (shape {spatial}).")
        return torch.as_tensor(mask[:1]) != 0

    # -- end of run ----------------------------------------------------------------------------------
    def _completed(self, engine: Engine) -> None:
        self.all_records = sorted(_gather(self.records), key=lambda r: (r["case_id"], r["rank"]))
        self.all_failures = sorted(_gather(self.failures), key=lambda r: (r["case_id"], r["rank"]))
        self.store.end()
        if _rank() == 0:
            self.logger.info("%d explanation records in %s (%d failed)", len(self.all_records), self.store.index, len(self.all_failures))


def _source_name(image: Any) -> str | None:
    source = (getattr(image, "meta", None) or {}).get("filename_or_obj")
    if isinstance(source, (list, tuple)):
        source = source[0] if source else None
    return None if source is None else str(source)


def _probe(network: nn.Module, x: torch.Tensor, inferer: Any = None) -> tuple[Any, tuple[int, ...]]:
    """The network's output on the first case of ``x`` ``(B, C, *spatial)`` (one window of it under a
    sliding-window inferer: enough to see the output's form) without gradients, and the shape it saw."""
    from medcam_monai.cam.sliding import window_padding

    x = x[:1]
    if isinstance(inferer, SlidingWindowInferer) and x.ndim >= 3:
        roi, pad = window_padding(x.shape[2:], inferer.roi_size)
        x = torch.nn.functional.pad(x, pad)[(slice(None), slice(None), *[slice(0, r) for r in roi])]
    with frozen(network) as net, gradients_enabled(), torch.no_grad():  # eval mode as the evaluator runs it, then restored
        return net(x), tuple(x.shape)


def check_network_takes(network: nn.Module, x: torch.Tensor, inferer: Any = None, name: str = "image") -> None:
    """Try the network on ``x`` ``(B, C, *spatial)`` (one case, one window); when it fails, raise a
    :class:`~medcam_monai.checks.NetworkInputError` naming the shape, what the network takes and the fix."""
    from medcam_monai.checks import NetworkInputError

    try:
        _probe(network, x, inferer)
    except Exception as e:  # noqa: BLE001 - explained below, the torch error kept in the message
        check_network_input(unwrap_model(network), x.shape, name=name)
        raise NetworkInputError(
            f"The network fails on the {name} of shape {tuple(x.shape)} (batch, channels, spatial): "
            f"{type(e).__name__}: {e}",
            "network",
        ) from None


def network_task(network: nn.Module, x: torch.Tensor | None, inferer: Any = None) -> str:
    """``"classification"`` or ``"segmentation"`` from the network's output on the first case of ``x``
    ``(B, C, *spatial)`` (one window of it under a sliding-window inferer: enough to see the output's
    form), without gradients."""
    if x is None:
        raise ValueError("The task cannot be found without an input: pass task= or metadata=.")
    out, shape = _probe(network, x, inferer)
    return task_of_output(out, shape)
