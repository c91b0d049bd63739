"""Every metric on cases with known answers: a perfect mask, an empty mask, a mask of the wrong region,
and hand-computed deletion/insertion curves for a tiny linear classifier."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medcam_monai.evaluation import metrics as M
from medcam_monai.explanation import Explanation




class Linear2(nn.Module):
    """logits = [w . x, 0]: class 0's logit is hand-computable for any input."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone(), requires_grad=False)

    def forward(self, x):
        s = (x.flatten(1) * self.w).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


W = torch.tensor([[4.0, 3.0], [2.0, 1.0]])
X = torch.ones(1, 1, 2, 2)


def regions():
    truth = torch.zeros(2, 1, 8, 8)
    truth[:, :, 2:4, 2:5] = 1
    wrong = torch.zeros_like(truth)
    wrong[:, :, 5:8, 5:7] = 1
    return truth, wrong


# --- localisation ----------------------------------------------------------------------------


def test_localisation_known_answers():
    truth, wrong = regions()
    perfect = M.localisation(truth, truth)
    empty = M.localisation(torch.zeros_like(truth), truth)
    off = M.localisation(wrong, truth)
    for k in ("iou", "pointing", "energy"):
        assert perfect[k].shape == (2, 1)
        assert torch.equal(perfect[k], torch.ones(2, 1)), k
        assert torch.equal(empty[k], torch.zeros(2, 1)), k
        assert torch.equal(off[k], torch.zeros(2, 1)), k


def test_iou_partial_and_empty_truth():
    truth, _ = regions()  # 6 pixels
    half = torch.zeros_like(truth)
    half[:, :, 2:4, 2:5] = 1
    half[:, :, 2:4, 2] = 0  # 4 pixels inside
    half[:, :, 0, 0] = 1  # 1 outside
    assert torch.allclose(M.iou(half, truth), torch.full((2, 1), 4 / 7))
    none = torch.zeros_like(truth)
    assert torch.equal(M.iou(none, none), torch.ones(2, 1))  # nothing to find, nothing claimed
    assert torch.isnan(M.pointing_game(truth, none)).all()


def test_pointing_and_energy_on_heatmaps():
    truth, wrong = regions()
    heat = 0.2 * wrong.clone()
    heat[:, :, 3, 3] = 1.0  # peak inside the truth, some energy outside
    assert torch.equal(M.pointing_game(heat, truth), torch.ones(2, 1))
    expected = 1.0 / (1.0 + 0.2 * 6)
    assert torch.allclose(M.energy_inside(heat, truth), torch.full((2, 1), expected))
    # negative values are no energy; the peak outside is a miss unless the tolerance reaches it
    heat2 = -torch.ones_like(truth)
    heat2[:, :, 5, 3] = 1.0  # two rows below the region
    assert torch.equal(M.pointing_game(heat2, truth), torch.zeros(2, 1))
    assert torch.equal(M.pointing_game(heat2, truth, tolerance=2), torch.ones(2, 1))
    assert torch.equal(M.energy_inside(heat2, truth), torch.zeros(2, 1))


def test_full_mask_does_not_win_the_pointing_game():
    truth, _ = regions()
    assert torch.equal(M.pointing_game(torch.ones_like(truth), truth), torch.zeros(2, 1))


def test_top_fraction_mask_equal_area():
    truth, _ = regions()
    heat = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + truth
    top = M.top_fraction_mask(heat, M.area_fraction(truth))
    assert torch.equal(top, truth)
    assert torch.equal(M.top_fraction_mask(torch.zeros(2, 1, 8, 8), 0.25).sum((1, 2, 3)), torch.tensor([16.0, 16.0]))


def test_accepts_explanations_and_checks_shapes():
    truth, _ = regions()
    expl = Explanation(map=truth, kind="mask", method="medcam", target=torch.zeros(2, 1, dtype=torch.long))
    assert torch.equal(M.iou(expl, truth), torch.ones(2, 1))
    with pytest.raises(ValueError, match="true region has shape"):
        M.iou(truth, truth[:, :, :4])


# --- minimality ------------------------------------------------------------------------------


