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

__all__ = ["WsiOverlayWriter", "write_wsi_overlay"]


def _downscale(a: np.ndarray) -> np.ndarray:
    """Halve a 2D uint8 image by 2x2 averaging (odd edges kept)."""
    h, w = a.shape
    p = np.pad(a.astype(np.float32), ((0, h % 2), (0, w % 2)), mode="edge")
    return np.round((p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) / 4).astype(np.uint8)


class WsiOverlayWriter(Writer):
    """Write one channel as a tiled pyramidal grey TIFF covering the whole slide at the map's level.

    The overlay has the slide's extent at the level the region was read from (level-0 size divided
    by the downsample), with the map placed at the region's location and zeros elsewhere, so it
    overlays the slide when scaled to the slide's size. Each pyramid level is a tiled top-level
    page (OpenSlide's generic-TIFF layout; MONAI's tifffile backend reads pages as levels), halved
    until it is below ``min_level_size``. X/YResolution are set in centimetres from the slide's mpp
    times the downsample (when the slide has mpp). Values are uint8: a mask is 0/255, a heatmap is
    ``round(255 * (v - min) / (max - min))``; min and max go to the ImageDescription as JSON.

    Args:
        explanation: the Explanation (``map`` is ``(B, K, H, W)`` for the region).
        source: the :class:`WSIReference` made by :class:`LoadWSId` (or its JSON / MetaTensor).
        path: output ``.tif``/``.tiff``; written atomically.
        case: which case of the batch to write.
        channel: which map channel to write.
        tile: tile edge in pixels (a multiple of 16, as TIFF requires).
        min_level_size: stop adding levels when both sides are below this.
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
        if tile % 16:
            raise ValueError(f"tile must be a multiple of 16 (TIFF tiling), got {tile}.")

    def write(
        self,
        case: PreparedCase,
        path: Path,
        *,
        channel: int = 0,
        tile: int = 256,
        min_level_size: int = 256,
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
        levels = [canvas]
        while max(levels[-1].shape) >= 2 * min_level_size:
            levels.append(_downscale(levels[-1]))
        with tifffile.TiffWriter(path, bigtiff=canvas.size > 2**31) as tif:
            for i, level in enumerate(levels):
                scale = ref.downsample * (canvas.shape[0] / level.shape[0])
                kw = {}
                if ref.mpp is not None:
                    # pixels per centimetre at this level
                    kw = {"resolution": (1e4 / (ref.mpp[1] * scale), 1e4 / (ref.mpp[0] * scale)), "resolutionunit": "CENTIMETER"}
                tif.write(level, tile=(tile, tile), compression=compression, photometric="minisblack",
                          description=description if i == 0 else None, metadata=None, subfiletype=0 if i == 0 else 1, **kw)


write_wsi_overlay = WsiOverlayWriter()
