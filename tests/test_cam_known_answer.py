"""Known answers: every CAM formula checked against a closed form on networks whose maps are known."""

import math

import pytest
import torch

from _cam_nets import ConvHead, GapClassifier
from medcam_monai.cam import Box, GradCAM, HiResCAM, Mask, Point, Predicted, SegGradCAM, SegHiResGradCAM


def _head_terms(net, x):
    """Logits y and y - b (the 1x1 head without its bias), both (B, C, *spatial)."""
    with torch.no_grad():
        y = net(x)
    bias = net.head.bias.view(1, -1, *[1] * (x.ndim - 2))
    return y, y - bias


@pytest.mark.parametrize("dims,size", [(2, (12, 10)), (3, (6, 7, 5))])
@pytest.mark.parametrize("pixels", ["predicted", "box"])
def test_one_by_one_head_separates_the_two_methods(dims, size, pixels):
    net = ConvHead(dims).eval()
    x = torch.randn(2, 1, *size)
    y, y_minus_b = _head_terms(net, x)
    c = int(torch.mode(y.argmax(1).flatten()).values)
    if pixels == "box":
        spec = Box([1] * dims, [4] * dims)
        m = torch.zeros(2, *size, dtype=torch.bool)
        m[(slice(None), *[slice(1, 4)] * dims)] = True
    else:
        spec = Predicted()
        m = y.argmax(1) == c
    assert m.any() and not m.all()

    hires = SegHiResGradCAM(net, layer="features")(x, target=c, pixels=spec)
    grad = SegGradCAM(net, layer="features")(x, target=c, pixels=spec)

    expected_hires = m * y_minus_b[:, c]
    z = math.prod(size)
    expected_grad = m.flatten(1).sum(1).view(-1, *[1] * dims) / z * y_minus_b[:, c]
    torch.testing.assert_close(hires.layer_map[:, 0], expected_hires, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad.layer_map[:, 0], expected_grad, atol=1e-5, rtol=1e-4)
    # same grid here, so the input-grid map is the layer map
    torch.testing.assert_close(hires.map, hires.layer_map)
    assert not torch.allclose(hires.map, grad.map)
    assert hires.method == "seg_hires_grad_cam" and grad.method == "seg_grad_cam"
    torch.testing.assert_close(hires.scores["pixels"][:, 0], m.flatten(1).sum(1))
    torch.testing.assert_close(hires.scores["target_score"][:, 0], (m * y[:, c]).flatten(1).sum(1))


def test_point_and_user_mask_pixel_sets():
    net = ConvHead(2).eval()
    x = torch.randn(2, 1, 8, 8)
    _, y_minus_b = _head_terms(net, x)
    e = SegHiResGradCAM(net, layer="features")(x, target=1, pixels=Point([[2, 3], [5, 6]]))
    expected = torch.zeros(2, 8, 8)
    expected[0, 2, 3] = y_minus_b[0, 1, 2, 3]
    expected[1, 5, 6] = y_minus_b[1, 1, 5, 6]
    torch.testing.assert_close(e.map[:, 0], expected, atol=1e-5, rtol=1e-4)

    user = torch.rand(8, 8) > 0.5
    e = SegHiResGradCAM(net, layer="features")(x, target=0, pixels=Mask(user))
    torch.testing.assert_close(e.map[:, 0], user * y_minus_b[:, 0], atol=1e-5, rtol=1e-4)
    e_img = SegGradCAM(net, layer="features")(x, target=0, pixels="image")
    torch.testing.assert_close(e_img.map[:, 0], y_minus_b[:, 0], atol=1e-5, rtol=1e-4)  # |M| = Z


def test_several_classes_from_one_forward_pass():
    net = ConvHead(2).eval()
    x = torch.randn(2, 1, 9, 9)
    calls = []
    handle = net.register_forward_hook(lambda *a: calls.append(1))
    try:
        both = SegHiResGradCAM(net, layer="features", check_layer=False)(x, target=[0, 2], pixels="image")
    finally:
        handle.remove()
    assert len(calls) == 1
    assert both.map.shape == (2, 2, 9, 9) and both.target.tolist() == [[0, 2], [0, 2]]
    for k, c in enumerate([0, 2]):
        one = SegHiResGradCAM(net, layer="features")(x, target=c, pixels="image")
        torch.testing.assert_close(both.map[:, k], one.map[:, 0])
    per_case = SegHiResGradCAM(net, layer="features")(x, target=torch.tensor([[1], [2]]), pixels="image")
    assert per_case.target.tolist() == [[1], [2]]


def test_default_classes_are_the_foreground_channels():
    net = ConvHead(2, classes=3).eval()
    e = SegHiResGradCAM(net, layer="features")(torch.randn(1, 1, 8, 8), pixels="image")
    assert e.target.tolist() == [[1, 2]]


def test_probability_target_single_channel_sigmoid():
    net = ConvHead(2, classes=1).eval()
    x = torch.randn(1, 1, 10, 10)
    y, y_minus_b = _head_terms(net, x)
    e = SegHiResGradCAM(net, layer="features", use_probabilities=True)(x, target=0, pixels="predicted")
    p = torch.sigmoid(y[:, 0])
    m = p > 0.5
    assert m.any()
    torch.testing.assert_close(e.map[:, 0], m * p * (1 - p) * y_minus_b[:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(e.scores["target_score"][:, 0], (m * p).flatten(1).sum(1))
    assert e.settings["use_probabilities"] is True


def test_threshold_on_softmax_defines_the_pixel_set():
    net = ConvHead(2, classes=3).eval()
    x = torch.randn(1, 1, 10, 10)
    y, y_minus_b = _head_terms(net, x)
    m = torch.softmax(y, 1)[:, 1] > 0.3
    e = SegHiResGradCAM(net, layer="features")(x, target=1, pixels=Predicted(threshold=0.3))
    torch.testing.assert_close(e.map[:, 0], m * y_minus_b[:, 1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dims,size", [(2, (10, 8)), (3, (6, 6, 4))])
def test_classifier_gap_known_answer(dims, size):
    net = GapClassifier(dims).eval()
    x = torch.randn(3, 1, *size)
    with torch.no_grad():
        logits = net(x)
    hires = HiResCAM(net, layer="features")(x)
    grad = GradCAM(net, layer="features")(x, target=[1, 3])
    assert hires.target[:, 0].tolist() == logits.argmax(1).tolist()
    # HiResCAM sums to the logit without its bias; for GAP nets Grad-CAM gives the same map
    c = hires.target[:, 0]
    b = torch.arange(3)
    torch.testing.assert_close(hires.layer_map.flatten(2).sum(-1)[:, 0], logits[b, c] - net.fc.bias[c], atol=1e-5, rtol=1e-4)
    hires13 = HiResCAM(net, layer="features")(x, target=[1, 3])
    torch.testing.assert_close(grad.layer_map, hires13.layer_map, atol=1e-6, rtol=1e-4)
    assert grad.map.shape == (3, 2, *size) and grad.layer_map.shape[2:] == tuple((s + 1) // 2 for s in size)
    torch.testing.assert_close(hires.scores["target_score"][:, 0], logits[b, c])
