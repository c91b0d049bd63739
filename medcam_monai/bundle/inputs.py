"""The user's files into a bundle's preprocessing: loaders, input fixes, and a check of every case first.

The bundle's own preprocessing reads NIfTI and 2D images as it is (stock ``LoadImaged`` or ours).
DICOM series and whole-slide regions are read with the project's loaders, which keep what the DICOM
and WSI writers need (per-slice SOP Instance UIDs, slide coordinates); they return channel-first
images, so a following ``EnsureChannelFirstd`` is told the channel is axis 0.

Fixes the user asks for on the command line become stock MONAI transforms inserted right after the
loading steps: ``--volume N`` (one volume of a 4D image), ``--slice K`` (:class:`SelectSliced`, one
slice of a volume for a 2D network, placed back in the volume by the writers), ``--rgb``/``--grey``
(channels) and ``--nan-to-num``.

:func:`check_cases` runs the preprocessing on every case before the bundle runs: an unreadable
file, an image the network cannot take or one the preprocessing turns constant is reported with
its reason (and skipped, unless the caller fails fast), before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from medcam_monai.bundle.config import LOADERS, target_name
from medcam_monai.errors import InputError
from medcam_monai.handlers import SLICE_META_KEY

__all__ = [
    "WSIRegion",
    "InputOptions",
    "loader_for",
    "adjust_transforms",
    "SelectVolumed",
    "SelectSliced",
    "CaseFailure",
    "check_declared_size",
    "check_cases",
]


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


@dataclass(frozen=True)
class InputOptions:
    """How the user's files go into the bundle.

    Args:
        kind: the inputs' kind (:mod:`medcam_monai.io.formats`): chooses the loader and default writers.
        series_uid: the series to read from a DICOM folder holding several.
        allow_irregular_spacing: read a DICOM series whose slice gaps differ.
        bundle_loader: keep the bundle's own loading transform for every kind (e.g. a DICOM X-ray read
            as a 2D image by ``LoadImaged``).
        wsi: the region of a whole-slide input.
        volume: the volume of a 4D image (channels after loading) to explain.
        slice: the slice (last spatial axis) of a volume to explain with a 2D network.
        rgb: repeat a grey channel three times (alpha dropped) for an RGB network.
        grey: average colour channels to one for a single-channel network.
        nan_to_num: replace NaN/Inf voxels (``torch.nan_to_num``) right after loading.
    """

    kind: str | None = None
    series_uid: str | None = None
    allow_irregular_spacing: bool = False
    bundle_loader: bool = False
    wsi: WSIRegion | None = None
    volume: int | None = None
    slice: int | None = None
    rgb: bool = False
    grey: bool = False
    nan_to_num: bool = False

    def __post_init__(self) -> None:
        if self.rgb and self.grey:
            raise InputError("Choose --rgb or --grey, not both.")
        for name in ("volume", "slice"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise InputError(f"--{name} takes an integer index, got {value!r}.")
        if self.volume is not None and self.volume < 0:
            raise InputError(f"--volume takes an index 0..N-1, got {self.volume}.")


def loader_for(kind: str | None, wsi: WSIRegion | None = None, series_uid: str | None = None,
               allow_irregular_spacing: bool = False, key: str = "image") -> dict[str, Any] | None:
    """The loading transform (a config dict) for inputs that a bundle's own loader cannot read with
    what writers need: DICOM series (:class:`~medcam_monai.io.LoadDicomd`) and whole-slide regions
    (:class:`~medcam_monai.io.LoadWSId`); None for files the bundle reads itself."""
    if kind == "dicom":
        loader: dict[str, Any] = {"_target_": "medcam_monai.io.LoadDicomd", "keys": key}
        if series_uid is not None:
            loader["series_uid"] = series_uid
        if allow_irregular_spacing:
            loader["allow_irregular_spacing"] = True
        return loader
    if kind == "wsi":
        wsi = wsi or WSIRegion()
        return {
            "_target_": "medcam_monai.io.LoadWSId",
            "keys": key,
            "level": wsi.level,
            "location": list(wsi.location),
            "size": None if wsi.size is None else [wsi.size, wsi.size],
        }
    return None


def _lambda(key: str, body: str) -> dict[str, Any]:
    """A stock ``Lambdad`` applying ``lambda x: <body>`` (a config expression made here from validated ints)."""
    return {"_target_": "Lambdad", "keys": key, "func": f"$lambda x: {body}"}


def adjust_transforms(transforms: Sequence[Any], key: str, options: InputOptions) -> list[Any] | None:
    """The bundle's preprocessing transform list (raw config items) with the loader and fixes of ``options``;
    None when nothing changes."""
    out = list(transforms)
    head = 1 if out and target_name(out[0]) in LOADERS else 0
    if head and len(out) > 1 and target_name(out[1]) == "EnsureChannelFirstd":
        head = 2
    changed = False
    loader = None if options.bundle_loader else loader_for(options.kind, options.wsi, options.series_uid, options.allow_irregular_spacing, key)
    if loader is not None and head:
        out[0] = loader
        if head == 2:  # our loaders return channel-first images: no second channel axis
            out[1] = {**out[1], "channel_dim": 0}
        changed = True
    extra = []
    if options.nan_to_num:
        extra.append(_lambda(key, "torch.nan_to_num(x)"))
    if options.volume is not None:
        extra.append({"_target_": "medcam_monai.bundle.inputs.SelectVolumed", "keys": key, "index": int(options.volume)})
    if options.slice is not None:
        extra.append({"_target_": "medcam_monai.bundle.inputs.SelectSliced", "keys": key, "index": int(options.slice)})
    if options.rgb:
        extra.append(_lambda(key, "x[:3] if x.shape[0] >= 3 else x[:1].repeat(3, *[1] * (x.ndim - 1))"))
    if options.grey:
        extra.append(_lambda(key, "x[:3].float().mean(0, keepdim=True)"))
    if extra:
        out[head:head] = extra
        changed = True
    return out if changed else None


class _SelectIndexd(MapTransform):
    """Base of the transforms that keep one index of an axis (``keys``, ``index``)."""

    def __init__(self, keys: KeysCollection, index: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.index = int(index)


class SelectVolumed(_SelectIndexd):
    """Keep volume ``index`` of a 4D image loaded channel-first ``(T, X, Y, Z)`` -> ``(1, X, Y, Z)``.

    Args:
        keys: the image keys.
        index: the volume, ``0..T-1``.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            n = d[key].shape[0]
            if not 0 <= self.index < n:
                raise InputError(f"--volume {self.index} is out of range: the image holds {n} volume(s) (0..{n - 1}).")
            d[key] = d[key][self.index : self.index + 1]
        return d


