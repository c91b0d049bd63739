"""Grey/white-matter segmentation cases made from the MNI152 template: the training volume and
held-aside acquisitions of the same head the network never trains on.

An :class:`Acquisition` says how the head is imaged: the grid (voxel size, oblique rotation, an LAS
axis order as many scanners write), the head's pose inside it (a rotation of the anatomy that no
reorientation undoes) and the image's corruption (a smooth bias field, a gamma change, noise). Labels
always come from the template's probability maps resampled onto the case's own grid (partial-volume
fractions, then :func:`~medcam_monai.data.anatomy.template.tissue_labels`), never from the corrupted
image.

- :data:`HELD_ASIDE`: the named cases of the tests, the demo and the docs (2 mm LAS oblique, 3.5 mm);
- :func:`training_datalist`: the uncorrupted template on the network's grid (augmented by the bundle);
- :func:`tissue_cases`: random acquisitions on the network's grid, the stand-in generator of the
  ``mni152_tissue`` dataset (:data:`medcam_monai.data.standins.STANDINS`, seeded per split), so the
  evaluation can regenerate every case's label map.

One template is one subject: these cases measure robustness to acquisition changes, not to
anatomical variation between people.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medcam_monai.data.anatomy.template import (
    TISSUE_CLASSES,
    Template,
    isotropic_grid,
    load_template,
    resample,
    rotation_matrix,
    spacing_for_size,
    tissue_labels,
)

__all__ = [
    "Acquisition",
    "TissueCase",
    "HELD_ASIDE",
    "acquire",
    "normalise",
    "write_case",
    "training_datalist",
    "held_aside_datalist",
    "tissue_cases",
]


@dataclass(frozen=True)
class Acquisition:
    """How the template head is imaged.

    Args:
        spacing: isotropic voxel size in mm.
        grid_rotation_deg: rotation of the voxel grid (an oblique acquisition; recorded in the
            affine, so MONAI's ``Orientationd``/``Spacingd`` undo it).
        flip_lr: the grid's first axis points to the patient's left (LAS).
        head_rotation_deg: rotation of the head about the template centre inside the scanner (not in
            the affine: the network sees a tilted head).
        bias: largest log-amplitude of a smooth multiplicative bias field (the shape of MONAI's
            ``RandBiasField``, Legendre polynomials of degree 3, scaled so that ``max |log field| = bias``;
            0.4 is a 1.5x brightness change across the head); 0: none.
        gamma: intensity gamma (MONAI ``AdjustContrast``); 1: none.
        noise: standard deviation of Gaussian noise, in template units (``[0, 1]``); 0: none.
        seed: seeds the bias field and the noise.
    """

    spacing: float = 3.0
    grid_rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    flip_lr: bool = False
    head_rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    bias: float = 0.0
    gamma: float = 1.0
    noise: float = 0.0
    seed: int = 0


@dataclass
class TissueCase:
    """One acquisition: ``image`` (intensities ``>= 0``, template units), ``label`` (uint8, 0 bg/CSF,
    1 GM, 2 WM), ``brain`` (uint8 mask), all ``(X, Y, Z)`` on the grid ``affine`` (voxel to RAS mm)."""

    image: np.ndarray
    label: np.ndarray
    brain: np.ndarray
    affine: np.ndarray
    acquisition: Acquisition = field(default_factory=Acquisition)


# the held-aside cases: never trained on, other grids and poses than the training volume
HELD_ASIDE: dict[str, Acquisition] = {
    "mni_las2mm_oblique": Acquisition(spacing=2.0, grid_rotation_deg=(8.0, -6.0, 10.0), flip_lr=True,
                                      head_rotation_deg=(6.0, -4.0, 5.0), bias=0.4, gamma=1.2, noise=0.03, seed=1),
    "mni_3p5mm_tilted": Acquisition(spacing=3.5, grid_rotation_deg=(-5.0, 7.0, -8.0),
                                    head_rotation_deg=(-7.0, 5.0, -6.0), bias=0.3, gamma=0.85, noise=0.04, seed=2),
}


def _head_pose(acq: Acquisition, template: Template) -> np.ndarray:
    """The world-to-world map taking scanner positions to template positions: the head rotated about
    the template centre by ``head_rotation_deg`` (its inverse applied to the sample points)."""
    pose = np.eye(4)
    r = rotation_matrix(acq.head_rotation_deg).T
    pose[:3, :3] = r
    pose[:3, 3] = template.centre - r @ template.centre
    return pose


def normalise(image: np.ndarray) -> np.ndarray:
    """The network's intensity scaling: MONAI ``ScaleIntensityRangePercentiles(0.5, 99.5 -> 0..1, clip)``,
    as the bundle's preprocessing applies it (it works for the uint8 template, float copies and EPI alike)."""
    from monai.transforms import ScaleIntensityRangePercentiles

    scale = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None])[0], dtype=np.float32)


