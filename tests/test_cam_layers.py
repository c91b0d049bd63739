"""Default layers per MONAI family, transformer tokens, and layer errors."""

import pytest
import torch
from torch import nn

from _cam_nets import ConvHead, assert_unchanged, snapshot
from medcam_monai.cam import LayerIndependentOfInputError, LayerNotUsedError, SegHiResGradCAM, default_layer, tokens_to_grid
from medcam_monai.hooks import LayerNotFoundError


def _families():
    from monai.networks import nets

    yield "UNet", lambda: nets.UNet(2, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1), "model.1.submodule.1.submodule", 32
    yield "AttentionUnet", lambda: nets.AttentionUnet(2, 1, 3, channels=(4, 8, 16), strides=(2, 2)), "model.1.submodule.1.submodule", 32
    yield "BasicUNet", lambda: nets.BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4)), "down_4", 32
    yield "SegResNet", lambda: nets.SegResNet(2, init_filters=8, in_channels=1, out_channels=3, blocks_down=(1, 1, 1), blocks_up=(1, 1)), "down_layers.2", 32
    yield "DynUNet", lambda: nets.DynUNet(2, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[4, 8, 16]), "bottleneck", 32
    yield "UNETR", lambda: nets.UNETR(1, 3, img_size=(32, 32), spatial_dims=2, hidden_size=24, mlp_dim=48, num_heads=2, feature_size=4), "vit", 32
    yield "SwinUNETR", lambda: nets.SwinUNETR(in_channels=1, out_channels=3, spatial_dims=2, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)), "encoder10", 64


@pytest.mark.parametrize("family,make,expected,size", list(_families()), ids=[f[0] for f in _families()])
def test_default_layer_per_family_gives_a_non_degenerate_map(family, make, expected, size):
    if family in ("UNETR", "SwinUNETR"):
        pytest.importorskip("einops")
    torch.manual_seed(0)
    net = make().eval()
    assert default_layer(net) == expected
    x = torch.randn(1, 1, size, size)
    before = snapshot(net)
    e = SegHiResGradCAM(net)(x, target=1, pixels="image")
    assert_unchanged(net, before)
    assert e.settings["layer"] == expected
    assert e.map.shape == (1, 1, size, size) and torch.isfinite(e.map).all()
    assert e.map.std() > 0 and e.layer_map.shape[2] < size  # deepest level: coarser than the input
    if family == "UNETR":
        assert e.layer_map.shape[2:] == (2, 2)  # 4 tokens of 16x16 patches, reshaped to the grid


def test_unknown_family_falls_back_to_the_smallest_spatial_layer():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(4, 2, 1))
    assert default_layer(net, torch.randn(1, 1, 8, 8)) == "1"


def test_tokens_to_grid_row_major_and_class_token():
    grid = torch.arange(2 * 3 * 4, dtype=torch.float).reshape(1, 2, 3, 4)  # (B, D, H, W)
    tokens = grid.flatten(2).transpose(1, 2)  # (B, N, D)
    torch.testing.assert_close(tokens_to_grid(tokens, (6, 8)), grid)
    with_cls = torch.cat([torch.zeros(1, 1, 2), tokens], 1)
    torch.testing.assert_close(tokens_to_grid(with_cls, (6, 8)), grid)
    with_registers = torch.cat([torch.full((1, 5, 2), -1.0), tokens], 1)  # a class token and 4 registers (timm *_reg4)
    torch.testing.assert_close(tokens_to_grid(with_registers, (6, 8)), grid)
    with pytest.raises(ValueError, match="Cannot place 7 tokens"):
        tokens_to_grid(torch.zeros(1, 7, 2), (6, 8))


def test_layer_not_found_lists_near_names():
    with pytest.raises(LayerNotFoundError, match="featurs.*Nearest valid names: features"):
        SegHiResGradCAM(ConvHead(2), layer="featurs")


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = ConvHead(2)
        self.spare = nn.Conv2d(1, 2, 1)
        self.table = nn.Embedding(4, 3)

    def forward(self, x):
        if getattr(self, "probe_spare", False):
            self.spare(x)  # runs, but the output does not use it
        e = self.table(torch.zeros(x.shape[0], 4, dtype=torch.long))  # constant tokens
        return self.net(x) + 0 * e.sum()


def test_layer_errors_and_the_network_is_left_as_found():
    model = _Unused().train()
    before = snapshot(model)
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(LayerNotUsedError, match="did not run"):
        SegHiResGradCAM(model, layer="spare")(x, target=1)
    model.probe_spare = True
    with pytest.raises(LayerNotUsedError, match="does not depend on layer 'spare'"):
        SegHiResGradCAM(model, layer="spare", check_layer=False)(x, target=1)
    with pytest.raises(LayerIndependentOfInputError, match="does not depend on the input"):
        SegHiResGradCAM(model, layer="table")(x, target=1)
    assert_unchanged(model, before)
    assert model.training


def _vits():
    import timm
    from monai.networks.nets import ViT

    def timm_vit(**kw):
        return lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, **kw)

    # a class-token ViT's last block's output tokens never reach the decision (only the class token
    # does, through a per-token norm); the last block's first norm feeds its attention
    yield "timm-cls", timm_vit(), "blocks.11.norm1"
    yield "timm-registers", timm_vit(reg_tokens=4), "blocks.11.norm1"
    yield "timm-avg", timm_vit(global_pool="avg"), "norm"  # average-pooled: every final token counts
    yield "monai-vit", lambda: ViT(3, (32, 32), (16, 16), spatial_dims=2, hidden_size=24, mlp_dim=48, num_heads=2, classification=True, num_classes=3), "blocks.11.norm1"


@pytest.mark.parametrize("make,expected", [v[1:] for v in _vits()], ids=[v[0] for v in _vits()])
def test_a_vits_default_layer_is_its_deepest_tokens_that_reach_the_decision_not_its_patch_embedding(make, expected):
    from medcam_monai.cam import GradCAM

    torch.manual_seed(0)
    net = make().eval()
    x = torch.rand(1, 3, 32, 32)
    before = snapshot(net)
    assert default_layer(net, x) == expected  # was the patch embedding's conv, the shallowest layer
    with torch.inference_mode():  # as inside a MONAI evaluator
        assert default_layer(net, torch.rand(1, 3, 32, 32)) == expected
    assert_unchanged(net, before)
    assert all(p.grad is None for p in net.parameters())
    e = GradCAM(net)(x, target=0)
    assert e.settings["layer"] == expected
    assert e.layer_map.shape[2:] == (2, 2)  # 4 tokens of 16 px patches, reshaped to the grid
    assert float(e.layer_map.abs().max()) > 0  # a layer whose tokens reach the decision gives a map
