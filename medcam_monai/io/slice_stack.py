"""Whether DICOM planes form one volume, and in which order: the one geometry check.

The loader (:func:`medcam_monai.io.read_dicom`), the references built from stock MONAI loading and
the PACS step's series selection (``medcam_monai.pipeline.selection.volume_problem``) all decide
with :func:`slice_stack`, so a series the pipeline selects is one the loader reads, with the same
tolerances. Imports numpy and pydicom only (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom

from medcam_monai.io.dicom_headers import fmt_files
from medcam_monai.io.errors import IrregularSpacingError, MissingGeometryError

__all__ = [
    "ORIENTATION_ATOL",
    "DUPLICATE_GAP_MM",
    "SPACING_RTOL",
    "Plane",
    "SliceStackError",
    "SliceStack",
    "planes_of",
    "frame_item",
    "slice_stack",
]

# direction cosines are DS strings: slices of one stack agree to far better than this
ORIENTATION_ATOL = 1e-4
# two planes closer than this along the normal (mm) share a position (phases, echoes)
DUPLICATE_GAP_MM = 1e-3
# spacing is "regular" when every gap is within this fraction of the mean gap (and at least
# 0.01 mm): tight enough to catch a missing slice, loose enough for float noise; as highdicom's rtol
SPACING_RTOL = 0.01


@dataclass(frozen=True)
class Plane:
    """One image plane: a single-frame file, or one frame of a multi-frame image.

    Args:
        file: the file holding it.
        sop_instance_uid: its instance.
        frame: 1-based frame number in a multi-frame image, else None.
        position, orientation, spacing: ImagePositionPatient (3), ImageOrientationPatient (6),
            PixelSpacing (2; row spacing, column spacing), in LPS mm.
        rows, columns: its matrix size.
    """

    file: str
    sop_instance_uid: str
    frame: int | None
    position: np.ndarray
    orientation: np.ndarray
    spacing: np.ndarray
    rows: int
    columns: int


class SliceStackError(MissingGeometryError):
    """Planes that are not one stack. ``reason`` is the short phrase (what is wrong, with files)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _vector(values: Any, n: int) -> np.ndarray | None:
    try:
        v = np.asarray([float(x) for x in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return v if v.shape == (n,) and np.all(np.isfinite(v)) else None


def _plane(path: str, uid: str, frame: int | None, position: Any, orientation: Any, spacing: Any, ds: pydicom.Dataset) -> Plane:
    vectors = [_vector(position, 3), _vector(orientation, 6), _vector(spacing, 2)]
    if any(v is None for v in vectors):
        where = path if frame is None else f"{path} frame {frame}"
        raise MissingGeometryError(f"{where} has a malformed ImagePositionPatient, ImageOrientationPatient or PixelSpacing.")
    return Plane(path, uid, frame, *vectors, int(ds.Rows), int(ds.Columns))


def frame_item(ds: pydicom.Dataset, frame_index: int, seq: str) -> Any:
    """Per-frame functional group item ``seq`` of frame ``frame_index`` (0-based), else the shared one."""
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = ds.get(groups)
        if not items:
            continue
        item = items[frame_index] if groups.startswith("PerFrame") else items[0]
        if seq in item and len(item[seq].value):
            return item[seq].value[0]
    return None


def planes_of(ds: pydicom.Dataset, path: str) -> list[Plane]:
    """The planes of one image header: one for a single-frame image, one per frame of a multi-frame one.

    Raises:
        MissingGeometryError: a plane lacks its position, orientation or pixel spacing (projection
            images such as X-ray or secondary captures have none), naming the file (and frame).
    """
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in ds]
        if missing:
            raise MissingGeometryError(
                f"{path} lacks {', '.join(missing)}, so its slices cannot be placed in space (projection images "
                f"such as X-ray or secondary captures have none). Load it as a 2D image with LoadImaged instead."
            )
        return [_plane(path, str(ds.SOPInstanceUID), None, ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing, ds)]
    planes = []
    for i in range(frames):
        pos, ori, meas = (frame_item(ds, i, s) for s in ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence"))
        if pos is None or ori is None or meas is None or "PixelSpacing" not in meas:
            raise MissingGeometryError(
                f"{path} frame {i + 1} lacks a Plane Position, Plane Orientation or Pixel Measures functional "
                f"group, so it cannot be placed in space."
            )
        planes.append(_plane(path, str(ds.SOPInstanceUID), i + 1, pos.ImagePositionPatient, ori.ImageOrientationPatient, meas.PixelSpacing, ds))
    return planes


@dataclass(frozen=True)
class SliceStack:
    """Planes that form one stack, ordered by position along the slice normal (ascending).

    Args:
        planes: the planes, ordered.
        regular: whether the gaps are even (within :data:`SPACING_RTOL`).
        irregularity: a sentence describing uneven gaps, or ``""``.
    """

    planes: tuple[Plane, ...]
    regular: bool
    irregularity: str = ""

    @property
    def normal(self) -> np.ndarray:
        ori = self.planes[0].orientation
        return np.cross(ori[:3], ori[3:])

    @property
    def step(self) -> float:
        """Mean distance between neighbouring planes along the normal (1.0 for a single plane)."""
        if len(self.planes) < 2:
            return 1.0
        d = [float(p.position @ self.normal) for p in self.planes]
        return (d[-1] - d[0]) / (len(d) - 1)

    def affine_lps(self, single_slice_step: float = 1.0) -> np.ndarray:
        """Voxel ``(column, row, slice)`` -> LPS mm; a single plane's slice axis is ``single_slice_step`` long."""
        first = self.planes[0]
        affine = np.eye(4)
        affine[:3, 0] = first.orientation[:3] * first.spacing[1]  # array axis 0 = column index (along the row direction)
        affine[:3, 1] = first.orientation[3:] * first.spacing[0]  # array axis 1 = row index
        affine[:3, 2] = self.normal * (self.step if len(self.planes) > 1 else single_slice_step)
        affine[:3, 3] = first.position
        return affine


def slice_stack(planes: Sequence[Plane], where: str, *, allow_irregular_spacing: bool = True) -> SliceStack:
    """Order ``planes`` along their normal and check that they form one volume.

    Args:
        planes: the planes of one series (or one multi-frame image).
        where: names the series in messages.
        allow_irregular_spacing: False raises on uneven gaps; True returns ``regular=False``.

    Raises:
        SliceStackError: different orientations, sizes or pixel spacings, or planes sharing a position.
        IrregularSpacingError: uneven gaps when ``allow_irregular_spacing`` is False.
    """
    if not planes:
        raise SliceStackError(f"{where}: no image planes.", "has no image planes")

    def refuse(reason: str, fix: str) -> SliceStackError:
        return SliceStackError(f"{where}: {reason}. {fix}", reason)

    ori0 = planes[0].orientation
    bad = [p.file for p in planes if np.abs(p.orientation - ori0).max() > ORIENTATION_ATOL]
    if bad:
        raise refuse(f"slices have different orientations (e.g. {fmt_files(bad)}): several stacks in one series",
                     "A series of localisers or several stacks is not one volume. Choose one stack (one orientation) to load.")
    sizes = sorted({(p.rows, p.columns) for p in planes})
    if len(sizes) > 1:
        raise refuse(f"slices have different sizes {sizes}", "They do not form one volume.")
    if any(np.abs(p.spacing - planes[0].spacing).max() > 1e-4 * np.abs(planes[0].spacing).max() for p in planes):
        raise refuse("slices have different PixelSpacing", "They do not form one volume.")
    normal = np.cross(ori0[:3], ori0[3:])
    ordered = sorted(planes, key=lambda p: float(p.position @ normal))
    gaps = np.diff([float(p.position @ normal) for p in ordered])
    if np.any(gaps < DUPLICATE_GAP_MM):
        dup = [ordered[i].file for i in np.flatnonzero(gaps < DUPLICATE_GAP_MM)]
        raise refuse(f"several slices share a position ({fmt_files(dup)}): phases or echoes in one series",
                     "Split it (e.g. by TemporalPositionIdentifier or EchoNumbers) and load one.")
    irregularity = ""
    if len(ordered) > 2:
        mean_gap = float(gaps.mean())
        if np.any(np.abs(gaps - mean_gap) > max(0.01, SPACING_RTOL * mean_gap)):
            irregularity = (f"{where}: slice spacing is irregular (gaps from {gaps.min():.3g} to {gaps.max():.3g} mm "
                            f"along the slice normal; a slice may be missing).")
            if not allow_irregular_spacing:
                raise IrregularSpacingError(
                    irregularity + " Resampling would misplace voxels. Pass allow_irregular_spacing=True to load it "
                    "anyway (the volume's affine then uses the mean spacing; DICOM-SEG and Parametric Map stay exact)."
                )
    return SliceStack(tuple(ordered), regular=not irregularity, irregularity=irregularity)
