"""Source references: what a writer needs to know about the image an explanation was made from.

A loading transform (:mod:`medcam_monai.io.transforms`) produces one reference per image and stores
it, as a JSON string, in the data dictionary (``data[f"source_{key}"]``) and in the MetaTensor's
meta (``meta["medcam_source"]``). A JSON string survives MONAI's collation, ``decollate_batch``
and bundle configs unchanged; :func:`medcam_monai.io.stock.as_source_reference` turns it (or a dict, a MetaTensor, or a
reference) back into the typed object.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "SourceReference",
    "DicomSeriesReference",
    "ImageReference",
    "WSIReference",
    "reference_from_json",
    "SOURCE_META_KEY",
]

SOURCE_META_KEY = "medcam_source"


def _affine_tuple(affine: Any) -> tuple[tuple[float, ...], ...]:
    a = np.asarray(affine, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 3:
        raise ValueError(f"affine must be a square (D+1, D+1) matrix with D >= 2, got shape {a.shape}.")
    return tuple(tuple(float(v) for v in row) for row in a)


@dataclass(frozen=True)
class SourceReference:
    """Base of all references.

    Args:
        path: the file or folder the image was loaded from.
        affine: ``(D+1, D+1)`` voxel-to-world matrix of the loaded array, MONAI convention (RAS
            world, array axes as loaded: for DICOM ``(column, row, slice)``).
        spatial_shape: ``D`` sizes of the loaded array's spatial axes.
    """

    type: ClassVar[str] = "image"
    path: str
    affine: tuple[tuple[float, ...], ...]
    spatial_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "affine", _affine_tuple(self.affine))
        object.__setattr__(self, "spatial_shape", tuple(int(s) for s in self.spatial_shape))
        if any(s <= 0 for s in self.spatial_shape):
            raise ValueError(f"spatial_shape must be positive sizes, got {self.spatial_shape}.")
        if len(self.affine) - 1 < len(self.spatial_shape):
            raise ValueError(
                f"affine {len(self.affine)}x{len(self.affine)} cannot describe a "
                f"{len(self.spatial_shape)}D grid {self.spatial_shape}."
            )

    @property
    def affine_array(self) -> np.ndarray:
        return np.asarray(self.affine, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["type"] = self.type
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


@dataclass(frozen=True)
class ImageReference(SourceReference):
    """A NIfTI file or a 2D PNG/JPEG/TIFF image loaded with MONAI's ``LoadImage``.

    Args:
        format: ``"nifti"`` or ``"2d"``.
    """

    type: ClassVar[str] = "image"
    format: str = "nifti"


@dataclass(frozen=True)
class DicomSeriesReference(SourceReference):
    """A DICOM series (single-frame files) or an Enhanced multi-frame image, slice by slice.

    Slice ``k`` of the loaded array (last spatial axis) is frame ``frame_numbers[k]`` (1-based;
    ``None`` for single-frame files) of the instance ``sop_instance_uids[k]`` stored in
    ``files[k]``. Slices are ordered by position along the slice normal.

    Args:
        files: per slice, the file holding it.
        sop_instance_uids: per slice, the SOP Instance UID of the image holding it.
        frame_numbers: per slice, the frame number in a multi-frame image, or ``None``.
        study_instance_uid, series_instance_uid, frame_of_reference_uid, sop_class_uid, modality:
            the source's identifiers, copied into derived objects.
        regular_spacing: ``False`` when the series was loaded with irregular slice spacing allowed;
            ``affine`` then uses the mean spacing and only the DICOM writers are exact.
    """

    type: ClassVar[str] = "dicom"
    files: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()
    frame_numbers: tuple[int, ...] | None = None
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_class_uid: str = ""
    modality: str = ""
    regular_spacing: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "files", tuple(str(f) for f in self.files))
        object.__setattr__(self, "sop_instance_uids", tuple(str(u) for u in self.sop_instance_uids))
        if self.frame_numbers is not None:
            object.__setattr__(self, "frame_numbers", tuple(int(f) for f in self.frame_numbers))
        n = self.spatial_shape[-1] if len(self.spatial_shape) == 3 else 1
        if len(self.spatial_shape) != 3:
            raise ValueError(f"A DICOM reference describes a 3D grid (columns, rows, slices), got {self.spatial_shape}.")
        for name in ("files", "sop_instance_uids") + (("frame_numbers",) if self.frame_numbers is not None else ()):
            if len(getattr(self, name)) != n:
                raise ValueError(f"DicomSeriesReference.{name} must have one entry per slice ({n}), got {len(getattr(self, name))}.")
        if not self.frame_of_reference_uid:
            raise ValueError("DicomSeriesReference.frame_of_reference_uid is empty: derived DICOM objects need it.")

    @property
    def is_multiframe(self) -> bool:
        return self.frame_numbers is not None


@dataclass(frozen=True)
class WSIReference(SourceReference):
    """A region of a whole-slide image read with ``monai.data.WSIReader``.

    The loaded array is ``(C, H, W)``; its spatial axes are (row, column) at ``level``.

    Args:
        backend: the WSIReader backend used (``"tifffile"`` or ``"openslide"``).
        level: pyramid level read.
        location: ``(y, x)`` of the region's top-left pixel in level-0 pixels.
        downsample: level-0 pixels per pixel at ``level``.
        level0_size: ``(height, width)`` of the slide at level 0.
        mpp: ``(y, x)`` microns per pixel at level 0, or ``None`` if the slide does not say.
    """

    type: ClassVar[str] = "wsi"
    backend: str = "tifffile"
    level: int = 0
    location: tuple[int, int] = (0, 0)
    downsample: float = 1.0
    level0_size: tuple[int, int] = (0, 0)
    mpp: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "location", tuple(int(v) for v in self.location))
        object.__setattr__(self, "level0_size", tuple(int(v) for v in self.level0_size))
        if self.mpp is not None:
            object.__setattr__(self, "mpp", tuple(float(v) for v in self.mpp))
        if len(self.spatial_shape) != 2:
            raise ValueError(f"A WSI reference describes a 2D region (height, width), got {self.spatial_shape}.")
        if self.downsample <= 0:
            raise ValueError(f"WSIReference.downsample must be positive, got {self.downsample}.")


_TYPES = {cls.type: cls for cls in (ImageReference, DicomSeriesReference, WSIReference)}


def reference_from_json(source: str | dict) -> SourceReference:
    """The typed reference of its JSON string or dict (as :meth:`SourceReference.to_json` wrote it)."""
    if isinstance(source, str):
        try:
            source = json.loads(source)
        except json.JSONDecodeError as e:
            raise TypeError(f"A source reference string must be the JSON from SourceReference.to_json(): {e}") from None
    if not isinstance(source, dict) or "type" not in source:
        raise TypeError(f"A source reference is a dict with a 'type' key, got {type(source).__name__}.")
    d = dict(source)
    cls = _TYPES.get(d.pop("type"))
    if cls is None:
        raise TypeError(f"Unknown source reference type {source['type']!r}; expected one of {sorted(_TYPES)}.")
    d["affine"] = tuple(tuple(r) for r in d["affine"])
    return cls(**d)
