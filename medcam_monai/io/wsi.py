"""Whole-slide overlays: a tiled pyramidal TIFF readable by WSIReader (tifffile) and OpenSlide."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from medcam_monai.explanation import MASK, Explanation
from medcam_monai.io.reference import SourceReference
from medcam_monai.io.writer import PreparedCase, Writer, check_channel

__all__ = ["WsiOverlayWriter", "write_wsi_overlay", "pyramid"]


def _downscale(a: np.ndarray) -> np.ndarray:
    """Halve a 2D uint8 image by 2x2 averaging (odd edges kept)."""
    h, w = a.shape
    p = np.pad(a.astype(np.float32), ((0, h % 2), (0, w % 2)), mode="edge")
    return np.round((p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) / 4).astype(np.uint8)


def pyramid(level0: np.ndarray, min_level_size: int, min_levels: int = 1) -> list[np.ndarray]:
    """``level0`` and its halvings (2x2 means): until both sides are at most ``min_level_size`` and
    there are at least ``min_levels`` levels, never below 1 pixel."""
    levels = [level0]
    while min(levels[-1].shape) >= 2 and (max(levels[-1].shape) > min_level_size or len(levels) < min_levels):
        levels.append(_downscale(levels[-1]))
    return levels


class WsiOverlayWriter(Writer):
    """Write one channel as a tiled pyramidal grey TIFF covering the whole slide at the map's level.

    The overlay has the slide's extent at the level the region was read from (level-0 size divided
    by the downsample), with the map placed at the region's location and zeros elsewhere, so it
    overlays the slide when scaled to the slide's size. It is a real pyramid: each level is a tiled
    top-level page (OpenSlide's generic-TIFF layout, which QuPath opens; MONAI's tifffile backend
    reads the pages as levels, later ones marked reduced-resolution), each half the size of the one
    before (2x2 means), until the top level fits in one tile, and never fewer than ``min_levels``
    levels (while a level is at least 2 pixels). X/YResolution are set in centimetres from the
    slide's mpp times each level's downsample (when the slide has mpp). Values are uint8: a mask is
    0/255, a heatmap is ``round(255 * (v - min) / (max - min))``; min and max go to the
    ImageDescription as JSON.

    Args:
        explanation: the Explanation (``map`` is ``(B, K, H, W)`` for the region).
        source: the :class:`WSIReference` made by :class:`LoadWSId` (or its JSON / MetaTensor).
        path: output ``.tif``/``.tiff``; written atomically.
        case: which case of the batch to write.
        channel: which map channel to write.
        tile: tile edge in pixels (a multiple of 16, as TIFF requires).
        min_level_size: stop halving once both sides of a level are at most this (default: ``tile``,
            so the smallest level is one tile).
        min_levels: the pyramid has at least this many levels.
        compression: tifffile compression (``"zlib"``, ``"jpeg"``, ``None``).

    Returns:
        The path written.
    """

    name = "wsi"
    function = "write_wsi_overlay"
    suffix = ".tif"
    sources = ("wsi",)
    spatial_dims = (2,)

    def check_options(self, explanation: Explanation, reference: SourceReference, **options: Any) -> None:
        super().check_options(explanation, reference, **options)
        tile = options.get("tile", 256)
        if tile <= 0 or tile % 16:
            raise ValueError(f"tile must be a positive multiple of 16 (TIFF tiling), got {tile}.")
        if int(options.get("min_levels", 3)) < 1:
            raise ValueError(f"min_levels must be >= 1, got {options.get('min_levels')}.")
        if options.get("min_level_size") is not None and int(options["min_level_size"]) < 1:
            raise ValueError(f"min_level_size must be >= 1, got {options['min_level_size']}.")

    def write(
        self,
        case: PreparedCase,
        path: Path,
        *,
        channel: int = 0,
        tile: int = 256,
        min_level_size: int | None = None,
        min_levels: int = 3,
        compression: str | None = "zlib",
    ) -> None:
        ref = case.reference
        channel = check_channel(channel, case.channels)
        v = case.values[channel]
        lo, hi = float(v.min()), float(v.max())
        if case.kind == MASK:
            region = np.where(v >= 0.5, 255, 0).astype(np.uint8)
        else:
            region = np.round(255 * (v - lo) / (hi - lo)).astype(np.uint8) if hi > lo else np.zeros(v.shape, np.uint8)
        H = int(np.ceil(ref.level0_size[0] / ref.downsample))
        W = int(np.ceil(ref.level0_size[1] / ref.downsample))
        y0, x0 = (int(round(c / ref.downsample)) for c in ref.location)
        canvas = np.zeros((H, W), np.uint8)
        h, w = min(region.shape[0], H - y0), min(region.shape[1], W - x0)
        canvas[y0 : y0 + h, x0 : x0 + w] = region[:h, :w]
        description = json.dumps({"medcam_monai": {"method": case.method, "kind": case.kind, "target": case.targets[channel],
                                                   "value_min": lo, "value_max": hi, "downsample_from_level0": ref.downsample}})
        levels = pyramid(canvas, tile if min_level_size is None else min_level_size, min_levels)
        with tifffile.TiffWriter(path, bigtiff=canvas.size > 2**31) as tif:
            for i, level in enumerate(levels):
                scale = ref.downsample * 2**i  # this level's downsample from the slide's level 0
                kw = {}
                if ref.mpp is not None:
                    # pixels per centimetre at this level
                    kw = {"resolution": (1e4 / (ref.mpp[1] * scale), 1e4 / (ref.mpp[0] * scale)), "resolutionunit": "CENTIMETER"}
                tif.write(level, tile=(tile, tile), compression=compression, photometric="minisblack",
                          description=description if i == 0 else None, metadata=None, subfiletype=0 if i == 0 else 1, **kw)


write_wsi_overlay = WsiOverlayWriter()
