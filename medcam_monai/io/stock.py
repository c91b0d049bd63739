"""Source references from what stock MONAI loading leaves in a MetaTensor's meta.

``LoadImaged`` (+ ``EnsureChannelFirstd``) records the loaded grid in the meta: ``original_affine``
(absent for 2D PIL images, whose grid is the pixel grid), ``spatial_shape`` (without the channel),
``filename_or_obj`` and ``original_channel_dim``; later spatial transforms change the affine and
``applied_operations`` but keep these. That is enough to describe a NIfTI or 2D source.

For a DICOM series (``LoadImaged`` with ITKReader or PydicomReader on a series folder or a list of
files) the DICOM writers also need what those readers drop: per-slice SOP Instance UIDs, the frame
of reference, the patient and study. They are read here from the headers of the files named in
``filename_or_obj`` (no pixel data), the series is chosen by the SeriesInstanceUID in the meta when
the reader left one (else by which series has the loaded grid), and the loaded grid is checked
against the headers: it must hold the same voxels as the series (any axis order or direction).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from medcam_monai.io.errors import (
    IrregularSpacingError,
    MissingGeometryError,
    MultipleSeriesError,
)
from medcam_monai.io.formats import is_dicom_file, suffix_kind
from medcam_monai.io.grid import spatial_affine, voxel_correspondence
from medcam_monai.io.reference import (
    SOURCE_META_KEY,
    DicomSeriesReference,
    ImageReference,
    SourceReference,
    reference_from_json,
)

__all__ = ["STOCK_META_KEYS", "has_stock_meta", "reference_from_meta", "series_uid_in_meta", "as_source_reference"]

STOCK_META_KEYS = ("filename_or_obj", "spatial_shape")

# where MONAI's readers put SeriesInstanceUID (0020,000E) when they keep it: ITK's "group|element",
# pydicom's JSON model (hex tag -> {"vr", "Value"}), or the keyword
_SERIES_UID_KEYS = ("SeriesInstanceUID", "0020|000e", "0020|000E", "0020000E", "0020000e", "(0020,000E)", "(0020, 000e)")


def has_stock_meta(meta: Any) -> bool:
    return isinstance(meta, Mapping) and all(meta.get(k) is not None for k in STOCK_META_KEYS)


def _one_case(value: Any, name: str) -> Any:
    """The value of one case: unwrap a batch of one. A list of several DICOM files is one case (a
    reader given the files of a series)."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return value[0]
        if value and all(isinstance(v, (str, os.PathLike)) and is_dicom_file(v) for v in value):
            return [os.fspath(v) for v in value]
        raise ValueError(f"meta[{name!r}] holds {len(value)} cases; pass one case's image (monai.data.decollate_batch).")
    return value


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def series_uid_in_meta(meta: Mapping) -> str | None:
    """The SeriesInstanceUID a DICOM reader left in ``meta``, if any."""
    for key in _SERIES_UID_KEYS:
        value = meta.get(key)
        if isinstance(value, Mapping):
            value = value.get("Value")
        if isinstance(value, (list, tuple)):
            value = value[0] if len(value) == 1 else None
        if value:
            return str(value).strip()
    return None


def _is_dicom(path: Any) -> bool:
    if isinstance(path, (list, tuple)):
        return bool(path) and all(is_dicom_file(p) for p in path)
    return os.path.isdir(path) or is_dicom_file(path)


def reference_from_meta(meta: Mapping) -> SourceReference:
    """The source reference of an image loaded by stock MONAI transforms, from its meta.

    Args:
        meta: a MetaTensor's ``meta`` (one case, or a batch of one) holding ``filename_or_obj`` and
            ``spatial_shape`` (and ``original_affine``, except for 2D PIL images).

    Returns:
        A :class:`DicomSeriesReference` (series folder, DICOM file or list of DICOM files) or an
        :class:`ImageReference` (any other file) describing the grid the loader produced.

    Raises:
        TypeError: the meta does not name a loaded file.
        MissingGeometryError: the loaded grid does not hold the voxels of the DICOM series.
        MultipleSeriesError, MixedIdentityError, ...: from reading the series headers.
    """
    if not has_stock_meta(meta):
        raise TypeError(
            "Cannot find a source reference: the image's meta has no 'filename_or_obj'/'spatial_shape'. Load it with "
            "MONAI's LoadImaged (or medcam_monai.io.LoadDicomd / LoadImageSourced / LoadWSId)."
        )
    path = _one_case(meta["filename_or_obj"], "filename_or_obj")
    shape_value = _as_array(meta["spatial_shape"])
    if shape_value.ndim == 2:
        if shape_value.shape[0] != 1:
            raise ValueError(f"meta['spatial_shape'] holds {shape_value.shape[0]} cases; pass one case's image (monai.data.decollate_batch).")
        shape_value = shape_value[0]
    shape = tuple(int(s) for s in shape_value)
    affine = meta.get("original_affine")
    if affine is None:  # PIL images: the pixel grid
        affine = np.eye(len(shape) + 1)
    affine = _as_array(affine)
    if affine.ndim == 3:
        affine = affine[0]
    if _is_dicom(path):
        return _dicom_reference(path, spatial_affine(affine, len(shape)), shape, series_uid_in_meta(meta))
    path = os.fspath(path)
    picture = len(shape) == 2 and suffix_kind(path) in ("2d", "tiff")
    # a picture's grid is its pixel grid (in-plane affine); a volume file keeps its whole affine,
    # so a NIfTI output gets exactly the source's (a 2D NIfTI's too)
    return ImageReference(path=path, affine=spatial_affine(affine, 2) if picture else affine, spatial_shape=shape,
                          format="2d" if picture else "nifti")