def acquire(acq: Acquisition, template: Template | None = None) -> TissueCase:
    """Image the template as ``acq`` says (about 2-4 s: the 1 mm maps are smoothed and resampled)."""
    from monai.transforms import AdjustContrast, RandBiasField, RandGaussianNoise

    t = template or load_template()
    shape, affine = isotropic_grid(acq.spacing, acq.grid_rotation_deg, acq.flip_lr, t)
    sampled = _head_pose(acq, t) @ affine  # scanner voxel -> template world
    image, gm, wm, brain = (resample(v, t.affine, shape, sampled) for v in (t.t1, t.gm, t.wm, t.brain))
    image = torch.from_numpy(np.clip(image, 0.0, 1.0))[None]
    if acq.gamma != 1.0:
        image = AdjustContrast(gamma=acq.gamma)(image)
    if acq.bias:
        # MONAI draws the field's shape; its amplitude grows with the number of coefficients, so it is
        # rescaled here to the stated log-amplitude
        bias_field = RandBiasField(degree=3, coeff_range=(-1.0, 1.0), prob=1.0)
        bias_field.set_random_state(acq.seed)
        log_field = torch.log(torch.as_tensor(bias_field(torch.ones_like(image))))
        log_field = log_field - log_field.mean()
        image = image * torch.exp(log_field * (acq.bias / log_field.abs().max().clamp_min(1e-6)))
    if acq.noise:
        noise = RandGaussianNoise(prob=1.0, mean=0.0, std=acq.noise)
        noise.set_random_state(acq.seed + 1)
        image = noise(image).clamp_min(0.0)  # MRI magnitudes are not negative
    return TissueCase(
        image=np.asarray(image[0], dtype=np.float32),
        label=tissue_labels(gm, wm),
        brain=(brain > 0.5).astype(np.uint8),
        affine=affine,
        acquisition=acq,
    )


def write_case(case: TissueCase, folder: str | os.PathLike, name: str) -> dict[str, str]:
    """Write the case's image (float32), label and brain mask (uint8) as NIfTI files named
    ``<name>_image.nii.gz`` etc. (qform and sform set to the grid); returns the datalist entry."""
    import nibabel as nib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entry = {}
    for key, array in (("image", case.image.astype(np.float32)), ("label", case.label), ("brain", case.brain)):
        img = nib.Nifti1Image(array, case.affine)
        img.set_qform(case.affine, code=1)  # scanner anatomical
        img.set_sform(case.affine, code=1)
        path = folder / f"{name}_{key}.nii.gz"
        nib.save(img, str(path))
        entry[key] = str(path)
    return entry


