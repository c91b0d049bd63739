"""MONAI dictionary transforms that load source images and keep the reference writers need.

Each transform puts the image (a channel-first ``MetaTensor``) under its key and the source
reference, as JSON, under ``f"source_{key}"`` and in ``meta["medcam_source"]``.
They work inside ``Compose`` and bundle configs, e.g.::

    {"_target_": "medcam_monai.io.LoadDicomd", "keys": "image"}
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, WSIReader
from monai.transforms import LoadImage, MapTransform

from medcam_monai.io.dicom_series import read_dicom
from medcam_monai.io.errors import UnreadableImageError
from medcam_monai.io.formats import suffix_kind
from medcam_monai.io.grid import spatial_affine
from medcam_monai.io.reference import (
    SOURCE_META_KEY,
    ImageReference,
    SourceReference,
    WSIReference,
)

__all__ = ["SourceLoaderd", "LoadDicomd", "LoadImageSourced", "LoadWSId"]


def _existing_file(path: Any) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist or is not a file.")
    return path


class SourceLoaderd(MapTransform):
    """Base of the loaders: each key's path becomes the image (under the key) and its reference
    (as JSON under ``f"{source_prefix}{key}"`` and in ``image.meta["medcam_source"]``).

    Args:
        keys: keys whose values are paths to load.
        source_prefix: the reference goes to ``f"{source_prefix}{key}"``.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(self, keys: KeysCollection, source_prefix: str = "source_", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_prefix = source_prefix

    def load(self, d: Mapping[Hashable, Any], key: Hashable) -> tuple[MetaTensor, SourceReference]:
        """The image and reference for ``d[key]``."""
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image, reference = self.load(d, key)
            ref_json = reference.to_json()
            image.meta[SOURCE_META_KEY] = ref_json
            d[key] = image
            # a prefix, not a "{key}_..." suffix: MONAI's Spacingd treats every "{key}_*" entry of a
            # NIfTI image as a legacy meta dict and calls .update() on it
            d[f"{self.source_prefix}{key}"] = ref_json
        return d


class LoadDicomd(SourceLoaderd):
    """Load a DICOM series folder, a single DICOM image or an Enhanced multi-frame image.

    The image is ``(1, columns, rows, slices)`` float32 (modality units), RAS affine (MONAI's
    convention, as ``LoadImaged`` gives for NIfTI), slices ordered along the slice normal.

    Args:
        keys: keys whose values are paths to load.
        series_uid: SeriesInstanceUID to pick from a folder with several series.
        allow_irregular_spacing: load series with uneven slice gaps instead of raising.
        kwargs: ``source_prefix``, ``allow_missing_keys`` (see :class:`SourceLoaderd`).
    """

    def __init__(self, keys: KeysCollection, series_uid: str | None = None, allow_irregular_spacing: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, **kwargs)
        self.series_uid = series_uid
        self.allow_irregular_spacing = bool(allow_irregular_spacing)

    def load(self, d: Mapping[Hashable, Any], key: Hashable) -> tuple[MetaTensor, SourceReference]:
        array, ref = read_dicom(d[key], series_uid=self.series_uid, allow_irregular_spacing=self.allow_irregular_spacing)
        meta = {
            "filename_or_obj": ref.path,
            "original_affine": ref.affine_array,
            "spatial_shape": np.asarray(ref.spatial_shape),
            "original_channel_dim": "no_channel",
            "space": "RAS",
            "SeriesInstanceUID": ref.series_instance_uid,
            "StudyInstanceUID": ref.study_instance_uid,
            "Modality": ref.modality,
        }
        return MetaTensor(torch.from_numpy(array)[None], affine=torch.as_tensor(ref.affine_array), meta=meta), ref


class LoadImageSourced(SourceLoaderd):
    """Load NIfTI or 2D PNG/JPEG/TIFF with MONAI's ``LoadImage`` and record an :class:`ImageReference`.

    The image is channel-first (``ensure_channel_first``); 2D RGB images keep 3 channels unless
    ``grayscale`` is set.

    Args:
        keys: keys whose values are file paths.
        reader: passed to ``monai.transforms.LoadImage`` (``None`` chooses by extension).
        grayscale: average RGB(A) 2D images to one channel.
        kwargs: ``source_prefix``, ``allow_missing_keys`` (see :class:`SourceLoaderd`).
    """

    def __init__(self, keys: KeysCollection, reader: str | None = None, grayscale: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, **kwargs)
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)
        self.grayscale = grayscale

    def load(self, d: Mapping[Hashable, Any], key: Hashable) -> tuple[MetaTensor, SourceReference]:
        path = _existing_file(d[key])
        try:
            image = self.loader(path)
        except Exception as e:
            raise UnreadableImageError(f"{path} cannot be read as an image ({type(e).__name__}: {e}).") from None
        # a TIFF read here (not by LoadWSId) is a plain 2D image
        fmt = "2d" if suffix_kind(path) in ("2d", "tiff") else "nifti"
        if fmt == "2d" and self.grayscale and image.shape[0] > 1:
            image = image[:3].float().mean(0, keepdim=True)
        affine = image.affine.numpy()
        if fmt == "2d":
            affine = spatial_affine(affine, len(image.shape[1:]))  # 2D images: keep the in-plane part
        return image, ImageReference(path=path, affine=affine, spatial_shape=tuple(image.shape[1:]), format=fmt)


