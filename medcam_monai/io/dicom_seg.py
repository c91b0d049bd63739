"""DICOM Segmentation (BINARY, LABELMAP, FRACTIONAL) of an explanation, with highdicom."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np

from medcam_monai.explanation import MASK, Explanation
from medcam_monai.io._dicom_common import dicom_reference, next_uid, place_on_source
from medcam_monai.io.atomic import atomic_path
from medcam_monai.io.codes import (
    CATEGORY,
    MANUFACTURER,
    algorithm_identification,
    default_color,
    property_type_for,
    software_version,
)
from medcam_monai.io.formats import SEG_TYPES
from medcam_monai.io.geometry import map_on_source, normalize_unit, select_case

__all__ = ["write_dicom_seg", "segment_labels"]



def segment_labels(explanation: Explanation, labels: Sequence[str] | Mapping[int, str] | None) -> list[str]:
    """One label per map channel: ``"<method> <class name>"`` (class name from ``labels`` by target
    index, else ``"class <index>"``). DICOM limits labels to 64 characters."""
    target = explanation.target[0].tolist()
    out = []
    for t in target:
        if labels is None:
            name = f"class {t}"
        else:
            try:
                name = str(labels[t])
            except (IndexError, KeyError):
                raise ValueError(f"labels has no entry for target class {t}; give a name for every class explained.") from None
        out.append(f"{explanation.method} {name}"[:64])
    return out


def write_dicom_seg(
    explanation: Explanation,
    source: object,
    path: str | os.PathLike,
    *,
    case: int = 0,
    segmentation_type: str | None = None,
    threshold: float = 0.5,
    labels: Sequence[str] | Mapping[int, str] | None = None,
    colors: Sequence[Sequence[int]] | None = None,
    series_number: int = 901,
    series_description: str | None = None,
) -> Path:
    """Write one case as a DICOM Segmentation that references every source slice.

    Masks give one segment per map channel. A heatmap is min-max scaled to ``[0, 1]`` per channel
    and written FRACTIONAL (PROBABILITY, 8 bits) or, with ``segmentation_type="BINARY"``,
    thresholded at ``threshold`` of that scale. For exact heatmap values use
    :func:`write_parametric_map`.

    Args:
        explanation: the Explanation (its ``map`` is ``(B, K, *spatial)``).
        source: the :class:`DicomSeriesReference` (or its JSON, or the source MetaTensor).
        path: output ``.dcm`` file; written atomically.
        case: which case of the batch to write.
        segmentation_type: ``"BINARY"`` (default for masks), ``"FRACTIONAL"`` (default for heatmaps)
            or ``"LABELMAP"`` (masks whose channels never overlap: one frame per slice, smaller).
        threshold: binarisation level, in ``[0, 1]`` of the scaled heatmap, for BINARY/LABELMAP heatmaps.
        labels: class names indexed by target class, used in segment labels.
        colors: display colour (RGB 0-255) per channel; defaults to a fixed palette.
        series_number, series_description: of the new series.

    Returns:
        The path written.
    """
    ref = dicom_reference(source, "write_dicom_seg")
    one = select_case(explanation, case)
    seg_type = (segmentation_type or ("BINARY" if one.kind == MASK else "FRACTIONAL")).upper()
    if seg_type not in SEG_TYPES:
        raise ValueError(f"segmentation_type must be one of {SEG_TYPES}, got {segmentation_type!r}.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
    values = map_on_source(one, ref)
    if one.kind == MASK:
        fractions = (values >= 0.5).astype(np.float32)
    else:
        fractions = normalize_unit(values)
    K = values.shape[0]
    if colors is not None and len(colors) < K:
        raise ValueError(f"colors gives {len(colors)} colour(s) for {K} map channel(s).")
    if seg_type == "FRACTIONAL":
        pixels = fractions.astype(np.float32)
    else:
        pixels = (fractions >= (0.5 if one.kind == MASK else threshold)).astype(np.uint8)
        if seg_type == "LABELMAP" and K > 1 and int(pixels.sum(0).max()) > 1:
            raise ValueError("LABELMAP needs channels that never overlap; these masks overlap. Use segmentation_type='BINARY'.")
    datasets, pixel_array = place_on_source(pixels, ref)

    method = one.method
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k + 1,
            segment_label=label,
            segmented_property_category=CATEGORY,
            segmented_property_type=property_type_for(method),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_identification(method),
            tracking_uid=next_uid(),
            tracking_id=f"{method} target {int(one.target[0, k])}",
            display_color=hd.color.CIELabColor.from_rgb(*[int(c) for c in (colors[k] if colors is not None else default_color(k))]),
        )
        for k, label in enumerate(segment_labels(one, labels))
    ]
    if seg_type == "LABELMAP" and not isinstance(pixel_array, np.ndarray):
        pixel_array = pixel_array.with_array((pixel_array.array * np.arange(1, K + 1, dtype=np.uint8)).max(-1).astype(np.uint8), channels={})
    elif seg_type == "LABELMAP":
        pixel_array = (pixel_array * np.arange(1, K + 1, dtype=np.uint8)).max(-1).astype(np.uint8)
    arr = pixel_array if isinstance(pixel_array, np.ndarray) else pixel_array.array
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixel_array,
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=next_uid(),
        series_number=series_number,
        sop_instance_uid=next_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=method[:64],
        software_versions=software_version(),
        device_serial_number="0",
        content_label="EXPLANATION",
        content_creator_name=f"{MANUFACTURER}^",  # PN: family name only
        content_description=f"{method} {one.kind}"[:64],
        series_description=(series_description or f"{method} explanation ({seg_type.lower()})")[:64],
        # an all-empty mask still needs its frames: a SEG with no frames is invalid
        omit_empty_frames=bool(np.any(arr)),
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)
