"""NIfTI overlays on the source grid and affine, readable by any viewer with the source."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medcam_monai.explanation import MASK
from medcam_monai.io.writer import PreparedCase, Writer, check_channel

__all__ = ["NiftiWriter", "write_nifti"]


def _affine_4x4(affine: np.ndarray) -> np.ndarray:
    if affine.shape == (4, 4):
        return affine
    out = np.eye(4)
    out[:2, :2], out[:2, 3] = affine[:2, :2], affine[:2, 2]
    return out


class NiftiWriter(Writer):
    """Write one case as NIfTI on the source image's grid, so it overlays the source in any viewer.

    A mask is stored as uint8 ``{0, 1}``, a heatmap as float32 with its values unchanged (NaN -> 0,
    Inf -> finite max/min). The grid is the source's as loaded: its shape and affine (for a NIfTI
    loaded by MONAI, ``original_affine``; for a DICOM series, the RAS affine of its slices), stored
    as both sform and qform with code "scanner".

    Args:
        explanation: the Explanation (``map`` is ``(B, K, *spatial)``).
        source: any source: a :class:`SourceReference` (or its JSON), or the image as loaded by MONAI's
            ``LoadImaged`` or this package's loaders (its meta names the file and grid).
        path: output ``.nii`` or ``.nii.gz``; written atomically.
        case: which case of the batch to write.
        channel: one map channel to write as a 3D (2D) image; ``None`` writes all ``K`` channels,
            a single channel as ``(*spatial)``, several as ``(*spatial, K)`` (the NIfTI 4th axis).

    Returns:
        The path written.
    """

    name = "nifti"
    function = "write_nifti"
    suffix = ".nii.gz"
    endings = (".nii", ".nii.gz")

    def write(self, case: PreparedCase, path: Path, *, channel: int | None = None) -> None:
        values = case.values if channel is None else case.values[[check_channel(channel, case.channels)]]
        data = values[0] if values.shape[0] == 1 else np.moveaxis(values, 0, -1)
        data = (data >= 0.5).astype(np.uint8) if case.kind == MASK else data.astype(np.float32, copy=False)
        affine = _affine_4x4(case.reference.affine_array)
        image = nib.Nifti1Image(data, affine)
        image.set_sform(affine, code="scanner")
        image.set_qform(affine, code="scanner")
        image.header["descrip"] = f"{case.method} {case.kind}"[:79].encode()
        nib.save(image, path)


write_nifti = NiftiWriter()
