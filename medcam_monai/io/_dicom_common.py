"""Shared by the DICOM-SEG and Parametric Map writers: placing a source-grid map on the source."""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom

from medcam_monai.io.dicom_series import load_source_datasets
from medcam_monai.io.reference import DicomSeriesReference, as_source_reference

__all__ = ["dicom_reference", "place_on_source", "next_uid"]

_MATCH_TOL = 0.01


def dicom_reference(source: object, writer: str) -> DicomSeriesReference:
    ref = as_source_reference(source)
    if not isinstance(ref, DicomSeriesReference):
        raise TypeError(
            f"{writer} needs a DICOM source (a DicomSeriesReference made by LoadDicomd), got a {type(ref).__name__} "
            f"for {ref.path}. Use write_nifti / write_png_overlay for non-DICOM sources."
        )
    return ref


def next_uid() -> str:
    return str(hd.UID())


def _share_constant_groups(ds: pydicom.Dataset) -> None:
    """Copy per-frame Pixel Measures / Plane Orientation into the shared group when every frame has
    the same value (in memory only).

    Some scanners (e.g. the Philips Enhanced MR in nibabel's tests) put them per frame; highdicom's
    SEG/PM constructors read them from the shared group only. The derived object still references
    the same SOP Instance and frames, so nothing about the source changes.
    """
    shared = ds.SharedFunctionalGroupsSequence[0]
    per_frame = ds.PerFrameFunctionalGroupsSequence
    for seq in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if seq in shared or not all(seq in f for f in per_frame):
            continue
        first = per_frame[0][seq].value
        if all(f[seq].value == first for f in per_frame):
            shared[seq] = per_frame[0][seq]


def source_ordered_frames(values: np.ndarray, ref: DicomSeriesReference) -> np.ndarray:
    """``(K, columns, rows, slices)`` -> ``(frames, rows, columns, K)`` with frame ``i`` lying on
    source instance ``i`` (single-frame series, in ``load_source_datasets`` order) or on source
    frame ``i + 1`` (multi-frame image): highdicom's pixel-for-pixel mode."""
    frames = values.transpose(3, 2, 1, 0)
    if ref.is_multiframe:
        out = np.empty_like(frames)
        out[np.asarray(ref.frame_numbers) - 1] = frames
        frames = out
    return np.ascontiguousarray(frames)


def place_on_source(
    values: np.ndarray, ref: DicomSeriesReference, *, source_order: bool = False
) -> tuple[list[pydicom.Dataset], np.ndarray | hd.Volume]:
    """Arrange ``(K, columns, rows, slices)`` source-grid values for highdicom.

    For an evenly spaced series or a multi-frame image the map becomes a highdicom Volume matched,
    with ``match_geometry``, to the volume highdicom itself builds from the source instances: the
    source's own geometry, not ours, decides where each frame goes. A series loaded with irregular
    spacing is no volume to highdicom; there each frame is handed in the order of the source
    instances (our loader's slice order), which highdicom pairs pixel-for-pixel with them.

    Returns:
        ``(source_datasets, pixel_array)``; ``pixel_array`` is a Volume with a ``SegmentNumber``
        channel axis of size K, or a ``(slices, rows, columns, K)`` array.
    """
    datasets = load_source_datasets(ref)
    if ref.is_multiframe:
        _share_constant_groups(datasets[0])
    K = values.shape[0]
    if source_order or (not ref.regular_spacing and not ref.is_multiframe):
        return datasets, source_ordered_frames(values, ref)
    if ref.is_multiframe:
        source_volume = hd.Image.from_dataset(datasets[0], copy=False).get_volume()
    else:
        source_volume = hd.get_volume_from_series(datasets)
    channels = []
    for k in range(K):
        ours = hd.Volume.from_nibabel(
            nib.Nifti1Image(values[k], ref.affine_array), frame_of_reference_uid=ref.frame_of_reference_uid
        )
        # tol is in voxels: DS positions carry ~6 significant digits, so the mean spacing our
        # loader derives differs from highdicom's by far less than 1% of a voxel
        channels.append(ours.match_geometry(source_volume, tol=_MATCH_TOL).array)
    stacked = np.stack(channels, axis=-1)
    volume = hd.Volume(
        array=stacked,
        affine=source_volume.affine,
        coordinate_system=source_volume.coordinate_system,
        frame_of_reference_uid=ref.frame_of_reference_uid,
        channels={"SegmentNumber": list(range(1, K + 1))},
    )
    return datasets, volume