def _dicom_reference(path: Any, affine: np.ndarray, shape: tuple[int, ...], series_uid: str | None) -> DicomSeriesReference:
    from medcam_monai.io.dicom_headers import folder_files, image_series
    from medcam_monai.io.dicom_series import series_reference

    where = path if isinstance(path, str) else f"the files of {os.path.dirname(path[0])}"
    fix = "Load the series with medcam_monai.io.LoadDicomd, which reads the geometry of every slice."
    if len(shape) != 3:
        raise MissingGeometryError(f"{where} was loaded as a {len(shape)}D image {shape}; a DICOM reference is a 3D grid. {fix}")

    def matching(uid: str | None) -> DicomSeriesReference | None:
        try:
            ref = series_reference(path, series_uid=uid)
        except IrregularSpacingError as e:
            raise IrregularSpacingError(f"{e} With stock loaders: {fix[:-1]} (allow_irregular_spacing=True).") from None
        return ref if voxel_correspondence(affine, shape, ref.affine_array, ref.spatial_shape) is not None else None

    if series_uid is None:
        try:
            ref = matching(None)
        except MultipleSeriesError:
            # the reader left no SeriesInstanceUID: take the series whose geometry is the loaded grid
            files = folder_files(path) if isinstance(path, str) else list(path)
            found = [r for r in (matching(uid) for uid in image_series(files, where)) if r is not None]
            if len(found) != 1:
                raise MultipleSeriesError(
                    f"{where} holds several image series and the image's meta does not say which one was loaded "
                    f"({len(found)} have its grid). {fix[:-1]} (series_uid=...)."
                ) from None
            return found[0]
    else:
        ref = matching(series_uid)
    if ref is None:
        raise MissingGeometryError(
            f"The loaded image's grid (spatial_shape {shape}, original_affine\n{np.round(affine, 4)}) does not hold the "
            f"voxels of DICOM series {where} as its headers place them; a derived object would be misplaced. {fix}"
        )
    return ref


def as_source_reference(source: Any) -> SourceReference:
    """Return the typed reference held by ``source``.

    Args:
        source: a :class:`SourceReference`; its JSON string or dict; a MetaTensor (or a meta dict)
            whose meta holds ``"medcam_source"`` (set by this package's loaders) or, from stock MONAI
            loading, ``filename_or_obj``/``spatial_shape``/``original_affine``; or a list of one of
            these (one case of a batch).

    Raises:
        TypeError: nothing that names a source reference.
    """
    if isinstance(source, SourceReference):
        return source
    if isinstance(source, (list, tuple)) and len(source) == 1:
        return as_source_reference(source[0])
    meta = getattr(source, "meta", None)
    if isinstance(meta, dict) and SOURCE_META_KEY in meta:
        return as_source_reference(meta[SOURCE_META_KEY])
    if isinstance(source, dict) and SOURCE_META_KEY in source:
        return as_source_reference(source[SOURCE_META_KEY])
    for candidate in (meta, source):
        if has_stock_meta(candidate):
            return reference_from_meta(candidate)
    if isinstance(source, (str, dict)):
        return reference_from_json(source)
    raise TypeError(
        f"Cannot find a source reference in {type(source).__name__}. Pass the image as loaded by MONAI's LoadImaged "
        f"(its meta names the file and grid), or the reference made by this package's loaders "
        f"(data['source_<key>'] or image.meta['{SOURCE_META_KEY}'])."
    )
