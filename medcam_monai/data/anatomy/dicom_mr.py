"""Write a volume (array + RAS affine, as from NIfTI) as a classic DICOM MR Image series, with the
geometry tags a PACS, a viewer and the project's own loaders read: test and demo data for the DICOM
route (``LoadDicomd`` -> bundle -> DICOM-SEG and Parametric Map referencing the series).

Geometry (the part that is easy to get wrong):

- NIfTI/MONAI affines are RAS; DICOM patient coordinates are LPS: ``A_lps = diag(-1, -1, 1, 1) @ A_ras``.
- Array axis 0 (i) runs along a row (increasing column index), axis 1 (j) down the columns
  (increasing row index), axis 2 (k) from slice to slice: slice ``k``'s pixel matrix is ``volume[:, :, k].T``.
- ``ImageOrientationPatient = [unit(A_lps[:3, 0]), unit(A_lps[:3, 1])]`` (row direction, column direction);
  ``PixelSpacing = [|A[:3, 1]|, |A[:3, 0]|]``: the spacing between rows (along j) comes first.
- ``ImagePositionPatient`` of slice ``k`` is ``A_lps @ (0, 0, k, 1)``: the centre of its first pixel.
- Readers order slices along ``row x column``. When the affine's third axis points against it (a
  left-handed voxel grid, e.g. nibabel's LAS EPI), readers return the slices reversed with the third
  affine column negated: the same voxels in space, another array. ``canonical=True`` reverses such
  volumes before writing so that the affine read back is the one written.
- Only orthogonal grids can be stored (DICOM slices have no shear): checked.

Written with pydicom (explicit VR little endian, MR Image Storage, uint16 ``round(volume * scale)``
with no rescale tags: the MR Image IOD has no Modality LUT). ``dciodvfy`` reports no errors or
warnings on these files (``tests/test_anatomy.py``).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DicomGeometry", "dicom_geometry", "write_mr_series", "WrittenSeries"]

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (io.dicom_series.LPS_TO_RAS; data/ imports no room above it)


@dataclass(frozen=True)
class DicomGeometry:
    """Per-series DICOM geometry of a RAS voxel-to-world affine.

    Args:
        affine_lps: the affine in DICOM's LPS patient coordinates.
        row_direction, column_direction: unit vectors (LPS) of ``ImageOrientationPatient``.
        pixel_spacing: ``[between rows, between columns]`` (DICOM's order).
        slice_step: distance between slices.
        right_handed: the third axis runs along ``row x column`` (readers keep the array order).
    """

    affine_lps: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_step: float
    right_handed: bool

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)


def dicom_geometry(affine_ras: np.ndarray) -> DicomGeometry:
    """The series geometry of ``affine_ras``.

    Raises:
        ValueError: the axes are not orthogonal (a sheared grid cannot be stored as DICOM slices).
    """
    a = _LPS @ np.asarray(affine_ras, float)
    spacing = np.sqrt((a[:3, :3] ** 2).sum(0))
    if np.any(spacing <= 0):
        raise ValueError(f"The affine has a zero-length axis: {affine_ras.tolist()}")
    units = a[:3, :3] / spacing
    if not np.allclose(units.T @ units, np.eye(3), atol=1e-4):
        raise ValueError(f"The affine's axes are not orthogonal (shear): DICOM slices cannot represent it: {affine_ras.tolist()}")
    right_handed = bool(np.cross(units[:, 0], units[:, 1]) @ units[:, 2] > 0)
    return DicomGeometry(a, units[:, 0], units[:, 1], (float(spacing[1]), float(spacing[0])), float(spacing[2]), right_handed)


@dataclass(frozen=True)
class WrittenSeries:
    """What :func:`write_mr_series` wrote: the folder, its files (in slice order), the UIDs, and the
    affine and volume as readers return them (after a canonical slice reversal)."""

    folder: Path
    files: tuple[Path, ...]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    affine: np.ndarray
    volume: np.ndarray


def write_mr_series(
    volume: np.ndarray,
    affine_ras: np.ndarray,
    folder: str | os.PathLike,
    *,
    scale: float = 1000.0,
    canonical: bool = True,
    patient_id: str = "MNI152",
    patient_name: str = "MNI152^Template",
    study_description: str = "MNI152 2009c template (nilearn wheel)",
    series_description: str = "T1 MNI152",
    series_number: int = 1,
    study_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> WrittenSeries:
    """Write ``volume`` ``(X, Y, Z)`` on the RAS grid ``affine_ras`` as one MR Image file per slice.

    Args:
        volume: intensities ``>= 0``; stored as uint16 ``round(volume * scale)`` (clipped to 0..65535).
        affine_ras: voxel-to-RAS-mm affine (orthogonal axes).
        folder: the series folder (created; must hold no DICOM files yet).
        scale: multiplier to integers (1000 keeps three decimals of a ``[0, 1]`` image).
        canonical: reverse left-handed grids so the affine read back equals the one written.
        patient_id, patient_name, study_description, series_description, series_number: the tags.
        study_instance_uid, frame_of_reference_uid: join an existing study / frame (new UIDs when None).

    Returns:
        A :class:`WrittenSeries`.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3D (X, Y, Z), got shape {vol.shape}.")
    if not np.isfinite(vol).all() or vol.min() < 0:
        raise ValueError("volume must be finite and >= 0 (MR magnitudes, stored unsigned).")
    affine = np.asarray(affine_ras, float).copy()
    geometry = dicom_geometry(affine)
    if canonical and not geometry.right_handed:
        vol = vol[:, :, ::-1]
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1.0, vol.shape[2] - 1
        affine = affine @ flip
        geometry = dicom_geometry(affine)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.glob("*.dcm")):
        raise FileExistsError(f"{folder} already holds DICOM files: write the series into an empty folder.")
    pixels = np.clip(np.rint(vol * scale), 0, 65535).astype(np.uint16)
    study_instance_uid = study_instance_uid or generate_uid()
    series_instance_uid = generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    orientation = [f"{v:.8f}" for v in (*geometry.row_direction, *geometry.column_direction)]
    files = []
    for k in range(vol.shape[2]):
        position = (geometry.affine_lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{k + 1:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
        ds.AccessionNumber = ""
        ds.Modality = "MR"
        ds.Manufacturer = "medcam-monai"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription, ds.SeriesDescription = study_description, series_description
        ds.PatientName, ds.PatientID = patient_name, patient_id
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.BodyPartExamined = "BRAIN"
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "NONE", ""
        ds.MRAcquisitionType = "3D"
        ds.PatientPosition = "HFS"  # head first supine: the convention for a brain
        ds.RepetitionTime = ds.EchoTime = ""  # type 2: unknown for a template
        ds.EchoTrainLength = 1
        ds.SliceThickness = ds.SpacingBetweenSlices = f"{geometry.slice_step:.6g}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_instance_uid, series_instance_uid
        ds.StudyID = "1"
        ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = series_number, k + 1, 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = orientation
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{float(position @ geometry.normal):.6f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[0])
        ds.PixelSpacing = [f"{v:.6g}" for v in geometry.pixel_spacing]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        plane = np.ascontiguousarray(pixels[:, :, k].T)  # (rows = j, columns = i)
        ds.SmallestImagePixelValue, ds.LargestImagePixelValue = int(plane.min()), int(plane.max())
        ds["SmallestImagePixelValue"].VR = ds["LargestImagePixelValue"].VR = "US"
        ds.WindowCenter, ds.WindowWidth = f"{scale / 2:.6g}", f"{scale:.6g}"
        ds.PixelData = plane.tobytes()
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return WrittenSeries(folder, tuple(files), study_instance_uid, series_instance_uid, frame_of_reference_uid, affine,
                         vol.astype(np.float32))
