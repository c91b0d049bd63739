"""PNG overlays: image, heatmap and mask contour side by side, for 2D images and chosen slices of 3D."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image
from scipy import ndimage

from medcam_monai.explanation import Explanation
from medcam_monai.io.reference import SourceReference, WSIReference
from medcam_monai.io.source_image import load_source_image
from medcam_monai.io.writer import PreparedCase, Writer, check_channel

__all__ = ["PngOverlayWriter", "write_png_overlay", "CONTOUR_COLOR"]

CONTOUR_COLOR = (0, 255, 0)


def _window(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W, 3)`` uint8; grey images windowed to their 1st-99th percentile."""
    if image.shape[0] >= 3:
        rgb = np.moveaxis(image[:3], 0, -1)
        return np.clip(rgb, 0, 255).astype(np.uint8) if rgb.max() > 1.5 else (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    grey = image[0]
    lo, hi = np.percentile(grey, [1, 99]) if grey.size > 1 else (grey.min(), grey.max())
    if hi <= lo:
        lo, hi = float(grey.min()), float(grey.max()) + 1e-6
    g = (np.clip((grey - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def _magnify(a: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer ``factor`` (pixels stay honest squares)."""
    return a if factor == 1 else a.repeat(factor, axis=0).repeat(factor, axis=1)


def _panels(rgb: np.ndarray, heat: np.ndarray, mask: np.ndarray, alpha: float, cmap: str, min_size: int = 0) -> np.ndarray:
    # small sources (a 64 px tile, a down-sampled test CT) would make a PNG nobody can read
    factor = max(1, -(-min_size // min(rgb.shape[:2]))) if min_size > 0 else 1
    rgb, heat, mask = _magnify(rgb, factor), _magnify(heat, factor), _magnify(mask, factor)
    coloured = (colormaps[cmap](heat)[..., :3] * 255).astype(np.float32)
    blend = ((1 - alpha * heat[..., None]) * rgb + alpha * heat[..., None] * coloured).astype(np.uint8)
    contour = rgb.copy()
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    contour[edge] = CONTOUR_COLOR
    gap = np.full((rgb.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([rgb, gap, blend, gap, contour], axis=1)


def _source_pixels(image: Any, ref: SourceReference) -> np.ndarray:
    """The caller's source pixels on the source grid (a MetaTensor on another grid is resampled by
    affine, bilinear), or the source loaded once when the caller has none."""
    if image is None:
        return load_source_image(ref)
    if hasattr(image, "affine"):
        from medcam_monai.io.geometry import on_grid

        return on_grid(image, ref.affine_array, ref.spatial_shape, nearest=False)
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim != len(ref.spatial_shape) + 1 or tuple(pixels.shape[1:]) != tuple(ref.spatial_shape):
        raise ValueError(f"image must be (C, *{tuple(ref.spatial_shape)}) on the source grid, got {pixels.shape}.")
    return pixels


class PngOverlayWriter(Writer):
    """Write a PNG with three panels per row: the image, the image under the heatmap, the image with
    the mask contour (green). 3D sources give one row per chosen slice (last axis).

    Orientation: DICOM slices and 2D files appear as stored (first row on top); whole-slide regions
    as read. The heatmap is min-max scaled for display; a heatmap's contour is drawn at
    ``threshold`` of that scale, a mask's at its edge.

    Args:
        explanation: the Explanation (``map`` is ``(B, K, *spatial)``).
        source: any source (a :class:`SourceReference`, its JSON, or the loaded image).
        path: output ``.png``; written atomically.
        case: which case of the batch to draw.
        channel: which map channel to draw.
        image: the source pixels when the caller has them: ``(C, *spatial)`` on the source grid, or a
            MetaTensor on another grid (e.g. the network input; resampled by its affine). ``None``
            loads the source once (a DICOM series from the files its reference names).
        slices: slice indices (last spatial axis) of a 3D source; ``None`` picks the slice with
            the most explanation.
        threshold: contour level for heatmaps, in ``[0, 1]`` of the scaled map.
        alpha: heatmap opacity at its maximum.
        cmap: a matplotlib colormap name for the heatmap.
        min_size: each panel's shorter side is enlarged (nearest neighbour, by a whole factor) to at
            least this many pixels so small images stay readable; 0 keeps the source's pixels 1:1.

    Returns:
        The path written.
    """

    name = "png"
    function = "write_png_overlay"
    suffix = ".png"

    def check_options(self, explanation: Explanation, reference: SourceReference, **options: Any) -> None:
        super().check_options(explanation, reference, **options)
        cmap = options.get("cmap", "jet")
        if cmap not in colormaps:
            raise ValueError(f"Unknown colormap {cmap!r}; use a matplotlib name such as 'jet', 'inferno', 'viridis'.")
        if len(reference.spatial_shape) == 3 and options.get("slices") is not None:
            n = reference.spatial_shape[-1]
            bad = [int(s) for s in options["slices"] if not -n <= int(s) < n]
            if bad:
                raise ValueError(f"slices {bad} out of range for a volume of {n} slices.")

    def write(
        self,
        case: PreparedCase,
        path: Path,
        *,
        channel: int = 0,
        image: Any = None,
        slices: Sequence[int] | None = None,
        threshold: float = 0.5,
        alpha: float = 0.5,
        cmap: str = "jet",
        min_size: int = 256,
    ) -> None:
        ref = case.reference
        channel = check_channel(channel, case.channels)
        heat = case.unit()[channel]
        mask = case.masks(threshold)[channel]
        pixels = _source_pixels(image, ref)
        # MONAI loads 2D files and DICOM as (x, y[, z]); whole-slide regions as (row, column)
        to_rows = (lambda a: a) if isinstance(ref, WSIReference) else (lambda a: np.swapaxes(a, -1, -2))
        if len(ref.spatial_shape) == 3:
            n = ref.spatial_shape[-1]
            chosen = [int(np.argmax(heat.reshape(-1, n).sum(0)))] if slices is None else [int(s) for s in slices]
            rows = [_panels(_window(to_rows(pixels[..., s])), to_rows(heat[..., s]), to_rows(mask[..., s]), alpha, cmap, min_size) for s in chosen]
        else:
            rows = [_panels(_window(to_rows(pixels)), to_rows(heat), to_rows(mask), alpha, cmap, min_size)]
        sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
        canvas = np.concatenate([x for r in rows for x in (r, sep)][:-1], axis=0)
        Image.fromarray(canvas).save(path, format="PNG")


write_png_overlay = PngOverlayWriter()
