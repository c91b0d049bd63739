"""End to end: a classifier trained here on images whose class depends only on one small marker.

Med-CAM with its default settings must keep every decision and find the marker: its binary mask
must overlap the true evidence far better than a mask of the same area placed at random.
"""

import torch
from torch import nn

from medcam_monai import MedCAM
from medcam_monai.data.phantoms import marker_phantoms

SIZE = 48


def train_marker_classifier():
    torch.manual_seed(0)
    data = marker_phantoms(320, size=SIZE, num_classes=3, absent_class=True, seed=1)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 3),
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(12):
        for idx in torch.randperm(len(data)).split(32):
            loss = nn.functional.cross_entropy(net(data.images[idx]), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def test_medcam_keeps_decisions_and_finds_the_marker():
    net = train_marker_classifier()
    test = marker_phantoms(40, size=SIZE, num_classes=3, absent_class=True, seed=2)
    with torch.no_grad():
        accuracy = (net(test.images).argmax(1) == test.labels).float().mean()
    assert accuracy >= 0.9, f"the classifier must learn the task for this test to mean anything ({accuracy})"
    marked = (test.labels < 2).nonzero().flatten()[:6]  # cases whose class has evidence
    x, truth = test.images[marked], test.evidence[marked]
    ex = MedCAM(net)(x)

    assert bool(ex.scores["decision_kept"].all()), ex.scores["probs_e"]
    assert bool((ex.scores["prob_e_binary"] > 0.5).all())
    inter = (ex.map * truth).flatten(1).sum(1)
    union = ((ex.map + truth) > 0).float().flatten(1).sum(1)
    iou = inter / union
    area = ex.scores["area_fraction"]
    true_area = truth.flatten(1).mean(1)
    # a random mask of the same area overlaps the evidence in about area * |truth| pixels
    chance_iou = area * true_area / (area + true_area - area * true_area)
    assert float(iou.mean()) > 0.3, iou
    assert bool((iou > 5 * chance_iou).all()), (iou, chance_iou)
    assert float(area.mean()) < 5 * float(true_area.mean()), "the mask must be minimal"
    # early stopping does its job on most cases well before the 300-step budget
    assert sum(r.startswith("converged") for r in ex.stop_reason) >= len(marked) // 2, ex.stop_reason
