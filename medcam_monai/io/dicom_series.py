"""Read a DICOM series folder or an Enhanced multi-frame image as one ordered volume.

Why not MONAI's DICOM readers: they keep only the first slice's tags, so the per-slice SOP Instance
UIDs and files a DICOM-SEG must reference are lost, and they order slices in ways that do not
always follow the slice normal. Here pydicom reads the headers, slices are ordered by their
position along the slice normal (:func:`~medcam_monai.io.slice_stack.slice_stack`), and every way a
folder can fail is reported by name. The reference is built from headers alone
(:func:`series_reference`); pixels are read once, from the files it names (:func:`load_dicom_pixels`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

from medcam_monai.io.dicom_headers import (
    Member,
    check_identity,
    choose_series,
    fmt_files,
    folder_files,
    image_series,
    is_image,
    read_header,
)
from medcam_monai.io.errors import (
    MissingFrameOfReferenceError,
    NotAnImageError,
    UnreadableImageError,
)
from medcam_monai.io.reference import DicomSeriesReference
from medcam_monai.io.slice_stack import frame_item, planes_of, slice_stack

__all__ = ["read_dicom", "series_reference", "load_dicom_pixels", "load_source_headers", "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _slice_step_single(ds: pydicom.Dataset) -> float:
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        if ds.get(key):
            return float(ds.get(key))
    return 1.0


def series_members(path: str | os.PathLike | Sequence[str], series_uid: str | None = None) -> tuple[list[Member], str]:
    """The image files (with headers) of one series: from a folder, one file, or a list of files.

    Returns:
        ``(members, where)``; ``where`` names the series for messages.

    Raises:
        FileNotFoundError, MultipleSeriesError, NotAnImageError, UnreadableImageError.
    """
    if isinstance(path, (list, tuple)):
        files = [os.fspath(f) for f in path]
        where = f"the {len(files)} files from {os.path.dirname(files[0]) or '.'}" if files else "an empty file list"
    else:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist.")
        if not os.path.isdir(path):
            ds = read_header(path)
            if not is_image(ds, path):
                name = getattr(ds.get("SOPClassUID"), "name", ds.get("SOPClassUID", "unknown"))
                raise NotAnImageError(f"{path} is a {name}, not an image. Pass an image series or an image file.")
            return [(path, ds)], path
        files, where = folder_files(path), path
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{f} does not exist.")
    members = choose_series(image_series(files, where), series_uid, where)
    return members, f"series {members[0][1].get('SeriesInstanceUID', '?')} in {where}"


def series_reference(
    path: str | os.PathLike | Sequence[str],
    *,
    series_uid: str | None = None,
    allow_irregular_spacing: bool = False,
) -> DicomSeriesReference:
    """The :class:`DicomSeriesReference` of a series, from its headers only (no pixel data read).

    Args:
        path: a series folder (one series, or several with ``series_uid``), one file, or a list of files.
        series_uid: the SeriesInstanceUID to take from a folder holding several series.
        allow_irregular_spacing: accept uneven slice gaps (with a warning) instead of raising.

    Raises:
        MultipleSeriesError, IrregularSpacingError, MissingGeometryError, MissingFrameOfReferenceError,
        MixedIdentityError, UnreadableImageError, NotAnImageError: see :mod:`medcam_monai.io.errors`.
    """
    members, where = series_members(path, series_uid)
    missing_for = [f for f, ds in members if not ds.get("FrameOfReferenceUID")]
    if missing_for:
        raise MissingFrameOfReferenceError(
            f"{where}: {fmt_files(missing_for)} lack FrameOfReferenceUID, so a SEG or Parametric Map could not be "
            f"registered to them. Fix the source (e.g. anonymiser settings that drop it) before explaining."
        )
    check_identity(members, where)
    planes = [p for f, ds in members for p in planes_of(ds, f)]
    multiframe = len(members) == 1 and planes[0].frame is not None
    stack = slice_stack(planes, where, allow_irregular_spacing=allow_irregular_spacing)
    if stack.irregularity:
        warnings.warn(stack.irregularity + " Loaded anyway (allow_irregular_spacing=True).", stacklevel=3)
    first = members[0][1]
    affine = stack.affine_lps(_slice_step_single(first))
    return DicomSeriesReference(
        path=path if isinstance(path, (str, os.PathLike)) else os.path.dirname(members[0][0]),
        affine=LPS_TO_RAS @ affine,
        spatial_shape=(first.Columns, first.Rows, len(stack.planes)),
        files=[p.file for p in stack.planes],
        sop_instance_uids=[p.sop_instance_uid for p in stack.planes],
        frame_numbers=[p.frame for p in stack.planes] if multiframe else None,
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        sop_class_uid=str(first.SOPClassUID),
        modality=str(first.get("Modality", "")),
        regular_spacing=stack.regular,
    )


def _read_source(file: str, uid: str, *, pixels: bool) -> pydicom.Dataset:
    """Read one source file of a reference, checking it still holds the instance it referenced."""
    if not Path(file).is_file():
        raise UnreadableImageError(f"Source file {file} no longer exists; the writer needs the source DICOM to reference it.")
    if not pixels:
        ds = read_header(file)
    else:
        try:
            ds = pydicom.dcmread(file)
        except Exception as e:
            raise UnreadableImageError(f"{file} cannot be read ({type(e).__name__}: {e}); it may be truncated.") from None
    if str(ds.get("SOPInstanceUID", "")) != uid:
        raise UnreadableImageError(f"Source file {file} now holds SOP Instance {ds.get('SOPInstanceUID')}, not {uid}: it changed since loading.")
    return ds


def _unique_files(reference: DicomSeriesReference) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for f, uid in zip(reference.files, reference.sop_instance_uids):
        seen.setdefault(f, uid)
    return list(seen.items())


def load_source_headers(reference: DicomSeriesReference) -> list[pydicom.Dataset]:
    """The headers (no pixel data) of the source instances of ``reference``, once each, in slice order.

    Raises:
        UnreadableImageError: a source file moved or changed since loading (its SOP Instance UID
            differs), which would make a derived object reference the wrong image.
        MixedIdentityError: the files no longer belong to one patient, study, series and frame of reference.
    """
    members = [(f, _read_source(f, uid, pixels=False)) for f, uid in _unique_files(reference)]
    check_identity(members, f"the source of {reference.path}")
    return [ds for _, ds in members]


def _pixels(ds: pydicom.Dataset, path: str) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise UnreadableImageError(
            f"{path}: pixel data cannot be decoded ({type(e).__name__}: {e}); the file may be truncated or use a "
            f"compression without an installed decoder (pip install pylibjpeg pylibjpeg-libjpeg)."
        ) from None
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise NotAnImageError(f"{path} is a colour ({ds.get('PhotometricInterpretation')}) image; explanations expect grey-level volumes.")
    return arr


def load_dicom_pixels(reference: DicomSeriesReference) -> np.ndarray:
    """The source pixels of ``reference`` in modality units, float32 ``(columns, rows, slices)``.

    Reads each file the reference names once (no folder listing, no second header pass); slice
    ``k`` is ``files[k]`` (frame ``frame_numbers[k]`` of a multi-frame image).
    """
    slices = []
    if reference.is_multiframe:
        (f, uid), = _unique_files(reference)
        ds = _read_source(f, uid, pixels=True)
        frames = _pixels(ds, f)
        if frames.ndim == 2:
            frames = frames[None]
        for number in reference.frame_numbers:
            frame = frames[number - 1].astype(np.float32)
            pvt = frame_item(ds, number - 1, "PixelValueTransformationSequence")
            if pvt is not None:
                frame = frame * float(pvt.get("RescaleSlope", 1)) + float(pvt.get("RescaleIntercept", 0))
            slices.append(frame)
    else:
        for f, uid in zip(reference.files, reference.sop_instance_uids):
            ds = _read_source(f, uid, pixels=True)
            slices.append(np.asarray(apply_modality_lut(_pixels(ds, f), ds), dtype=np.float32))
    volume = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (rows, cols, k) -> (cols, rows, k)
    return np.ascontiguousarray(volume, dtype=np.float32)


def read_dicom(
    path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    allow_irregular_spacing: bool = False,
) -> tuple[np.ndarray, DicomSeriesReference]:
    """Read a DICOM series folder, a single DICOM image, or an Enhanced multi-frame image.

    Args:
        path: a folder holding one image series (or several, with ``series_uid``), or one file.
        series_uid: the SeriesInstanceUID to load from a folder holding several series.
        allow_irregular_spacing: load a series whose slice gaps differ instead of raising.

    Returns:
        ``(array, reference)``: ``array`` is float32 ``(columns, rows, slices)`` in modality units
        (Rescale Slope/Intercept applied), slices ordered by position along the slice normal;
        ``reference`` is the :class:`DicomSeriesReference` whose RAS ``affine`` maps array indices to
        world coordinates.

    Raises:
        MultipleSeriesError, IrregularSpacingError, MissingGeometryError, MissingFrameOfReferenceError,
        MixedIdentityError, UnreadableImageError, NotAnImageError: see :mod:`medcam_monai.io.errors`.
    """
    reference = series_reference(path, series_uid=series_uid, allow_irregular_spacing=allow_irregular_spacing)
    return load_dicom_pixels(reference), reference
