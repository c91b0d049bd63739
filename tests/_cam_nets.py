"""Tiny networks with known answers for the CAM tests."""

import torch
from torch import nn

from _model_guard import assert_unchanged, snapshot  # noqa: F401  (re-exported for the CAM tests)


class ConvHead(nn.Module):
    """``features`` (3x3 conv + tanh, stride 1) then a 1x1 convolution ``head``: ``y = W A + b``."""

    def __init__(self, dims: int = 2, in_ch: int = 1, feat: int = 5, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        self.features = nn.Sequential(conv(in_ch, feat, 3, padding=1), nn.Tanh())
        self.head = conv(feat, classes, 1)
        with torch.no_grad():
            self.head.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        return self.head(self.features(x))


class GapClassifier(nn.Module):
    """Conv features, global average pooling and a linear head: ``y_c = w_c . mean_p A(p) + b_c``."""

    def __init__(self, dims: int = 2, classes: int = 4, feat: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        self.features = nn.Sequential(conv(1, feat, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(feat, classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(2).mean(-1))


def tiny_unet(dims: int = 3, out_channels: int = 3, seed: int = 0, norm: str = "instance"):
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(dims, 1, out_channels, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm=norm).eval()