class SelectSliced(_SelectIndexd):
    """Keep slice ``index`` (last spatial axis) of a volume ``(C, X, Y, Z)`` -> ``(C, X, Y)`` for a 2D network.

    The slice keeps its place in the volume: the affine's origin moves to the slice and
    ``meta["medcam_slice"]`` records it, so the handler gives the map back its slice axis and the
    writers put it on the volume's grid (zero elsewhere).

    Args:
        keys: the image keys.
        index: the slice, ``0..Z-1`` (negative counts from the end).
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim != 4:
                raise InputError(f"--slice picks a slice of a volume (C, X, Y, Z); the image has shape {tuple(img.shape)}.")
            n = img.shape[-1]
            if not -n <= self.index < n:
                raise InputError(f"--slice {self.index} is out of range: the volume has {n} slices along its last axis (0..{n - 1}).")
            k = self.index % n
            if isinstance(img, MetaTensor):
                affine = img.affine.clone()
                affine[:3, 3] = affine[:3, 3] + affine[:3, 2] * k  # the slice's origin in the volume
                meta = {**img.meta, SLICE_META_KEY: {"index": k, "slices": n}}
                meta.pop("affine", None)
                d[key] = MetaTensor(img.as_tensor()[..., k].clone(), affine=affine, meta=meta)
            else:
                d[key] = img[..., k]
        return d


@dataclass
class CaseFailure:
    """A case that could not be explained: its datalist entry, why, and whether it is an input problem."""

    case: dict
    error: BaseException

    @property
    def input_problem(self) -> bool:
        return isinstance(self.error, (InputError, ValueError, OSError, MemoryError))


def _nifti_size(path: str) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """A NIfTI header's declared shape, data type and data bytes (None for other files)."""
    if not path.lower().endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception:  # noqa: BLE001 - not readable as NIfTI: the loader will say so
        return None
    shape, dtype = tuple(int(s) for s in img.shape), np.dtype(img.get_data_dtype())
    return shape, dtype, int(np.prod(shape, dtype=np.float64)) * dtype.itemsize


def _memory_message(path: str) -> str:
    """Why loading ``path`` ran out of memory: a NIfTI header's declared size against the file's."""
    size = _nifti_size(path)
    if size is None:
        return f"{path}: the image does not fit in this machine's memory when loaded. Crop or downsample it."
    shape, dtype, declared = size
    return (
        f"{path}: its header declares {'x'.join(map(str, shape))} voxels of {dtype} ({declared / 2**30:,.1f} GiB) "
        f"while the file holds {os.path.getsize(path):,} bytes; the header is wrong or the image is too large "
        f"for this machine's memory. Fix or crop the image."
    )


def check_declared_size(path: str) -> None:
    """Refuse a NIfTI whose header declares more data than an uncompressed file holds, or more than this
    machine's memory as float32 (what MONAI loads), before any allocation is tried."""
    size = _nifti_size(path)
    if size is None:
        return
    shape, dtype, declared = size
    as_float = declared // dtype.itemsize * 4
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    holds = os.path.getsize(path)
    if (path.lower().endswith(".nii") and declared > holds) or (memory is not None and as_float > memory):
        raise InputError(_memory_message(path))


