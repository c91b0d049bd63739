"""3D Slicer segmentation files (``.seg.nrrd``) with segment names, colours and DICOM terminology."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicerio

from medcam_monai.io.codes import CATEGORY, property_type_for
from medcam_monai.io.dicom_series import LPS_TO_RAS
from medcam_monai.io.writer import PreparedCase, SegmentWriter

__all__ = ["SlicerSegWriter", "write_slicer_seg"]


class SlicerSegWriter(SegmentWriter):
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

    name = "slicer_seg"
    function = "write_slicer_seg"
    suffix = ".seg.nrrd"
    endings = (".seg.nrrd",)
    spatial_dims = (3,)

    def write_segments(self, case: PreparedCase, masks: np.ndarray, labels: list[str], colors: list[tuple[int, int, int]], path: Path) -> None:
        ref = case.reference
        segmentation = slicerio.create_segmentation(ref.spatial_shape, LPS_TO_RAS @ ref.affine_array)
        prop = property_type_for(case.method)
        for k, (name, rgb) in enumerate(zip(labels, colors)):
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


write_slicer_seg = SlicerSegWriter()
