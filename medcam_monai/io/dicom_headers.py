"""DICOM headers without pixel data: read them, find the image series of a folder, choose one, and
check that its files belong to one patient, study, series and frame of reference.

Used by the loader (:mod:`medcam_monai.io.dicom_series`), by the references built from what stock
MONAI loaders leave (:mod:`medcam_monai.io.stock`) and by the DICOM writers, which copy the
patient and study from these headers. Imports pydicom and numpy only (no torch).
"""

from __future__ import annotations

import contextvars
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import pydicom
from pydicom.errors import InvalidDicomError

from medcam_monai.io.errors import (
    MissingIdentityError,
    MixedIdentityError,
    MultipleSeriesError,
    NotAnImageError,
    UnreadableImageError,
)
from medcam_monai.io.formats import is_scan_leftover

__all__ = [
    "IDENTITY_ATTRIBUTES",
    "Member",
    "fmt_files",
    "read_header",
    "header_cache",
    "is_image",
    "folder_files",
    "image_series",
    "choose_series",
    "check_identity",
    "fill_missing_identity",
]

# one volume = one patient, one study, one series, one frame of reference (attribute -> what it names)
IDENTITY_ATTRIBUTES = {
    "PatientID": "patient",
    "PatientName": "patient",
    "StudyInstanceUID": "study",
    "SeriesInstanceUID": "series",
    "FrameOfReferenceUID": "frame of reference",
}

# Patient and General Study attributes of type 2 (present, may be empty) that highdicom copies from
# the source into every derived object; it raises a bare AttributeError when one is absent
_COPIED_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
)
# type 1 attributes a derived object cannot do without
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "Modality")


Member = tuple[str, pydicom.Dataset]  # (file, header)


def fmt_files(files: Sequence[str], n: int = 4) -> str:
    """``a.dcm, b.dcm and 3 more``: file names for messages."""
    shown = ", ".join(os.path.basename(f) for f in files[:n])
    return shown + (f" and {len(files) - n} more" if len(files) > n else "")


_CACHE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("medcam_dicom_headers", default=None)


@contextmanager
def header_cache() -> Iterator[None]:
    """Within the block, each file's header is parsed once (keyed by path, size and modification
    time), however often it is asked for: a writer given a stock-loaded image reads the series
    headers to find the source and again to copy them, in one call. Nested blocks share the cache."""
    if _CACHE.get() is not None:
        yield
        return
    token = _CACHE.set({})
    try:
        yield
    finally:
        _CACHE.reset(token)


def read_header(path: str) -> pydicom.Dataset:
    """The header of a DICOM file, without its pixel data.

    Raises:
        UnreadableImageError: the file is not DICOM or is truncated (named, with the fix).
    """
    cache = _CACHE.get()
    if cache is None:
        return _read_header(path)
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    except OSError:
        return _read_header(path)
    if key not in cache:
        cache[key] = _read_header(path)
    return cache[key]


