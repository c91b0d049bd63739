"""Known answers for Med-CAM's smallest-sufficient selection, the decision losses and the stopping rule."""

import math

import pytest
import torch

from medcam_monai.medcam import EarlyStopping, losses
from medcam_monai.medcam.selection import prefer, relevance_order, smallest_sufficient, thresholded
from medcam_monai.medcam.stopping import CaseProgress

REGION = (slice(4, 8), slice(4, 8))  # 16 pixels of a 16 x 16 image


def region_classifier(t: torch.Tensor) -> torch.Tensor:
    """Class 0 with log-odds ``20 * f - 10``, ``f`` the mean of the image over the region (else class 1)."""
    f = t[:, 0][(slice(None), *REGION)].mean(dim=(1, 2))
    return torch.stack([20 * f - 10, torch.zeros_like(f)], 1)


def case():
    x = torch.zeros(1, 1, 16, 16)
    x[(0, 0, *REGION)] = 1.0
    soft = torch.full_like(x, 0.1)
    soft[(0, 0, *REGION)] = torch.linspace(0.9, 0.6, 16).view(4, 4)  # ranks the region first
    return x, soft


def test_smallest_sufficient_finds_the_exact_minimum_along_the_ranking():
    x, soft = case()
    target = torch.tensor([0])
    need = torch.tensor([math.log(0.9 / 0.1)])  # p >= 0.9: log-odds 2.197
    # 10 of 16 region pixels: 20 * 10/16 - 10 = 2.5 >= 2.197; 9 of 16: 1.25 < 2.197
    sel = smallest_sufficient(region_classifier, x, soft, torch.zeros_like(x), torch.zeros_like(x), target, need, refine=2)
    assert int(sel.counts[0]) == 10 and bool(sel.sufficient[0])
    expected = (soft >= soft[(0, 0, *REGION)].flatten().sort(descending=True).values[9]).float()
    assert torch.equal(sel.binary, expected)
    assert math.isclose(float(sel.area[0]), 10 / 256)
    # without refinement the answer is the first sufficient grid area (12 pixels), never an insufficient one
    coarse = smallest_sufficient(region_classifier, x, soft, torch.zeros_like(x), torch.zeros_like(x), target, need)
    assert int(coarse.counts[0]) == 12
    assert int(coarse.probes[0]) <= 6  # bisection: a handful of probes, not one per candidate


def test_relevance_ranking_skips_what_the_classifier_ignores():
    x, soft = case()
    soft[0, 0, 10:14, 10:14] = 0.95  # a confident region of the soft mask the classifier never reads
    target, need, zeros = torch.tensor([0]), torch.tensor([math.log(0.9 / 0.1)]), torch.zeros_like(x)
    s = soft.clone().requires_grad_(True)
    margin = losses.logit_margin(region_classifier(s * x + (1 - s) * zeros), target)
    gain = torch.autograd.grad(margin.sum(), s)[0]
    # d margin / d m = 20 / 16 * (x - b) = 1.25 on the region, 0 elsewhere (margin = 20 f - 10 - 0)
    assert torch.allclose(gain[(0, 0, *REGION)], torch.full((4, 4), 1.25)) and int((gain != 0).sum()) == 16
    order = relevance_order(soft, gain)
    # read: the 3 x 3 mean of |gain| above 20% of its maximum (1.25): the region and the pixels along
    # its sides (3 region pixels in their window: 0.42), not its outer corners (1 pixel: 0.14)
    read = torch.zeros(16, 16, dtype=torch.bool)
    read[3:9, 3:9] = True
    for corner in ((3, 3), (3, 8), (8, 3), (8, 8)):
        read[corner] = False
    assert torch.equal(order[0, 0], torch.where(read, 1 + soft[0, 0], soft[0, 0]))
    assert math.isclose(float(order[0, 0, 10, 10]), 0.95, rel_tol=1e-6)  # the ignored region: below every read pixel
    by_relevance = smallest_sufficient(region_classifier, x, soft, zeros, zeros, target, need, refine=2, order=order)
    assert int(by_relevance.counts[0]) == 10 and float((by_relevance.binary * x).sum()) == 10  # all on the region
    # ranked by the soft mask the ignored region comes first: at least 16 more pixels for the same decision
    by_soft = smallest_sufficient(region_classifier, x, soft, zeros, zeros, target, need, refine=2)
    assert int(by_soft.counts[0]) >= 26 and float(by_soft.binary[0, 0, 10:14, 10:14].sum()) == 16


