"""Synthetic images whose true evidence is known.

Each generator returns images, labels and the ground-truth evidence mask: the region that alone
decides the class. Distractors (blobs of random brightness) share the image but carry no class
information, so an explanation that points at them is wrong. Everything is deterministic from
``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PhantomBatch", "marker_phantoms"]


@dataclass
class PhantomBatch:
    """Generated cases.

    Args:
        images: ``(N, C, *spatial)`` float32 in about ``[0, 1]``.
        labels: ``(N,)`` long class indices.
        evidence: ``(N, 1, *spatial)`` float32 ``{0, 1}``: where the class is decided.
    """

    images: torch.Tensor
    labels: torch.Tensor
    evidence: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]


def _grid(size: tuple[int, ...]) -> list[torch.Tensor]:
    return list(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij"))


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
    shape = (size,) * spatial_dims if isinstance(size, int) else tuple(size)
    if len(shape) != spatial_dims:
        raise ValueError(f"size {size} does not have {spatial_dims} entries.")
    side = marker or max(3, round(0.125 * min(shape)))
    if side + 2 > min(shape):
        raise ValueError(f"marker side {side} does not fit an image of size {shape}.")
    g = torch.Generator().manual_seed(seed)
    coords = _grid(shape)
    images = torch.zeros(n, channels, *shape)
    evidence = torch.zeros(n, 1, *shape)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    for i in range(n):
        img = torch.full(shape, 0.2)
        for _ in range(distractors):
            centre = [float(torch.randint(0, s, (1,), generator=g)) for s in shape]
            radius = float(torch.empty(1).uniform_(0.05, 0.12, generator=g)) * min(shape)
            level = float(torch.empty(1).uniform_(0.2, 0.7, generator=g))
            d2 = sum((c - m) ** 2 for c, m in zip(coords, centre))
            img = img + level * torch.exp(-d2 / (2 * radius**2))
        start = [int(torch.randint(1, s - side - 1, (1,), generator=g)) for s in shape]
        box = tuple(slice(a, a + side) for a in start)
        k = int(labels[i])
        if absent_class and k == num_classes - 1:
            images[i] = _finish(img, noise, channels, spatial_dims, g)
            continue
        axis, period = k % spatial_dims, 2 + k // spatial_dims
        stripes = ((coords[axis][box] - start[axis]) % period < period / 2).float()
        img[box] = 0.1 + 0.9 * stripes
        evidence[(i, 0, *box)] = 1.0
        images[i] = _finish(img, noise, channels, spatial_dims, g)
    return PhantomBatch(images=images, labels=labels, evidence=evidence)


def _finish(img: torch.Tensor, noise: float, channels: int, spatial_dims: int, g: torch.Generator) -> torch.Tensor:
    img = img + noise * torch.randn(img.shape, generator=g)
    gains = torch.linspace(1.0, 0.8, channels)
    return gains.view(-1, *([1] * spatial_dims)) * img.clamp(0, 1.5)
