"""The sliding-window route: exact against the whole-input route and the blended closed forms."""

import pytest
import torch
from monai.inferers import SlidingWindowInferer

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


def test_input_smaller_than_the_window_is_refused():
    net = tiny_unet(2)
    inferer = SlidingWindowInferer(roi_size=(32, 32))
    with pytest.raises(ValueError, match="smaller than the window"):
        SegHiResGradCAM(net, inferer=inferer)(torch.randn(1, 1, 32, 20))


def test_inferer_must_be_a_sliding_window_inferer():
    from monai.inferers import SimpleInferer

    with pytest.raises(TypeError, match="SlidingWindowInferer"):
        SegHiResGradCAM(tiny_unet(2), inferer=SimpleInferer())
