"""Our metrics against Quantus (Hedström et al., JMLR 2023) on shared 2D cases.

The shared cases: a tiny CNN trained for a few steps to find a bright blob (its class is the blob's
place), four 8x8 test images, the gradient map of the predicted class (one value per pixel, no
ties), fixed seeds. Quantus is called on the same numpy arrays with its normalisation and ``abs``
turned off, so both score the same map. Each mapping of parameters (ours -> Quantus 0.6):

- ``pointing_game(h, truth)`` -> ``PointingGame(normalise=False, abs=False)``: equal where the
  map's maximum is one pixel. With tied maxima (a binary mask) ours needs more than half of them
  inside, Quantus any one, so the relation ``ours <= Quantus`` is tested, with a case where they
  differ. (An empty region is NaN for us and a hit for Quantus 0.6; not tested, as it is
  Quantus's defect, not a definition.)
- ``energy_inside(h, truth)`` -> ``RelevanceMassAccuracy(normalise=False, abs=False)``: equal for
  non-negative maps; a signed map: ours is Quantus's score of the map with negatives set to 0.
- ``iou(top_fraction_mask(h, area(truth)), truth)`` -> ``RelevanceRankAccuracy``: the same top-K
  pixels; ``IoU = RRA / (2 - RRA)`` (the definitions differ: I/(2K - I) against I/K).
- ``area_fraction(m, t) * N`` -> ``EffectiveComplexity(eps=t, normalise=False, abs=False)``.
- ``deletion_curve(steps=S, baseline=0.0)`` -> ``PixelFlipping(features_in_step=N/S,
  perturb_baseline=0.0)`` with ``softmax=True``: our ``scores[:, 1:]`` (ours also has the
  untouched point at fraction 0).
- ``insertion_curve(steps=S, baseline=0.0)`` -> ``PixelFlipping`` started from the baseline image
  (zeros) with a ``perturb_func`` that copies the image's pixels back (Quantus has no insertion).
- ``deletion_curve`` of a map constant on ``p x p`` patches, ``steps`` = number of patches ->
  ``RegionPerturbation(patch_size=p, order="morf", regions_evaluation=all, perturb_baseline=0.0)``:
  Quantus's value is ``p(x)`` minus our score.
- ``cascading_randomization(layers=[l], cascade=False, seed=s + 1)`` ->
  ``MPRT(layer_order="independent", seed=s, abs=False, normalise=False)``: both seed
  ``torch.manual_seed`` then call the layer's ``reset_parameters``, so the random weights and the
  Spearman correlations are the same.
- ``cascading_randomization(cascade=True, seed=s + 1)`` -> ``MPRT(layer_order="top_down",
  seed=s)``: same layers in the same order and the same first step; after it Quantus reseeds
  every layer with ``s + 1`` and ours with ``seed + i``, so the weights differ and the relation is
  tested: a gradient map decorrelates at every step in both, a map that ignores the model keeps
  correlation 1 in both.
- ``spearman_correlation`` -> ``quantus.functions.similarity_func.correlation_spearman``.

Tolerance 1e-5 on probabilities (float32 forward passes of different batch compositions), 1e-6 on
ratios computed from the same pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medcam_monai.evaluation import metrics as M

quantus = pytest.importorskip("quantus", reason="Quantus is in the `test` extra: pip install -e '.[test]'")

SIZE, CLASSES = 8, 3
CORNERS = [(1, 1), (1, 5), (5, 3)]  # class c: a bright 2x2 blob at CORNERS[c]


def _blob_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (n, 1, 8, 8) of dim noise with a bright 2x2 blob at the class's place, labels, blob masks."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    x = 0.3 * torch.rand(n, 1, SIZE, SIZE, generator=g)
    blobs = torch.zeros_like(x)
    for i, c in enumerate(labels.tolist()):
        r, col = CORNERS[c]
        blobs[i, 0, r : r + 2, col : col + 2] = 1
    return (x + 0.7 * blobs).clamp(0, 1), labels, blobs


@pytest.fixture(scope="module")
def case():
    """The shared 2D case: trained tiny CNN, four test images, their decisions and gradient maps."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * SIZE * SIZE, CLASSES),
    )
    x_train, y_train, _ = _blob_images(24, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    model.eval()
    x, labels, blobs = _blob_images(4, seed=2)
    with torch.no_grad():
        y = model(x).argmax(1)
    assert (y == labels).float().mean() >= 0.75  # a model that has learned: curves and maps mean something
    saliency = gradient_map(model, x, y)
    assert all(s.unique().numel() == s.numel() for s in saliency)  # no ties: one ranking for both libraries
    return model, x, y, saliency, blobs


def gradient_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model(x).gather(1, target[:, None]).sum().backward()
    return x.grad.abs()


def _np(*tensors):
    return [t.detach().numpy() for t in tensors]


# --- localisation ----------------------------------------------------------------------------


def test_pointing_game_equals_quantus_where_the_peak_is_one_pixel(case):
    model, x, y, s, _ = case
    peak = s.flatten(1).argmax(1)
    truth = torch.zeros_like(s)
    for b in range(x.shape[0]):
        r, c = divmod(int(peak[b]), SIZE)
        if b % 2 == 0:  # a region around the peak: a hit
            truth[b, 0, max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = 1
        else:  # a region away from it: a miss
            truth[b, 0, (r + 4) % SIZE, (c + 4) % SIZE] = 1
    ours = M.pointing_game(s, truth)[:, 0]
    theirs = quantus.PointingGame(normalise=False, abs=False, disable_warnings=True)(
        model, *_np(x, y), a_batch=s.numpy(), s_batch=truth.numpy()
    )
    assert ours.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert ours.tolist() == [float(h) for h in theirs]


def test_pointing_game_with_tied_peaks_is_stricter_than_quantus(case):
    """A binary mask: every mask pixel ties at the maximum. Quantus: a hit when any is inside; ours:
    when most are. A small region inside a large mask is a hit for Quantus only."""
    model, x, y, _, _ = case
    mask = torch.zeros_like(x)
    mask[..., :, :4] = 1  # the left half
    truth = torch.zeros_like(x)
    truth[0, 0, 0, 0] = 1  # 1 of the 32 tied pixels inside: Quantus hit, ours miss
    truth[1, 0, :, :3] = 1  # 24 of 32 inside: a hit for both
    truth[2, 0, :, 6:] = 1  # none inside: a miss for both
    truth[3, 0, :4, :4] = 1  # 16 of 32: exactly half is not most: Quantus hit, ours miss
    ours = M.pointing_game(mask, truth)[:, 0]
    theirs = torch.tensor([float(h) for h in quantus.PointingGame(normalise=False, abs=False, disable_warnings=True)(
        model, *_np(x, y), a_batch=mask.numpy(), s_batch=truth.numpy()
    )])
    assert ours.tolist() == [0.0, 1.0, 0.0, 0.0] and theirs.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert (ours <= theirs).all()


def test_energy_inside_is_relevance_mass_accuracy(case):
    model, x, y, s, blobs = case
    rma = quantus.RelevanceMassAccuracy(normalise=False, abs=False, disable_warnings=True)
    ours = M.energy_inside(s, blobs)[:, 0]
    theirs = torch.tensor(rma(model, *_np(x, y), a_batch=s.numpy(), s_batch=blobs.numpy()), dtype=torch.float32)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert (ours > 0).all() and (ours < 1).all()  # not the trivial cases: part of the mass is inside
    # a signed map: negative values are not mass for us; Quantus sums signed values
    signed = s - s.mean((2, 3), keepdim=True)
    clamped = torch.tensor(rma(model, *_np(x, y), a_batch=signed.clamp_min(0).numpy(), s_batch=blobs.numpy()), dtype=torch.float32)
    assert torch.allclose(M.energy_inside(signed, blobs)[:, 0], clamped, atol=1e-6)


def test_iou_at_the_true_area_relates_to_relevance_rank_accuracy(case):
    """Both take the top K pixels (K = the region's size) and count the I inside: RRA = I/K, IoU = I/(2K - I)."""
    model, x, y, s, blobs = case
    truth = blobs.clone()
    truth[:, :, 4:6, 4:6] = 1  # a second square, so the top pixels are partly in, partly out
    rra = torch.tensor(quantus.RelevanceRankAccuracy(normalise=False, abs=False, disable_warnings=True)(
        model, *_np(x, y), a_batch=s.numpy(), s_batch=truth.numpy()
    ), dtype=torch.float32)
    ours = M.iou(M.top_fraction_mask(s, M.area_fraction(truth)[:, 0]), truth)[:, 0]
    assert torch.allclose(ours, rra / (2 - rra), atol=1e-6)
    assert ((rra > 0) & (rra < 1)).sum() >= 2  # the relation is checked away from its fixed points 0 and 1


def test_area_fraction_is_effective_complexity(case):
    model, x, y, s, _ = case
    threshold = float(s.median())
    count = quantus.EffectiveComplexity(eps=threshold, normalise=False, abs=False, disable_warnings=True)(
        model, *_np(x, y), a_batch=s.numpy()
    )
    assert torch.allclose(M.area_fraction(s, threshold)[:, 0] * SIZE * SIZE, torch.tensor(count, dtype=torch.float32))


# --- deletion / insertion --------------------------------------------------------------------


def test_deletion_curve_is_pixel_flipping(case):
    model, x, y, s, _ = case
    steps = 16  # 64 pixels: 4 per step
    ours = M.deletion_curve(model, x, s, target=y, steps=steps, baseline=0.0)
    theirs = np.asarray(quantus.PixelFlipping(
        features_in_step=SIZE * SIZE // steps, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
    )(model, *_np(x, y), a_batch=s.numpy(), softmax=True))
    assert theirs.shape == (4, steps)
    assert np.allclose(ours.scores[:, 1:].numpy(), theirs, atol=1e-5)
    assert (ours.scores[:, 0] - ours.scores[:, -1]).max() > 0.5  # the curves fall: the comparison is not of flat lines


def test_insertion_curve_is_pixel_flipping_from_the_baseline(case):
    model, x, y, s, _ = case
    steps = 8

    def insert_from(arr, indices, source, **_):
        """Quantus's perturbation hook, used to put the image's pixels back instead of removing them."""
        out = arr.copy()
        rows = np.arange(arr.shape[0])[:, None]
        out[rows, indices] = source.reshape(arr.shape[0], -1)[rows, indices]
        return out

    ours = M.insertion_curve(model, x, s, target=y, steps=steps, baseline=0.0)
    theirs = np.asarray(quantus.PixelFlipping(
        features_in_step=SIZE * SIZE // steps, perturb_func=insert_from, perturb_func_kwargs={"source": x.numpy()},
        normalise=False, abs=False, disable_warnings=True,
    )(model, np.zeros_like(x.numpy()), y.numpy(), a_batch=s.numpy(), softmax=True))
    assert np.allclose(ours.scores[:, 1:].numpy(), theirs, atol=1e-5)
    assert np.allclose(ours.scores[:, -1].numpy(), torch.softmax(model(x), 1).gather(1, y[:, None])[:, 0].detach().numpy(), atol=1e-5)


def test_deletion_on_patches_is_region_perturbation(case):
    """For a map constant on 4x4 patches our deletion removes one patch per step, as Quantus's
    region perturbation (MoRF) does; Quantus reports the drop p(x) - p(perturbed)."""
    model, x, y, s, _ = case
    patch = 4
    patch_map = nn.functional.avg_pool2d(s, patch)  # (4, 1, 2, 2): distinct values, one per patch
    s_patches = patch_map.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    regions = (SIZE // patch) ** 2
    ours = M.deletion_curve(model, x, s_patches, target=y, steps=regions, baseline=0.0)
    theirs = np.asarray(quantus.RegionPerturbation(
        patch_size=patch, order="morf", regions_evaluation=regions, perturb_baseline=0.0, normalise=False, abs=False,
        disable_warnings=True,
    )(model, *_np(x, y), a_batch=s_patches.numpy(), softmax=True))
    assert np.allclose((ours.scores[:, :1] - ours.scores[:, 1:]).numpy(), theirs, atol=1e-5)


# --- model parameter randomisation -----------------------------------------------------------


def _mprt(model, x, y, explain, order: str, seed: int) -> dict[str, list[float]]:
    metric = quantus.MPRT(layer_order=order, seed=seed, abs=False, normalise=False, disable_warnings=True)
    with torch.random.fork_rng(devices=[]):  # Quantus reseeds the global RNG
        return metric(model, *_np(x, y), a_batch=None, explain_func=explain)


def _quantus_explainer(fn):
    return lambda model, inputs, targets, **_: fn(model, torch.as_tensor(inputs), torch.as_tensor(targets)).detach().numpy()


def test_one_layer_at_a_time_matches_quantus_mprt(case):
    model, x, y, _, _ = case
    theirs = _mprt(model, x, y, _quantus_explainer(gradient_map), "independent", seed=41)
    layers = M.randomization_layers(model)
    assert set(theirs) - {"original"} == set(layers) == {"0", "2", "5"}
    for name in layers:
        ours = M.cascading_randomization(model, x, lambda m, xx: gradient_map(m, xx, y), layers=[name], cascade=False, seed=42)
        assert np.allclose(ours.spearman[0].numpy(), theirs[name], atol=1e-6), name


def test_cascade_against_quantus_mprt_top_down(case):
    model, x, y, _, _ = case
    grad = lambda m, xx: gradient_map(m, xx, y)
    theirs = _mprt(model, x, y, _quantus_explainer(gradient_map), "top_down", seed=41)
    ours = M.cascading_randomization(model, x, grad, cascade=True, seed=42, keep_maps=True)
    assert [k for k in theirs if k != "original"] == ours.layers == ["5", "2", "0"]  # output first, same layers
    assert np.allclose(ours.spearman[0].numpy(), theirs["5"], atol=1e-6)  # the first step is the same randomisation
    # later steps use other seeds: the relation both must show is that the map decorrelates
    assert (ours.spearman.abs() < 0.5).all() and all((np.abs(theirs[k]) < 0.5).all() for k in ours.layers)
    # a map that ignores the model stays the same in both
    image = lambda m, xx, *_: xx.abs()
    same_theirs = _mprt(model, x, y, _quantus_explainer(image), "top_down", seed=41)
    same_ours = M.cascading_randomization(model, x, image, cascade=True, seed=42)
    assert torch.allclose(same_ours.spearman, torch.ones(3, 4)) and all(np.allclose(same_theirs[k], 1) for k in ours.layers)
    # our rank correlation is Quantus's (scipy's) on the same pairs of maps
    for step, randomised in enumerate(ours.maps):
        expected = quantus.functions.similarity_func.correlation_spearman(ours.original.flatten(1).numpy(), randomised.flatten(1).numpy(), batched=True)
        assert np.allclose(ours.spearman[step].numpy(), expected, atol=1e-6)
