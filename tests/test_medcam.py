"""Med-CAM behaviour: result contents, the frozen-classifier guarantee, errors, batching, seeds."""

import math

import pytest
import torch
from monai.data import MetaTensor
from torch import nn

from medcam_monai import EarlyStopping, Explanation, MedCAM
from medcam_monai.hooks import LayerNotFoundError
from medcam_monai.medcam import LOSS_TERMS, MaskedInputError, make_fill

from _model_guard import assert_unchanged, snapshot


def small_cnn(channels=1, classes=3, spatial_dims=2, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    bn = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
    pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
    return nn.Sequential(
        conv(channels, 8, 3, padding=1),
        bn(8),
        nn.ReLU(),
        conv(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        pool(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


def fast(model, **kw):
    kw.setdefault("steps", 5)
    kw.setdefault("early_stopping", None)
    return MedCAM(model, **kw)


def test_result_holds_everything_the_issue_lists():
    model = small_cnn()
    x = torch.rand(2, 1, 32, 32)
    ex = fast(model, steps=6)(x)
    assert isinstance(ex, Explanation) and ex.kind == "mask" and ex.method == "medcam"
    assert ex.map.shape == (2, 1, 32, 32) and ex.soft_map.shape == (2, 1, 32, 32)
    assert set(ex.map.unique().tolist()) <= {0.0, 1.0}
    # the reported mask is a top-k of the relevance ranking (the soft mask, pixels the classifier does
    # not read last: |d margin / d mask| on the soft evidence, computed here independently, averaged
    # over 3 x 3, at most 20% of its maximum): every kept pixel ranks above every removed one
    soft = ex.soft_map.detach().clone().requires_grad_(True)
    logits = model.eval()(soft * x + (1 - soft) * make_fill(x, "blur"))
    top = logits.gather(1, ex.target)[:, 0]
    others = logits.masked_fill(torch.nn.functional.one_hot(ex.target[:, 0], 3).bool(), float("-inf")).logsumexp(1)
    gain = torch.autograd.grad((top - others).sum(), soft)[0]
    reads = torch.nn.functional.avg_pool2d(gain.abs(), 3, 1, 1, count_include_pad=False)
    for i in range(2):
        key = ex.soft_map[i] + (reads[i] > 0.2 * reads[i].max()).float()
        kept, removed = key[ex.map[i] > 0], key[ex.map[i] == 0]
        assert len(kept) and (not len(removed) or kept.min() >= removed.max())
    # the evidence is the mask over the fill: [0, 1] images are not mean-normalised, so "auto" is the blur
    assert ex.settings["fill"] == "auto" and ex.settings["fill_used"] == "blur"
    assert torch.allclose(ex.evidence, ex.map * x + (1 - ex.map) * make_fill(x, "blur"))
    assert ex.target.shape == (2, 1)
    assert torch.equal(ex.target[:, 0], model.eval()(x).argmax(1))
    for key in ("prob_x", "prob_e", "prob_e_soft", "prob_rob", "area_fraction", "decision_kept", "sufficient"):
        assert ex.scores[key].shape == (2,), key
    for key in ("probs_x", "probs_e", "probs_rob"):
        assert ex.scores[key].shape == (2, 3)
        assert torch.allclose(ex.scores[key].sum(1), torch.ones(2), atol=1e-5)
    assert torch.allclose(ex.scores["area_fraction"], ex.map.flatten(1).mean(1))
    assert set(LOSS_TERMS) <= set(ex.history)
    assert all(ex.history[k].shape == (6, 2) and torch.isfinite(ex.history[k]).all() for k in (*LOSS_TERMS, "margin"))
    assert ex.steps.tolist() == [6, 6] and all(r.startswith("max_steps (6): early stopping off") for r in ex.stop_reason)
    # classifier passes: per step e and the robustness image with a backward, the ranking's pass
    # with its backward, plus the selection's probes
    assert ex.scores["backward_images"].tolist() == [13, 13]
    assert bool((ex.scores["forward_images"] > 13).all())
    # rank="soft": a top-k of the soft mask itself
    by_soft = fast(model, steps=6, rank="soft")(x)
    assert by_soft.scores["backward_images"].tolist() == [12, 12]
    for i in range(2):
        kept, removed = by_soft.soft_map[i][by_soft.map[i] > 0], by_soft.soft_map[i][by_soft.map[i] == 0]
        assert len(kept) and (not len(removed) or kept.min() >= removed.max())
    assert ex.seconds > 0
    records = ex.to_records()
    assert len(records) == 2 and records[0]["steps"] == 6 and "prob_e" in records[0]["scores"]


def test_threshold_selection_is_the_papers_rule():
    x = torch.rand(2, 1, 32, 32)
    ex = fast(small_cnn(), steps=6, threshold=0.4, select="threshold")(x)
    assert torch.equal(ex.map, (ex.soft_map > 0.4).float())


def test_total_loss_is_the_weighted_sum_of_terms():
    ex = fast(small_cnn(), weights={"am": 2, "min": 3, "rob": 5, "act": 0.5, "area": 2, "tv": 0.1})(torch.rand(1, 1, 16, 16))
    h = {k: v[:, 0] for k, v in ex.history.items()}
    expected = (
        2 * (0.5 * h["act"] + h["ce"] + h["kl"]) + 3 * (2 * h["area"] + 0.1 * h["bin"] + 0.1 * h["tv"]) + 5 * h["rob"]
    )
    assert torch.allclose(h["total"], expected, rtol=1e-5, atol=1e-5)


def test_classifier_is_left_exactly_as_found():
    model = small_cnn()
    model.train()  # a user's model in training mode with a frozen first layer and a hook of its own
    model[0].weight.requires_grad_(False)
    calls = []
    model[2].register_forward_hook(lambda m, i, o: calls.append(1))
    before = snapshot(model)
    fast(model, layer=["2", "4"], background="uniform")(torch.rand(2, 1, 16, 16))
    assert_unchanged(model, before)
    assert calls  # the user's hook still runs
    assert model.training and model[1].training  # BatchNorm statistics were not updated (checked above)


class FailsOnMaskedInput(nn.Module):
    """Runs on the original images (no gradient needed), raises on the masked ones (optimised)."""

    def __init__(self):
        super().__init__()
        self.net = small_cnn()

    def forward(self, x):
        if torch.is_grad_enabled():
            raise RuntimeError("lookup failed for intensity 0.0")
        return self.net(x)


def test_classifier_unchanged_and_hooks_removed_when_run_raises():
    model = FailsOnMaskedInput()
    model.train()
    before = snapshot(model)
    with pytest.raises(MaskedInputError, match="raised on the masked image"):
        fast(model, layer=["net.2"])(torch.rand(1, 1, 16, 16))
    assert_unchanged(model, before)


def test_bad_inputs_get_clear_errors():
    model = small_cnn()
    with pytest.raises(LayerNotFoundError, match=r"Nearest valid names: .*layer4|not in Sequential"):
        fast(model, layer=["layer4"])(torch.rand(1, 1, 16, 16))
    with pytest.raises(LayerNotFoundError) as err:
        fast(model, layer=["21"])(torch.rand(1, 1, 16, 16))
    assert "Nearest valid names" in str(err.value) and "'2'" not in str(err.value).split("Nearest")[0][:5]
    with pytest.raises(ValueError, match="NaN or Inf"):
        x = torch.rand(1, 1, 16, 16)
        x[0, 0, 3, 3] = float("nan")
        fast(model)(x)
    with pytest.raises(ValueError, match="batch is empty"):
        fast(model)(torch.rand(0, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        fast(model)(torch.rand(16, 16))
    with pytest.raises(ValueError, match="out of range: the classifier has 3 classes"):
        fast(model)(torch.rand(1, 1, 16, 16), target=3)
    seg = nn.Conv2d(1, 2, 1)  # a segmentation-shaped output
    with pytest.raises(ValueError, match=r"expected logits \(B, num_classes\).*SegHiResGradCAM"):
        fast(seg)(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="distance must be one of"):
        MedCAM(model, distance="l2")
    with pytest.raises(ValueError, match="background must be one of"):
        MedCAM(model, background="noise")
    with pytest.raises(ValueError, match="fill must be one of"):
        MedCAM(model, fill="black")
    with pytest.raises(ValueError, match="decision must be one of"):
        MedCAM(model, decision="hinge")
    with pytest.raises(ValueError, match="select must be one of"):
        MedCAM(model, select="all")
    with pytest.raises(ValueError, match="init_mask must be in"):
        MedCAM(model, init_mask=1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        fast(model, fill=torch.zeros(2))(torch.rand(1, 1, 16, 16))


def test_explicit_target_class_is_explained():
    model = small_cnn()
    x = torch.rand(2, 1, 16, 16)
    ex = fast(model)(x, target=[2, 1])
    assert ex.target[:, 0].tolist() == [2, 1]
    probs = torch.softmax(model.eval()(x), 1)
    assert torch.allclose(ex.scores["prob_x"], probs[[0, 1], [2, 1]], atol=1e-5)


def test_seeded_runs_are_reproducible_and_seeds_matter():
    model = small_cnn()
    x = torch.rand(2, 1, 16, 16)
    a = fast(model, seed=3, background="gaussian")(x)
    b = fast(model, seed=3, background="gaussian")(x)
    c = fast(model, seed=4, background="gaussian")(x)
    assert torch.equal(a.soft_map, b.soft_map) and torch.equal(a.map, b.map)
    assert all(torch.allclose(a.history[k], b.history[k], rtol=0, atol=0, equal_nan=True) for k in a.history)
    assert not torch.equal(a.soft_map, c.soft_map)


def test_batched_results_equal_one_at_a_time():
    model = small_cnn()
    x = torch.rand(3, 1, 16, 16)
    stop = EarlyStopping(min_steps=4, check_every=2, patience=1, shrink_tol=0.5, bind_tol=100.0)
    batched = MedCAM(model, steps=8, early_stopping=stop, background="shuffle")(x)
    for i in range(3):
        alone = MedCAM(model, steps=8, early_stopping=stop, background="shuffle")(x[i : i + 1])
        # batched convolutions round differently in the last bits; Adam carries that a little
        assert torch.allclose(batched.soft_map[i], alone.soft_map[0], atol=2e-3)
        assert batched.steps[i] == alone.steps[0]
        assert batched.stop_reason[i] == alone.stop_reason[0]
        assert torch.allclose(batched.scores["prob_e"][i], alone.scores["prob_e"][0], atol=2e-3)


def test_vectorised_unets_equal_the_loop_and_touch_only_the_active_cases():
    """One vmapped call over the batch's U-Nets gives each case exactly its own U-Net's output and
    gradient (float64: equal to rounding), and a U-Net not in the call gets no gradient."""
    from monai.networks.nets import BasicUNet

    from medcam_monai.medcam.explainer import _EachOnItsOwn

    torch.manual_seed(0)
    unets = [BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(4, 4, 8, 8, 8, 4)).double() for _ in range(3)]
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64)
    each = _EachOnItsOwn(unets[0], vectorise=True)
    looped = torch.cat([unets[i](x[i : i + 1]) for i in (0, 2)])
    vectorised = each(unets, [0, 2], x)
    assert torch.allclose(vectorised, looped, rtol=0, atol=1e-12)
    weight = lambda u: u.down_1.convs.conv_0.conv.weight  # noqa: E731
    want = torch.autograd.grad(looped.square().sum(), [weight(unets[0]), weight(unets[2])])
    vectorised.square().sum().backward()
    for u, g in zip((unets[0], unets[2]), want, strict=True):
        assert torch.allclose(weight(u).grad, g, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in unets[1].parameters())


def test_vectorised_medcam_agrees_with_the_loop():
    model = small_cnn()
    x = torch.rand(3, 1, 16, 16)
    looped = fast(model, steps=6, vectorise=False)(x)
    vectorised = fast(model, steps=6, vectorise=True)(x)
    assert vectorised.settings["vectorise"] is True
    # float rounding differs between the grouped and the single convolutions; Adam carries it
    assert torch.allclose(vectorised.soft_map, looped.soft_map, atol=0.05)
    assert torch.allclose(vectorised.scores["prob_e_soft"], looped.scores["prob_e_soft"], atol=0.02)


def test_early_stopping_reports_why_and_stops_cases_independently():
    model = small_cnn()
    x = torch.rand(2, 1, 16, 16)
    # settles at the second check whatever the masks (any area counts as stable, any log-odds bind)
    loose = EarlyStopping(min_steps=4, check_every=2, patience=1, shrink_tol=0.99, bind_tol=1e9)
    ex = MedCAM(model, steps=50, early_stopping=loose)(x)
    for i in range(2):
        if bool(ex.scores["sufficient"][i]):
            assert ex.steps[i] == 6 and ex.stop_reason[i].startswith("converged: smallest sufficient mask"), ex.stop_reason[i]
        else:  # a case without a sufficient mask smaller than the image is never converged
            assert ex.steps[i] == 50 and "no sufficient mask smaller than the whole image" in ex.stop_reason[i]
    never = EarlyStopping(min_steps=4, check_every=2, patience=1, shrink_tol=0.0, bind_tol=0.0)
    ex = MedCAM(model, steps=6, early_stopping=never, lr=0.5)(x)
    assert ex.history["total"].shape[0] <= 6


def test_warm_start_starts_from_a_trained_unet():
    model = small_cnn()
    x = torch.rand(1, 1, 16, 16)
    first = fast(model, steps=10)
    trained = first(x)
    state = first.unet_state(0)
    again = fast(model, steps=1, lr=0.0, warm_start=state)(x)  # lr 0: the U-Net stays as loaded
    assert torch.allclose(again.soft_map, trained.soft_map, atol=1e-6)


def test_metatensor_input_keeps_its_metadata():
    affine = torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0]))
    x = MetaTensor(torch.rand(1, 1, 16, 16), affine=affine)
    ex = fast(small_cnn())(x)
    for t in (ex.map, ex.soft_map, ex.evidence):
        assert isinstance(t, MetaTensor)
        assert torch.equal(t.affine, affine)


def test_3d_multichannel_classifier():
    model = small_cnn(channels=2, classes=4, spatial_dims=3)
    x = torch.rand(2, 2, 12, 20, 16)  # sizes that are not multiples of the U-Net's 16
    before = snapshot(model)
    ex = fast(model, steps=3, mask_scale=1.0, background="shuffle", background_kwargs={"patch": 4})(x)
    assert ex.map.shape == (2, 1, 12, 20, 16) and ex.evidence.shape == x.shape
    assert ex.scores["probs_e"].shape == (2, 4)
    assert_unchanged(model, before)


def test_cosine_distance_and_several_layers():
    ex = fast(small_cnn(), layer=["2", "4"], layer_weights=[1.0, 0.5], distance="cosine")(torch.rand(1, 1, 16, 16))
    assert torch.all(ex.history["act"] >= 0) and torch.all(ex.history["act"] <= 3.0)


def decoy_classifier() -> nn.Module:
    """Class 0 with log-odds ``6 * (mean over A - 0.6 * mean over B)``: region A is the evidence,
    region B a decoy that argues against it (the image: p = 0.92; A alone: p = 0.998)."""

    class Decoy(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Identity()  # a layer with a spatial output (for activation matching)

        def forward(self, t):
            t = self.features(t)
            a, b = t[:, 0, 4:10, 4:10].mean((1, 2)), t[:, 0, 20:26, 20:26].mean((1, 2))
            return torch.stack([6 * (a - 0.6 * b), torch.zeros_like(a)], 1)

    return Decoy().eval()


def test_soft_confidence_reproduces_the_evidence_more_convincing_than_the_image():
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 4:10, 4:10] = 1.0
    x[0, 0, 20:26, 20:26] = 1.0
    net = decoy_classifier()
    kwargs = dict(fill="zero", background="blur", steps=120, early_stopping=None)
    image = MedCAM(net, **kwargs)(x)
    soft = MedCAM(net, confidence="soft", **kwargs)(x)
    p_x = float(soft.scores["prob_x"][0])
    assert math.isclose(p_x, 1 / (1 + math.exp(-6 * 0.4)), rel_tol=1e-5)
    # the default stops at the image's confidence: a part of A suffices
    assert float(image.scores["prob_e"][0]) < p_x + 0.03, image.scores
    # "soft": the optimised soft evidence drops the decoy and is more convincing than the image,
    # and the binary evidence is as convincing as it
    p_soft = float(soft.scores["prob_e_soft"][0])
    assert p_soft > p_x + 0.05, soft.scores
    assert float(soft.scores["prob_e"][0]) >= min(p_soft, 0.99) - 1e-3
    assert float(soft.map[0, 0, 20:26, 20:26].sum()) == 0  # the decoy is not evidence
    assert bool(soft.scores["sufficient"][0]) and soft.settings["confidence"] == "soft"
    with pytest.raises(ValueError, match="confidence"):
        MedCAM(net, confidence="max")