def _failing_step(transforms: Sequence[Any], case: Mapping, key: str) -> tuple[int, str, tuple[int, ...] | None] | None:
    """Re-run the preprocessing step by step: the index and name of the step that fails, and the image's
    shape before it (None when the loader itself fails or every step passes)."""
    d: Any = dict(case)
    shape = None
    for i, t in enumerate(transforms):
        try:
            d = t(d)
        except Exception:  # noqa: BLE001 - this is the step we are looking for
            return i, type(t).__name__, shape
        value = d.get(key) if isinstance(d, Mapping) else None
        shape = tuple(value.shape) if hasattr(value, "shape") else None
    return None


def _reason(case: Mapping, key: str, error: BaseException, preprocessing: Any = None, network: Any = None) -> BaseException:
    """The underlying error of a failed preprocessing, as an error naming the file (and the step, and a
    volume given to a 2D network)."""
    from medcam_monai.bundle.workflow import root_cause
    from medcam_monai.checks import NetworkInputError, network_input_spec
    from medcam_monai.io.errors import SourceImageError

    cause = root_cause(error)
    path = str(case.get(key))
    if isinstance(cause, MemoryError) or "MemoryError" in str(cause):
        return InputError(_memory_message(path))
    if isinstance(cause, SourceImageError):  # the readers' own words, kept with their type (the command line adds its fix)
        return cause
    if isinstance(cause, InputError):
        return cause
    if not isinstance(cause, (OSError, ValueError, RuntimeError, KeyError, IndexError, TypeError)):
        return cause
    text = str(cause) or type(cause).__name__
    step = _failing_step(getattr(preprocessing, "transforms", ()), case, key) if preprocessing is not None else None
    if step is None or step[2] is None:  # reading the file failed
        return InputError(f"{path} cannot be read by the bundle's preprocessing: {text}" if path in text else f"{path}: {type(cause).__name__}: {text}")
    index, name, shape = step
    dims, in_channels = network_input_spec(network) if network is not None else (None, None)
    if dims == 2 and len(shape) == 4:
        return NetworkInputError(
            f"{path} is a 3D volume {shape} (channels, spatial) but the bundle's network is 2D (in_channels={in_channels}); "
            f"its preprocessing fails at step {index} ({name}: {text}). Explain one slice: --slice K (0..{shape[-1] - 1}).",
            "slice",
        )
    return InputError(f"{path}: the bundle's preprocessing fails at step {index} ({name}) on the image of shape {shape}: {text}")


def check_cases(
    cases: Sequence[dict], key: str, preprocessing: Any, network: torch.nn.Module | None, fail_fast: bool,
    transforms_id: str | None = None, inferer: Any = None,
) -> tuple[list[dict], list[CaseFailure], torch.Tensor | None]:
    """Run ``preprocessing`` on every case and check what the network would receive.

    Args:
        cases: datalist entries ``{key: path}``.
        key: the image key.
        preprocessing: the bundle's preprocessing (a MONAI ``Compose``).
        network: the network, tried once per new (channels, dims) of an input (one window under a
            sliding-window ``inferer``); None skips that check.
        fail_fast: raise the first problem instead of collecting it.
        transforms_id: the config id of the preprocessing's transform list, to name the override that
            changes a step's settings on the command line.

    Returns:
        The cases that passed, the failures, and the network input of the first case that passed
        ``(C, *spatial)`` (to find the network's task from its output), or None.
    """
    from medcam_monai.checks import ConstantInputError, check_image, check_not_constant, first_constant_step
    from medcam_monai.handlers import check_network_takes

    good, failures, first = [], [], None
    shapes_ok: set[tuple[int, int]] = set()
    for case in cases:
        try:
            check_declared_size(str(case.get(key)))
            try:
                x = preprocessing(dict(case))[key]
            except Exception as e:  # noqa: BLE001 - every failure of a case is reported with its file (MemoryError too)
                raise _reason(case, key, e, preprocessing, network) from None
            name = f"image {case.get(key)}"
            x = torch.as_tensor(x)
            if network is not None and (x.shape[0], x.ndim) not in shapes_ok:
                check_network_takes(network, x[None].float(), inferer, name=name)
                shapes_ok.add((x.shape[0], x.ndim))
            try:
                check_image(x[None].float(), name=f"network input of {name}")
            except ValueError as e:
                raise InputError(str(e)) from None
            try:
                check_not_constant(x, f"network input of {name}")
            except ConstantInputError:
                step, why = first_constant_step(preprocessing.transforms, dict(case), key)
                if step is not None and transforms_id is not None:
                    why += f" On the command line: --override {transforms_id}#{step}#<setting>=<value>."
                check_not_constant(x, f"network input of {name}", why)
        except Exception as e:  # noqa: BLE001
            if fail_fast:
                raise
            failures.append(CaseFailure(dict(case), e))
            continue
        good.append(case)
        if first is None:
            first = x.float()
    return good, failures, first
