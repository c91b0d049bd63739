"""Load the pixels of a referenced source image again (for overlays drawn on it), once."""

from __future__ import annotations

import numpy as np

from medcam_monai.io.grid import apply_correspondence, contiguous, voxel_correspondence
from medcam_monai.io.reference import (
    DicomSeriesReference,
    SourceReference,
    WSIReference,
)

__all__ = ["load_source_image"]


def load_source_image(ref: SourceReference) -> np.ndarray:
    """Return the source as ``(C, *spatial)`` float32, on exactly the grid ``ref`` describes.

    A DICOM series is read from the files the reference names, each once (no folder scan); other
    sources with MONAI's readers, as they were loaded.

    Raises:
        ValueError: the source now loads on another grid (it changed since the explanation).
    """
    if isinstance(ref, DicomSeriesReference):
        from medcam_monai.io.dicom_series import load_dicom_pixels

        return load_dicom_pixels(ref)[None]
    if isinstance(ref, WSIReference):
        from medcam_monai.io.transforms import LoadWSId

        d = LoadWSId("x", backend=ref.backend, level=ref.level, location=ref.location, size=ref.spatial_shape)({"x": ref.path})
        image, affine = d["x"], ref.affine_array
    else:
        from monai.transforms import LoadImage

        image = LoadImage(image_only=True, ensure_channel_first=True)(ref.path)
        affine = image.affine.numpy()
    pixels = np.asarray(image.detach().cpu().numpy(), dtype=np.float32)
    match = voxel_correspondence(affine, pixels.shape[1:], ref.affine_array, ref.spatial_shape)
    if match is None:
        raise ValueError(f"The source {ref.path} now loads as {pixels.shape[1:]}, not {ref.spatial_shape}: it changed since the explanation.")
    return contiguous(apply_correspondence(pixels, *match))
