"""The segmentation network the example deploy app explains (weights come from ``-m``)."""

from monai.networks.nets import UNet
from torch import nn

__all__ = ["segmentation_network"]


def segmentation_network() -> nn.Module:
    """A small 3D MONAI UNet, one CT channel in, four KiTS-style classes out."""
    return UNet(spatial_dims=3, in_channels=1, out_channels=4, channels=(8, 16, 32, 64), strides=(2, 2, 2),
                num_res_units=1)