def test_robustness_background_moves_the_selection_up():
    x, soft = case()
    target, need = torch.tensor([0]), torch.tensor([0.5])
    zeros = torch.zeros_like(x)
    # over the fill, 12 pixels (the first grid area with 20 * k/16 - 10 >= 0.5) keep class 0; over a
    # background of -2 the removed region pixels count against it: (3k - 32) / 16 > 1/2 needs k >= 14,
    # so the selection moves up to the next grid area, 16
    sel = smallest_sufficient(region_classifier, x, soft, zeros, zeros - 2.0, target, need)
    assert int(sel.counts[0]) == 16
    assert int(smallest_sufficient(region_classifier, x, soft, zeros, zeros, target, need).counts[0]) == 12


def test_no_sufficient_mask_reports_the_whole_image():
    x, soft = case()
    # log-odds of 50 are out of reach (x itself has 10): nothing smaller than the image is sufficient
    sel = smallest_sufficient(region_classifier, x, soft, torch.zeros_like(x), torch.zeros_like(x), torch.tensor([0]),
                              torch.tensor([50.0]))  # fmt: skip
    assert int(sel.counts[0]) == 256 and not bool(sel.sufficient[0]) and bool((sel.binary == 1).all())


def test_prefer_takes_the_first_selection_where_it_is_sufficient():
    x, soft = case()
    x2, soft2 = torch.cat([x, x]), torch.cat([soft, soft])
    zeros, target = torch.zeros_like(x2), torch.tensor([0, 0])
    low = smallest_sufficient(region_classifier, x2, soft2, zeros, zeros, target, torch.tensor([0.5, 0.5]), refine=2)
    # case 0 asks for log-odds 5 (14 of 16 region pixels: 7.5; 13: 6.25; 12: 5), case 1 for 50 (out of reach)
    high = smallest_sufficient(region_classifier, x2, soft2, zeros, zeros, target, torch.tensor([5.0, 50.0]), refine=2)
    both = prefer(high, low)
    assert both.counts.tolist() == [12, int(low.counts[1])] and both.sufficient.tolist() == [True, True]
    assert torch.equal(both.binary[0], high.binary[0]) and torch.equal(both.binary[1], low.binary[1])
    assert torch.equal(both.probes, high.probes + low.probes)


def test_threshold_selection_reports_its_sufficiency():
    x, soft = case()
    sel = thresholded(region_classifier, x, soft, torch.zeros_like(x), torch.zeros_like(x), torch.tensor([0]), None, 0.5)
    assert torch.equal(sel.binary, (soft > 0.5).float()) and bool(sel.sufficient[0])
    sel = thresholded(region_classifier, x, soft, torch.zeros_like(x), torch.zeros_like(x), torch.tensor([0]), None, 0.79)
    assert int(sel.counts[0]) == 6 and not bool(sel.sufficient[0])  # 6 of 16 region pixels: class 1


def test_margin_is_the_log_odds_and_does_not_saturate():
    z = torch.tensor([[9.0, 0.0, 0.0], [30.0, 0.0, 1.0]])
    target = torch.tensor([0, 0])
    p = torch.softmax(z.double(), 1)[:, 0]
    assert torch.allclose(losses.logit_margin(z, target).double(), torch.log(p / (1 - p)), atol=1e-3)
    assert float(torch.softmax(z, 1)[1, 0]) == 1.0  # in float32 the probability itself has saturated
    assert float(losses.logit_margin(z, target)[1]) == pytest.approx(30 - math.log(1 + math.e), abs=1e-4)
    kappa = 5.0
    hinge = losses.decision_loss("margin", z, target, kappa)
    assert torch.equal(hinge, torch.zeros(2))  # both beyond kappa: no pressure
    z_low = torch.tensor([[1.0, 0.0]])
    assert losses.decision_loss("margin", z_low, torch.tensor([0]), kappa).item() == pytest.approx(4.0)
    soft = losses.decision_loss("softmargin", z_low, torch.tensor([0]), kappa).item()
    assert soft == pytest.approx(math.log1p(math.exp(4.0)))
    ce = losses.decision_loss("ce", z_low, torch.tensor([0]), kappa).item()
    assert ce == pytest.approx(math.log1p(math.exp(-1.0)))  # cross-entropy = softplus(-margin)
    with pytest.raises(ValueError, match="decision must be one of"):
        losses.decision_loss("hinge", z, target, kappa)


