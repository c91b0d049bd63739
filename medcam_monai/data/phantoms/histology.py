"""Histology phantoms (BACH-like H&E tissue): the class is the arrangement of nuclei inside one gland."""

from __future__ import annotations

import torch

from medcam_monai.data.phantoms.drawing import (
    PhantomBatch,
    check_num_classes,
    classification_batch,
    coordinate_grid,
    ellipsoid,
    place,
    random_points,
    shape_for,
    smooth_noise,
    splat,
    stripes,
    with_noise,
)

__all__ = ["histology_phantoms", "BACH_CLASSES"]

BACH_CLASSES = ("Normal", "Benign", "InSitu", "Invasive")


# Optical densities of haematoxylin and eosin (Ruifrok & Johnston 2001): RGB = exp(-OD), so the
# images have the colours and the stain mixing of H&E slides.
_HEMATOXYLIN = (0.650, 0.704, 0.286)
_EOSIN = (0.072, 0.990, 0.105)


def _stain(h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    od = torch.stack([h * hc + e * ec for hc, ec in zip(_HEMATOXYLIN, _EOSIN)])
    return torch.exp(-od)


def histology_phantoms(
    n: int,
    size: int = 64,
    num_classes: int = 4,
    distractors: int = 3,
    noise: float = 0.02,
    seed: int = 0,
) -> PhantomBatch:
    """H&E-like RGB tissue where the arrangement of nuclei inside one gland decides the class.

    Pink stroma with a smooth texture and scattered nuclei; ``distractors`` glands (pale discs
    with randomly scattered nuclei) and one evidence gland whose nuclei lie in rows with the class
    pattern :func:`class_stripes` (``BACH_CLASSES`` order for 4 classes). The evidence is the
    evidence gland's disc (about 6% of the image).

    Args:
        n: number of cases.
        size: side of the square RGB image.
        num_classes: 2 to 8.
        distractors: glands without the class pattern.
        noise: standard deviation of additive Gaussian noise.
        seed: makes the batch reproducible.
    """
    check_num_classes(num_classes, 2, 8)
    shape = shape_for(size, 2)
    coords = coordinate_grid(shape)
    radius = 0.14 * size

    def draw(k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        eosin = 0.55 + 0.15 * smooth_noise(shape, g, size / 16)
        nuclei = splat(shape, random_points(g, size * size // 80, shape), 0.7)
        centre = place(g, shape, radius)
        glands = [(centre, radius)]
        for _ in range(distractors):
            c = place(g, shape, radius, avoid=glands)
            glands.append((c, radius))
            disc = ellipsoid(coords, c, (radius, radius))
            eosin = torch.where(disc, 0.15, eosin)
            cluster = splat(shape, random_points(g, size // 3, shape, inside=disc), 0.7)
            nuclei = torch.where(disc, cluster, nuclei)
        evidence = ellipsoid(coords, centre, (radius, radius))
        eosin = torch.where(evidence, 0.15, eosin)
        nuclei = torch.where(evidence, 0.9 * stripes(coords, centre, k), nuclei)
        img = _stain(1.2 * nuclei.clamp(0, 1), eosin.clamp(0, 1))
        return with_noise(img, noise, g).clamp(0, 1), evidence

    return classification_batch(n, num_classes, seed, draw, BACH_CLASSES if num_classes == 4 else ())