class LoadWSId(SourceLoaderd):
    """Read a region of a whole-slide image at a chosen level with ``monai.data.WSIReader``.

    The image is ``(C, H, W)`` uint8 (C = 3, RGB) at ``level``; its :class:`WSIReference` records
    the level-0 location and downsample so overlays land in slide coordinates.

    Args:
        keys: keys whose values are slide paths.
        backend: ``"tifffile"`` or ``"openslide"`` (``pip install openslide-bin openslide-python``).
        level: pyramid level to read (0 = full resolution).
        location: ``(y, x)`` top-left of the region in level-0 pixels; a per-item
            ``f"location_{key}"`` entry overrides it (e.g. from a patch grid).
        size: ``(height, width)`` at ``level``; ``None`` reads the whole level.
        kwargs: ``source_prefix``, ``allow_missing_keys`` (see :class:`SourceLoaderd`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        backend: str = "tifffile",
        level: int = 0,
        location: Sequence[int] = (0, 0),
        size: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, **kwargs)
        if backend not in ("tifffile", "openslide", "cucim"):
            raise ValueError(f"backend must be 'tifffile', 'openslide' or 'cucim', got {backend!r}.")
        if level < 0:
            raise ValueError(f"level must be >= 0, got {level}.")
        self.backend, self.level = backend, int(level)
        self.location = tuple(int(v) for v in location)
        self.size = None if size is None else tuple(int(v) for v in size)

    def load(self, d: Mapping[Hashable, Any], key: Hashable) -> tuple[MetaTensor, SourceReference]:
        path = _existing_file(d[key])
        location = tuple(int(v) for v in d.get(f"location_{key}", self.location))
        reader = WSIReader(backend=self.backend, level=self.level)
        try:
            wsi = reader.read(path)
        except Exception as e:
            raise UnreadableImageError(f"{path} cannot be opened as a whole-slide image by {self.backend} ({type(e).__name__}: {e}).") from None
        r = reader.reader
        levels = r.get_level_count(wsi)
        if self.level >= levels:
            raise ValueError(f"{path} has {levels} level(s) (0..{levels - 1}); level {self.level} does not exist.")
        level0 = tuple(int(v) for v in r.get_size(wsi, 0))
        size = self.size or tuple(int(v) for v in r.get_size(wsi, self.level))
        downsample = float(r.get_downsample_ratio(wsi, self.level))
        try:
            mpp = tuple(float(v) for v in r.get_mpp(wsi, 0))
        except Exception:  # slides without resolution tags: mpp unknown, not an error
            mpp = None
        patch, _ = reader.get_data(wsi, location=location, size=size, level=self.level)
        if hasattr(wsi, "close"):
            wsi.close()
        patch = np.asarray(patch)
        # a voxel at (row, col) of this level lies at level-0 (y, x) = location + downsample * (row, col)
        affine = np.array([[downsample, 0, location[0]], [0, downsample, location[1]], [0, 0, 1]], float)
        ref = WSIReference(path=path, affine=affine, spatial_shape=patch.shape[1:], backend=self.backend,
                           level=self.level, location=location, downsample=downsample, level0_size=level0, mpp=mpp)
        image = MetaTensor(torch.from_numpy(patch), affine=torch.as_tensor(affine),
                           meta={"filename_or_obj": path, "spatial_shape": np.asarray(patch.shape[1:])})
        return image, ref
