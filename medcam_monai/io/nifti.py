"""NIfTI overlays on the source grid and affine, readable by any viewer with the source."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medcam_monai.explanation import MASK, Explanation
from medcam_monai.io.atomic import atomic_path
from medcam_monai.io.geometry import map_on_source, select_case
from medcam_monai.io.reference import as_source_reference

__all__ = ["write_nifti"]


def _affine_4x4(affine: np.ndarray) -> np.ndarray:
    if affine.shape == (4, 4):
        return affine
    out = np.eye(4)
    out[:2, :2], out[:2, 3] = affine[:2, :2], affine[:2, 2]
    return out


def write_nifti(
    explanation: Explanation,
    source: object,
    path: str | os.PathLike,
    *,
    case: int = 0,
    channel: int | None = None,
) -> Path:
    """Write one case as NIfTI on the source image's grid, so it overlays the source in any viewer.

    A mask is stored as uint8 ``{0, 1}``, a heatmap as float32 with its values unchanged (NaN -> 0,
    Inf -> finite max/min). The affine is the source's (RAS; for a DICOM source, the one
    ``LoadDicomd`` gave), stored as both sform and qform with code "scanner".

    Args:
        explanation: the Explanation (``map`` is ``(B, K, *spatial)``).
        source: any :class:`SourceReference` (or its JSON, or the source MetaTensor).
        path: output ``.nii`` or ``.nii.gz``; written atomically.
        case: which case of the batch to write.
        channel: one map channel to write as a 3D (2D) image; ``None`` writes all ``K`` channels,
            a single channel as ``(*spatial)``, several as ``(*spatial, K)`` (the NIfTI 4th axis).

    Returns:
        The path written.
    """
    ref = as_source_reference(source)
    one = select_case(explanation, case)
    if not str(path).endswith((".nii", ".nii.gz")):
        raise ValueError(f"write_nifti writes .nii or .nii.gz files, got {path}.")
    values = map_on_source(one, ref)
    K = values.shape[0]
    if channel is not None:
        if not -K <= channel < K:
            raise ValueError(f"channel {channel} out of range for a map with {K} channel(s).")
        values = values[[channel]]
    data = values[0] if values.shape[0] == 1 else np.moveaxis(values, 0, -1)
    if one.kind == MASK:
        data = (data >= 0.5).astype(np.uint8)
    else:
        data = data.astype(np.float32)
    affine = _affine_4x4(ref.affine_array)
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code="scanner")
    image.set_qform(affine, code="scanner")
    image.header["descrip"] = f"{one.method} {one.kind}"[:79].encode()
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)
