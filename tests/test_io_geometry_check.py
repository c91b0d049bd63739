"""One geometry check (issue 10, "geometry checks twice with different tolerances"): the PACS step's
series selection and the loader judge a slice stack with the same function, so a series the
pipeline selects is one LoadDicomd reads, and a series it skips is one the loader would refuse."""

from __future__ import annotations

import pydicom
import pytest
from _io_support import CT5N, copy_series

from medcam_monai.io import SourceImageError, read_dicom
from medcam_monai.pipeline.selection import group_series, volume_problem


def _shift(ds, dz):
    ds.ImagePositionPatient = [float(v) + d for v, d in zip(ds.ImagePositionPatient, (0, 0, dz))]


def _tilt(ds, by):
    ds.ImageOrientationPatient = [1.0, by, 0.0, -by, 1.0, 0.0]


VARIANTS = {
    # name: (change to the slice at index 2 of the name-sorted folder, expected reason or None)
    "clean": (lambda ds: None, None),
    "tilt within tolerance": (lambda ds: _tilt(ds, 2e-5), None),
    "tilt between the old tolerances": (lambda ds: _tilt(ds, 5e-4), "different orientations"),
    "shared position": (lambda ds: _shift(ds, 2.5), "share a position"),
    "uneven spacing": (lambda ds: _shift(ds, 1.0), "irregular"),
    "other pixel spacing": (lambda ds: setattr(ds, "PixelSpacing", [0.5, 0.5]), "PixelSpacing"),
    "other size": (lambda ds: (setattr(ds, "Rows", 8), setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2])), "different sizes"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_loader_and_series_selection_judge_one_geometry(tmp_path, variant):
    change, reason = VARIANTS[variant]
    folder = copy_series(CT5N, tmp_path)
    files = sorted(folder.iterdir())
    ds = pydicom.dcmread(files[2])
    change(ds)
    ds.save_as(files[2])
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    (series,) = next(iter(group_series(headers, [str(f) for f in files]).values()))
    problem = volume_problem(series)
    try:
        read_dicom(folder)
        loaded, error = True, ""
    except SourceImageError as e:
        loaded, error = False, str(e)
    assert (problem is None) == loaded, (problem, error)
    if reason is not None:
        assert reason in problem and reason in error
