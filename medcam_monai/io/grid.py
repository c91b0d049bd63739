"""Voxel grids (an affine and a shape) and exact correspondences between them.

Two grids that differ only by axis order and direction (a NIfTI reoriented to RAS, a DICOM series
that one reader stacks head-first and another feet-first) hold the same voxels: an array moves from
one to the other by transposing and flipping, without interpolation, so values are kept exactly.
numpy only (no torch).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = ["spatial_affine", "voxel_correspondence", "apply_correspondence", "contiguous"]

# how far (in voxels) a corner of one grid may lie from a voxel centre of the other and still be
# "the same voxel": DS/float32 round-off is far smaller, a real shift or resampling far larger
CORNER_TOL = 0.01


def spatial_affine(affine: np.ndarray, spatial_dims: int) -> np.ndarray:
    """``(D+1, D+1)`` affine of a ``D``-dimensional grid; MONAI's 4x4 affine of a 2D image is cut to
    its in-plane ``3x3``."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape[0] == spatial_dims + 1:
        return affine
    if spatial_dims == 2 and affine.shape[0] == 4:
        return affine[[0, 1, 3]][:, [0, 1, 3]]
    raise ValueError(f"Cannot use a {affine.shape} affine for a {spatial_dims}D grid.")


def voxel_correspondence(
    src_affine: np.ndarray, src_shape: Sequence[int], dst_affine: np.ndarray, dst_shape: Sequence[int]
) -> tuple[tuple[int, ...], tuple[bool, ...]] | None:
    """How an array on the source grid becomes one on the destination grid without interpolation.

    Returns:
        ``(axes, flips)`` when every source voxel centre is a destination voxel centre and the grids
        cover the same voxels: destination axis ``a`` is source axis ``axes[a]``, reversed when
        ``flips[a]``. None otherwise (the grids need resampling).
    """
    D = len(src_shape)
    if len(dst_shape) != D:
        return None
    m = np.linalg.inv(spatial_affine(dst_affine, D)) @ spatial_affine(src_affine, D)  # source index -> destination index
    corners = np.array(list(itertools.product(*[(0, s - 1) for s in src_shape])), dtype=np.float64)
    mapped = corners @ m[:D, :D].T + m[:D, D]
    if np.abs(mapped - np.round(mapped)).max() > CORNER_TOL:
        return None
    lin = np.round(m[:D, :D])
    if not np.allclose(np.abs(lin).sum(0), 1) or not np.allclose(np.abs(lin).sum(1), 1):
        return None  # not a signed permutation (a scaling or a rotation)
    if np.abs(m[:D, :D] - lin).max() * max(src_shape) > CORNER_TOL:
        return None
    axes = tuple(int(np.argmax(np.abs(lin[a]))) for a in range(D))
    flips = tuple(bool(lin[a, axes[a]] < 0) for a in range(D))
    offset = np.round(m[:D, D]).astype(int)
    for a in range(D):
        size = int(src_shape[axes[a]])
        if size != int(dst_shape[a]) or offset[a] != (size - 1 if flips[a] else 0):
            return None  # a crop, a pad or a shift: not the same voxels
    return axes, flips


def apply_correspondence(array: np.ndarray, axes: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    """``(C, *source spatial)`` -> ``(C, *destination spatial)`` with :func:`voxel_correspondence`'s result."""
    out = np.transpose(array, (0, *[1 + a for a in axes]))
    flipped = [1 + a for a, f in enumerate(flips) if f]
    return np.flip(out, axis=flipped) if flipped else out


def contiguous(view: np.ndarray, block: int = 32) -> np.ndarray:
    """A C-contiguous copy of a transposed/flipped ``view`` (the array itself when it already is one).

    Same result as ``np.ascontiguousarray``, copied in cubes of ``block`` voxels over the first three
    axes: numpy copies a reversed axis order element by element across the whole source, one cache
    miss per voxel (2 s for a 512x512x300 float32 CT here); cube by cube it is about 4x faster.
    """
    if view.flags.c_contiguous:
        return view
    out = np.empty(view.shape, view.dtype)
    for corner in itertools.product(*(range(0, s, block) for s in view.shape[:3])):
        cube = tuple(slice(i, i + block) for i in corner)
        out[cube] = view[cube]
    return out
