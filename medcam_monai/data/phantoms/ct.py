"""Abdominal CT phantoms for segmentation (KiTS23-like label maps)."""

from __future__ import annotations

import torch

from medcam_monai.data.phantoms.drawing import (
    PhantomBatch,
    coordinate_grid,
    ellipsoid,
    randint,
    shape_for,
    smooth_noise,
    uniform,
    with_noise,
)

__all__ = ["ct_phantoms", "KITS_LABELS"]

KITS_LABELS = ("background", "kidney", "tumor", "cyst")


def ct_phantoms(
    n: int,
    size: int | tuple[int, ...] = 48,
    spatial_dims: int = 3,
    tumour_probability: float = 0.8,
    cyst_probability: float = 0.4,
    distractors: int = 3,
    noise: float = 0.03,
    seed: int = 0,
) -> PhantomBatch:
    """Contrast CT-like abdomens with a label map (KiTS23 labels) for segmentation.

    Axes are ``(D, H, W)`` in 3D (``H`` anterior to posterior, ``W`` right to left) or ``(H, W)``
    for one axial slice. A body with a fat rim, the spine (bright, posterior), the liver (large,
    kidney-like brightness), ``distractors`` bowel-gas pockets (dark) and two kidneys beside the
    spine. With ``tumour_probability`` a kidney holds a hypo-enhancing tumour ball (label 2), with
    ``cyst_probability`` a dark fluid cyst (label 3). ``labels`` is ``(N, 1, *spatial)`` long with
    0 background, 1 kidney, 2 tumour, 3 cyst (``KITS_LABELS``); ``evidence`` is the tumour
    (``labels == 2``), empty when there is none.

    Args:
        n: number of cases.
        size: spatial size (int for a square/cube).
        spatial_dims: 3 (volumes) or 2 (axial slices).
        tumour_probability: chance that a case has a tumour.
        cyst_probability: chance that a case has a cyst.
        distractors: bowel-gas pockets.
        noise: standard deviation of additive Gaussian noise.
        seed: makes the batch reproducible.
    """
    shape = shape_for(size, spatial_dims)
    coords = coordinate_grid(shape)
    h, w = shape[-2], shape[-1]
    mid = [(d - 1) / 2 for d in shape]

    def at(z: float, y: float, x: float) -> list[float]:
        """A point given as fractions of the body frame, dropped to 2D when the image is a slice."""
        point = [mid[-2] + y * h, mid[-1] + x * w]
        return ([mid[0] + z * shape[0]] if spatial_dims == 3 else []) + point

    def radii(z: float, y: float, x: float) -> list[float]:
        return ([z * shape[0]] if spatial_dims == 3 else []) + [y * h, x * w]

    # body and spine are cylinders along D: ellipses in the (H, W) plane of every slice
    plane = coords[-2:]
    body = ellipsoid(plane, mid[-2:], (0.36 * h, 0.46 * w))
    inner = ellipsoid(plane, mid[-2:], (0.31 * h, 0.41 * w))
    spine = ellipsoid(plane, (mid[-2] + 0.2 * h, mid[-1]), (0.07 * h, 0.07 * w))

    def draw(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.where(body, 0.25, 0.0)
        img = torch.where(inner, 0.45 + 0.03 * smooth_noise(shape, g, min(shape) / 12), img)
        liver = ellipsoid(coords, at(-0.1, -0.08, -0.2), radii(0.3, 0.17, 0.18))
        img = torch.where(liver & inner, 0.62, img)
        for _ in range(distractors):
            c = at(uniform(g, -0.3, 0.3), uniform(g, -0.22, 0.0), uniform(g, 0.0, 0.3))
            img = torch.where(ellipsoid(coords, c, radii(0.05, 0.05, 0.05)) & inner, 0.02, img)
        img = torch.where(spine, 0.95, img)
        label = torch.zeros(shape, dtype=torch.long)
        kidneys = []
        for side in (-1, 1):
            c = at(uniform(g, -0.05, 0.05), 0.12 + uniform(g, -0.02, 0.02), side * 0.2)
            r = radii(0.18, 0.09, 0.065)
            kidneys.append((c, r))
            label[ellipsoid(coords, c, r)] = 1
        img = torch.where(label == 1, 0.72, img)
        for value, code, chance, scale in ((0.5, 2, tumour_probability, 1.0), (0.2, 3, cyst_probability, 0.6)):
            if uniform(g, 0, 1) >= chance:
                continue
            c, r = kidneys[randint(g, 0, 2)]
            spot = [m + uniform(g, -0.6, 0.6) * q for m, q in zip(c, r)]
            rr = scale * uniform(g, 0.05, 0.07) * min(h, w)
            ball = ellipsoid(coords, spot, [rr] * spatial_dims)
            label[ball] = code
            img = torch.where(ball, value, img)
        return with_noise(img, noise, g).clamp(0, 1)[None], label[None]

    g = torch.Generator().manual_seed(seed)
    cases = [draw(g) for _ in range(n)]
    images = torch.stack([c[0] for c in cases]).float()
    labels = torch.stack([c[1] for c in cases])
    return PhantomBatch(
        images=images, labels=labels, evidence=(labels == 2).float(), class_names=KITS_LABELS, task="segmentation"
    )
