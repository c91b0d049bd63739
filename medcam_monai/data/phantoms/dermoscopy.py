"""Dermoscopy phantoms (HAM10000-like): the class is one dermoscopic structure inside the lesion."""

from __future__ import annotations

import math

import torch

from medcam_monai.data.phantoms.drawing import (
    PhantomBatch,
    blur,
    check_num_classes,
    classification_batch,
    clip_points,
    coordinate_grid,
    curve_points,
    ellipsoid,
    gaussian_spot,
    paint,
    random_points,
    shape_for,
    smooth_noise,
    splat,
    squared_distance,
    stripes,
    uniform,
    with_noise,
)

__all__ = ["dermoscopy_phantoms", "HAM10000_CLASSES"]

HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


_SKIN = (0.88, 0.68, 0.58)
_PIGMENT = (0.55, 0.35, 0.25)
_DARK_PIGMENT = (0.25, 0.13, 0.10)
_HAIR = (0.12, 0.08, 0.06)


def dermoscopy_phantoms(
    n: int,
    size: int = 64,
    num_classes: int = 7,
    distractors: int = 4,
    noise: float = 0.02,
    seed: int = 0,
) -> PhantomBatch:
    """Dermoscopy-like RGB images: one structure inside a skin lesion decides the class.

    Skin with a smooth texture and a dark vignette, a brown lesion of irregular outline near the
    centre, and inside it one round dermoscopic structure whose dark pigment follows the class
    pattern :func:`class_stripes` (``HAM10000_CLASSES`` order for 7 classes). Distractors: plain
    freckles and hairs (``distractors`` of each), hairs crossing the lesion too. The evidence is the
    structure's disc (about 3% of the image).

    Args:
        n: number of cases.
        size: side of the square RGB image.
        num_classes: 2 to 8.
        distractors: number of freckles and of hairs.
        noise: standard deviation of additive Gaussian noise.
        seed: makes the batch reproducible.
    """
    check_num_classes(num_classes, 2, 8)
    shape = shape_for(size, 2)
    coords = coordinate_grid(shape)
    centre_img = [(s - 1) / 2 for s in shape]
    r_field = math.dist([0, 0], centre_img)
    vignette = (1 - 0.5 * (squared_distance(coords, centre_img).sqrt() / r_field) ** 4).clamp(0, 1)
    theta = torch.atan2(coords[0] - centre_img[0], coords[1] - centre_img[1])

    def draw(k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        skin = torch.tensor(_SKIN).view(3, 1, 1) * (1 + 0.04 * smooth_noise(shape, g, size / 12))
        img = skin.expand(3, *shape).clone()
        for _ in range(distractors):
            c = random_points(g, 1, shape)[0].tolist()
            r = uniform(g, 0.025, 0.05) * size
            img = paint(img, 0.7 * gaussian_spot(coords, c, r), _PIGMENT)
        lesion_c = [m + uniform(g, -0.08, 0.08) * size for m in centre_img]
        lesion_r = uniform(g, 0.26, 0.32) * size
        wobble = 1 + 0.12 * torch.sin(3 * theta + uniform(g, 0, 2 * math.pi))
        lesion = squared_distance(coords, lesion_c).sqrt() <= lesion_r * wobble
        img = paint(img, 0.85 * blur(lesion.float(), 1.0), _PIGMENT)
        radius = 0.1 * size
        offset = lesion_r - radius - 1.5
        angle = uniform(g, 0, 2 * math.pi)
        centre = [lesion_c[0] + uniform(g, 0, offset) * math.sin(angle), lesion_c[1] + uniform(g, 0, offset) * math.cos(angle)]
        evidence = ellipsoid(coords, centre, (radius, radius))
        img = paint(img, evidence * stripes(coords, centre, k) * 0.9, _DARK_PIGMENT)
        for _ in range(distractors):
            points = curve_points(g, random_points(g, 1, shape)[0].tolist(), uniform(g, 0.4, 0.8) * size, 4 * size)
            img = paint(img, 0.9 * splat(shape, clip_points(points, shape), 0.5), _HAIR)
        return with_noise(img * vignette, noise, g).clamp(0, 1), evidence

    return classification_batch(n, num_classes, seed, draw, HAM10000_CLASSES if num_classes == 7 else ())
