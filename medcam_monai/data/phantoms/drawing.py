"""Shared drawing code of the phantoms: the batch they return, coordinates, shapes, noise, stripes."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from scipy import ndimage

__all__ = ["PhantomBatch", "class_stripes", "coordinate_grid", "shape_for", "check_num_classes", "uniform", "randint", "squared_distance", "gaussian_spot", "ellipsoid", "add_blobs", "stripes", "with_noise", "blur", "spot_peak", "smooth_noise", "splat", "random_points", "place", "paint", "classification_batch", "curve_points", "clip_points"]


@dataclass
class PhantomBatch:
    """Generated cases.

    Args:
        images: ``(N, C, *spatial)`` float32 in about ``[0, 1]``.
        labels: classification: ``(N,)`` long class indices. Segmentation (``task ==
            "segmentation"``): ``(N, 1, *spatial)`` long label map.
        evidence: ``(N, 1, *spatial)`` float32 ``{0, 1}``: where the class is decided. For
            segmentation: the region of the class an explanation is asked about (the tumour for
            :func:`ct_phantoms`); the evidence of any label ``c`` is ``labels == c``.
        class_names: names of the class indices (or label values), in order; empty when generic.
        task: ``"classification"`` or ``"segmentation"``.
        affine: ``(D + 1, D + 1)`` voxel-to-world (RAS mm) affine shared by the cases, when they have a
            real geometry (cases made from real anatomy); None for generated pictures.
    """

    images: torch.Tensor
    labels: torch.Tensor
    evidence: torch.Tensor
    class_names: tuple[str, ...] = ()
    task: str = "classification"
    affine: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]


def coordinate_grid(size: tuple[int, ...]) -> list[torch.Tensor]:
    return list(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij"))


def shape_for(size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    shape = (size,) * spatial_dims if isinstance(size, int) else tuple(int(s) for s in size)
    if len(shape) != spatial_dims:
        raise ValueError(f"size {size} does not have {spatial_dims} entries.")
    return shape


def check_num_classes(num_classes: int, low: int, high: int) -> None:
    if not low <= num_classes <= high:
        raise ValueError(f"num_classes must be between {low} and {high} for this generator, got {num_classes}.")


def uniform(g: torch.Generator, low: float, high: float) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=g))


def randint(g: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (1,), generator=g))


def squared_distance(coords: list[torch.Tensor], centre: Sequence[float]) -> torch.Tensor:
    return sum((c - m) ** 2 for c, m in zip(coords, centre))


def gaussian_spot(coords: list[torch.Tensor], centre: Sequence[float], radius: float) -> torch.Tensor:
    """Gaussian bump of peak 1 and standard deviation ``radius``.

    The exponent is capped so that far pixels get ~1e-35 rather than denormal floats, which make
    every later operation on the image many times slower on the CPU.
    """
    return torch.exp(-(squared_distance(coords, centre) / (2 * radius**2)).clamp(max=80.0))


def ellipsoid(coords: list[torch.Tensor], centre: Sequence[float], radii: Sequence[float]) -> torch.Tensor:
    """Boolean ellipsoid (disc in 2D) with semi-axes ``radii`` along the spatial axes."""
    return sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii)) <= 1.0


def add_blobs(
    img: torch.Tensor,
    coords: list[torch.Tensor],
    count: int,
    g: torch.Generator,
    radius: tuple[float, float] = (0.05, 0.12),
    level: tuple[float, float] = (0.2, 0.7),
) -> torch.Tensor:
    """Add ``count`` Gaussian blobs (radius as a fraction of the smallest side, random level)."""
    shape = img.shape
    for _ in range(count):
        centre = [float(torch.randint(0, s, (1,), generator=g)) for s in shape]
        r = uniform(g, *radius) * min(shape)
        lvl = uniform(g, *level)
        img = img + lvl * gaussian_spot(coords, centre, r)
    return img


def class_stripes(k: int, spatial_dims: int, scale: int = 1) -> tuple[int, int]:
    """The stripe pattern of class ``k``: ``(axis, period)``.

    Class ``k`` has stripes along spatial axis ``k % spatial_dims`` with period
    ``scale * (2 + k // spatial_dims)`` pixels, so classes differ in orientation or in period.
    """
    return k % spatial_dims, scale * (2 + k // spatial_dims)


def stripes(coords: list[torch.Tensor], origin: Sequence[float], k: int, scale: int = 1) -> torch.Tensor:
    """Class ``k``'s stripes (``{0, 1}``) over the whole grid, phase-locked to ``origin``."""
    axis, period = class_stripes(k, len(coords), scale)
    return ((coords[axis] - origin[axis]) % period < period / 2).float()


def with_noise(img: torch.Tensor, noise: float, g: torch.Generator) -> torch.Tensor:
    return img + noise * torch.randn(img.shape, generator=g)


def blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of one ``(*spatial)`` image (zero outside).

    scipy rather than a torch convolution: single-channel convolutions of small images are an order
    of magnitude slower in torch on the CPU, and generation must stay fast.
    """
    return torch.from_numpy(ndimage.gaussian_filter(img.numpy(), sigma, mode="constant")).to(img.dtype)


@functools.lru_cache(maxsize=None)
def spot_peak(sigma: float, spatial_dims: int) -> float:
    """Peak value of a blurred unit impulse, to scale spots to a peak of 1."""
    delta = torch.zeros((2 * math.ceil(4 * sigma) + 1,) * spatial_dims)
    delta[tuple(s // 2 for s in delta.shape)] = 1.0
    return float(blur(delta, sigma).max())


def smooth_noise(shape: tuple[int, ...], g: torch.Generator, sigma: float) -> torch.Tensor:
    """Smooth random texture with zero mean and unit standard deviation."""
    field = blur(torch.randn(shape, generator=g), sigma)
    return (field - field.mean()) / field.std().clamp_min(1e-6)


def splat(shape: tuple[int, ...], points: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian spots of peak ~1 at ``points`` ``(P, spatial_dims)``, drawn in one blur.

    Drawing spots as impulses blurred once costs one filter for any number of spots (a Gaussian
    per spot costs a full-grid evaluation each).
    """
    impulses = torch.zeros(shape)
    if len(points):
        idx = points.round().long()
        for axis, s in enumerate(shape):
            idx[:, axis] = idx[:, axis].clamp(0, s - 1)
        impulses.index_put_(tuple(idx.T), torch.ones(len(idx)), accumulate=True)
    return (blur(impulses, sigma) / spot_peak(sigma, len(shape))).clamp(0, 1)


def random_points(g: torch.Generator, count: int, shape: tuple[int, ...], inside: torch.Tensor | None = None):
    """``count`` random voxel positions ``(count, spatial_dims)``, within ``inside`` when given."""
    if inside is None:
        return torch.stack([torch.randint(0, s, (count,), generator=g) for s in shape], 1).float()
    candidates = torch.nonzero(inside).float()
    if not len(candidates):
        return candidates
    return candidates[torch.randint(0, len(candidates), (count,), generator=g)]


def place(
    g: torch.Generator,
    shape: tuple[int, ...],
    radius: float,
    avoid: Sequence[tuple[Sequence[float], float]] = (),
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
    tries: int = 50,
) -> list[float]:
    """A random centre at least ``radius`` from the border and clear of the ``avoid`` discs.

    ``low``/``high`` bound the centre per axis. After ``tries`` draws the last one is kept, so a
    crowded image never loops forever (the result stays deterministic).
    """
    low = low if low is not None else [radius + 1] * len(shape)
    high = high if high is not None else [s - radius - 2 for s in shape]
    centre: list[float] = []
    for _ in range(tries):
        centre = [uniform(g, lo, max(lo, hi)) for lo, hi in zip(low, high)]
        if all(math.dist(centre, c) > radius + r for c, r in avoid):
            break
    return centre


def paint(img: torch.Tensor, alpha: torch.Tensor, colour: Sequence[float]) -> torch.Tensor:
    """Composite ``colour`` (one value per channel) over ``img`` ``(C, *spatial)`` with opacity ``alpha``."""
    col = torch.tensor(colour, dtype=img.dtype).view(-1, *([1] * alpha.ndim))
    return img * (1 - alpha) + col * alpha


def classification_batch(
    n: int,
    num_classes: int,
    seed: int,
    draw: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    class_names: Sequence[str] = (),
) -> PhantomBatch:
    """Draw the labels, then each case with ``draw(label, generator) -> (image, evidence)``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    cases = [draw(int(k), g) for k in labels]
    images = torch.stack([c[0] for c in cases]).float()
    evidence = torch.stack([c[1] for c in cases]).float()[:, None]
    return PhantomBatch(images=images, labels=labels, evidence=evidence, class_names=tuple(class_names))


def curve_points(g: torch.Generator, start: Sequence[float], length: float, samples: int) -> torch.Tensor:
    """Points along a gently bending 2D curve (a hair or a vessel) from ``start``."""
    angle = uniform(g, 0, 2 * math.pi)
    bend = uniform(g, -1.5, 1.5) / max(length, 1.0)
    t = torch.linspace(0, length, samples)
    theta = angle + bend * t
    step = length / max(samples - 1, 1)
    y = start[0] + torch.cumsum(step * torch.sin(theta), 0)
    x = start[1] + torch.cumsum(step * torch.cos(theta), 0)
    return torch.stack([y, x], 1)


def clip_points(points: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    keep = ((points >= 0) & (points <= torch.tensor(shape, dtype=points.dtype) - 1)).all(1)
    return points[keep]