def test_minimality_known_answers():
    truth, wrong = regions()
    two = truth + wrong
    out = M.minimality(two)
    assert torch.allclose(out["area_fraction"], torch.full((2, 1), 12 / 64))
    assert torch.equal(out["components"], torch.full((2, 1), 2))
    assert torch.equal(M.connected_components(torch.zeros_like(truth)), torch.zeros(2, 1, dtype=torch.long))
    diag = torch.zeros(1, 1, 4, 4)
    diag[0, 0, 0, 0] = diag[0, 0, 1, 1] = 1
    assert M.connected_components(diag).item() == 2  # face neighbours only
    assert M.connected_components(diag, connectivity=2).item() == 1


def test_components_in_3d():
    vol = torch.zeros(1, 2, 6, 6, 6)
    vol[0, 0, 0:2, 0:2, 0:2] = 1
    vol[0, 0, 4:6, 4:6, 4:6] = 1
    vol[0, 1, 1:5, 1:5, 1:5] = 1
    assert M.connected_components(vol).tolist() == [[2, 1]]
    assert torch.allclose(M.area_fraction(vol), torch.tensor([[16 / 216, 64 / 216]]))


# --- deletion / insertion --------------------------------------------------------------------


def test_deletion_and_insertion_hand_computed():
    model = Linear2(W)
    d = M.deletion_curve(model, X, W[None, None], steps=4, baseline=0.0, probability=False)
    assert torch.equal(d.fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert torch.equal(d.scores, torch.tensor([[10.0, 6.0, 3.0, 1.0, 0.0]]))
    assert d.auc.item() == pytest.approx(0.25 * (8 + 4.5 + 2 + 0.5))
    i = M.insertion_curve(model, X, W[None, None], steps=4, baseline=0.0, probability=False)
    assert torch.equal(i.scores, torch.tensor([[0.0, 4.0, 7.0, 9.0, 10.0]]))
    assert i.auc.item() == pytest.approx(0.25 * (2 + 5.5 + 8 + 9.5))
    # the reversed (worst) ranking deletes slowly: a higher deletion AUC
    worst = M.deletion_curve(model, X, -W[None, None], steps=4, baseline=0.0, probability=False)
    assert torch.equal(worst.scores, torch.tensor([[10.0, 9.0, 7.0, 4.0, 0.0]]))
    assert worst.auc > d.auc


def test_curves_with_probabilities_and_a_mask():
    model = Linear2(W)
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # weights 4 and 2: removed first, in any tie order
    d = M.deletion_curve(model, X, mask, steps=2, baseline=0.0, probability=False)
    assert torch.equal(d.scores, torch.tensor([[10.0, 4.0, 0.0]]))
    p = M.deletion_curve(model, X, mask, steps=2, baseline=0.0)
    expected = torch.sigmoid(torch.tensor([10.0, 4.0, 0.0]))  # softmax([s, 0])[0]
    assert torch.allclose(p.scores[0], expected)
    assert p.target.tolist() == [0]


def test_curves_are_batched_and_deterministic():
    model = Linear2(torch.arange(16.0).reshape(4, 4))
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    mask = (torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    a = M.insertion_curve(model, x, mask, steps=8, baseline="constant", batch_size=4)
    b = M.insertion_curve(model, x, mask, steps=8, baseline="constant", batch_size=100)
    assert a.scores.shape == (3, 9) and torch.allclose(a.scores, b.scores)
    one = M.insertion_curve(model, x[1:2], mask[1:2], steps=8, baseline="constant")
    assert torch.allclose(one.scores[0], a.scores[1])
    # insertion ends on x, deletion ends on the baseline
    full = model(x).softmax(-1).gather(1, a.target[:, None])[:, 0]
    assert torch.allclose(a.scores[:, -1], full)


def test_curve_rejects_multi_target_maps():
    with pytest.raises(ValueError, match="one map per case"):
        M.deletion_curve(Linear2(W), X, torch.ones(1, 2, 2, 2))


# --- faithfulness ----------------------------------------------------------------------------


def test_faithfulness_known_answers():
    model = Linear2(W)
    x = torch.ones(3, 1, 2, 2)
    perfect = W[None, None].expand(3, 1, 2, 2).gt(2.5).float()  # keeps weights 4 and 3
    out = M.faithfulness(model, x, perfect, background=0.0)
    assert out["kept_e"].all() and out["kept_rob"].all()
    assert torch.allclose(out["prob_e"], torch.sigmoid(torch.tensor(7.0)).expand(3))
    assert torch.allclose(out["confidence_gain"], out["prob_e"] - out["prob_x"])
    empty = M.faithfulness(model, x, torch.zeros(3, 1, 2, 2), background=0.0)
    assert torch.allclose(empty["prob_e"], torch.full((3,), 0.5))  # logits [0, 0]
    # a background of -1 outside the mask flips the decision when the evidence is missing
    wrong = 1 - perfect
    bad = M.faithfulness(model, x, wrong, background=-1.0)
    assert bad["kept_e"].all()  # weights 2 + 1 > 0 still
    assert not bad["kept_rob"].any()  # 3 - 7 < 0
    assert out["probs_x"].shape == (3, 2) and out["target"].tolist() == [0, 0, 0]


def test_faithfulness_leaves_the_model_as_found():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    M.faithfulness(model, torch.rand(2, 1, 8, 8), torch.ones(2, 1, 8, 8))
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- sanity check ----------------------------------------------------------------------------


def test_similarities():
    truth, wrong = regions()
    assert torch.allclose(M.spearman_correlation(truth, truth), torch.ones(2))
    assert torch.allclose(M.spearman_correlation(truth, -truth), -torch.ones(2))
    assert torch.equal(M.spearman_correlation(truth, torch.zeros_like(truth)), torch.zeros(2))
    assert torch.allclose(M.ssim(truth, truth), torch.ones(2))
    assert (M.ssim(truth, wrong) < 0.5).all()
    vol = torch.rand(1, 1, 8, 8, 8)
    assert M.ssim(vol, vol).item() == pytest.approx(1.0)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)
    )


