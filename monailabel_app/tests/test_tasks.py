"""Unit tests of the explain app, run in the MONAI Label venv (tests/test_monailabel_app.py runs
them there): transforms, request parsing, the weights guard and geometry on a direct call."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monailabel.interfaces.exception import MONAILabelException

from lib.infers import MedCAMMask, SegHiResGradCAMHeatmap, parse_class
from lib.networks import (
    CLASSIFIER_INPUT,
    CLASSIFIER_LABELS,
    SEGMENTATION_LABELS,
    classifier_network,
    segmentation_network,
)
from lib.transforms import Binarized, HeatmapLevelsd, heatmap_level_names
from make_demo_weights import write_demo_weights


def oblique_volume(path, shape=(30, 26, 18)):
    """A small CT-like volume whose affine is rotated, flipped, anisotropic and offset."""
    rng = np.random.default_rng(1)
    theta = np.deg2rad(12)
    rotation = np.array([[0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)], [-1, 0, 0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.3, 0.8, 2.2])
    affine[:3, 3] = [-40.0, 12.5, 30.0]
    nib.save(nib.Nifti1Image(rng.normal(40, 40, shape).astype(np.float32), affine), str(path))
    return affine


def test_level_names_and_bands():
    assert heatmap_level_names(5) == {"CAM 20-40%": 1, "CAM 40-60%": 2, "CAM 60-80%": 3, "CAM 80-100%": 4}
    with pytest.raises(ValueError):
        heatmap_level_names(1)
    h = torch.tensor([[-0.1, 0.0, 0.19, 0.2, 0.5, 0.79, 0.8, 1.0, 1.3]])
    out = HeatmapLevelsd("h", levels=5)({"h": h})["h"]
    assert out.dtype == torch.uint8
    assert out.tolist() == [[0, 0, 0, 1, 2, 3, 4, 4, 4]]


def test_binarized_restores_a_mask():
    out = Binarized("m")({"m": torch.tensor([0.0, 0.49, 0.51, 1.0])})["m"]
    assert out.tolist() == [0, 0, 1, 1] and out.dtype == torch.uint8


def test_parse_class():
    labels = SEGMENTATION_LABELS
    assert parse_class("tumor", labels) == 2
    assert parse_class(3, labels) == 3
    assert parse_class("1", labels) == 1
    for bad in ("liver", 9, True, None):
        with pytest.raises(MONAILabelException):
            parse_class(bad, labels)


def test_task_without_weights_is_not_offered_and_refuses(tmp_path):
    task = SegHiResGradCAMHeatmap(str(tmp_path / "missing.pt"), segmentation_network(), SEGMENTATION_LABELS)
    assert not task.is_valid()
    image = tmp_path / "ct.nii.gz"
    oblique_volume(image)
    with pytest.raises(MONAILabelException, match="No weights"):
        task({"image": str(image), "device": "cpu"})


def test_unknown_target_is_refused_at_start_up(tmp_path):
    with pytest.raises(MONAILabelException):
        SegHiResGradCAMHeatmap(str(tmp_path / "w.pt"), segmentation_network(), SEGMENTATION_LABELS, target="liver")


@pytest.mark.parametrize("task_name", ["seg_hires_grad_cam", "medcam"])
def test_direct_call_under_no_grad_returns_labels_on_the_source_grid(tmp_path, task_name):
    """MONAI Label calls tasks with autograd off; the result must still be a map on the source grid."""
    seg_path, cls_path = write_demo_weights(str(tmp_path / "model"))
    if task_name == "seg_hires_grad_cam":
        task = SegHiResGradCAMHeatmap(seg_path, segmentation_network(), SEGMENTATION_LABELS)
        request = {"pixels": "image"}
        allowed = set(range(5))
    else:
        task = MedCAMMask(cls_path, classifier_network(), CLASSIFIER_LABELS, CLASSIFIER_INPUT, steps=2)
        request = {}
        allowed = {0, 1}
    image = tmp_path / "ct.nii.gz"
    affine = oblique_volume(image)
    with torch.no_grad():
        result_file, result = task({"image": str(image), "device": "cpu", **request})
    out = nib.load(result_file)
    values = np.unique(np.asarray(out.dataobj))
    assert out.shape == (30, 26, 18)
    np.testing.assert_allclose(out.affine, affine, atol=1e-4)
    assert set(values.tolist()) <= allowed, values
    record = result["explanation"]
    assert record["method"] == task_name
    assert result["label_names"] == task.labels
    if task_name == "medcam":
        assert {"prob_x", "prob_e", "decision_kept", "area_fraction"} <= set(record["scores"])
        assert record["class_name"] in CLASSIFIER_LABELS
        # the mask on the source grid covers what it covered on the classifier's grid
        assert abs(float((np.asarray(out.dataobj) > 0).mean()) - record["scores"]["area_fraction"]) < 0.1
    else:
        assert record["class_name"] == "tumor" and record["scores"]["pixels"] > 0
        assert len(values) > 1  # a whole-image pixel set gives a non-constant heatmap


def test_bad_request_parameters_are_refused(tmp_path):
    seg_path, cls_path = write_demo_weights(str(tmp_path / "model"))
    image = tmp_path / "ct.nii.gz"
    oblique_volume(image)
    seg = SegHiResGradCAMHeatmap(seg_path, segmentation_network(), SEGMENTATION_LABELS)
    with pytest.raises(MONAILabelException, match="pixels"):
        seg({"image": str(image), "device": "cpu", "pixels": "box"})
    medcam = MedCAMMask(cls_path, classifier_network(), CLASSIFIER_LABELS, CLASSIFIER_INPUT)
    with pytest.raises(MONAILabelException, match="steps"):
        medcam({"image": str(image), "device": "cpu", "steps": "many"})
