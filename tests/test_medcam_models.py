"""Med-CAM runs on the classifiers users deploy: the paper's four timm networks and MONAI's, 2D and 3D.

Networks are built with ``pretrained=False`` (nothing is downloaded) and run at tiny input sizes
for a few steps: this checks wiring (layers found, shapes, the frozen guarantee), not quality.
"""

import pytest
import timm
import torch
from monai.networks.nets import DenseNet121, resnet10

from medcam_monai import MedCAM
from medcam_monai.medcam import LOSS_TERMS
from _model_guard import assert_unchanged, snapshot

CASES = {
    # name: (factory, input shape)
    "timm-vit_base_patch16": (
        lambda: timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=4, img_size=32),
        (1, 3, 32, 32),
    ),
    "timm-convnext_small": (lambda: timm.create_model("convnext_small", pretrained=False, num_classes=7), (1, 3, 32, 32)),
    "timm-resnet18": (lambda: timm.create_model("resnet18", pretrained=False, num_classes=5), (2, 3, 32, 32)),
    "timm-mobilenetv2_100": (lambda: timm.create_model("mobilenetv2_100", pretrained=False, num_classes=4), (1, 3, 32, 32)),
    "timm-resnet18-1channel": (
        lambda: timm.create_model("resnet18", pretrained=False, num_classes=2, in_chans=1),
        (1, 1, 32, 32),
    ),
    "monai-densenet121-2d": (lambda: DenseNet121(spatial_dims=2, in_channels=3, out_channels=3), (1, 3, 32, 32)),
    "monai-resnet10-3d": (lambda: resnet10(spatial_dims=3, n_input_channels=1, num_classes=2), (1, 1, 32, 32, 32)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_medcam_runs_and_leaves_network_unchanged(name):
    factory, shape = CASES[name]
    torch.manual_seed(0)
    model = factory()
    model.eval()
    x = torch.rand(shape)
    before = snapshot(model)
    ex = MedCAM(model, steps=2, early_stopping=None)(x)
    assert ex.map.shape == (shape[0], 1, *shape[2:])
    assert ex.evidence.shape == shape
    assert ex.settings["layer"], "a default activation layer was chosen"
    assert all(torch.isfinite(ex.history[k]).all() for k in LOSS_TERMS)
    assert_unchanged(model, before)


def test_bf16_autocast_runs_and_keeps_fp32_results():
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    ex = MedCAM(model, steps=2, early_stopping=None, amp="bf16")(torch.rand(1, 3, 32, 32))
    assert ex.soft_map.dtype == torch.float32 and ex.history["total"].dtype == torch.float32
    assert torch.isfinite(ex.history["total"]).all()
