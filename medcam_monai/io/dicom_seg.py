"""DICOM Segmentation (BINARY, LABELMAP, FRACTIONAL) of an explanation, with highdicom."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np

from medcam_monai.explanation import MASK, Explanation
from medcam_monai.io._dicom_common import DicomWriter, next_uid, place_on_source
from medcam_monai.io.codes import CATEGORY, algorithm_identification, property_type_for
from medcam_monai.io.formats import SEG_TYPES
from medcam_monai.io.reference import SourceReference
from medcam_monai.io.writer import PreparedCase

__all__ = ["DicomSegWriter", "write_dicom_seg"]


def _seg_type(kind: str, segmentation_type: str | None) -> str:
    seg_type = (segmentation_type or ("BINARY" if kind == MASK else "FRACTIONAL")).upper()
    if seg_type not in SEG_TYPES:
        raise ValueError(f"segmentation_type must be one of {SEG_TYPES}, got {segmentation_type!r}.")
    return seg_type


class DicomSegWriter(DicomWriter):
    """Write one case as a DICOM Segmentation that references every source slice.

    Masks give one segment per map channel. A heatmap is min-max scaled to ``[0, 1]`` per channel
    and written FRACTIONAL (PROBABILITY, 8 bits) or, with ``segmentation_type="BINARY"``,
    thresholded at ``threshold`` of that scale. For exact heatmap values use
    :func:`write_parametric_map`. Only the source headers are read; patient and study are copied
    from them (absent type 2 attributes are written empty, with a warning).

    Args:
        explanation: the Explanation (its ``map`` is ``(B, K, *spatial)``).
        source: the DICOM source: a :class:`DicomSeriesReference` (or its JSON), or the image as
            loaded by ``LoadDicomd`` or by MONAI's ``LoadImaged`` on the series (its meta names the files).
        path: output ``.dcm`` file; written atomically.
        case: which case of the batch to write.
        segmentation_type: ``"BINARY"`` (default for masks), ``"FRACTIONAL"`` (default for heatmaps)
            or ``"LABELMAP"`` (masks whose channels never overlap: one frame per slice, smaller).
        threshold: binarisation level, in ``[0, 1]`` of the scaled heatmap, for BINARY/LABELMAP heatmaps.
        labels: class names indexed by target class, used in segment labels.
        colors: display colour (RGB 0-255) per channel; defaults to a fixed palette.
        series_number, series_description: of the new series.
        series_instance_uid, sop_instance_uid: the UIDs of the new series and instance (valid DICOM
            UIDs, not the source's); None generates them.

    Returns:
        The path written.
    """

    name = "dicom_seg"
    function = "write_dicom_seg"
    suffix = ".seg.dcm"
    what = "DICOM-SEG"

    def check_options(self, explanation: Explanation, reference: SourceReference, **options: Any) -> None:
        super().check_options(explanation, reference, **options)
        _seg_type(explanation.kind, options.get("segmentation_type"))

    def write(
        self,
        case: PreparedCase,
        path: Path,
        *,
        segmentation_type: str | None = None,
        threshold: float = 0.5,
        labels: Sequence[str] | Mapping[int, str] | None = None,
        colors: Sequence[Sequence[int]] | None = None,
        series_number: int = 901,
        series_description: str | None = None,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> None:
        seg_type = _seg_type(case.kind, segmentation_type)
        K = case.channels
        if seg_type == "FRACTIONAL":
            pixels = case.unit() if case.kind != MASK else case.masks().astype(np.float32)
        else:
            pixels = case.masks(threshold).astype(np.uint8)
            if seg_type == "LABELMAP":
                if K > 1 and int(pixels.sum(0).max()) > 1:
                    raise ValueError("LABELMAP needs channels that never overlap; these masks overlap. Use segmentation_type='BINARY'.")
                pixels = (pixels * np.arange(1, K + 1, dtype=np.uint8).reshape(-1, *[1] * (pixels.ndim - 1))).max(0, keepdims=True)
        headers = self.source_headers(case)
        pixel_array = place_on_source(pixels, case.reference, headers)  # type: ignore[arg-type]
        if seg_type == "LABELMAP":  # one channel of segment numbers, no channel axis
            pixel_array = pixel_array[..., 0] if isinstance(pixel_array, np.ndarray) else pixel_array.with_array(pixel_array.array[..., 0], channels={})
        arr = pixel_array if isinstance(pixel_array, np.ndarray) else pixel_array.array
        method = case.method
        descriptions = [
            hd.seg.SegmentDescription(
                segment_number=k + 1,
                segment_label=label,
                segmented_property_category=CATEGORY,
                segmented_property_type=property_type_for(method),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm_identification(method),
                tracking_uid=next_uid(),
                tracking_id=f"{method} target {target}",
                display_color=hd.color.CIELabColor.from_rgb(*rgb),
            )
            for k, (label, target, rgb) in enumerate(zip(case.labels(labels), case.targets, case.colors(colors)))
        ]
        seg = hd.seg.Segmentation(
            pixel_array=pixel_array,
            segmentation_type=seg_type,
            segment_descriptions=descriptions,
            # an all-empty mask still needs its frames: a SEG with no frames is invalid
            omit_empty_frames=bool(np.any(arr)),
            **self.derived_attributes(
                case,
                headers,
                series_instance_uid=series_instance_uid,
                sop_instance_uid=sop_instance_uid,
                series_number=series_number,
                series_description=series_description or f"{method} explanation ({seg_type.lower()})",
                content_description=f"{method} {case.kind}",
            ),
        )
        seg.save_as(path)


write_dicom_seg = DicomSegWriter()
