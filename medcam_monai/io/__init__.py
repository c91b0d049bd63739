"""Medical image I/O: load sources keeping what writers need; write explanations where clinicians look.

Loading: MONAI's own ``LoadImaged`` (+ ``EnsureChannelFirstd``) is enough: the writers take the
source grid from the meta it leaves (``original_affine``, ``spatial_shape``, ``filename_or_obj``)
and, for a DICOM series, read the series headers from the files it names. This package's loaders
(MONAI dictionary transforms, usable in ``Compose`` and bundle configs) add what stock loaders
cannot (slices ordered along the normal, every bad folder named, per-slice UIDs recorded)::

    LoadDicomd(keys, series_uid=None, allow_irregular_spacing=False)     # series folder / file / Enhanced MF
    LoadImageSourced(keys, reader=None, grayscale=False)                 # NIfTI, PNG/JPEG/TIFF
    LoadWSId(keys, backend="tifffile", level=0, location=(0, 0), size=None)   # whole-slide region

Each puts the image (channel-first MetaTensor) under ``key`` and its *source reference* (a
:class:`SourceReference`, serialised as JSON so it survives collation and decollation) under
``f"source_{key}"`` and in ``image.meta["medcam_source"]``.

Writing: every writer is a :class:`~medcam_monai.io.writer.Writer` with the same call::

    writer(explanation, source, path, *, case=0, **format_options) -> pathlib.Path

- ``explanation``: an :class:`~medcam_monai.explanation.Explanation` (batch of B); ``case`` picks one.
  Its ``map`` may be in the network's input space: it is then resampled onto the source grid by
  affine (nearest for masks, bilinear for heatmaps). A map brought back with
  :func:`invert_to_source` (MONAI's ``Invertd`` on the bundle's preprocessing) is used as is.
- ``source``: the image as loaded (a MetaTensor from ``LoadImaged`` or this package's loaders, or
  the network input it became), a reference, or its JSON string (as found in
  ``batch["source_image"][i]`` after ``decollate_batch``).
- ``path``: the output file. Writes are atomic (temp file in the same folder, then ``os.replace``),
  with the permissions the umask gives new files.
- NaN/Inf are sanitised (NaN -> 0, Inf -> finite max/min) with a warning.

=====================  =====================================================================
``WRITERS`` key        function and format options
=====================  =====================================================================
``"nifti"``            :func:`write_nifti` (``channel``)
``"dicom_seg"``        :func:`write_dicom_seg` (``segmentation_type`` BINARY/LABELMAP/FRACTIONAL,
                       ``threshold``, ``labels``, ``colors``, ``series_number``, ``series_description``,
                       ``series_instance_uid``, ``sop_instance_uid``)
``"parametric_map"``   :func:`write_parametric_map` (``channel``, ``labels``, ``anatomic_region``, the
                       same series options as ``dicom_seg``)
``"slicer_seg"``       :func:`write_slicer_seg` (``threshold``, ``labels``, ``colors``) -> ``.seg.nrrd``
``"png"``              :func:`write_png_overlay` (``channel``, ``image``, ``point``, ``labels``, ``threshold``, ...)
``"wsi"``              :func:`write_wsi_overlay` (``channel``, ``tile``, ``compression``) -> pyramidal TIFF
``"geojson"``          :func:`write_geojson` (``threshold``, ``labels``, ``colors``) -> QuPath GeoJSON
=====================  =====================================================================

DICOM writers need a DICOM series source whose files are still in place (their headers are read
again, never their pixels: highdicom copies patient and study attributes from them); WSI writers
need a :class:`WSIReference`. Bad inputs raise subclasses of :class:`SourceImageError` (a ``ValueError``).

Names are imported on first use: ``import medcam_monai.io`` (or :mod:`medcam_monai.io.formats`) does
not load torch, MONAI or highdicom.
"""

from medcam_monai.lazy import lazy_exports

# public name -> submodule holding it; loaded on first use
_EXPORTS = {
    "WRITERS": ".writers",
    "WRITER_SUFFIXES": ".writers",
    "Writer": ".writer",
    "PreparedCase": ".writer",
    "invert_to_source": ".inversion",
    "reference_from_meta": ".stock",
    "series_reference": ".dicom_series",
    "SourceLoaderd": ".transforms",
    "LoadDicomd": ".transforms",
    "LoadImageSourced": ".transforms",
    "LoadWSId": ".transforms",
    "read_dicom": ".dicom_series",
    "SourceReference": ".reference",
    "DicomSeriesReference": ".reference",
    "ImageReference": ".reference",
    "WSIReference": ".reference",
    "as_source_reference": ".stock",
    "map_on_source": ".geometry",
    "atomic_path": ".atomic",
    "check_writable_dir": ".atomic",
    "property_type_for": ".codes",
    "write_nifti": ".nifti",
    "write_dicom_seg": ".dicom_seg",
    "write_parametric_map": ".parametric_map",
    "write_slicer_seg": ".slicer",
    "write_png_overlay": ".png",
    "write_wsi_overlay": ".wsi",
    "write_geojson": ".geojson",
    "SourceImageError": ".errors",
    "MultipleSeriesError": ".errors",
    "IrregularSpacingError": ".errors",
    "MissingGeometryError": ".errors",
    "MissingFrameOfReferenceError": ".errors",
    "MixedIdentityError": ".errors",
    "MissingIdentityError": ".errors",
    "UnreadableImageError": ".errors",
    "NotAnImageError": ".errors",
    "input_cases": ".formats",
    "input_kind": ".formats",
    "case_id": ".formats",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
