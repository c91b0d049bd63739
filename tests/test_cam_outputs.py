"""Delivered maps (ReLU, normalisation, MetaTensor, records) and clear errors on bad input."""

import json
import warnings

import pytest
import torch
from monai.data import MetaTensor
from torch import nn

from _cam_nets import ConvHead, GapClassifier
from medcam_monai.cam import EmptyPixelSetWarning, GradCAM, SegGradCAM, SegHiResGradCAM, normalize_map, upsample


def test_raw_by_default_relu_and_normalisation_are_options():
    net = ConvHead(2).eval()
    x = torch.randn(1, 1, 10, 10)
    raw = SegHiResGradCAM(net, layer="features")(x, target=1, pixels="image")
    assert (raw.map < 0).any() and (raw.map > 0).any()  # signed: nothing clipped by default
    relu = SegHiResGradCAM(net, layer="features", relu=True)(x, target=1, pixels="image")
    torch.testing.assert_close(relu.map, raw.map.clamp_min(0))
    mm = SegHiResGradCAM(net, layer="features", normalize="minmax")(x, target=1, pixels="image")
    assert mm.map.min() == 0 and mm.map.max() == 1
    mx = SegHiResGradCAM(net, layer="features", normalize="max")(x, target=1, pixels="image")
    torch.testing.assert_close(mx.map, raw.map / raw.map.abs().max())
    # never an inverted scale: the order of the raw values is kept
    order = raw.map.flatten().argsort()
    for e in (mm, mx):
        assert (e.map.flatten()[order].diff() >= -1e-6).all()
    assert mm.settings["normalize"] == "minmax" and relu.settings["relu"] is True


def test_normalize_constant_map_is_zero_not_nan():
    maps = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 3.0)])[None]
    for mode in ("max", "minmax"):
        out = normalize_map(maps, mode)
        assert torch.isfinite(out).all()
    assert normalize_map(maps, "minmax").abs().sum() == 0
    torch.testing.assert_close(normalize_map(maps, "max")[0, 1], torch.ones(4, 4))
    with pytest.raises(ValueError, match="normalize"):
        normalize_map(maps, "softmax")


def test_upsample_is_linear_with_stated_align_corners():
    m = torch.tensor([[[[0.0, 1.0]]]])
    torch.testing.assert_close(upsample(m, (1, 4), align_corners=False), torch.tensor([[[[0.0, 0.25, 0.75, 1.0]]]]))
    torch.testing.assert_close(upsample(m, (1, 3), align_corners=True), torch.tensor([[[[0.0, 0.5, 1.0]]]]))


def test_metatensor_meta_travels_and_records_are_json():
    net = GapClassifier(2).eval()
    affine = torch.diag(torch.tensor([0.5, 0.7, 1.0, 1.0]))
    x = MetaTensor(torch.randn(2, 1, 8, 8), affine=affine)
    e = GradCAM(net, layer="features", normalize="minmax")(x)
    assert isinstance(e.map, MetaTensor)
    torch.testing.assert_close(e.map.affine, affine.double() if e.map.affine.dtype == torch.float64 else affine)
    records = e.to_records()
    assert len(records) == 2 and records[0]["method"] == "grad_cam"
    json.dumps(records)
    seg = SegHiResGradCAM(ConvHead(2), layer="features")(MetaTensor(torch.randn(1, 1, 8, 8), affine=affine), target=1)
    assert isinstance(seg.map, MetaTensor) and seg.layer_map.shape == (1, 1, 8, 8)
    json.dumps(seg.to_records())


def test_inference_mode_input_is_explained():
    net = ConvHead(2).eval()
    with torch.inference_mode():
        x = torch.randn(1, 1, 8, 8)
        e = SegHiResGradCAM(net, layer="features")(x, target=1, pixels="image")
    assert e.map.abs().sum() > 0


def test_class_out_of_range():
    with pytest.raises(ValueError, match="class 5 is out of range.*3 class channel"):
        SegHiResGradCAM(ConvHead(2), layer="features")(torch.randn(1, 1, 8, 8), target=5)
    with pytest.raises(ValueError, match="class -1 is out of range"):
        GradCAM(GapClassifier(2), layer="features")(torch.randn(1, 1, 8, 8), target=-1)


def test_empty_pixel_set_warns_and_gives_zeros():
    net = ConvHead(2).eval()
    x = torch.randn(2, 1, 8, 8)
    for cls in (SegHiResGradCAM, SegGradCAM):
        with pytest.warns(EmptyPixelSetWarning, match="empty"):
            e = cls(net, layer="features", normalize="minmax")(x, target=1, pixels=torch.zeros(8, 8))
        assert torch.isfinite(e.map).all() and e.map.abs().sum() == 0
        assert e.scores["empty"].all() and e.scores["pixels"].sum() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SegHiResGradCAM(net, layer="features")(x, target=1, pixels="image")


class _NoChannel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = ConvHead(2, classes=1)

    def forward(self, x):
        return self.net(x)[:, 0]


def test_output_without_class_channel_and_classifier_output():
    with pytest.raises(ValueError, match="no class channel"):
        SegHiResGradCAM(_NoChannel(), layer="net.features")(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="GradCAM or HiResCAM"):
        SegHiResGradCAM(GapClassifier(2), layer="features")(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="SegHiResGradCAM"):
        GradCAM(ConvHead(2), layer="features")(torch.randn(1, 1, 8, 8))


def test_bad_image_and_options():
    with pytest.raises(ValueError, match="NaN"):
        SegHiResGradCAM(ConvHead(2), layer="features")(torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="normalize"):
        SegHiResGradCAM(ConvHead(2), normalize="z")
    with pytest.raises(ValueError, match="Unknown pixel set"):
        SegHiResGradCAM(ConvHead(2), layer="features")(torch.randn(1, 1, 8, 8), pixels="everything")
