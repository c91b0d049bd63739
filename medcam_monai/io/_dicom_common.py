"""What the DICOM-SEG and Parametric Map writers share: source headers, geometry, identity, UIDs.

Only headers are read (``stop_before_pixels``): highdicom copies the patient and study from them,
references each source instance, and places frames by the geometry it computes from the headers
(:func:`source_geometry`, the geometry ``highdicom.get_volume_from_series`` gives, without decoding
a single pixel).
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom

from medcam_monai.explanation import Explanation
from medcam_monai.io.codes import MANUFACTURER, software_version
from medcam_monai.io.dicom_headers import fill_missing_identity
from medcam_monai.io.dicom_series import load_source_headers
from medcam_monai.io.errors import MissingGeometryError
from medcam_monai.io.grid import contiguous
from medcam_monai.io.reference import DicomSeriesReference, SourceReference
from medcam_monai.io.writer import PreparedCase, Writer
from medcam_monai.uids import check_uid

__all__ = ["DicomWriter", "source_geometry", "place_on_source", "source_ordered_frames", "next_uid"]

# tol is in voxels: DS positions carry ~6 significant digits, so the mean spacing our loader
# derives differs from highdicom's by far less than 1% of a voxel
_MATCH_TOL = 0.01
_MAX_SERIES_NUMBER = 2**31 - 1  # IS value range


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


def source_geometry(reference: DicomSeriesReference, headers: list[pydicom.Dataset]) -> hd.VolumeGeometry:
    """The volume geometry highdicom gives the source, from headers alone.

    For a single-frame series this is what ``highdicom.get_volume_from_series`` computes (the same
    highdicom functions, the same tolerances and conventions) without its pixel decoding; for a
    multi-frame image, ``highdicom.Image.get_volume_geometry``.

    Raises:
        MissingGeometryError: highdicom does not see a regularly spaced volume.
    """
    where = f"the source series {reference.series_instance_uid} ({reference.path})"
    if reference.is_multiframe:
        geometry = hd.Image.from_dataset(headers[0], copy=False).get_volume_geometry()
        if geometry is None:
            raise MissingGeometryError(f"highdicom finds no regular volume in {where}; its frames cannot be matched.")
        return geometry
    first = headers[0]
    if len(headers) == 1:
        spacing, ordered = first.get("SpacingBetweenSlices", 1.0), headers
    else:
        # get_series_volume_positions without its per-dataset multi-frame check (~ms each, by IOD
        # table lookup): these are single-frame images, so its own steps are called directly
        orientation = first.ImageOrientationPatient
        spacing, positions = None, None
        if all(ds.ImageOrientationPatient == orientation for ds in headers):
            spacing, positions = hd.spatial.get_volume_positions(
                image_positions=[ds.ImagePositionPatient for ds in headers], image_orientation=orientation
            )
        if spacing is None:
            raise MissingGeometryError(f"highdicom finds no regularly spaced volume in {where}; its slices cannot be matched.")
        ordered = [headers[positions.index(i)] for i in range(len(headers))]
    return hd.VolumeGeometry.from_attributes(
        image_position=ordered[0].ImagePositionPatient,
        image_orientation=first.ImageOrientationPatient,
        rows=int(first.Rows),
        columns=int(first.Columns),
        pixel_spacing=first.PixelSpacing,
        spacing_between_slices=float(spacing),
        number_of_frames=len(headers),
        coordinate_system=hd.spatial.get_image_coordinate_system(first),
        frame_of_reference_uid=first.FrameOfReferenceUID,
    )


def source_ordered_frames(values: np.ndarray, ref: DicomSeriesReference) -> np.ndarray:
    """``(K, columns, rows, slices)`` -> ``(frames, rows, columns, K)`` with frame ``i`` lying on
    source instance ``i`` (single-frame series, in reference order) or on source frame ``i + 1``
    (multi-frame image): highdicom's pixel-for-pixel mode."""
    frames = values.transpose(3, 2, 1, 0)
    if ref.is_multiframe:
        out = np.empty_like(frames)
        out[np.asarray(ref.frame_numbers) - 1] = frames
        frames = out
    return np.ascontiguousarray(frames)


