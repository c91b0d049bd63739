"""Amortised Med-CAM: the fitted U-Net's file, its safe loading, and the bundle handler that uses it."""

import numpy as np
import pytest
import torch
from _model_guard import assert_unchanged, snapshot
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.transforms import Compose, EnsureTyped, NormalizeIntensityd, ScaleIntensityd
from torch import nn

from medcam_monai import MedCAM
from medcam_monai.handlers import ExplanationHandler
from medcam_monai.medcam import UNET_FORMAT


def tiny_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip


def images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A MedCAM fitted for two epochs on 8 images and its file ``models/medcam_unet.pt`` (a few seconds)."""
    net = tiny_classifier()
    data = images(8)
    before = snapshot(net)
    medcam = MedCAM(net, steps=4, refine_steps=2).fit([data[:4], {"image": data[4:]}], epochs=2)
    assert_unchanged(net, before)  # fitting the explainer never trains the classifier
    path = medcam.save_unet(tmp_path_factory.mktemp("bundle") / "models" / "medcam_unet.pt")
    return net, medcam, path, data


def test_fit_records_the_data_mean_and_a_trained_unet(fitted):
    net, medcam, _path, data = fitted
    assert torch.allclose(medcam.data_mean, data.mean().reshape(1), atol=1e-6)
    fresh = MedCAM(net)._new_unet(2, 1, torch.device("cpu"), None).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in medcam.warm_start.items()), "fit must train the U-Net"


def test_the_amortised_unet_works_at_full_resolution_and_its_file_says_so(fitted, tmp_path):
    net, medcam, path, _data = fitted
    assert MedCAM(net).mask_scale == 0.5  # per image: half resolution
    assert medcam.mask_scale == 1.0 and medcam.settings()["mask_scale"] == 1.0  # fitted: full resolution
    assert torch.load(path, map_location="cpu", weights_only=True)["mask_scale"] == 1.0
    assert MedCAM(net, warm_start=path).mask_scale == 1.0  # the file brings its scale
    assert MedCAM(net, warm_start=medcam.warm_start).mask_scale == 0.5  # a bare state dict has none
    assert MedCAM(net, mask_scale=0.25).fit([images(4)], epochs=1).mask_scale == 0.25  # a chosen scale stays
    with pytest.raises(ValueError, match="mask_scale"):
        MedCAM(net, warm_start=path, mask_scale=0.5)
    with pytest.raises(ValueError, match="mask_scale"):
        MedCAM(net, mask_scale=0)


def test_the_unet_file_loads_with_weights_only_and_round_trips(fitted):
    net, medcam, path, data = fitted
    payload = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and containers only
    assert payload["format"] == UNET_FORMAT and payload["spatial_dims"] == 2 and payload["in_channels"] == 1
    assert not list(path.parent.glob("*.part")), "nothing half-written is left"
    loaded = MedCAM(net, steps=4, refine_steps=2, warm_start=path)
    assert loaded.warm_start_source == str(path)
    for k, v in medcam.warm_start.items():
        assert torch.equal(loaded.warm_start[k], v)
    assert torch.equal(loaded.data_mean, medcam.data_mean)
    # the same start gives the same explanation
    a, b = medcam(data[:2]), loaded(data[:2])
    assert torch.equal(a.map, b.map) and torch.allclose(a.soft_map, b.soft_map)
    assert (a.steps <= 4).all()


def test_bad_unet_files_get_clear_errors(fitted, tmp_path):
    net, _medcam, path, _data = fitted
    with pytest.raises(FileNotFoundError, match="fit"):
        MedCAM(net, warm_start=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unet_features"):
        MedCAM(net, warm_start=path, unet_features=(4, 4, 8, 16, 32, 4))
    junk = tmp_path / "junk.pt"
    torch.save({"format": "something else"}, junk)
    with pytest.raises(ValueError, match="not a Med-CAM U-Net file"):
        MedCAM(net, warm_start=junk)
    with pytest.raises(RuntimeError, match="fit"):
        MedCAM(net).save_unet(tmp_path / "none.pt")


def run_handler(net, handler, preprocessing=None, n=2):
    rng = np.random.default_rng(0)
    data = [{"image": rng.random((1, 32, 32), dtype=np.float32), "label": i % 3} for i in range(n)]
    transform = preprocessing or Compose([EnsureTyped(keys="image", track_meta=True)])
    loader = DataLoader(Dataset(data=data, transform=transform), batch_size=n, num_workers=0)
    SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=net, val_handlers=[handler]).run()


def test_handler_starts_from_the_bundles_fitted_unet_when_present(fitted, tmp_path):
    net, medcam, path, _data = fitted
    handler = ExplanationHandler(
        "medcam", {"steps": 4, "refine_steps": 2}, output_dir=tmp_path / "out", medcam_unet=path
    )
    run_handler(net, handler)
    assert handler.explainer.warm_start_source == str(path)
    assert handler.explainer.mask_scale == medcam.mask_scale == 1.0
    for k, v in medcam.warm_start.items():
        assert torch.equal(handler.explainer.warm_start[k], v)
    # a bundle without the file explains each image from scratch
    missing = ExplanationHandler(
        "medcam", {"steps": 4}, output_dir=tmp_path / "out2", medcam_unet=tmp_path / "models" / "medcam_unet.pt"
    )
    run_handler(net, missing)
    assert missing.explainer.warm_start is None


@pytest.mark.parametrize(
    "transform, fill",
    [(NormalizeIntensityd(keys="image"), "zero"), (ScaleIntensityd(keys="image", minv=0.0, maxv=1.0), "blur")],
)
def test_handler_takes_the_fill_from_the_bundles_preprocessing(transform, fill, tmp_path):
    preprocessing = Compose([EnsureTyped(keys="image", track_meta=True), transform])
    handler = ExplanationHandler(
        "medcam", {"steps": 2, "early_stopping": None}, output_dir=tmp_path, preprocessing=preprocessing
    )
    run_handler(tiny_classifier(), handler, preprocessing)
    assert handler.explainer.fill == fill
