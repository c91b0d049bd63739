"""Errors raised on bad input images; each message names the problem and the fix."""

from __future__ import annotations

__all__ = [
    "SourceImageError",
    "MultipleSeriesError",
    "IrregularSpacingError",
    "MissingGeometryError",
    "MissingFrameOfReferenceError",
    "MixedIdentityError",
    "MissingIdentityError",
    "UnreadableImageError",
    "NotAnImageError",
]


class SourceImageError(ValueError):
    """Base class: the source image cannot be loaded as a volume that writers can reference."""


class MultipleSeriesError(SourceImageError):
    """A DICOM folder holds several image series and none was chosen."""


class IrregularSpacingError(SourceImageError):
    """The slices of a DICOM series are not evenly spaced along the slice normal."""


class MissingGeometryError(SourceImageError):
    """A DICOM image lacks ImagePositionPatient / ImageOrientationPatient / PixelSpacing, or the
    slices do not form one stack (mixed orientations, duplicated positions, mixed sizes)."""


class MissingFrameOfReferenceError(SourceImageError):
    """A DICOM image lacks FrameOfReferenceUID, so no derived object can be placed on it."""


class MixedIdentityError(SourceImageError):
    """The slices of one series name different patients, studies, series or frames of reference:
    explaining them as one volume would mix people's data in one derived object."""


class MissingIdentityError(SourceImageError):
    """The source lacks an identifier a derived DICOM object must copy (e.g. StudyInstanceUID)."""


class UnreadableImageError(SourceImageError):
    """A file is not DICOM, is truncated, or its pixel data cannot be decoded."""


class NotAnImageError(SourceImageError):
    """The DICOM objects found are not images (e.g. a structured report, a SEG, a DICOMDIR)."""