def place_on_source(
    values: np.ndarray, ref: DicomSeriesReference, headers: list[pydicom.Dataset], *, source_order: bool = False
) -> np.ndarray | hd.Volume:
    """Arrange ``(K, columns, rows, slices)`` source-grid values for highdicom.

    For an evenly spaced series or a multi-frame image the map becomes a highdicom Volume matched,
    with ``match_geometry``, to the geometry highdicom itself derives from the source headers: the
    source's own geometry, not ours, decides where each frame goes. A series loaded with irregular
    spacing is no volume to highdicom; there each frame is handed in the order
    of the source instances, which highdicom pairs pixel-for-pixel with them.

    Returns:
        A Volume with a ``SegmentNumber`` channel axis of size K, or a ``(slices, rows, columns, K)`` array.
    """
    if source_order or (not ref.regular_spacing and not ref.is_multiframe):
        return source_ordered_frames(values, ref)
    geometry = source_geometry(ref, headers)
    K = values.shape[0]
    # match_geometry returns a transposed view; highdicom reads it frame by frame, which on a view
    # strides through the whole volume for every frame (seconds for a CT): one copy makes frames contiguous
    channels = [
        contiguous(
            hd.Volume.from_nibabel(nib.Nifti1Image(values[k], ref.affine_array), frame_of_reference_uid=ref.frame_of_reference_uid)
            .match_geometry(geometry, tol=_MATCH_TOL)
            .array
        )
        for k in range(K)
    ]
    return hd.Volume(
        array=channels[0][..., None] if K == 1 else np.stack(channels, axis=-1),  # K == 1: a view, no second copy
        affine=geometry.affine,
        coordinate_system=geometry.coordinate_system,
        frame_of_reference_uid=ref.frame_of_reference_uid,
        channels={"SegmentNumber": list(range(1, K + 1))},
    )


class DicomWriter(Writer):
    """Shared part of the writers of derived DICOM objects (SEG, Parametric Map): they write for DICOM
    series only, read the source headers (not pixels), check the identity the output copies, and
    take the UIDs and series number of the new series (``series_instance_uid``,
    ``sop_instance_uid``, ``series_number``: generated / defaulted when None)."""

    sources = ("dicom",)
    spatial_dims = (3,)
    what: str = "DICOM object"

    def check_options(self, explanation: Explanation, reference: SourceReference, **options: Any) -> None:
        super().check_options(explanation, reference, **options)
        own = {reference.series_instance_uid, *reference.sop_instance_uids}  # type: ignore[attr-defined]
        for name in ("series_instance_uid", "sop_instance_uid"):
            uid = options.get(name)
            if uid is not None:
                check_uid(uid, name, strict=True, fix="Leave it None to generate one.")
                if uid in own:
                    raise ValueError(f"{name} {uid} is a UID of the source series; a derived object needs new UIDs.")
        if options.get("series_instance_uid") is not None and options.get("series_instance_uid") == options.get("sop_instance_uid"):
            raise ValueError("series_instance_uid and sop_instance_uid must differ.")
        number = options.get("series_number", 0)
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or not 0 <= number <= _MAX_SERIES_NUMBER:
            raise ValueError(f"series_number must be an integer in [0, {_MAX_SERIES_NUMBER}], got {number!r}.")

    def source_headers(self, case: PreparedCase) -> list[pydicom.Dataset]:
        """The source headers, ready for highdicom (identity checked and completed, shared groups)."""
        ref = case.reference
        headers = load_source_headers(ref)  # type: ignore[arg-type]
        fill_missing_identity(headers, f"The source series {ref.series_instance_uid} ({ref.path})", self.what)
        if ref.is_multiframe:  # type: ignore[attr-defined]
            _share_constant_groups(headers[0])
        return headers

    def derived_attributes(
        self,
        case: PreparedCase,
        headers: list[pydicom.Dataset],
        *,
        series_instance_uid: str | None,
        sop_instance_uid: str | None,
        series_number: int,
        series_description: str,
        content_description: str,
    ) -> dict[str, Any]:
        """The keyword arguments every highdicom derived-object constructor takes, filled alike."""
        return {
            "source_images": headers,
            "series_instance_uid": series_instance_uid or next_uid(),
            "series_number": int(series_number),
            "sop_instance_uid": sop_instance_uid or next_uid(),
            "instance_number": 1,
            "manufacturer": MANUFACTURER,
            "manufacturer_model_name": case.method[:64],
            "software_versions": software_version(),
            "device_serial_number": "0",
            "content_label": "EXPLANATION",
            "content_creator_name": f"{MANUFACTURER}^",  # PN: family name only
            "content_description": content_description[:64],
            "series_description": series_description[:64],
        }
