"""DICOM Parametric Map of a heatmap: float values kept exactly, with highdicom."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medcam_monai.explanation import Explanation
from medcam_monai.io._dicom_common import DicomWriter, place_on_source
from medcam_monai.io.codes import property_type_for
from medcam_monai.io.reference import SourceReference
from medcam_monai.io.writer import PreparedCase, check_channel

__all__ = ["ParametricMapWriter", "write_parametric_map"]


def _frames_ascending(pm: hd.pm.ParametricMap) -> None:
    """Reorder frames ascending along the slice normal, in place.

    dcmqi's ``paramap2itkimage`` (3D Slicer's reader) takes the lowest position as origin but stacks
    frames in file order, so it loads a descending map mirrored; highdicom sorts frames along its own
    normal, which descends for the usual axial orientation. Frame order carries no meaning in DICOM
    (each frame has its position), so sorting is safe for every other reader. Done by hand because
    highdicom has no option for it.
    """
    items = list(pm.PerFrameFunctionalGroupsSequence)
    shared = pm.SharedFunctionalGroupsSequence[0]
    if len(items) < 2 or "PlaneOrientationSequence" not in shared or pm.file_meta.TransferSyntaxUID.is_compressed:
        return
    ori = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(ori[:3], ori[3:])
    dist = [float(np.asarray(it.PlanePositionSequence[0].ImagePositionPatient, float) @ normal) for it in items]
    order = np.argsort(dist, kind="stable")
    if np.array_equal(order, np.arange(len(items))):
        return
    keyword = "FloatPixelData" if "FloatPixelData" in pm else "DoubleFloatPixelData" if "DoubleFloatPixelData" in pm else "PixelData"
    frames = np.frombuffer(pm[keyword].value, np.uint8).reshape(len(items), -1)
    pm[keyword].value = b"".join(frames[i].data for i in order)  # one new buffer, no intermediate array
    pointers = [int(d.DimensionIndexPointer) for d in pm.DimensionIndexSequence]
    position_dim = pointers.index(0x00200032) if 0x00200032 in pointers else None
    pm.PerFrameFunctionalGroupsSequence = [items[i] for i in order]
    if position_dim is not None:
        for j, it in enumerate(pm.PerFrameFunctionalGroupsSequence, 1):
            fc = it.FrameContentSequence[0]
            values = list(fc.DimensionIndexValues) if len(pointers) > 1 else [fc.DimensionIndexValues]
            values[position_dim] = j
            fc.DimensionIndexValues = values if len(pointers) > 1 else values[0]


class ParametricMapWriter(DicomWriter):
    """Write one channel of one case as a 32-bit float DICOM Parametric Map on the source slices.

    Values are written exactly (after NaN -> 0, Inf -> finite max/min), with an identity Real World
    Value Mapping (slope 1, intercept 0, unit "no units") whose quantity is the explanation's DICOM
    property type (Saliency / Class activation / Gradient-weighted class activation). A shared
    FrameAnatomySequence is added because dcmqi's ``paramap2itkimage`` (3D Slicer's reader)
    requires it. Only the source headers are read.

    Args:
        explanation: the Explanation (``map`` is ``(B, K, *spatial)``; masks are written as 0.0/1.0).
        source: the DICOM source: a :class:`DicomSeriesReference` (or its JSON), or the image as
            loaded by ``LoadDicomd`` or by MONAI's ``LoadImaged`` on the series.
        path: output ``.dcm`` file; written atomically.
        case: which case of the batch to write.
        channel: which map channel to write; may be omitted when ``K == 1``.
        labels: class names indexed by target class, used in the mapping's explanation.
        anatomic_region: coded anatomic region of the frames (default SCT "Entire body").
        series_number, series_description, series_instance_uid, sop_instance_uid: the new series and
            instance, as for :func:`~medcam_monai.io.write_dicom_seg`.

    Returns:
        The path written.
    """

    name = "parametric_map"
    function = "write_parametric_map"
    suffix = ".pm.dcm"
    what = "Parametric Map"

    def check_options(self, explanation: Explanation, reference: SourceReference, **options: Any) -> None:
        super().check_options(explanation, reference, **options)
        K = int(explanation.map.shape[1])
        if options.get("channel") is None and K != 1:
            raise ValueError(f"The map has {K} channels; a Parametric Map holds one. Pass channel=0..{K - 1}.")

    def write(
        self,
        case: PreparedCase,
        path: Path,
        *,
        channel: int | None = None,
        labels: Sequence[str] | Mapping[int, str] | None = None,
        anatomic_region: Code = codes.SCT.EntireBody,
        series_number: int = 902,
        series_description: str | None = None,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> None:
        channel = check_channel(0 if channel is None else channel, case.channels)
        values = case.values[channel : channel + 1].astype(np.float32, copy=False)
        headers = self.source_headers(case)
        volume = place_on_source(values, case.reference, headers)  # type: ignore[arg-type]
        pixels = volume[..., 0] if isinstance(volume, np.ndarray) else volume.with_array(volume.array[..., 0], channels={})
        lo, hi = float(values.min()), float(values.max())
        label = case.labels(labels)[channel]
        mapping = hd.pm.RealWorldValueMapping(
            lut_label="EXPLANATION",
            lut_explanation=label,
            unit=codes.UCUM.NoUnits,
            value_range=(lo, hi),
            slope=1.0,
            intercept=0.0,
            quantity_definition=property_type_for(case.method),
        )
        pm = hd.pm.ParametricMap(
            pixel_array=pixels,
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            # LINEAR_EXACT: DICOM forbids a window narrower than 1 with the default LINEAR function,
            # and heatmaps often span less than 1.
            voi_lut_transformations=[
                hd.VOILUTTransformation(
                    window_center=(lo + hi) / 2,
                    window_width=max(hi - lo, 1e-6),
                    voi_lut_function=hd.VOILUTFunctionValues.LINEAR_EXACT,
                )
            ],
            **self.derived_attributes(
                case,
                headers,
                series_instance_uid=series_instance_uid,
                sop_instance_uid=sop_instance_uid,
                series_number=series_number,
                series_description=series_description or f"{case.method} heatmap",
                content_description=label,
            ),
        )
        del volume, pixels, values  # the frames now live in pm: drop the arrays before reordering them
        _frames_ascending(pm)
        anatomy = Dataset()
        anatomy.AnatomicRegionSequence = [hd.sr.CodedConcept.from_code(anatomic_region)]
        anatomy.FrameLaterality = "U"
        pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]
        pm.save_as(path)


write_parametric_map = ParametricMapWriter()
