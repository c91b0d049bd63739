"""Generic marker phantoms: one striped square decides the class, among distractor blobs (2D/3D)."""

from __future__ import annotations

import torch

from medcam_monai.data.phantoms.drawing import (
    PhantomBatch,
    add_blobs,
    classification_batch,
    coordinate_grid,
    shape_for,
    stripes,
    with_noise,
)

__all__ = ["marker_phantoms"]


def marker_phantoms(
    n: int,
    size: int | tuple[int, ...] = 32,
    spatial_dims: int = 2,
    num_classes: int = 2,
    channels: int = 1,
    marker: int | None = None,
    distractors: int = 4,
    noise: float = 0.05,
    absent_class: bool = False,
    stripe_scale: int = 1,
    seed: int = 0,
) -> PhantomBatch:
    """Images where one small striped square decides the class, among distractor blobs.

    The class is the orientation/period of the stripes inside the marker (class ``k`` uses stripes
    along spatial axis ``k % spatial_dims`` with period ``2 + k // spatial_dims``), so only the
    marker's pixels carry the decision. The marker covers about 1.5% of a 2D image by default.

    Args:
        n: number of cases.
        size: spatial size (int for a square/cube).
        spatial_dims: 2 or 3.
        num_classes: at least 2.
        channels: image channels (the same pattern in every channel, with per-channel gain).
        marker: side of the marker square in pixels (default ``max(3, round(0.125 * size))``).
        distractors: Gaussian blobs of random brightness per image.
        noise: standard deviation of additive Gaussian noise.
        stripe_scale: multiplies the stripe periods; networks that downsample early (a ResNet stem
            halves the grid twice) need periods of several pixels on large images.
        absent_class: make the last class ``num_classes - 1`` mean "no marker" (empty evidence).
            A classifier trained so must see the marker to call a marker class; without it, one
            marker class is also what the classifier answers for a blank image, and its evidence
            is not needed to keep that decision.
        seed: makes the batch reproducible.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    shape = shape_for(size, spatial_dims)
    side = marker or max(3, round(0.125 * min(shape)))
    if side + 2 > min(shape):
        raise ValueError(f"marker side {side} does not fit an image of size {shape}.")
    coords = coordinate_grid(shape)

    def draw(k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        img = add_blobs(torch.full(shape, 0.2), coords, distractors, g)
        evidence = torch.zeros(shape)
        start = [int(torch.randint(1, s - side - 1, (1,), generator=g)) for s in shape]
        box = tuple(slice(a, a + side) for a in start)
        if not (absent_class and k == num_classes - 1):
            img[box] = 0.1 + 0.9 * stripes(coords, start, k, stripe_scale)[box]
            evidence[box] = 1.0
        return _finish(img, noise, channels, spatial_dims, g), evidence

    return classification_batch(n, num_classes, seed, draw)


def _finish(img: torch.Tensor, noise: float, channels: int, spatial_dims: int, g: torch.Generator) -> torch.Tensor:
    gains = torch.linspace(1.0, 0.8, channels)
    return gains.view(-1, *([1] * spatial_dims)) * with_noise(img, noise, g).clamp(0, 1.5)
