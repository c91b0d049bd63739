"""Perturbation backgrounds: what replaces the pixels an explanation leaves out.

Two users share them: Med-CAM's robustness term ``f(m * x + (1 - m) * r)`` and the metrics that
delete or keep pixels (faithfulness, deletion/insertion curves). The background decides whether
masks are minimal (../shared/DESIGN.md, measured): with uniform noise the classifier sees
out-of-distribution images and the mask grows to cover them; with a blurred copy of the image (in
distribution, but without the fine evidence) the mask shrinks to the evidence. ``"blur"`` is
therefore the default.

Every generator takes ``x`` of shape ``(B, C, *spatial)`` and one ``torch.Generator`` per case (so a
case gets the same background alone or in a batch) and returns a tensor shaped like ``x``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks.layers import GaussianFilter

__all__ = ["BACKGROUNDS", "make_background", "is_random_background", "blur", "channel_mean"]

Generators = Sequence[torch.Generator]


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.reshape(*x.shape[:2], -1)
    shape = (*x.shape[:2], *([1] * (x.ndim - 2)))
    return flat.mean(-1).reshape(shape), flat.std(-1, unbiased=False).reshape(shape)


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """Each case/channel's mean of ``x`` ``(B, C, *spatial)``, shaped ``(B, C, 1, ...)`` to broadcast."""
    return _channel_stats(x)[0]


def _per_case(x: torch.Tensor, gens: Generators, draw: Callable[[torch.Tensor, torch.Generator], torch.Tensor]):
    return torch.cat([draw(x[i : i + 1], g) for i, g in enumerate(gens)]).to(x.device)


def uniform_noise(x: torch.Tensor, gens: Generators) -> torch.Tensor:
    """Uniform noise between each case/channel's minimum and maximum."""

    def draw(xi, g):
        flat = xi.reshape(*xi.shape[:2], -1)
        lo = flat.amin(-1).reshape(*xi.shape[:2], *([1] * (xi.ndim - 2))).cpu()
        hi = flat.amax(-1).reshape(lo.shape).cpu()
        return lo + (hi - lo) * torch.rand(xi.shape, generator=g)

    return _per_case(x, gens, draw)


def gaussian_noise(x: torch.Tensor, gens: Generators) -> torch.Tensor:
    """Gaussian noise with each case/channel's mean and standard deviation."""

    def draw(xi, g):
        mean, std = (t.cpu() for t in _channel_stats(xi))
        return mean + std * torch.randn(xi.shape, generator=g)

    return _per_case(x, gens, draw)


def blur(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """A Gaussian-blurred copy of ``x`` ``(B, C, *spatial)``; ``sigma`` in voxels (default 1/16 of the smallest side).

    MONAI's ``GaussianFilter`` pads with zeros, which darkens the border (a constant image keeps
    only about half its value in the corners). Dividing by the blurred image of ones (normalised
    convolution) weights each output by the kernel mass that fell inside the image, so a constant
    image stays exactly constant and the border is not a dark frame the classifier never saw.
    """
    sigma = sigma if sigma is not None else max(1.0, min(x.shape[2:]) / 16)
    gaussian = GaussianFilter(x.ndim - 2, sigma=sigma).to(x.device)
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    return gaussian(x) / gaussian(ones).clamp_min(1e-6)


def blurred(x: torch.Tensor, gens: Generators, sigma: float | None = None) -> torch.Tensor:
    """A Gaussian-blurred copy of the image (:func:`blur`; ``gens`` unused: it is not random)."""
    return blur(x, sigma)


def constant(x: torch.Tensor, gens: Generators, value: float | None = None) -> torch.Tensor:
    """A constant image: ``value``, or each case/channel's mean when None."""
    if value is not None:
        return torch.full_like(x, float(value))
    return channel_mean(x).expand_as(x).clone()


def shuffled_patches(x: torch.Tensor, gens: Generators, patch: int | None = None) -> torch.Tensor:
    """The image cut into cubes of side ``patch`` (default 1/8 of the smallest side), shuffled.

    A border that does not fill a whole patch keeps its own pixels.
    """
    d = x.ndim - 2
    patch = patch or max(1, min(x.shape[2:]) // 8)
    counts = [s // patch for s in x.shape[2:]]
    if min(counts) < 1:
        raise ValueError(f"patch {patch} is larger than the image {tuple(x.shape[2:])}")
    core = x[(Ellipsis, *[slice(0, c * patch) for c in counts])]
    # (B, C, n1, p, n2, p, ...) -> (B, C, n1, n2, ..., p, p, ...) -> (B, C, N, p^d)
    split = core.reshape(*x.shape[:2], *[v for c in counts for v in (c, patch)])
    order = [0, 1] + [2 + 2 * i for i in range(d)] + [3 + 2 * i for i in range(d)]
    patches = split.permute(order).reshape(*x.shape[:2], -1, patch**d)
    perms = torch.stack([torch.randperm(patches.shape[2], generator=g) for g in gens]).to(x.device)
    idx = perms[:, None, :, None].expand(-1, x.shape[1], -1, patch**d)
    shuffled = patches.gather(2, idx).reshape(*x.shape[:2], *counts, *([patch] * d))
    inverse = [0, 1] + [v for i in range(d) for v in (2 + i, 2 + d + i)]
    out = x.clone()
    out[(Ellipsis, *[slice(0, c * patch) for c in counts])] = shuffled.permute(inverse).reshape(core.shape)
    return out


def shuffled_blur(x: torch.Tensor, gens: Generators, patch: int | None = None, sigma: float | None = None) -> torch.Tensor:
    """A blurred copy of the image's shuffled patches: a new in-distribution context at every draw.

    The patches keep the image's local intensities and textures, the shuffle moves them to new
    places (as another image of the data set would), and the blur removes the fine detail, so a
    piece of the evidence that lands elsewhere is not evidence there.
    """
    return blur(shuffled_patches(x, gens, patch), sigma)


BACKGROUNDS: dict[str, Callable[..., torch.Tensor]] = {
    "blur": blurred,
    "shuffle_blur": shuffled_blur,
    "uniform": uniform_noise,
    "gaussian": gaussian_noise,
    "constant": constant,
    "shuffle": shuffled_patches,
}
_RANDOM = {"uniform", "gaussian", "shuffle", "shuffle_blur"}


def is_random_background(kind: str) -> bool:
    """Whether ``kind`` draws a new background every step (else it is computed once)."""
    return kind in _RANDOM


def make_background(x: torch.Tensor, kind: str, generators: Generators, **kwargs) -> torch.Tensor:
    """Background of kind ``kind`` (one of :data:`BACKGROUNDS`) for ``x``; ``kwargs`` go to the generator."""
    if kind not in BACKGROUNDS:
        raise ValueError(f"background must be one of {sorted(BACKGROUNDS)}, got {kind!r}.")
    if len(generators) != x.shape[0]:
        raise ValueError(f"{len(generators)} random generators for a batch of {x.shape[0]}")
    return BACKGROUNDS[kind](x, generators, **kwargs)
