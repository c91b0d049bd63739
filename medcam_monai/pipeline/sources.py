"""Where studies come from: a DICOM folder on disk, or a Study Instance UID on a DICOMweb server.

Either way the step first sees headers only (to select series without moving pixels), then
materialises just the selected series as a folder of files for the bundle's ``LoadDicomd``. Files
in that folder are named by their position (``00000.dcm``, ...), never by a UID read from a file
or a server.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from medcam_monai.pipeline.errors import StudyInputError
from medcam_monai.pipeline.paths import check_uid, is_uid
from medcam_monai.pipeline.selection import SeriesInfo, group_series

__all__ = ["StudyInput", "studies_from_folder", "study_from_dicomweb"]


@dataclass
class StudyInput:
    """One study to process.

    Args:
        study_instance_uid: the study.
        source: where it came from, for the JSON line (a folder, or ``dicomweb <url>``).
        series: its series (headers only).
        fetch: ``fetch(series, folder) -> folder`` puts the series' files in ``folder`` and returns
            the folder to load.
        problem: why the study cannot be processed (e.g. its StudyInstanceUID is not a UID); the
            step reports it and touches nothing.
    """

    study_instance_uid: str
    source: str
    series: list[SeriesInfo]
    fetch: Callable[[SeriesInfo, Path], Path]
    problem: str | None = None


def _link_series(series: SeriesInfo, folder: Path) -> Path:
    """A folder holding only this series (links to the files: no copy of the pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(series.paths):
        link = folder / f"{i:05d}.dcm"
        try:
            link.symlink_to(Path(path).resolve())
        except OSError:  # file systems without symlinks
            shutil.copyfile(path, link)
    return folder


def studies_from_folder(path: str | os.PathLike) -> list[StudyInput]:
    """The studies in a folder of DICOM files (searched recursively; non-DICOM files are skipped).

    Raises:
        StudyInputError: the folder is missing or holds no DICOM instances.
    """
    root = Path(path)
    if not root.is_dir():
        raise StudyInputError(f"{str(root)!r} is not a folder: give a folder of DICOM files or a Study Instance UID.")
    headers, paths = [], []
    for dirpath, _, names in os.walk(root):
        for name in sorted(names):
            file = os.path.join(dirpath, name)
            try:
                ds = pydicom.dcmread(file, stop_before_pixels=True)
            except (InvalidDicomError, OSError, EOFError, ValueError):
                continue
            except Exception:  # noqa: BLE001 - a malformed file (hostile or broken) is not DICOM to us
                continue
            if "SOPInstanceUID" in ds and "SeriesInstanceUID" in ds:  # not a DICOMDIR
                headers.append(ds)
                paths.append(file)
    if not headers:
        raise StudyInputError(f"No DICOM instances in {str(root)!r}.")
    studies = group_series(headers, paths)
    return [
        StudyInput(uid, str(root), series, _link_series, None if is_uid(uid) else (
            f"its StudyInstanceUID {uid[:100]!r} is not a DICOM UID (digits and dots, at most 64 characters); "
            f"refused, nothing was run or written for it"))
        for uid, series in studies.items()
    ]


def study_from_dicomweb(client, study_uid: str, call: Callable = lambda fn, what: fn()) -> StudyInput:
    """A study on a DICOMweb server, by Study Instance UID.

    Args:
        client: a :class:`~medcam_monai.pipeline.pacs.DicomWebPacs`.
        study_uid: the study.
        call: ``call(fn, what)`` runs each request (the step passes its retry policy).

    Raises:
        StudyInputError: the study has no instances on the server.
    """
    check_uid(study_uid, "StudyInstanceUID")
    headers = call(lambda: client.study_headers(study_uid), f"read study {study_uid} from {client.description}")
    series = group_series(headers).get(study_uid, [])
    if not series:
        raise StudyInputError(f"{client.description} has no instances of study {study_uid}.")

    def fetch(s: SeriesInfo, folder: Path) -> Path:
        call(lambda: client.retrieve_series(study_uid, s.series_instance_uid, folder), f"retrieve {s.label}")
        return folder

    return StudyInput(study_uid, f"dicomweb {client.url}", series, fetch)
