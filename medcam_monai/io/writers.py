"""The writers by name, as bundle configs and the handler name them."""

from medcam_monai.io.dicom_seg import write_dicom_seg
from medcam_monai.io.geojson import write_geojson
from medcam_monai.io.nifti import write_nifti
from medcam_monai.io.parametric_map import write_parametric_map
from medcam_monai.io.png import write_png_overlay
from medcam_monai.io.slicer import write_slicer_seg
from medcam_monai.io.wsi import write_wsi_overlay

__all__ = ["WRITERS", "WRITER_SUFFIXES"]

WRITERS = {
    "nifti": write_nifti,
    "dicom_seg": write_dicom_seg,
    "parametric_map": write_parametric_map,
    "slicer_seg": write_slicer_seg,
    "png": write_png_overlay,
    "wsi": write_wsi_overlay,
    "geojson": write_geojson,
}

# file suffix of each writer's output
WRITER_SUFFIXES = {
    "nifti": ".nii.gz",
    "dicom_seg": ".seg.dcm",
    "parametric_map": ".pm.dcm",
    "slicer_seg": ".seg.nrrd",
    "png": ".png",
    "wsi": ".tif",
    "geojson": ".geojson",
}