RULE = EarlyStopping(min_steps=20, check_every=10, patience=2, shrink_tol=0.05, bind_tol=2.0, adapt=2.0, max_adapt=8.0)


def test_stopping_converges_once_the_mask_stops_shrinking_and_agrees():
    case = CaseProgress(RULE, steps=100)
    assert not case.check(0.10, True, 3.0, 2.2, 0.10)  # first check: nothing to compare with
    assert not case.check(0.05, True, 3.0, 2.2, 0.05)
    assert not case.check(0.02, True, 3.0, 2.2, 0.02)  # still shrinking
    assert "still shrinking" in case.reason
    assert not case.check(0.02, True, 3.0, 2.2, 0.02)  # stable for one check only
    assert case.check(0.02, True, 3.0, 2.2, 0.03)  # stable over two checks, the decision binds
    assert case.converged and case.reason.startswith("converged: smallest sufficient mask 2.00%")


def test_stopping_with_slack_pushes_the_minimality_weight_before_converging():
    case = CaseProgress(RULE, steps=100)
    # a mask that agrees with the selection but whose evidence keeps the decision with slack
    # (log-odds 8 against 2.2 needed) may still shrink: the weight doubles per check up to x8
    done = [case.check(0.02, True, 8.0, 2.2, 0.03) for _ in range(5)]
    assert done == [False] * 5 and case.scale == 8.0 and "slack" in case.reason
    assert case.check(0.02, True, 8.0, 2.2, 0.03)  # at x8 it still did not shrink: minimal
    assert "did not shrink with the minimality weight at x8" in case.reason
    # a soft mask that agrees but has lost the decision (only its binary top-k keeps it) is done
    lost = CaseProgress(RULE, steps=100)
    assert [lost.check(0.02, True, -5.0, 2.2, 0.03) for _ in range(3)] == [False, False, True]


def test_stopping_never_calls_an_unshrunk_uniform_mask_converged():
    case = CaseProgress(RULE, steps=100)
    # a uniform soft mask (nothing above the threshold) whose top-64% keeps the decision with slack
    results = [case.check(0.64, True, 9.0, 2.2, 0.0) for _ in range(6)]
    assert not any(results) and not case.converged
    assert case.scale == 8.0  # the minimality weight was raised (x2 per stable check, up to max_adapt)
    assert "keeps the decision with slack" in case.reason and case.reason.startswith("max_steps (100)")


def test_stopping_binding_decision_converges_and_lost_decision_lowers_minimality():
    case = CaseProgress(RULE, steps=100)
    for _ in range(2):
        case.check(0.3, True, 3.0, 2.2, 0.9)
    assert case.check(0.3, True, 3.0, 2.2, 0.9)  # the soft mask disagrees, but its decision binds
    assert "binds" in case.reason
    lost = CaseProgress(RULE, steps=100)
    for _ in range(4):
        assert not lost.check(1.0, False, -8.0, 2.2, 0.0)
    assert lost.scale == 1 / 8 and "loses the decision" in lost.reason and "no sufficient mask" in lost.reason


def test_a_bracket_resumes_the_search_with_its_refinement_only():
    x, soft = case()
    target, need, zeros = torch.tensor([0]), torch.tensor([math.log(0.9 / 0.1)]), torch.zeros_like(x)
    coarse = smallest_sufficient(region_classifier, x, soft, zeros, zeros, target, need)
    assert (int(coarse.low[0]), int(coarse.counts[0])) == (8, 12)  # the grid areas around the minimum (10)
    full = smallest_sufficient(region_classifier, x, soft, zeros, zeros, target, need, refine=2)
    resumed = smallest_sufficient(
        region_classifier, x, soft, zeros, zeros, target, need, refine=2, bracket=(torch.tensor([True]), coarse.counts, coarse.low)
    )
    assert torch.equal(resumed.binary, full.binary) and int(resumed.counts[0]) == 10
    # only the refinement's probes (on the fill and over the background: 2 rounds x 2)
    assert int(resumed.probes[0]) == 4 and int(full.probes[0]) == int(coarse.probes[0]) + 4
    # a case not known in the bracket is searched as before
    unknown = smallest_sufficient(
        region_classifier, x, soft, zeros, zeros, target, need, refine=2, bracket=(torch.tensor([False]), coarse.counts, coarse.low)
    )
    assert torch.equal(unknown.binary, full.binary) and torch.equal(unknown.probes, full.probes)
