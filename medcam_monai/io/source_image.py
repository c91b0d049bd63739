"""Load the pixels of a referenced source image again (for overlays drawn on it)."""

from __future__ import annotations

import numpy as np

from medcam_monai.io.reference import DicomSeriesReference, SourceReference, WSIReference

__all__ = ["load_source_image"]


def load_source_image(ref: SourceReference) -> np.ndarray:
    """Return the source as ``(C, *spatial)`` float32, on exactly the grid ``ref`` describes."""
    from medcam_monai.io.transforms import LoadDicomd, LoadImageSourced, LoadWSId

    if isinstance(ref, DicomSeriesReference):
        d = LoadDicomd("x", series_uid=ref.series_instance_uid, allow_irregular_spacing=not ref.regular_spacing)({"x": ref.path})
    elif isinstance(ref, WSIReference):
        d = LoadWSId("x", backend=ref.backend, level=ref.level, location=ref.location, size=ref.spatial_shape)({"x": ref.path})
    else:
        d = LoadImageSourced("x")({"x": ref.path})
    image = np.asarray(d["x"].detach().cpu().numpy(), dtype=np.float32)
    if tuple(image.shape[1:]) != tuple(ref.spatial_shape):
        raise ValueError(f"The source {ref.path} now loads as {image.shape[1:]}, not {ref.spatial_shape}: it changed since the explanation.")
    return image
