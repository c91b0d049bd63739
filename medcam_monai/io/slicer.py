"""3D Slicer segmentation files (``.seg.nrrd``) with segment names, colours and DICOM terminology."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import slicerio

from medcam_monai.explanation import Explanation
from medcam_monai.io.codes import CATEGORY, property_type_for
from medcam_monai.io.dicom_series import LPS_TO_RAS
from medcam_monai.io.writer import PreparedCase, Writer

__all__ = ["SlicerSegWriter", "write_slicer_seg"]


class SlicerSegWriter(Writer):
    """Writes one case as a 3D Slicer ``.seg.nrrd`` on the source grid (see :func:`write_slicer_seg`)."""

    name = "slicer_seg"
    function = "write_slicer_seg"
    suffix = ".seg.nrrd"
    endings = (".seg.nrrd",)
    spatial_dims = (3,)

    def write(
        self,
        case: PreparedCase,
        path: Path,
        *,
        threshold: float = 0.5,
        labels: Sequence[str] | Mapping[int, str] | None = None,
        colors: Sequence[Sequence[int]] | None = None,
    ) -> None:
        masks = case.masks(threshold)
        ref = case.reference
        segmentation = slicerio.create_segmentation(ref.spatial_shape, LPS_TO_RAS @ ref.affine_array)
        prop = property_type_for(case.method)
        for k, (name, rgb) in enumerate(zip(case.labels(labels), case.colors(colors))):
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
        slicerio.write_segmentation(str(path), segmentation)


SLICER_SEG = SlicerSegWriter()


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
        source: any 3D source (a :class:`SourceReference`, its JSON, or the loaded image).
        path: output file, ending ``.seg.nrrd``; written atomically.
        case: which case of the batch to write.
        threshold: binarisation level for heatmaps, in ``[0, 1]``.
        labels: class names indexed by target class, used in segment names.
        colors: display colour (RGB 0-255) per channel.

    Returns:
        The path written.
    """
    return SLICER_SEG(explanation, source, path, case=case, threshold=threshold, labels=labels, colors=colors)
