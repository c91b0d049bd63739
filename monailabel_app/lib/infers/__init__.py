"""MONAI Label infer tasks that return explanations of the image a reviewer has open."""

from lib.infers.explain_task import ExplainTask, parse_class
from lib.infers.medcam_mask import MedCAMMask
from lib.infers.seg_hires_grad_cam import SegHiResGradCAMHeatmap

__all__ = ["ExplainTask", "parse_class", "SegHiResGradCAMHeatmap", "MedCAMMask"]
