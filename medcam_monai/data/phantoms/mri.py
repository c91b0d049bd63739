"""Brain MRI phantoms (brain tumour MRI set-like): the class is the tumour's look and place."""

from __future__ import annotations

import torch

from medcam_monai.data.phantoms.drawing import (
    PhantomBatch,
    add_blobs,
    classification_batch,
    coordinate_grid,
    ellipsoid,
    shape_for,
    smooth_noise,
    uniform,
    with_noise,
)

__all__ = ["mri_phantoms", "BRAIN_MRI_CLASSES"]

BRAIN_MRI_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def mri_phantoms(
    n: int,
    size: int | tuple[int, ...] = 64,
    spatial_dims: int = 2,
    distractors: int = 4,
    noise: float = 0.03,
    seed: int = 0,
) -> PhantomBatch:
    """T1-contrast-like brain MRI slices (2D) or volumes (3D) where the tumour decides the class.

    Classes (``BRAIN_MRI_CLASSES``): 0 glioma (ring-enhancing ball with a dark core inside the
    brain), 1 meningioma (bright homogeneous ball against the skull), 2 no tumour (empty evidence),
    3 pituitary (small bright ball at the midline skull base, low on axis ``-2``). A bright skull
    ring, a textured brain, two dark ventricles and ``distractors`` soft blobs are in every image.
    The evidence is the tumour's ball.

    Args:
        n: number of cases.
        size: spatial size (int for a square/cube).
        spatial_dims: 2 (slices) or 3 (volumes); axes are ``(H, W)`` or ``(D, H, W)``.
        distractors: soft bright/dark blobs inside the brain.
        noise: standard deviation of additive Gaussian noise.
        seed: makes the batch reproducible.
    """
    shape = shape_for(size, spatial_dims)
    coords = coordinate_grid(shape)
    s = min(shape)
    centre_img = [(d - 1) / 2 for d in shape]
    head_r = [0.42 * d for d in shape]
    head_r[-1] = 0.36 * shape[-1]
    head = ellipsoid(coords, centre_img, head_r)
    brain_r = [r - 0.06 * s for r in head_r]
    brain = ellipsoid(coords, centre_img, brain_r)

    def tumour(k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Intensity ``(value where the tumour is, NaN elsewhere)`` and evidence of class ``k``."""
        empty = torch.zeros(shape, dtype=torch.bool)
        if k == 2:
            return torch.full(shape, float("nan")), empty
        if k == 3:
            r = 0.06 * s
            centre = [m + uniform(g, -0.03, 0.03) * s for m in centre_img]
            centre[-2] = centre_img[-2] + 0.18 * shape[-2]
            ball = ellipsoid(coords, centre, [r] * spatial_dims)
            return torch.where(ball, 0.85, float("nan")), ball
        r = uniform(g, 0.09, 0.12) * s
        direction = torch.randn(spatial_dims, generator=g)
        direction = direction / direction.norm().clamp_min(1e-6)
        if k == 1:  # extra-axial: centred on the inner skull, clipped to the head
            reach = [br * float(u) for br, u in zip(brain_r, direction)]
            centre = [m + d for m, d in zip(centre_img, reach)]
            ball = ellipsoid(coords, centre, [r] * spatial_dims) & head
            return torch.where(ball, 0.8, float("nan")), ball
        depth = uniform(g, 0.1, 0.45)  # intra-axial: well inside the brain
        centre = [m + depth * (br - r) * float(u) for m, br, u in zip(centre_img, brain_r, direction)]
        ball = ellipsoid(coords, centre, [r] * spatial_dims)
        core = ellipsoid(coords, centre, [0.55 * r] * spatial_dims)
        return torch.where(core, 0.15, torch.where(ball, 0.9, float("nan"))), ball

    def draw(k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        tissue = 0.45 + 0.06 * smooth_noise(shape, g, s / 20)
        tissue = add_blobs(tissue, coords, distractors, g, radius=(0.04, 0.08), level=(-0.15, 0.15))
        img = torch.where(head, 0.85, 0.0)
        img = torch.where(brain, tissue, img)
        for side in (-1, 1):
            vc = list(centre_img)
            vc[-1] += side * 0.07 * shape[-1]
            vc[-2] -= 0.05 * shape[-2]
            vr = [0.12 * d for d in shape]
            vr[-1] = 0.04 * shape[-1]
            img = torch.where(ellipsoid(coords, vc, vr), 0.1, img)
        value, evidence = tumour(k, g)
        img = torch.where(evidence, value, img)
        return with_noise(img, noise, g).clamp(0, 1)[None], evidence

    return classification_batch(n, 4, seed, draw, BRAIN_MRI_CLASSES)