def _read_header(path: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as e:
        raise UnreadableImageError(f"{path} is not a DICOM file ({e}). Remove it from the folder or pass the image itself.") from None
    except Exception as e:  # pydicom raises plain EOFError/OSError/ValueError on truncation
        raise UnreadableImageError(f"{path} cannot be read as DICOM, it may be truncated ({type(e).__name__}: {e}).") from None


def is_image(ds: pydicom.Dataset, path: str) -> bool:
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


def folder_files(folder: str) -> list[str]:
    """The files of a series folder, sorted, without DICOMDIR, hidden files and partial files."""
    entries = sorted(e for e in os.listdir(folder) if not is_scan_leftover(e) and e.upper() != "DICOMDIR")
    files = [os.path.join(folder, e) for e in entries if os.path.isfile(os.path.join(folder, e))]
    if not files:
        raise UnreadableImageError(f"{folder} holds no files. Point the loader at a folder of DICOM files.")
    return files


def _describe_series(members: Sequence[Member]) -> str:
    ds = members[0][1]
    return (f"  SeriesInstanceUID={ds.SeriesInstanceUID} SeriesNumber={ds.get('SeriesNumber', '?')} "
            f"Modality={ds.get('Modality', '?')} Description={str(ds.get('SeriesDescription', '')).strip()!r} "
            f"({len(members)} files: {fmt_files([f for f, _ in members], 3)})")


def image_series(files: Iterable[str], where: str) -> dict[str, list[Member]]:
    """Read the headers of ``files`` and group the images by SeriesInstanceUID (non-images are
    skipped with a warning).

    Raises:
        NotAnImageError: none of the files is an image.
    """
    series: dict[str, list[Member]] = defaultdict(list)
    non_images = []
    for f in files:
        ds = read_header(f)
        if is_image(ds, f):
            series[str(ds.get("SeriesInstanceUID", ""))].append((f, ds))
        else:
            non_images.append((f, ds))
    if not series:
        kinds = sorted({getattr(ds.get("SOPClassUID"), "name", str(ds.get("SOPClassUID", "unknown"))) for _, ds in non_images})
        raise NotAnImageError(f"{where} holds no DICOM images, only: {', '.join(kinds)}. Point the loader at an image series.")
    if non_images:
        warnings.warn(f"Ignoring {len(non_images)} non-image DICOM file(s) in {where}: {fmt_files([f for f, _ in non_images])}.", stacklevel=3)
    return dict(series)


def choose_series(series: dict[str, list[Member]], series_uid: str | None, where: str) -> list[Member]:
    """The members of series ``series_uid``, or of the only series.

    Raises:
        MultipleSeriesError: ``series_uid`` is not there, or it is None and there are several
            (every series is listed with its files, so a stray slice of another series shows).
    """
    listing = "\n".join(_describe_series(v) for v in series.values())
    if series_uid is not None:
        if series_uid not in series:
            raise MultipleSeriesError(f"Series {series_uid} is not in {where}. It holds:\n{listing}")
        return series[series_uid]
    if len(series) > 1:
        raise MultipleSeriesError(f"{where} holds {len(series)} image series; choose one with series_uid=...:\n{listing}")
    return next(iter(series.values()))


def check_identity(members: Sequence[Member], where: str) -> None:
    """Refuse files that name different patients, studies, series or frames of reference.

    Raises:
        MixedIdentityError: naming the attribute, each value and the files that carry it.
    """
    for keyword, noun in IDENTITY_ATTRIBUTES.items():
        values: dict[str, list[str]] = defaultdict(list)
        for f, ds in members:
            values[str(ds.get(keyword, "") or "")].append(f)
        if len(values) > 1:
            shown = "; ".join(f"{value or '(empty)'!r} in {fmt_files(files)}" for value, files in values.items())
            raise MixedIdentityError(
                f"{where}: the slices do not belong to one {noun}: "
                f"{keyword} differs: {shown}. Slices of different patients, studies, series or frames of reference are "
                f"never explained as one volume: remove the files that do not belong to the series."
            )


def fill_missing_identity(headers: Sequence[pydicom.Dataset], where: str, what: str) -> None:
    """Prepare source headers (in memory) for a derived object: refuse a source without the type 1
    identifiers, and give absent type 2 patient/study attributes the empty value DICOM allows, with
    a warning saying what the output will carry.

    Args:
        headers: the source headers (changed in place; never written back).
        where: the source, for messages.
        what: the derived object, for messages (e.g. "DICOM-SEG").

    Raises:
        MissingIdentityError: a type 1 identifier (StudyInstanceUID, SeriesInstanceUID, Modality) is absent.
    """
    missing = [k for k in _REQUIRED if not any(ds.get(k) for ds in headers)]
    if missing:
        raise MissingIdentityError(
            f"{where} has no {', '.join(missing)}: a {what} copies them to be filed with its source. "
            f"Fix the source (e.g. the anonymiser settings that removed them) and load it again."
        )
    absent = [k for k in _COPIED_TYPE2 if any(k not in ds for ds in headers)]
    if absent:
        warnings.warn(
            f"{where} has no {', '.join(absent)}; the {what} will carry {'it' if len(absent) == 1 else 'them'} empty, "
            f"as DICOM allows. Add {'it' if len(absent) == 1 else 'them'} to the source if the {what} must be matched "
            f"to the patient by {'that attribute' if len(absent) == 1 else 'these attributes'}.",
            stacklevel=4,
        )
        for ds in headers:
            for k in absent:
                if k not in ds:
                    setattr(ds, k, "")


