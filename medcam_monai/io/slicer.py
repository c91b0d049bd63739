"""3D Slicer segmentation files (``.seg.nrrd``) with segment names, colours and DICOM terminology."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import slicerio

from medcam_monai.explanation import MASK, Explanation
from medcam_monai.io.atomic import atomic_path
from medcam_monai.io.geometry import map_on_source, normalize_unit, select_case
from medcam_monai.io.codes import CATEGORY, default_color, property_type_for
from medcam_monai.io.dicom_series import LPS_TO_RAS
from medcam_monai.io.dicom_seg import segment_labels
from medcam_monai.io.reference import as_source_reference

__all__ = ["write_slicer_seg"]


def write_slicer_seg(
    explanation: Explanation,
    source: object,
    path: str | os.PathLike,
    *,
    case: int = 0,
    threshold: float = 0.5,
    labels: Sequence[str] | Mapping[int, str] | None = None,
    colors: Sequence[Sequence[int]] | None = None,
) -> Path:
    """Write one case as a 3D Slicer segmentation (``.seg.nrrd``, via slicerio) on the source grid.

    One segment per map channel, named like the DICOM-SEG segments, with the display colour and a
    Slicer ``TerminologyEntry`` holding the same DICOM codes (category SCT 309825002, type DCM
    130402/130403/130404). Overlapping channels go to separate layers, as Slicer stores them.
    Heatmaps are thresholded at ``threshold`` of their min-max scale.

    Args:
        explanation: the Explanation (``map`` is ``(B, K, *spatial)``, 3D spatial).
        source: any 3D :class:`SourceReference` (or its JSON, or the source MetaTensor).
        path: output file, ending ``.seg.nrrd``; written atomically.
        case: which case of the batch to write.
        threshold: binarisation level for heatmaps, in ``[0, 1]``.
        labels: class names indexed by target class, used in segment names.
        colors: display colour (RGB 0-255) per channel.

    Returns:
        The path written.
    """
    ref = as_source_reference(source)
    if not str(path).endswith(".seg.nrrd"):
        raise ValueError(f"3D Slicer recognises segmentations by the '.seg.nrrd' ending; got {path}.")
    if len(ref.spatial_shape) != 3:
        raise ValueError(f"write_slicer_seg needs a 3D source, got {len(ref.spatial_shape)}D {ref.spatial_shape}.")
    one = select_case(explanation, case)
    values = map_on_source(one, ref)
    masks = values >= 0.5 if one.kind == MASK else normalize_unit(values) >= threshold
    if colors is not None and len(colors) < masks.shape[0]:
        raise ValueError(f"colors gives {len(colors)} colour(s) for {masks.shape[0]} map channel(s).")
    segmentation = slicerio.create_segmentation(ref.spatial_shape, LPS_TO_RAS @ ref.affine_array)
    prop = property_type_for(one.method)
    for k, name in enumerate(segment_labels(one, labels)):
        rgb = colors[k] if colors is not None else default_color(k)
        slicerio.add_segment(
            segmentation,
            masks[k],
            {
                "id": f"Segment_{k + 1}",
                "name": name,
                "color": [c / 255.0 for c in rgb],
                "terminology": {
                    "contextName": "medcam-monai explanations",
                    "category": [CATEGORY.scheme_designator, CATEGORY.value, CATEGORY.meaning],
                    "type": [prop.scheme_designator, prop.value, prop.meaning],
                },
            },
        )
    segmentation["containedRepresentationNames"] = ["Binary labelmap"]
    segmentation["masterRepresentation"] = "Binary labelmap"
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return Path(path)