def gradient_map(model, x):
    x = x.clone().requires_grad_(True)
    model(x)[:, 0].sum().backward()
    return x.grad.abs()


def test_sanity_check_separates_model_dependent_from_model_free_explainers():
    model = small_cnn()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert M.randomization_layers(model) == ["5", "2", "0"]  # output first
    grad = M.cascading_randomization(model, x, gradient_map, keep_maps=True)
    edges = M.cascading_randomization(model, x, lambda m, x: x.abs())  # ignores the model
    assert grad.layers == ["5", "2", "0"] and grad.spearman.shape == (3, 2) and len(grad.maps) == 3
    assert grad.passed(0.5).all()
    assert not edges.passed(0.5).any()
    assert torch.allclose(edges.spearman, torch.ones(3, 2)) and torch.allclose(edges.ssim, torch.ones(3, 2))
    assert torch.equal(edges.iou, torch.ones(3, 2))
    # the user's model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(grad.to_dict()) == {"layers", "cascade", "spearman", "ssim", "iou"}


def test_sanity_check_independent_mode_and_errors():
    model = small_cnn()
    x = torch.rand(1, 1, 8, 8)
    state = torch.random.get_rng_state()
    one = M.cascading_randomization(model, x, gradient_map, layers=["0"], cascade=False)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is not consumed
    again = M.cascading_randomization(model, x, gradient_map, layers=["0"], cascade=False)
    assert torch.equal(one.spearman, again.spearman)  # seeded
    assert one.spearman.shape == (1, 1) and not one.cascade
    with pytest.raises(KeyError, match="is not in Sequential.named_modules"):
        M.cascading_randomization(model, x, gradient_map, layers=["conv9"])


def test_sanity_check_binary_masks_compare_by_iou():
    model = small_cnn()
    x = torch.rand(1, 1, 8, 8)

    def top_mask(m, x):
        return M.top_fraction_mask(gradient_map(m, x), 0.2)

    out = M.cascading_randomization(model, x, top_mask)
    assert out.iou.shape == (3, 1)
    assert math.isfinite(out.iou[-1].item()) and out.iou[-1].item() < 1.0
