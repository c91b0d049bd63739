"""The sliding-window route: exact against the whole-input route and the blended closed forms."""

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from _cam_nets import ConvHead, assert_unchanged, snapshot, tiny_unet
from medcam_monai.cam import Box, SegGradCAM, SegHiResGradCAM


@pytest.mark.parametrize("cls", [SegHiResGradCAM, SegGradCAM])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_one_window_equals_the_direct_route(cls, mode):
    net = tiny_unet(3)
    x = torch.randn(1, 1, 16, 16, 12)
    direct = cls(net)(x, target=[1, 2])
    inferer = SlidingWindowInferer(roi_size=(16, 16, 12), overlap=0.25, mode=mode)
    before = snapshot(net)
    windowed = cls(net, inferer=inferer)(x, target=[1, 2])
    assert_unchanged(net, before)
    assert windowed.settings["sliding_window"]["windows"] == 1
    torch.testing.assert_close(windowed.map, direct.map, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(windowed.layer_map, direct.layer_map, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(windowed.scores["pixels"], direct.scores["pixels"])
    torch.testing.assert_close(windowed.scores["target_score"], direct.scores["target_score"], atol=1e-3, rtol=1e-4)


def _blended(net, x, inferer):
    with torch.no_grad():
        p = inferer(x, net)
    return p, p - net.head.bias.view(1, -1, *[1] * (x.ndim - 2))


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_overlapping_windows_match_the_closed_form_on_blended_logits(mode):
    """With a 1x1 head, window by window: HiRes = M (P_c - b_c) and Grad = |M|/Z (P_c - b_c) on the
    inferer's blended logits P, exactly (gradients are exact; the maps sum/blend as documented)."""
    net = ConvHead(3, classes=3).eval()
    x = torch.randn(2, 1, 14, 12, 10)
    inferer = SlidingWindowInferer(roi_size=(8, 8, 8), overlap=0.5, mode=mode, sw_batch_size=3)
    p, p_minus_b = _blended(net, x, inferer)
    c = int(torch.mode(p.argmax(1).flatten()).values)
    m = p.argmax(1) == c
    hires = SegHiResGradCAM(net, layer="features", inferer=inferer)(x, target=c)
    grad = SegGradCAM(net, layer="features", inferer=inferer)(x, target=c)
    assert hires.settings["sliding_window"]["windows"] > 4
    torch.testing.assert_close(hires.map[:, 0], m * p_minus_b[:, c], atol=1e-5, rtol=1e-4)
    size = m.flatten(1).sum(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(grad.map[:, 0], size / m[0].numel() * p_minus_b[:, c], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hires.scores["target_score"][:, 0], (m * p[:, c]).flatten(1).sum(1), atol=1e-3, rtol=1e-4)
    # stride 1 layer: the whole-volume layer map is assembled and equals the map
    torch.testing.assert_close(hires.layer_map, hires.map)
    torch.testing.assert_close(grad.layer_map, grad.map, atol=1e-5, rtol=1e-4)


def test_box_without_prediction_pass_skips_windows_and_accumulates_y():
    net = ConvHead(2, classes=2).eval()
    x = torch.randn(1, 1, 24, 24)
    inferer = SlidingWindowInferer(roi_size=(8, 8), overlap=0.25)
    calls = []
    handle = net.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        e = SegHiResGradCAM(net, layer="features", inferer=inferer, check_layer=False)(x, target=1, pixels=Box([0, 0], [4, 4]))
    finally:
        handle.remove()
    # one probe window plus the single window touching the box; no whole-volume prediction
    assert sum(calls) == 2
    p, p_minus_b = _blended(net, x, inferer)
    expected = torch.zeros(24, 24)
    expected[:4, :4] = p_minus_b[0, 1, :4, :4]
    torch.testing.assert_close(e.map[0, 0], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(e.scores["target_score"][0, 0], p[0, 1, :4, :4].sum(), atol=1e-4, rtol=1e-4)


def test_overlap_is_close_to_the_direct_route_on_a_unet():
    # batch norm in eval mode: instance norm would normalise each window by its own statistics,
    # which makes any network (and so its CAM) differ between windows and the whole input
    net = tiny_unet(3, norm="batch")
    x = torch.randn(1, 1, 24, 24, 16)
    direct = SegHiResGradCAM(net)(x, target=1, pixels="image")
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), overlap=0.5, mode="gaussian")
    windowed = SegHiResGradCAM(net, inferer=inferer)(x, target=1, pixels="image")
    a, b = direct.map.flatten(), windowed.map.flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9
    # windows start on multiples of the UNet's stride 4: the layer map is assembled
    assert windowed.layer_map is not None and windowed.layer_map.shape == direct.layer_map.shape


def test_layer_map_is_none_when_windows_miss_the_layer_grid():
    net = tiny_unet(2)
    x = torch.randn(1, 1, 26, 20)
    inferer = SlidingWindowInferer(roi_size=(16, 16), overlap=0.25)
    e = SegGradCAM(net, inferer=inferer)(x, target=1, pixels="image")
    assert e.layer_map is None and "not a multiple" in e.settings["sliding_window"]["layer_map"]
    assert e.map.shape == (1, 1, 26, 20) and torch.isfinite(e.map).all() and e.map.abs().sum() > 0


class InputLayerNet(nn.Module):
    """``inp`` (identity: its output is the input itself) then a small conv net with instance-free
    layers, so a CAM at ``inp`` is ``sum_c dY/dx_c * x_c``: the input gradient, testable against
    autograd through MONAI's own ``sliding_window_inference``."""

    def __init__(self, dims: int, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        self.inp = nn.Identity()
        self.body = nn.Sequential(conv(1, 6, 3, padding=1), nn.Tanh(), conv(6, 6, 3, padding=2, dilation=2), nn.Tanh(), conv(6, classes, 1))

    def forward(self, x):
        return self.body(self.inp(x))


def _full_graph_input_gradient(net, x, inferer):
    """Class ``c`` (the most predicted), ``(dY/dx * x).sum(channels)`` with ``Y`` = class ``c`` summed over its predicted voxels of the
    blended prediction, autograd through the whole ``sliding_window_inference`` graph."""
    with torch.no_grad():
        labels = inferer(x, net).argmax(1)
    c = int(torch.mode(labels.flatten()).values)
    m = labels == c
    xr = x.clone().requires_grad_(True)
    p = inferer(xr, net)
    (m * p[:, c]).sum().backward()
    net.zero_grad(set_to_none=True)
    return (xr.grad * x).sum(1), m, c


@pytest.mark.parametrize(
    "shape, settings",
    [
        # smaller than the window on one axis (20 < 24): padded with the inferer's mode, cropped back
        ((1, 1, 40, 20), {"roi_size": (16, 24), "overlap": (0.5, 0.25), "mode": "gaussian", "sigma_scale": (0.2, 0.1), "sw_batch_size": 3}),
        # roi_size with a -1 entry (the whole axis), two cases, constant blending
        ((2, 1, 30, 12), {"roi_size": (12, -1), "overlap": 0.4, "mode": "constant", "sw_batch_size": 2}),
        # 3D, smaller than the window on two axes, cval, explicit devices
        ((1, 1, 10, 20, 7), {"roi_size": (12, 8, 8), "overlap": 0.25, "cval": 0.3, "sw_device": "cpu", "device": "cpu"}),
    ],
)
def test_sliding_map_equals_the_full_graph_gradient_through_monai(shape, settings):
    net = InputLayerNet(len(shape) - 2).eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    inferer = SlidingWindowInferer(**settings)
    expected, m, c = _full_graph_input_gradient(net, x, inferer)
    before = snapshot(net)
    e = SegHiResGradCAM(net, layer="inp", inferer=inferer)(x, target=c)
    assert_unchanged(net, before)
    assert e.map.shape == (shape[0], 1, *shape[2:])
    torch.testing.assert_close(e.map[:, 0], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(e.scores["pixels"][:, 0], m.flatten(1).sum(1).to(e.scores["pixels"].dtype))
    window = e.settings["sliding_window"]
    assert (window["padding"] is not None) == any(r > s for r, s in zip(window["roi_size"], shape[2:]))


@pytest.mark.parametrize("padding_mode", ["replicate", "reflect"])
def test_other_padding_modes_pad_like_the_inferer_and_crop_back(padding_mode):
    """Pixels inside the input see the same padded neighbourhood as in MONAI's inference: the target
    (class score over the predicted voxels) equals the inferer's own prediction."""
    net = InputLayerNet(2).eval()
    x = torch.randn(1, 1, 9, 30)
    inferer = SlidingWindowInferer(roi_size=(16, 16), overlap=0.5, padding_mode=padding_mode)
    with torch.no_grad():
        p = inferer(x, net)
    e = SegHiResGradCAM(net, inferer=inferer)(x, target=2)
    m = p.argmax(1) == 2
    assert e.map.shape == (1, 1, 9, 30) and torch.isfinite(e.map).all()
    assert e.settings["sliding_window"]["padding"]["mode"] == padding_mode
    torch.testing.assert_close(e.scores["target_score"][0, 0], (m * p[:, 2]).sum(), atol=1e-4, rtol=1e-4)


def test_input_smaller_than_the_window_gets_a_map_cropped_to_the_input():
    """A short CT resampled to 2 mm is often shallower than the window: explained, not refused."""
    net = tiny_unet(3, norm="batch")
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), overlap=0.25)
    x = torch.randn(1, 1, 24, 16, 9)
    for cls in (SegHiResGradCAM, SegGradCAM):
        e = cls(net, inferer=inferer)(x, target=1, pixels="image")
        assert e.map.shape == (1, 1, 24, 16, 9) and torch.isfinite(e.map).all() and e.map.abs().sum() > 0
        assert e.scores["pixels"][0, 0] == 24 * 16 * 9  # the pixel set is the input, not the padding


def test_inferer_must_be_a_sliding_window_inferer():
    from monai.inferers import SimpleInferer

    with pytest.raises(TypeError, match="SlidingWindowInferer"):
        SegHiResGradCAM(tiny_unet(2), inferer=SimpleInferer())
