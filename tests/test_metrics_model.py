"""The metrics of the model explained, on toys with known answers: calibration (ECE, reliability bins),
accuracy against chance (binomial test), per-class Dice and voxel shares of a segmentation."""

from __future__ import annotations

import math

import pytest
import torch

from medcam_monai.evaluation import metrics as M
from medcam_monai.evaluation.metrics.chance import ABOVE_CHANCE, AT_CHANCE, NOT_SHOWN


def _confident(confidence: float, right: list[bool], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cases whose top class (class 0) has probability ``confidence``, labelled so that ``right[i]`` says whether it is right."""
    rest = (1 - confidence) / (num_classes - 1)
    probs = torch.full((len(right), num_classes), rest)
    probs[:, 0] = confidence
    labels = torch.tensor([0 if r else 1 for r in right])
    return probs, labels


# --- calibration -----------------------------------------------------------------------------


def test_perfectly_calibrated_toy_has_zero_ece():
    """Two bins, each right exactly as often as it is confident: 6/8 at 0.75, 5/8 at 0.625."""
    p1, y1 = _confident(0.75, [True] * 6 + [False] * 2, 2)
    p2, y2 = _confident(0.625, [True] * 5 + [False] * 3, 2)
    cal = M.calibration(torch.cat([p1, p2]), torch.cat([y1, y2]))
    assert cal.ece == pytest.approx(0.0, abs=1e-6)
    assert cal.accuracy == pytest.approx(11 / 16) and cal.mean_confidence == pytest.approx((0.75 + 0.625) / 2)
    assert cal.counts.tolist() == [0, 0, 0, 0, 0, 0, 8, 8, 0, 0]  # (0.6, 0.7] and (0.7, 0.8]
    assert cal.bin_accuracy[6].item() == pytest.approx(0.625) and cal.confidence[7].item() == pytest.approx(0.75)
    assert math.isnan(cal.confidence[0].item())  # an empty bin has no mean


def test_constant_overconfident_toy():
    """Says 0.99 on every case, right on a quarter: ECE = |0.25 - 0.99| = 0.74."""
    probs, labels = _confident(0.99, [True, False, False, False], 4)
    cal = M.calibration(probs, labels)
    assert cal.ece == pytest.approx(0.74, abs=1e-6)
    assert cal.accuracy == 0.25 and cal.mean_confidence == pytest.approx(0.99)
    assert cal.counts.tolist()[-1] == 4


def test_ece_weights_each_bin_by_its_cases():
    """4 cases at 0.95 all right (gap 0.05), 4 at 0.65 half right (gap 0.15): ECE = (4 * 0.05 + 4 * 0.15) / 8 = 0.10."""
    p1, y1 = _confident(0.95, [True] * 4, 3)
    p2, y2 = _confident(0.65, [True, True, False, False], 3)
    cal = M.calibration(torch.cat([p1, p2]), torch.cat([y1, y2]))
    assert cal.ece == pytest.approx(0.10, abs=1e-6)
    more_bins = M.calibration(torch.cat([p1, p2]), torch.cat([y1, y2]), bins=20)
    assert more_bins.ece == pytest.approx(0.10, abs=1e-6) and more_bins.bins == 20


def test_calibration_binning_edges_and_errors():
    probs, labels = _confident(0.5, [True, False], 2)
    cal = M.calibration(probs, labels)
    assert cal.counts[4].item() == 2  # a confidence on an edge falls in the lower bin: 0.5 in (0.4, 0.5]
    assert cal.to_dict()["counts"][4] == 2 and "equal-width" in cal.to_dict()["binning"]
    with pytest.raises(ValueError, match="softmax"):
        M.calibration(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))  # logits, not probabilities
    with pytest.raises(ValueError, match="labels must lie in 0 .. 1"):
        M.calibration(torch.tensor([[0.5, 0.5]]), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"\(N, num_classes\)"):
        M.calibration(torch.tensor([[0.5, 0.5]]), torch.tensor([0, 1]))


# --- chance ----------------------------------------------------------------------------------


def test_chance_known_answers():
    labels = torch.tensor([0, 1, 2, 3])
    at_chance = M.chance_test(labels, torch.tensor([0, 0, 0, 0]), 4)
    # P(X >= 1), X ~ Binomial(4, 1/4) = 1 - (3/4)^4
    assert at_chance.accuracy == 0.25 and at_chance.chance == 0.25
    assert at_chance.p_value == pytest.approx(1 - 0.75**4) and at_chance.verdict == AT_CHANCE
    assert at_chance.single_class == 0
    perfect = M.chance_test(labels, labels, 4)
    assert perfect.p_value == pytest.approx(0.25**4) and perfect.verdict == ABOVE_CHANCE and perfect.single_class is None
    three = M.chance_test(labels, torch.tensor([0, 1, 2, 0]), 4)
    # P(X >= 3) = 4 * (1/4)^3 * (3/4) + (1/4)^4 = 0.0508: not below 0.05 on four cases
    assert three.p_value == pytest.approx(4 * 0.25**3 * 0.75 + 0.25**4) and three.verdict == NOT_SHOWN


def test_chance_is_the_majority_rate_when_labels_are_unbalanced():
    """Always answering the most common label is right 3 times in 4: that is chance here, not 1/2."""
    t = M.chance_test(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0]), 2)
    assert t.chance == 0.75 and t.accuracy == 0.75 and t.verdict == AT_CHANCE and t.single_class == 0


def test_wrong_on_most_but_above_chance():
    """4 of 10 right on 10 classes is well above chance (1/10) and still wrong on most cases."""
    labels = torch.arange(10)
    predictions = torch.tensor([0, 1, 2, 3, 0, 0, 0, 0, 0, 0])
    t = M.chance_test(labels, predictions, 10)
    assert t.verdict == ABOVE_CHANCE and t.wrong_on_most and t.to_dict()["wrong_on_most"] is True
    with pytest.raises(ValueError, match="same length"):
        M.chance_test(labels, predictions[:3], 10)


# --- segmentation overlap --------------------------------------------------------------------


def test_class_overlap_known_answers():
    predicted = torch.tensor([[[0, 1, 1, 0]]])
    truth = torch.tensor([[[0, 1, 0, 0]]])
    o = M.class_overlap(predicted, truth, 3)
    # class 0: 2 * 2 / (2 + 3); class 1: 2 * 1 / (2 + 1); class 2: neither true nor predicted -> 1
    assert torch.allclose(o.dice, torch.tensor([[0.8, 2 / 3, 1.0]]))
    assert torch.allclose(o.predicted_fraction, torch.tensor([[0.5, 0.5, 0.0]]))
    assert torch.allclose(o.true_fraction, torch.tensor([[0.75, 0.25, 0.0]]))
    # predicted where nothing is true: Dice 0
    assert M.class_overlap(torch.tensor([[[2, 0]]]), torch.tensor([[[0, 0]]]), 3).dice[0, 2].item() == 0.0
    unknown = M.class_overlap(predicted, None, 3)
    assert unknown.dice is None and unknown.to_dict()["dice_mean"] is None
    with pytest.raises(ValueError, match="label map"):
        M.class_overlap(torch.zeros(1, 2, 4), None, 3)
