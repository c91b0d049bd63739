"""Fundus phantoms (IDRiD-like retinas): the grade is the type of lesion present."""

from __future__ import annotations

from collections.abc import Sequence

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
    place,
    randint,
    shape_for,
    smooth_noise,
    splat,
    squared_distance,
    stripes,
    uniform,
    with_noise,
)

__all__ = ["fundus_phantoms", "IDRID_GRADES"]

IDRID_GRADES = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "PDR")


_RETINA = (0.78, 0.36, 0.14)
_OPTIC_DISC = (1.0, 0.88, 0.55)
_VESSEL = (0.50, 0.08, 0.05)
_BLOOD = (0.42, 0.04, 0.03)
_EXUDATE = (1.0, 0.92, 0.35)
_NEW_VESSEL = (0.95, 0.15, 0.10)


def fundus_phantoms(
    n: int,
    size: int = 64,
    num_classes: int = 5,
    distractors: int = 4,
    noise: float = 0.02,
    seed: int = 0,
) -> PhantomBatch:
    """Fundus-like RGB photographs where the kind of lesion decides the retinopathy grade.

    An orange retina inside a black field, with an optic disc (bright, on a random side), a dark
    macula at the centre and ``distractors`` vessels from the disc. Grade 0 has no lesion (empty
    evidence); grade 1: 4-7 microaneurysms (tiny dark-red dots); 2: 2-3 haemorrhages (dark-red
    blots); 3: 4-7 hard exudates (yellow spots, the optic disc's colour); 4: one patch of new
    vessels (fine red stripes). Grades follow ``IDRID_GRADES`` for 5 classes. The evidence is the
    union of the lesions.

    Args:
        n: number of cases.
        size: side of the square RGB image.
        num_classes: 2 to 5 (grades ``0 .. num_classes - 1``).
        distractors: vessels drawn from the optic disc.
        noise: standard deviation of additive Gaussian noise.
        seed: makes the batch reproducible.
    """
    check_num_classes(num_classes, 2, 5)
    shape = shape_for(size, 2)
    coords = coordinate_grid(shape)
    centre_img = [(s - 1) / 2 for s in shape]
    dist = squared_distance(coords, centre_img).sqrt()
    field = dist <= 0.47 * size
    shading = (1 - 0.35 * (dist / (0.47 * size)) ** 2).clamp(0, 1) * field

    def lesions(grade: int, g: torch.Generator, avoid) -> tuple[torch.Tensor, torch.Tensor, Sequence[float]]:
        """Opacity and evidence of the lesions of ``grade`` and their colour."""
        zero = torch.zeros(shape)
        if grade == 0:
            return zero, zero.bool(), _BLOOD
        spec = {1: (4, 8, 1.0, _BLOOD), 2: (2, 4, 2.5, _BLOOD), 3: (4, 8, 1.2, _EXUDATE)}
        if grade in spec:
            low, high, sigma, colour = spec[grade]
            centres = [place(g, shape, 3 * sigma, avoid, *_fundus_bounds(size)) for _ in range(randint(g, low, high))]
            alpha = splat(shape, torch.tensor(centres), sigma)
            return alpha, alpha > 0.3, colour
        radius = 0.08 * size
        centre = place(g, shape, radius, avoid, *_fundus_bounds(size))
        patch = ellipsoid(coords, centre, (radius, radius))
        return 0.9 * patch * stripes(coords, centre, 0), patch, _NEW_VESSEL

    def draw(k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.tensor(_RETINA).view(3, 1, 1) * (1 + 0.05 * smooth_noise(shape, g, size / 10))
        side = 1 if uniform(g, 0, 1) < 0.5 else -1
        disc_c = [centre_img[0] + uniform(g, -0.05, 0.05) * size, centre_img[1] + side * 0.28 * size]
        disc_r = 0.08 * size
        img = paint(img, 0.4 * gaussian_spot(coords, centre_img, 0.07 * size), _BLOOD)
        for _ in range(distractors):
            points = curve_points(g, disc_c, uniform(g, 0.3, 0.55) * size, 4 * size)
            img = paint(img, 0.8 * splat(shape, clip_points(points, shape), 0.6), _VESSEL)
        img = paint(img, blur(ellipsoid(coords, disc_c, (disc_r, disc_r)).float(), 1.0), _OPTIC_DISC)
        alpha, evidence, colour = lesions(k, g, [(disc_c, disc_r + 2), (centre_img, 0.07 * size)])
        img = paint(img, alpha, colour) * shading
        return with_noise(img, noise, g).clamp(0, 1) * field, evidence & field

    return classification_batch(n, num_classes, seed, draw, IDRID_GRADES[:num_classes] if num_classes == 5 else ())


def _fundus_bounds(size: int) -> tuple[list[float], list[float]]:
    """Bounds for lesion centres: the central part of the retina, off the black border."""
    return [0.25 * size] * 2, [0.75 * size] * 2
