"""Axial slices of the real MNI152 T1 with planted lesions: a classification task on real anatomy
whose evidence is known.

Classes (:data:`LESION_CLASSES`): 0 no lesion (a control: the same slices, nothing planted), 1 a
bright nodule (a solid enhancing-like disk), 2 a ring lesion (dark core, bright rim). The evidence of
a lesion case is the lesion's whole extent (a ring's core included); a control has none. Everything
else in the image is real anatomy shared by all classes, so a classifier that decides from anything
but the lesion is wrong, and an explanation that points elsewhere is wrong.

Intensity scaling is **fixed** (:data:`WINDOW`): the stored image is ``clip(T1 / WINDOW, 0, 1)`` in
template units, never scaled by statistics of the image. A per-image rescale (percentiles, z-score)
after planting leaks the class into every pixel: a bright lesion is the top 1 % of the pixels, so the
99.5th percentile moves with it and the whole brain darkens (median brain 0.75 without a lesion, 0.59
with one at 80 px), and a classifier trained on that reads the global brightness and never looks at
the lesion (Grad-CAM pointing 0-4 %). :func:`brain_median_by_class` measures that leak.

Splits never share anatomy or places: ``"train"`` uses slices outside the held-out bands
(``(z // 10) % 4 == 2``, with a 2 mm gap) and lesion centres on one colour of a 48 mm checkerboard;
``"val"``/``"test"`` use the held-out bands and the other colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from medcam_monai.data.anatomy.template import load_template, resample

__all__ = ["LESION_CLASSES", "WINDOW", "FIELD_OF_VIEW_MM", "SliceBank", "slice_bank", "plant_lesion", "lesion_slices",
           "brain_median_by_class"]

LESION_CLASSES = ("no lesion", "bright nodule", "ring lesion")
# fixed intensity window (template T1 units, 1 = the brightest template voxel): lesions add up to
# ~0.65 on white matter (~0.86), so 1.6 keeps them unclipped; the stored image is clip(T1 / WINDOW, 0, 1)
WINDOW = 1.6
FIELD_OF_VIEW_MM = 256.0
_CHECKER_MM = 48.0  # side of the checkerboard cells that split lesion positions
_RADIUS_MM = (12.0, 22.0)  # lesion radius
_EDGE_MM = 2.0  # width of the lesions' soft edge


@dataclass(frozen=True)
class SliceBank:
    """The usable axial slices of the template on a ``size`` x ``size`` canvas of ``256 / size`` mm pixels.

    Args:
        images: ``(S, size, size)`` T1 in template units (``[0, 1]``), axes (x, y) as in the volume.
        parenchyma: ``(S, size, size)`` grey + white matter > 0.5.
        z_mm: ``(S,)`` world z of each slice.
        pixel_mm: pixel size.
        affine: ``(3, 3)`` pixel to RAS (x, y) mm affine of every slice.
    """

    images: np.ndarray
    parenchyma: np.ndarray
    z_mm: np.ndarray
    pixel_mm: float
    affine: np.ndarray

    def slices(self, split: str) -> np.ndarray:
        """Indices of the slices of ``split``."""
        band = (np.floor(self.z_mm / 10).astype(int) % 4) == 2
        if split != "train":
            return np.flatnonzero(band)
        near = ndimage.binary_dilation(band, iterations=2)  # slices are 1 mm apart: keep a gap
        return np.flatnonzero(~near)


@lru_cache(maxsize=4)
def slice_bank(size: int = 64, min_parenchyma: float = 0.35) -> SliceBank:
    """The axial slices whose parenchyma is at least ``min_parenchyma`` of the largest slice's,
    resampled in plane (anti-aliased) onto a ``size`` px canvas of 256 mm, 1 mm apart."""
    if size < 16:
        raise ValueError(f"size must be >= 16 px, got {size}.")
    t = load_template()
    pixel = FIELD_OF_VIEW_MM / size
    nz = t.shape[2]
    affine = np.diag([pixel, pixel, 1.0, 1.0])
    affine[:3, 3] = t.centre - np.array([pixel * (size - 1) / 2, pixel * (size - 1) / 2, t.centre[2]])
    affine[2, 3] = t.affine[2, 3]  # same slices (z) as the template
    shape = (size, size, nz)
    t1 = np.clip(resample(t.t1, t.affine, shape, affine), 0, 1)
    par = resample(t.gm + t.wm, t.affine, shape, affine) > 0.5
    area = par.sum((0, 1))
    keep = np.flatnonzero(area >= min_parenchyma * area.max())
    z_mm = (affine @ np.stack([np.zeros_like(keep), np.zeros_like(keep), keep, np.ones_like(keep)]).astype(float))[2]
    a2 = np.array([[pixel, 0, affine[0, 3]], [0, pixel, affine[1, 3]], [0, 0, 1.0]])
    return SliceBank(np.moveaxis(t1[:, :, keep], 2, 0).copy(), np.moveaxis(par[:, :, keep], 2, 0).copy(), z_mm, pixel, a2)


def plant_lesion(kind: int, size: int, centre, pixel_mm: float, rng: np.random.Generator):
    """The lesion of class ``kind`` (1 bright nodule, 2 ring) at ``centre`` (pixels).

    Returns:
        ``(add, multiply, mask)``: the image becomes ``image * multiply + add`` inside the brain; the
        mask is the lesion's extent (profile > 0.5), its evidence.
    """
    x, y = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    d = np.hypot(x - centre[0], y - centre[1]) * pixel_mm  # mm
    r = rng.uniform(*_RADIUS_MM)
    disk = 1 / (1 + np.exp((d - r) / (_EDGE_MM / 4)))
    if kind == 1:
        return disk * rng.uniform(0.4, 0.6), np.ones_like(disk), disk > 0.5
    if kind == 2:
        core = 1 / (1 + np.exp((d - (r - rng.uniform(5.0, 8.0))) / (_EDGE_MM / 4)))
        rim = np.clip(disk - core, 0, 1)
        return rim * rng.uniform(0.45, 0.65), 1 - core * rng.uniform(0.65, 0.85), disk > 0.5
    raise ValueError(f"kind must be 1 (bright nodule) or 2 (ring lesion), got {kind}.")


def _centre(parenchyma: np.ndarray, pixel_mm: float, split: str, rng: np.random.Generator) -> tuple[float, float]:
    """A lesion centre inside the parenchyma, eroded by the largest lesion radius, on the split's checkerboard colour."""
    inner = ndimage.binary_erosion(parenchyma, iterations=int(np.ceil(_RADIUS_MM[1] / pixel_mm)) + 1)
    if not inner.any():
        inner = ndimage.binary_erosion(parenchyma, iterations=max(1, int(_RADIUS_MM[0] / pixel_mm)))
    x, y = np.nonzero(inner)
    cell = max(1, int(round(_CHECKER_MM / pixel_mm)))
    colour = ((x // cell) + (y // cell)) % 2 == (0 if split == "train" else 1)
    if colour.any():
        x, y = x[colour], y[colour]
    i = rng.integers(len(x))
    return float(x[i] + rng.uniform(-0.5, 0.5)), float(y[i] + rng.uniform(-0.5, 0.5))


def _acquisition(seed: int):
    """Per-case variability, the same for every split: a small rotation/scale/shift of the slice and
    its mask, a bias field, a gain and noise (MONAI; deterministic from ``seed``)."""
    from monai.transforms import Compose, RandAffined, RandBiasFieldd, RandGaussianNoised, RandScaleIntensityd

    keys = ["image", "mask"]
    chain = Compose([
        RandAffined(keys, prob=1.0, rotate_range=0.17, scale_range=(0.08, 0.08), translate_range=(3, 3),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandBiasFieldd("image", prob=0.5, coeff_range=(0.0, 0.15), degree=3),
        RandScaleIntensityd("image", prob=1.0, factors=0.1),
        RandGaussianNoised("image", prob=1.0, std=0.02),
    ])
    chain.set_random_state(seed)
    return chain


def lesion_slices(n: int, size: int = 64, seed: int = 0, split: str = "train", num_classes: int = 3):
    """``n`` slices with planted lesions: the stand-in generator of the ``mni152_lesions`` dataset.

    Classes alternate (``index % num_classes``), so every class has ``n / num_classes`` cases; each
    case draws its slice, lesion place, size and contrast and its acquisition from ``(seed, index)``.

    Args:
        n: number of cases.
        size: canvas side in pixels (``256 / size`` mm pixels).
        seed: makes the cases reproducible (the split seeds of :mod:`medcam_monai.data.standins`).
        split: ``"train"`` or a held-out split (``"val"``, ``"test"``): which slices and places.
        num_classes: 2 (no lesion, bright nodule) or 3 (and ring lesion).

    Returns:
        A :class:`~medcam_monai.data.phantoms.PhantomBatch`: ``images`` ``(n, 1, size, size)`` in
        ``[0, 1]`` (``clip(T1 / WINDOW, 0, 1)``, axes (rows, columns) of the radiological display:
        anterior up, patient's right on the left), ``labels`` ``(n,)``, ``evidence`` the lesion masks,
        ``affine`` the (row, column) to RAS (x, y) mm affine.
    """
    from monai.data import set_track_meta

    from medcam_monai.data.phantoms import PhantomBatch

    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, got {num_classes}.")
    bank = slice_bank(size)
    pool = bank.slices(split)
    images, masks, labels = [], [], []
    set_track_meta(False)  # plain tensors: MONAI's metadata bookkeeping was most of the cost per case
    try:
        for i in range(n):
            rng = np.random.default_rng([seed, i, 13])
            label = i % num_classes
            s = pool[rng.integers(len(pool))]
            image = bank.images[s].astype(np.float32)
            centre = _centre(bank.parenchyma[s], bank.pixel_mm, split, rng)  # controls draw a place too: same randomness
            mask = np.zeros_like(image, dtype=bool)
            if label:
                add, multiply, mask = plant_lesion(label, size, centre, bank.pixel_mm, rng)
                inside = (image > 0) | (add > 0.01)
                image = np.where(inside, image * multiply + add, image).astype(np.float32)
            d = _acquisition(int(rng.integers(2**31)))({"image": torch.from_numpy(image)[None],
                                                         "mask": torch.from_numpy(mask.astype(np.float32))[None]})
            images.append(_as_displayed(torch.clamp(torch.as_tensor(d["image"]).float() / WINDOW, 0.0, 1.0)))
            masks.append(_as_displayed((torch.as_tensor(d["mask"]) > 0.5).float()))
            labels.append(label)
    finally:
        set_track_meta(True)
    return PhantomBatch(
        images=torch.stack(images),
        labels=torch.tensor(labels, dtype=torch.long),
        evidence=torch.stack(masks),
        class_names=LESION_CLASSES[:num_classes],
        affine=torch.as_tensor(_displayed_affine(bank.affine, size)),
    )


def _as_displayed(slice_xy: torch.Tensor) -> torch.Tensor:
    """``(1, x, y)`` RAS slice -> ``(1, rows, columns)`` in the radiological display: anterior at the
    top, the patient's right on the viewer's left (how the PNG files are written and viewed)."""
    return slice_xy.flip(1, 2).transpose(1, 2).contiguous()


def _displayed_affine(affine_xy: np.ndarray, size: int) -> np.ndarray:
    """The (row, column) -> RAS (x, y) mm affine of :func:`_as_displayed` slices."""
    p, x0, y0 = affine_xy[0, 0], affine_xy[0, 2], affine_xy[1, 2]
    return np.array([[0.0, -p, x0 + p * (size - 1)], [-p, 0.0, y0 + p * (size - 1)], [0.0, 0.0, 1.0]])


def brain_median_by_class(images: torch.Tensor, evidence: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """Median of the lesion-free brain pixels per class: equal medians mean no class information
    outside the lesions (the shortcut check; a per-image rescale makes them differ by 10-20 %).

    Args:
        images: ``(N, 1, H, W)``; evidence: ``(N, 1, H, W)`` lesion masks; labels: ``(N,)``.
    """
    brain = (images > 0.15) & (evidence < 0.5)
    return {int(c): float(images[labels == c][brain[labels == c]].median()) for c in labels.unique()}
