"""Known answers for Med-CAM's evidence fills and the blur they share with the metrics' backgrounds."""

import pytest
import torch
from monai.networks.layers import GaussianFilter
from monai.transforms import Compose, EnsureTyped, NormalizeIntensityd, ScaleIntensityd, ScaleIntensityRanged

from medcam_monai.medcam import fill_from_preprocessing, make_fill, zero_in_distribution
from medcam_monai.medcam.fills import resolve_fill
from medcam_monai.perturbation import blur


def test_zero_fill_is_the_papers_masking():
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(make_fill(x, "zero"), torch.zeros_like(x))


def test_mean_fill_per_image_channel_or_given_values():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    b = make_fill(x, "mean")
    # case 0, channel 1 holds 16..31: mean 23.5; case 1, channel 2 holds 80..95: mean 87.5
    assert torch.equal(b[0, 1], torch.full((4, 4), 23.5)) and torch.equal(b[1, 2], torch.full((4, 4), 87.5))
    given = make_fill(x, "mean", value=[1.0, 2.0, 3.0])
    assert torch.equal(given[1, 2], torch.full((4, 4), 3.0)) and torch.equal(given[0, 0], torch.ones(4, 4))
    assert torch.equal(make_fill(x, "mean", value=0.5), torch.full_like(x, 0.5))


def test_blur_keeps_constants_exactly_up_to_the_border():
    const = torch.full((1, 2, 9, 9), 5.0)
    assert torch.allclose(make_fill(const, "blur", sigma=2.0), const, atol=1e-5)
    # MONAI's filter alone pads with zeros and darkens the corners: the bug the normalisation fixes
    raw = GaussianFilter(2, sigma=2.0)(const)
    assert float(raw[0, 0, 0, 0]) < 3.5
    cube = torch.full((1, 1, 6, 6, 6), -2.0)
    assert torch.allclose(blur(cube, 1.5), cube, atol=1e-5)


def test_blur_keeps_a_linear_ramp_and_smooths_a_point():
    ramp = torch.arange(32, dtype=torch.float32).view(1, 1, 1, 32).expand(1, 1, 32, 32).contiguous()
    out = blur(ramp, 1.0)
    # a symmetric kernel keeps a linear function wherever the kernel lies inside the image
    assert torch.allclose(out[..., 8:24, 8:24], ramp[..., 8:24, 8:24], atol=1e-4)
    point = torch.zeros(1, 1, 15, 15)
    point[0, 0, 7, 7] = 1.0
    smooth = blur(point, 1.0)
    assert torch.isclose(smooth.sum(), torch.tensor(1.0), atol=1e-4)  # mass is kept away from the border
    assert smooth[0, 0, 7, 7] < 0.2 and smooth[0, 0, 7, 8] == smooth[0, 0, 8, 7]


def test_tensor_and_callable_fills():
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(make_fill(x, torch.tensor([7.0, 8.0, 9.0]))[1, 2], torch.full((8, 8), 9.0))
    image = torch.rand(3, 8, 8)
    assert torch.equal(make_fill(x, image)[1], image)
    assert torch.equal(make_fill(x, lambda t: t.flip(-1)), x.flip(-1))
    with pytest.raises(ValueError, match="does not broadcast"):
        make_fill(x, torch.zeros(4))
    with pytest.raises(ValueError, match="must return a tensor"):
        make_fill(x, lambda t: 0.0)
    with pytest.raises(ValueError, match="fill must be one of"):
        make_fill(x, "noise")


def test_auto_fill_is_zero_only_where_zero_is_in_distribution():
    torch.manual_seed(0)
    normalised = torch.randn(4, 3, 16, 16)  # mean-normalised: zero is the mean intensity
    scaled = torch.rand(4, 3, 16, 16)  # [0, 1]: zero is black
    assert zero_in_distribution(normalised) and not zero_in_distribution(scaled)
    assert not zero_in_distribution(normalised + 3)  # shifted: zero is far below the mean
    assert torch.equal(make_fill(normalised, "auto"), torch.zeros_like(normalised))
    assert torch.equal(make_fill(scaled, "auto"), make_fill(scaled, "blur"))
    assert resolve_fill("auto", scaled) == "blur" and resolve_fill("mean", scaled) == "mean"


def test_fill_from_a_bundles_preprocessing():
    scaled = Compose([ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=0.0, b_max=1.0), EnsureTyped("image")])
    assert fill_from_preprocessing(scaled) == "blur"
    assert fill_from_preprocessing(Compose([ScaleIntensityd("image")])) == "blur"
    assert fill_from_preprocessing(Compose([ScaleIntensityd("image", minv=-1.0, maxv=1.0)])) == "auto"
    assert fill_from_preprocessing([ScaleIntensityd("image"), NormalizeIntensityd("image")]) == "zero"  # last one wins
    assert fill_from_preprocessing(Compose([EnsureTyped("image")])) == "auto"
    # the same from config dicts, as a bundle's inference.json holds them
    config = {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -200, "a_max": 300, "b_min": 0.0, "b_max": 1.0},
    ]}  # fmt: skip
    assert fill_from_preprocessing(config) == "blur"
    assert fill_from_preprocessing([{"_target_": "monai.transforms.NormalizeIntensityd", "keys": "image"}]) == "zero"
    assert fill_from_preprocessing(None) == "auto"