def _cached(folder: Path, make) -> list[dict]:
    """The datalist in ``folder/datalist.json``, or ``make(tmp)`` written into a private folder and
    renamed into place (concurrent ranks or runs never read half-written files)."""
    index = folder / "datalist.json"
    if not index.is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        entries = make(tmp)
        relative = [{k: (os.path.relpath(v, tmp) if k in ("image", "label", "brain") else v) for k, v in e.items()} for e in entries]
        (tmp / "datalist.json").write_text(json.dumps(relative, indent=1))
        try:
            tmp.rename(folder)
        except OSError:  # another process wrote the same cases first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    entries = json.loads(index.read_text())
    return [{k: (str(folder / v) if k in ("image", "label", "brain") else v) for k, v in e.items()} for e in entries]


def training_datalist(folder: str | os.PathLike, image_size: int = 64) -> list[dict]:
    """The uncorrupted template on the network's RAS grid (:func:`spacing_for_size` of ``image_size``),
    written once under ``folder/mni152_tissue/template_s<image_size>/``: ``[{"image", "label", "brain"}]``."""
    spacing = spacing_for_size(image_size)
    target = Path(folder) / "mni152_tissue" / f"template_s{image_size}"
    return _cached(target, lambda tmp: [write_case(acquire(Acquisition(spacing=spacing)), tmp, "mni152_template")])


def held_aside_datalist(folder: str | os.PathLike, names=None) -> list[dict]:
    """The :data:`HELD_ASIDE` acquisitions (all, or ``names``), each written once under
    ``folder/mni152_tissue/held_aside/<name>/``: ``[{"image", "label", "brain", "name"}]``."""
    names = list(HELD_ASIDE) if names is None else list(names)
    unknown = [n for n in names if n not in HELD_ASIDE]
    if unknown:
        raise ValueError(f"Unknown held-aside case(s) {unknown}; choose from {sorted(HELD_ASIDE)}.")
    entries = []
    for name in names:  # each case in its own folder: asking for one never makes the others
        target = Path(folder) / "mni152_tissue" / "held_aside" / name
        entries += _cached(target, lambda tmp, n=name: [{**write_case(acquire(HELD_ASIDE[n]), tmp, n), "name": n}])
    return entries


def tissue_cases(n: int, size: int = 64, seed: int = 0):
    """``n`` random acquisitions on the network's grid: the stand-in generator of ``mni152_tissue``.

    Each case (drawn from ``(seed, index)``) tilts the head by up to 10 degrees about each axis and
    adds a bias field (0.2-0.4), a gamma (0.8-1.25) and noise (0.02-0.04), on the RAS grid of
    :func:`spacing_for_size` ``(size)``. Images are already scaled as the network sees them
    (:func:`normalise`, idempotent when the bundle applies it again).

    Returns:
        A :class:`~medcam_monai.data.phantoms.PhantomBatch` for segmentation: ``images`` ``(n, 1, X, Y, Z)``,
        ``labels`` the tissue label map, ``evidence`` the grey matter, ``affine`` the grid.
    """
    from medcam_monai.data.phantoms import PhantomBatch

    template = load_template()
    spacing = spacing_for_size(size)
    images, labels, affine = [], [], None
    for i in range(n):
        rng = np.random.default_rng([seed, i, 152])
        acq = Acquisition(
            spacing=spacing,
            head_rotation_deg=tuple(float(v) for v in rng.uniform(-10, 10, 3)),
            bias=float(rng.uniform(0.2, 0.4)),
            gamma=float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))),
            noise=float(rng.uniform(0.02, 0.04)),
            seed=int(rng.integers(2**31)),
        )
        case = acquire(acq, template)
        images.append(normalise(case.image))
        labels.append(case.label)
        affine = case.affine
    labels_t = torch.from_numpy(np.stack(labels)[:, None].astype(np.int64))
    return PhantomBatch(
        images=torch.from_numpy(np.stack(images)[:, None]),
        labels=labels_t,
        evidence=(labels_t == 1).float(),
        class_names=TISSUE_CLASSES,
        task="segmentation",
        affine=None if affine is None else torch.as_tensor(affine),
    )
