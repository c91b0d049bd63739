"""Medical image I/O: load sources keeping what writers need; write explanations where clinicians look.

Loading (MONAI dictionary transforms, usable in ``Compose`` and bundle configs)::

    LoadDicomd(keys, series_uid=None, allow_irregular_spacing=False)     # series folder / file / Enhanced MF
    LoadImageSourced(keys, reader=None, grayscale=False)                 # NIfTI, PNG/JPEG/TIFF
    LoadWSId(keys, backend="tifffile", level=0, location=(0, 0), size=None)   # whole-slide region

Each puts the image (channel-first MetaTensor) under ``key`` and its *source reference* (a
:class:`SourceReference`, serialised as JSON so it survives collation and decollation) under
``f"source_{key}"`` and in ``image.meta["medcam_source"]``.

Writing: every writer has the same shape::

    writer(explanation, source, path, *, case=0, **format_options) -> pathlib.Path

- ``explanation``: an :class:`~medcam_monai.explanation.Explanation` (batch of B); ``case`` picks one.
  Its ``map`` may be in the network's input space: when it is a MetaTensor whose affine differs
  from the source's, it is resampled onto the source grid by affine (nearest for masks, bilinear
  for heatmaps), which undoes MONAI's spatial preprocessing like ``Invertd``. A map already
  inverted with ``Invertd`` is used as is.
- ``source``: the reference from the loading transform, as the typed object, its JSON string (as
  found in ``batch["source_image"][i]`` after ``decollate_batch``), or the source MetaTensor.
- ``path``: the output file. Writes are atomic (temp file in the same folder, then ``os.replace``).
- NaN/Inf are sanitised (NaN -> 0, Inf -> finite max/min) with a warning.

=====================  =====================================================================
``WRITERS`` key        function and format options
=====================  =====================================================================
``"nifti"``            :func:`write_nifti` (``channel``)
``"dicom_seg"``        :func:`write_dicom_seg` (``segmentation_type`` BINARY/LABELMAP/FRACTIONAL,
                       ``threshold``, ``labels``, ``colors``, ``series_number``, ``series_description``)
``"parametric_map"``   :func:`write_parametric_map` (``channel``, ``labels``, ``anatomic_region``, ...)
``"slicer_seg"``       :func:`write_slicer_seg` (``threshold``, ``labels``, ``colors``) -> ``.seg.nrrd``
``"png"``              :func:`write_png_overlay` (``channel``, ``image``, ``slices``, ``threshold``, ...)
``"wsi"``              :func:`write_wsi_overlay` (``channel``, ``tile``, ``compression``) -> pyramidal TIFF
``"geojson"``          :func:`write_geojson` (``threshold``, ``labels``, ``colors``) -> QuPath GeoJSON
=====================  =====================================================================

DICOM writers need a :class:`DicomSeriesReference` and the source files still in place (they are
re-read for highdicom, which copies patient and study attributes from them); WSI writers need a
:class:`WSIReference`. Bad inputs raise subclasses of :class:`SourceImageError` (a ``ValueError``).
"""

from medcam_monai.io._atomic import atomic_path
from medcam_monai.io._grid import map_on_source
from medcam_monai.io.codes import property_type_for
from medcam_monai.io.dicom_seg import write_dicom_seg
from medcam_monai.io.dicom_series import read_dicom
from medcam_monai.io.errors import (
    IrregularSpacingError,
    MissingFrameOfReferenceError,
    MissingGeometryError,
    MultipleSeriesError,
    NotAnImageError,
    SourceImageError,
    UnreadableImageError,
)
from medcam_monai.io.geojson import write_geojson
from medcam_monai.io.nifti import write_nifti
from medcam_monai.io.parametric_map import write_parametric_map
from medcam_monai.io.png import write_png_overlay
from medcam_monai.io.reference import (
    DicomSeriesReference,
    ImageReference,
    SourceReference,
    WSIReference,
    as_source_reference,
)
from medcam_monai.io.slicer import write_slicer_seg
from medcam_monai.io.transforms import LoadDicomd, LoadImageSourced, LoadWSId
from medcam_monai.io.wsi import write_wsi_overlay

WRITERS = {
    "nifti": write_nifti,
    "dicom_seg": write_dicom_seg,
    "parametric_map": write_parametric_map,
    "slicer_seg": write_slicer_seg,
    "png": write_png_overlay,
    "wsi": write_wsi_overlay,
    "geojson": write_geojson,
}

__all__ = [
    "WRITERS",
    "LoadDicomd",
    "LoadImageSourced",
    "LoadWSId",
    "read_dicom",
    "SourceReference",
    "DicomSeriesReference",
    "ImageReference",
    "WSIReference",
    "as_source_reference",
    "map_on_source",
    "atomic_path",
    "property_type_for",
    "write_nifti",
    "write_dicom_seg",
    "write_parametric_map",
    "write_slicer_seg",
    "write_png_overlay",
    "write_wsi_overlay",
    "write_geojson",
    "SourceImageError",
    "MultipleSeriesError",
    "IrregularSpacingError",
    "MissingGeometryError",
    "MissingFrameOfReferenceError",
    "UnreadableImageError",
    "NotAnImageError",
]
