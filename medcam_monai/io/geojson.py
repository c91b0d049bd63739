"""QuPath-style GeoJSON of explanation mask contours, in level-0 slide coordinates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import measure

from medcam_monai.io.reference import WSIReference
from medcam_monai.io.writer import PreparedCase, SegmentWriter

__all__ = ["GeoJsonWriter", "write_geojson", "mask_polygons"]


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _rings(binary: np.ndarray) -> list[np.ndarray]:
    """Boundaries of a binary image as closed (x, y) rings along pixel edges."""
    # Upsample 2x nearest and trace at 0.5 so contours follow pixel edges, not pixel centres:
    # polygons then cover exactly the mask's pixels when rasterised.
    up = np.kron(binary.astype(np.uint8), np.ones((2, 2), np.uint8))
    padded = np.pad(up, 1)
    out = []
    for c in measure.find_contours(padded, 0.5):
        rc = (c - 1 + 0.5) / 2.0  # back to original pixel units (pixel i spans [i, i+1))
        ring = np.round(rc[:, ::-1] * 2) / 2  # (row, col) -> (x, y)
        if len(ring) >= 4:
            out.append(ring)
    return out


def mask_polygons(mask: np.ndarray) -> list[list[np.ndarray]]:
    """Polygons of a 2D binary mask ``(H, W)``: one ``[exterior, *holes]`` list of ``(x, y)`` rings
    per 8-connected component; exteriors counter-clockwise, holes clockwise (RFC 7946), in pixel
    units where pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    polygons = []
    for i in range(1, n + 1):
        comp = labels == i
        filled = ndimage.binary_fill_holes(comp)
        exterior = max(_rings(filled), key=lambda r: abs(_signed_area(r)))
        if _signed_area(exterior) < 0:
            exterior = exterior[::-1]
        holes = []
        hole_labels, m = ndimage.label(filled & ~comp)
        for j in range(1, m + 1):
            for ring in _rings(hole_labels == j):
                holes.append(ring if _signed_area(ring) < 0 else ring[::-1])
        polygons.append([exterior] + holes)
    return polygons


class GeoJsonWriter(SegmentWriter):
    """Write mask contours as a GeoJSON FeatureCollection that QuPath imports as annotations.

    One Feature (Polygon with holes) per connected component per map channel, coordinates in
    level-0 pixels of the slide (``x = location_x + downsample * column``), with QuPath's
    ``objectType: "annotation"`` and ``classification {name, color}`` properties. Heatmaps are
    thresholded at ``threshold`` of their min-max scale. For a non-WSI 2D source, coordinates are
    pixels of the source image.

    Args:
        explanation: the Explanation (``map`` is ``(B, K, H, W)``).
        source: a 2D source (normally the :class:`WSIReference` from LoadWSId; or a 2D image as loaded).
        path: output ``.geojson``/``.json``; written atomically.
        case: which case of the batch to write.
        threshold: binarisation level for heatmaps, in ``[0, 1]``.
        labels: class names indexed by target class, used as classification names.
        colors: colour (RGB 0-255) per channel.

    Returns:
        The path written.
    """

    name = "geojson"
    function = "write_geojson"
    suffix = ".geojson"
    sources = ("wsi", "image")
    spatial_dims = (2,)

    def write_segments(self, case: PreparedCase, masks: np.ndarray, labels: list[str], colors: list[tuple[int, int, int]], path: Path) -> None:
        ref = case.reference
        if isinstance(ref, WSIReference):
            scale, (oy, ox) = ref.downsample, ref.location
            to_rc = lambda m: m  # noqa: E731  whole-slide regions are (row, column)
        else:
            scale, oy, ox = 1.0, 0, 0
            to_rc = lambda m: m.T  # noqa: E731  MONAI loads 2D files as (x, y)
        features = []
        for k, (name, rgb, target) in enumerate(zip(labels, colors, case.targets)):
            for poly in mask_polygons(to_rc(masks[k])):
                rings = [[[float(ox + scale * x), float(oy + scale * y)] for x, y in ring] for ring in poly]
                rings = [r + [r[0]] if r[0] != r[-1] else r for r in rings]
                features.append({
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": rings},
                    "properties": {
                        "objectType": "annotation",
                        "name": name,
                        "classification": {"name": name, "color": list(rgb)},
                        "measurements": {"target": target},
                        "method": case.method,
                    },
                })
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


write_geojson = GeoJsonWriter()
