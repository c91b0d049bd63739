"""Read a DICOM series folder or an Enhanced multi-frame image as one ordered volume.

Why not MONAI's DICOM readers: they keep only the first slice's tags, so the per-slice SOP Instance
UIDs and files a DICOM-SEG must reference are lost, and they order slices in ways that do not
always follow the slice normal. Here pydicom reads the headers, slices are ordered by their
position along the slice normal, and every way a folder can fail is reported by name.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from medcam_monai.io.errors import (
    IrregularSpacingError,
    MissingFrameOfReferenceError,
    MissingGeometryError,
    MultipleSeriesError,
    NotAnImageError,
    UnreadableImageError,
)
from medcam_monai.io.reference import DicomSeriesReference

__all__ = ["read_dicom", "load_source_datasets", "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Positions are in mm; spacing is "regular" when every gap is within this fraction of the mean gap
# (and at least 0.01 mm) -- tight enough to catch a missing slice, loose enough for float noise.
_SPACING_RTOL = 0.01


@dataclass
class _Plane:
    file: str
    sop_instance_uid: str
    frame: int | None
    position: np.ndarray
    orientation: np.ndarray
    spacing: np.ndarray
    rows: int
    columns: int


def _fmt_files(files: list[str], n: int = 4) -> str:
    shown = ", ".join(os.path.basename(f) for f in files[:n])
    return shown + (f" and {len(files) - n} more" if len(files) > n else "")


def _read_header(path: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as e:
        raise UnreadableImageError(f"{path} is not a DICOM file ({e}). Remove it from the folder or pass the image itself.") from None
    except Exception as e:  # pydicom raises plain EOFError/OSError/ValueError on truncation
        raise UnreadableImageError(f"{path} cannot be read as DICOM, it may be truncated ({type(e).__name__}: {e}).") from None


def _is_image(ds: pydicom.Dataset, path: str) -> bool:
    """Whether ``ds`` is an image to load; an image whose header stops early is an error, not "no image"."""
    uid = ds.get("SOPClassUID")
    if uid is None:
        raise UnreadableImageError(f"{path} has no SOPClassUID; it is truncated or not a DICOM object. Remove or replace it.")
    has_matrix = "Rows" in ds and "Columns" in ds
    if "Image Storage" in getattr(uid, "name", ""):
        if not has_matrix:
            raise UnreadableImageError(f"{path} is a {uid.name} without Rows/Columns: the file is truncated. Replace it.")
        return True
    return has_matrix and ds.get("SamplesPerPixel") is not None and uid.name not in ("Segmentation Storage", "Parametric Map Storage")


def _frame_item(ds: pydicom.Dataset, frame_index: int, seq: str) -> Any:
    """Per-frame functional group item ``seq`` of frame ``frame_index`` (0-based), else the shared one."""
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = ds.get(groups)
        if not items:
            continue
        item = items[frame_index] if groups.startswith("PerFrame") else items[0]
        if seq in item and len(item[seq].value):
            return item[seq].value[0]
    return None


def _planes_single(ds: pydicom.Dataset, path: str) -> list[_Plane]:
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in ds]
    if missing:
        raise MissingGeometryError(
            f"{path} lacks {', '.join(missing)}, so its slices cannot be placed in space (projection images "
            f"such as X-ray or secondary captures have none). Load it as a 2D image with LoadImaged instead."
        )
    return [
        _Plane(path, str(ds.SOPInstanceUID), None, np.asarray(ds.ImagePositionPatient, float),
               np.asarray(ds.ImageOrientationPatient, float), np.asarray(ds.PixelSpacing, float),
               int(ds.Rows), int(ds.Columns))
    ]


def _planes_multiframe(ds: pydicom.Dataset, path: str) -> list[_Plane]:
    planes = []
    for i in range(int(ds.NumberOfFrames)):
        pos, ori, meas = (_frame_item(ds, i, s) for s in ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence"))
        if pos is None or ori is None or meas is None or "PixelSpacing" not in meas:
            raise MissingGeometryError(
                f"{path} frame {i + 1} lacks a Plane Position, Plane Orientation or Pixel Measures functional "
                f"group, so it cannot be placed in space."
            )
        planes.append(_Plane(path, str(ds.SOPInstanceUID), i + 1, np.asarray(pos.ImagePositionPatient, float),
                             np.asarray(ori.ImageOrientationPatient, float), np.asarray(meas.PixelSpacing, float),
                             int(ds.Rows), int(ds.Columns)))
    return planes


def _describe_series(headers: list[pydicom.Dataset]) -> str:
    ds = headers[0]
    return (f"  SeriesInstanceUID={ds.SeriesInstanceUID} SeriesNumber={ds.get('SeriesNumber', '?')} "
            f"Modality={ds.get('Modality', '?')} Description={str(ds.get('SeriesDescription', '')).strip()!r} "
            f"({len(headers)} files)")


def _select_series(folder: str, series_uid: str | None) -> list[tuple[str, pydicom.Dataset]]:
    entries = sorted(e for e in os.listdir(folder) if not e.startswith(".") and e.upper() != "DICOMDIR")
    files = [os.path.join(folder, e) for e in entries if os.path.isfile(os.path.join(folder, e))]
    if not files:
        raise UnreadableImageError(f"{folder} holds no files. Point the loader at a folder of DICOM files.")
    headers = [(f, _read_header(f)) for f in files]
    series: dict[str, list[tuple[str, pydicom.Dataset]]] = defaultdict(list)
    non_images = []
    for f, ds in headers:
        if _is_image(ds, f):
            series[str(ds.get("SeriesInstanceUID", ""))].append((f, ds))
        else:
            non_images.append((f, ds))
    if not series:
        kinds = sorted({getattr(ds.get("SOPClassUID"), "name", str(ds.get("SOPClassUID", "unknown"))) for _, ds in non_images})
        raise NotAnImageError(f"{folder} holds no DICOM images, only: {', '.join(kinds)}. Point the loader at an image series.")
    if non_images:
        warnings.warn(f"Ignoring {len(non_images)} non-image DICOM file(s) in {folder}: {_fmt_files([f for f, _ in non_images])}.", stacklevel=3)
    if series_uid is not None:
        if series_uid not in series:
            listing = "\n".join(_describe_series([d for _, d in v]) for v in series.values())
            raise MultipleSeriesError(f"Series {series_uid} is not in {folder}. It holds:\n{listing}")
        return series[series_uid]
    if len(series) > 1:
        listing = "\n".join(_describe_series([d for _, d in v]) for v in series.values())
        raise MultipleSeriesError(
            f"{folder} holds {len(series)} image series; choose one with series_uid=...:\n{listing}"
        )
    return next(iter(series.values()))


def _order_and_check(planes: list[_Plane], allow_irregular_spacing: bool, where: str) -> tuple[list[_Plane], np.ndarray, bool]:
    """Order planes along the slice normal, check they form one stack, and return the LPS affine."""
    ori0 = planes[0].orientation
    bad = [p for p in planes if not np.allclose(p.orientation, ori0, atol=1e-4)]
    if bad:
        raise MissingGeometryError(
            f"{where}: slices have different orientations (e.g. {_fmt_files([p.file for p in bad])}); a series of "
            f"localisers or several stacks is not one volume. Choose one stack (one orientation) to load."
        )
    sizes = {(p.rows, p.columns) for p in planes}
    if len(sizes) > 1:
        raise MissingGeometryError(f"{where}: slices have different sizes {sorted(sizes)}; they do not form one volume.")
    if any(not np.allclose(p.spacing, planes[0].spacing, rtol=1e-4) for p in planes):
        raise MissingGeometryError(f"{where}: slices have different PixelSpacing; they do not form one volume.")
    row_dir, col_dir = ori0[:3], ori0[3:]
    normal = np.cross(row_dir, col_dir)
    planes = sorted(planes, key=lambda p: float(p.position @ normal))
    dist = np.array([float(p.position @ normal) for p in planes])
    gaps = np.diff(dist)
    if len(planes) > 1 and np.any(gaps < 1e-3):
        dup = [planes[i].file for i in np.flatnonzero(gaps < 1e-3)]
        raise MissingGeometryError(
            f"{where}: several slices share a position ({_fmt_files(dup)}): the series holds several phases or "
            f"echoes. Split it (e.g. by TemporalPositionIdentifier or EchoNumbers) and load one."
        )
    regular = True
    if len(planes) > 2:
        mean_gap = float(gaps.mean())
        tol = max(0.01, _SPACING_RTOL * mean_gap)
        if np.any(np.abs(gaps - mean_gap) > tol):
            regular = False
            msg = (f"{where}: slice spacing is irregular (gaps from {gaps.min():.3g} to {gaps.max():.3g} mm along the "
                   f"slice normal; a slice may be missing).")
            if not allow_irregular_spacing:
                raise IrregularSpacingError(
                    msg + " Resampling would misplace voxels. Pass allow_irregular_spacing=True to load it anyway "
                    "(the volume's affine then uses the mean spacing; DICOM-SEG and Parametric Map stay exact)."
                )
            warnings.warn(msg + " Loaded anyway (allow_irregular_spacing=True).", stacklevel=3)
    if len(planes) > 1:
        step = float(gaps.mean())
    else:
        step = 1.0
    affine = np.eye(4)
    affine[:3, 0] = row_dir * planes[0].spacing[1]  # array axis 0 = column index (along the row direction)
    affine[:3, 1] = col_dir * planes[0].spacing[0]  # array axis 1 = row index
    affine[:3, 2] = normal * step
    affine[:3, 3] = planes[0].position
    return planes, affine, regular


def _slice_step_single(ds: pydicom.Dataset) -> float:
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        if ds.get(key):
            return float(ds.get(key))
    return 1.0


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
        UnreadableImageError, NotAnImageError: see :mod:`medcam_monai.io.errors`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist.")
    if os.path.isdir(path):
        members = _select_series(path, series_uid)
        where = f"series {members[0][1].SeriesInstanceUID} in {path}"
    else:
        ds = _read_header(path)
        if not _is_image(ds, path):
            name = getattr(ds.get("SOPClassUID"), "name", ds.get("SOPClassUID", "unknown"))
            raise NotAnImageError(f"{path} is a {name}, not an image. Pass an image series or an image file.")
        members = [(path, ds)]
        where = path
    missing_for = [f for f, ds in members if not ds.get("FrameOfReferenceUID")]
    if missing_for:
        raise MissingFrameOfReferenceError(
            f"{where}: {_fmt_files(missing_for)} lack FrameOfReferenceUID, so a SEG or Parametric Map could not be "
            f"registered to them. Fix the source (e.g. anonymiser settings that drop it) before explaining."
        )
    multiframe = len(members) == 1 and int(members[0][1].get("NumberOfFrames", 1) or 1) > 1
    if multiframe:
        planes = _planes_multiframe(members[0][1], members[0][0])
    else:
        planes = [p for f, ds in members for p in _planes_single(ds, f)]
    planes, affine, regular = _order_and_check(planes, allow_irregular_spacing, where)
    if len(planes) == 1:
        affine[:3, 2] *= _slice_step_single(members[0][1])

    full = {}
    for f, _ in members:
        try:
            full[f] = pydicom.dcmread(f)
        except Exception as e:
            raise UnreadableImageError(f"{f} cannot be read ({type(e).__name__}: {e}); it may be truncated.") from None
    slices = []
    if multiframe:
        f = members[0][0]
        ds = full[f]
        frames = _pixels(ds, f)
        for p in planes:
            frame = frames[p.frame - 1].astype(np.float32)
            pvt = _frame_item(ds, p.frame - 1, "PixelValueTransformationSequence")
            if pvt is not None:
                frame = frame * float(pvt.get("RescaleSlope", 1)) + float(pvt.get("RescaleIntercept", 0))
            slices.append(frame)
    else:
        for p in planes:
            ds = full[p.file]
            slices.append(np.asarray(apply_modality_lut(_pixels(ds, p.file), ds), dtype=np.float32))
    volume = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (rows, cols, k) -> (cols, rows, k)

    first = full[planes[0].file]
    reference = DicomSeriesReference(
        path=path,
        affine=LPS_TO_RAS @ affine,
        spatial_shape=volume.shape,
        files=[p.file for p in planes],
        sop_instance_uids=[p.sop_instance_uid for p in planes],
        frame_numbers=[p.frame for p in planes] if multiframe else None,
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        sop_class_uid=str(first.SOPClassUID),
        modality=str(first.get("Modality", "")),
        regular_spacing=regular,
    )
    return np.ascontiguousarray(volume, dtype=np.float32), reference


def load_source_datasets(reference: DicomSeriesReference) -> list[pydicom.Dataset]:
    """Re-read the source instances of ``reference`` (once each, in slice order) for highdicom.

    Raises:
        UnreadableImageError: a source file moved or changed since loading (its SOP Instance UID
            differs), which would make a derived object reference the wrong image.
    """
    out, seen = [], set()
    for f, uid in zip(reference.files, reference.sop_instance_uids):
        if f in seen:
            continue
        seen.add(f)
        if not Path(f).is_file():
            raise UnreadableImageError(f"Source file {f} no longer exists; the writer needs the source DICOM to reference it.")
        ds = pydicom.dcmread(f)
        if str(ds.SOPInstanceUID) != uid:
            raise UnreadableImageError(f"Source file {f} now holds SOP Instance {ds.SOPInstanceUID}, not {uid}: it changed since loading.")
        out.append(ds)
    return out
