"""Known-answer tests for every Med-CAM loss term and background generator."""

import math

import pytest
import torch

from medcam_monai.medcam import losses
from medcam_monai.perturbation import BACKGROUNDS, make_background
from medcam_monai.medcam.config import PRESETS, EarlyStopping, LossWeights


def test_activation_distance_mse_and_cosine_by_hand():
    a = torch.tensor([[1.0, 2.0, 0.0, 2.0], [1.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    # mse: ((0)^2 + 2^2 + 0 + 2^2)/4 = 2 ; ((1)^2)/4 = 0.25
    assert torch.allclose(losses.activation_distance(a, b, "mse"), torch.tensor([2.0, 0.25]))
    # cosine: a1.b1 = 1, |a1| = 3, |b1| = 1 -> 1 - 1/3 ; parallel vectors -> 0
    assert torch.allclose(losses.activation_distance(a, b, "cosine"), torch.tensor([2 / 3, 0.0]), atol=1e-6)
    with pytest.raises(ValueError, match="distance must be one of"):
        losses.activation_distance(a, b, "l1")


def test_activation_matching_weights_layers():
    x1, e1 = torch.ones(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)  # mse 1 per case
    x2, e2 = torch.full((2, 5), 2.0), torch.zeros(2, 5)  # mse 4 per case
    got = losses.activation_matching([x1, x2], [e1, e2], weights=[0.5, 2.0])
    assert torch.allclose(got, torch.tensor([0.5 * 1 + 2.0 * 4] * 2))
    assert torch.allclose(losses.activation_matching([x1], [e1]), torch.ones(2))
    with pytest.raises(ValueError, match="layer weights"):
        losses.activation_matching([x1], [e1], weights=[1.0, 2.0])


def test_kl_divergence_by_hand():
    logits_x = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    logits_e = torch.log(torch.tensor([[0.9, 0.1], [0.9, 0.1]]))
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert torch.allclose(losses.kl_divergence(logits_x, logits_e), torch.tensor([expected, 0.0]), atol=1e-6)
    # logits are shift invariant under softmax
    assert torch.allclose(losses.kl_divergence(logits_x + 3, logits_e - 1), torch.tensor([expected, 0.0]), atol=1e-5)


def test_cross_entropy_by_hand():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5], [0.7, 0.2, 0.1]]))
    got = losses.cross_entropy(logits, torch.tensor([2, 1]))
    assert torch.allclose(got, torch.tensor([-math.log(0.5), -math.log(0.2)]), atol=1e-6)


def test_area_binarisation_2d_and_3d():
    m = torch.zeros(2, 1, 4, 4)
    m[0, :, :2] = 1.0  # half ones
    m[1] = 0.5
    assert torch.allclose(losses.area(m), torch.tensor([0.5, 0.5]))
    assert torch.allclose(losses.binarisation(m), torch.tensor([0.0, 0.25]))
    m3 = torch.full((1, 1, 2, 2, 2), 0.2)
    assert torch.allclose(losses.area(m3), torch.tensor([0.2]))
    assert torch.allclose(losses.binarisation(m3), torch.tensor([0.2 - 0.04]))


def test_total_variation_by_hand_2d_and_3d():
    n = 5
    m = torch.zeros(1, 1, n, n)
    m[..., : n // 2 + 1] = 1.0  # one vertical edge
    assert torch.allclose(losses.total_variation(m), torch.tensor([1 / (n - 1)]))
    checker = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    # every neighbour differs along both axes: 1 + 1
    assert torch.allclose(losses.total_variation(checker[None, None].float()), torch.tensor([2.0]))
    cube = torch.zeros(1, 1, 3, 4, 6)
    cube[:, :, 1:] = 1.0  # one edge along the depth axis: 4*6 diffs of 1 among 2*4*6
    assert torch.allclose(losses.total_variation(cube), torch.tensor([0.5]))
    assert torch.allclose(losses.total_variation(torch.ones(2, 1, 3, 3, 3)), torch.zeros(2))


def test_presets_match_the_paper_and_override():
    assert (PRESETS["bach"].am, PRESETS["bach"].min, PRESETS["bach"].rob) == (10, 100, 10)
    assert (PRESETS["ham10000"].am, PRESETS["ham10000"].min, PRESETS["ham10000"].rob) == (10, 150, 20)
    w = LossWeights.preset("ham10000", tv=0.5)
    assert w.tv == 0.5 and w.min == 150
    with pytest.raises(ValueError, match="Unknown Med-CAM preset"):
        LossWeights.preset("idrid")
    with pytest.raises(ValueError, match="must be a number >= 0"):
        LossWeights(area=-1)
    with pytest.raises(ValueError, match="shrink_tol"):
        EarlyStopping(shrink_tol=1.5)
    with pytest.raises(ValueError, match="adapt"):
        EarlyStopping(adapt=0.5)


@pytest.mark.parametrize("kind", sorted(BACKGROUNDS))
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (2, 1, 8, 8, 8)])
def test_backgrounds_shape_and_reproducibility(kind, shape):
    x = torch.rand(shape)
    gens = lambda: [torch.Generator().manual_seed(7) for _ in range(shape[0])]  # noqa: E731
    r1 = make_background(x, kind, gens())
    r2 = make_background(x, kind, gens())
    assert r1.shape == x.shape and torch.isfinite(r1).all()
    assert torch.equal(r1, r2)
    # a case gets the same background alone as in a batch
    alone = make_background(x[1:], kind, [torch.Generator().manual_seed(7)])
    assert torch.allclose(alone[0], r1[1], atol=1e-6)


def test_background_statistics():
    x = torch.rand(1, 2, 32, 32) * torch.tensor([1.0, 5.0]).view(1, 2, 1, 1)
    g = [torch.Generator().manual_seed(0)]
    u = make_background(x, "uniform", g)
    assert (u >= x.amin(dim=(2, 3), keepdim=True)).all() and (u <= x.amax(dim=(2, 3), keepdim=True)).all()
    n = make_background(x, "gaussian", g)
    assert torch.allclose(n.mean(dim=(2, 3)), x.mean(dim=(2, 3)), rtol=0.1)
    assert torch.allclose(n.std(dim=(2, 3)), x.std(dim=(2, 3)), rtol=0.1)
    c = make_background(x, "constant", g)
    assert torch.allclose(c, x.mean(dim=(2, 3), keepdim=True).expand_as(x))
    assert torch.equal(make_background(x, "constant", g, value=0.3), torch.full_like(x, 0.3))
    b = make_background(x, "blur", g, sigma=3.0)
    assert b.std() < x.std()  # smoother
    s = make_background(x, "shuffle", g, patch=8)
    # shuffling moves patches but keeps the multiset of values
    assert torch.equal(s.flatten().sort().values, x.flatten().sort().values)
    assert not torch.equal(s, x)
    # whole patches move together: each 8x8 patch of s equals some patch of x
    ps = s[0, 0].unfold(0, 8, 8).unfold(1, 8, 8).reshape(16, 64)
    px = x[0, 0].unfold(0, 8, 8).unfold(1, 8, 8).reshape(16, 64)
    assert all(any(torch.equal(a, b) for b in px) for a in ps)
    with pytest.raises(ValueError, match="background must be one of"):
        make_background(x, "checker", g)
