"""DICOM folder in, DICOM-SEG of a Seg-HiRes-Grad CAM out, as a MONAI Deploy App SDK application.

    python -m deploy_app.app -i DICOM_FOLDER -o OUTPUT_FOLDER -m WEIGHTS.pt [--target 2]

The segmentation network is ``deploy_app.network.segmentation_network()`` with the state dict at
``-m`` (``{"model": state_dict}`` or a bare state dict; never downloaded). The SEG holds one segment
per heatmap band ("CAM 20-40%", ...), coded DCM 130403 "Gradient-weighted class activation", and
references every source instance.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator, SegmentDescription
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
from monai.transforms import Compose, DivisiblePadd, ScaleIntensityRanged
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from deploy_app.network import segmentation_network
from medcam_monai.cam import SegHiResGradCAM
from medcam_monai_deploy import ExplainOperator

__all__ = ["ExplainSegApp", "segment_descriptions", "main"]

GRAD_CAM = Code("130403", "DCM", "Gradient-weighted class activation")


def segment_descriptions(levels: int) -> list[SegmentDescription]:
    """One SEG segment per labelled heatmap band (1..levels-1)."""
    step = 100 / levels
    return [
        SegmentDescription(
            segment_label=f"CAM {round(k * step)}-{round((k + 1) * step)}%",
            segmented_property_category=Code("309825002", "SCT", "Spatial and Relational Concept"),
            segmented_property_type=GRAD_CAM,
            algorithm_name="medcam-monai Seg-HiRes-Grad CAM",
            algorithm_family=codes.DCM.ArtificialIntelligence,
            algorithm_version="0.1.0",
        )
        for k in range(1, levels)
    ]


class ExplainSegApp(Application):
    """loader -> series selector -> series to volume -> ExplainOperator -> DICOM-SEG writer."""

    def __init__(self, input_folder: Path, output_folder: Path, weights: Path, target: int = 2, levels: int = 5,
                 window=(-57.0, 164.0), **kwargs) -> None:
        self.input_folder = Path(input_folder)
        self.output_folder = Path(output_folder)
        self.weights = Path(weights)
        self.target = int(target)
        self.levels = int(levels)
        self.window = window
        self.explain_op: ExplainOperator | None = None
        super().__init__(**kwargs)

    def network(self) -> torch.nn.Module:
        net = segmentation_network()
        # weights_only: a weights file is data, never code (torch < 2.6 unpickles anything by default)
        state = torch.load(self.weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("model", state))
        return net.eval()

    def compose(self) -> None:
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=self.input_folder,
                                         name="dcm_loader")
        selector = DICOMSeriesSelectorOperator(self, rules=None, name="series_selector")
        to_volume = DICOMSeriesToVolumeOperator(self, name="series_to_vol")
        cam = SegHiResGradCAM(self.network(), relu=True, normalize="max")
        pre = Compose([
            ScaleIntensityRanged("image", a_min=self.window[0], a_max=self.window[1], b_min=0.0, b_max=1.0, clip=True),
            DivisiblePadd("image", k=8),  # the UNet halves the grid three times
        ])
        self.explain_op = ExplainOperator(
            self, explainer=lambda x: cam(x, target=self.target, pixels="image"), pre_transforms=pre,
            levels=self.levels, name="explain",
        )
        writer = DICOMSegmentationWriterOperator(self, segment_descriptions=segment_descriptions(self.levels),
                                                 output_folder=self.output_folder, name="seg_writer")
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, self.explain_op, {("image", "image")})
        self.add_flow(self.explain_op, writer, {("seg_image", "seg_image")})
        self.add_flow(selector, writer, {("study_selected_series_list", "study_selected_series_list")})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DICOM CT series in, DICOM-SEG of its Seg-HiRes-Grad CAM out.")
    parser.add_argument("-i", "--input", required=True, type=Path)
    parser.add_argument("-o", "--output", required=True, type=Path)
    parser.add_argument("-m", "--model", required=True, type=Path)
    parser.add_argument("--target", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    ExplainSegApp(args.input, args.output, args.model, target=args.target).run()


if __name__ == "__main__":
    main()
