"""Synthetic images whose true evidence is known.

Each generator returns images, labels and the ground-truth evidence mask: the region that alone
decides the class. Distractors (blobs, vessels, hairs, organs, ... of the modality) share the image
but carry no class information, so an explanation that points at them is wrong. Everything is
deterministic from ``seed``.

One generator per modality of the project's datasets (``data_manifests/``), each a stand-in with
the real set's classes in the manifest's order:

- :func:`marker_phantoms`: a striped square among blobs (any number of classes, 2D/3D).
- :func:`histology_phantoms`: H&E-like tissue (BACH: Normal, Benign, InSitu, Invasive); the class
  is the arrangement of nuclei inside one gland, other glands hold scattered nuclei.
- :func:`dermoscopy_phantoms`: a skin lesion (HAM10000's seven classes); the class is the pattern
  of one dermoscopic structure inside the lesion, among hairs and freckles.
- :func:`fundus_phantoms`: a retina (IDRiD grades 0-4); the grade is the type of lesion present,
  among vessels, the optic disc and the macula. Grade 0 has no lesion (empty evidence).
- :func:`mri_phantoms`: brain MRI slices or volumes (glioma, meningioma, no tumour, pituitary);
  the class is the tumour's look and place, among ventricles and blobs. "No tumour": empty evidence.
- :func:`ct_phantoms`: abdominal CT for segmentation (KiTS23 labels: kidney 1, tumour 2, cyst 3),
  among liver, spine and bowel gas; ``labels`` is the label map.

The class patterns of the striped generators share one rule (:func:`class_stripes`), so a period
or orientation means the same class family everywhere.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from scipy import ndimage

__all__ = [
    "PhantomBatch",
    "class_stripes",
    "marker_phantoms",
    "histology_phantoms",
    "dermoscopy_phantoms",
    "fundus_phantoms",
    "mri_phantoms",
    "ct_phantoms",
    "BACH_CLASSES",
    "HAM10000_CLASSES",
    "IDRID_GRADES",
    "BRAIN_MRI_CLASSES",
    "KITS_LABELS",
]

# Class names in the order of the matching data manifest, so a phantom label means the same class
# as the real dataset's label.
BACH_CLASSES = ("Normal", "Benign", "InSitu", "Invasive")
HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
IDRID_GRADES = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "PDR")
BRAIN_MRI_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
KITS_LABELS = ("background", "kidney", "tumor", "cyst")


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
    """

    images: torch.Tensor
    labels: torch.Tensor
    evidence: torch.Tensor
    class_names: tuple[str, ...] = ()
    task: str = "classification"

    def __len__(self) -> int:
        return self.images.shape[0]


# ---------------------------------------------------------------------------------------------
# Shared drawing code
# ---------------------------------------------------------------------------------------------


def _grid(size: tuple[int, ...]) -> list[torch.Tensor]:
    return list(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij"))


def _shape(size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    shape = (size,) * spatial_dims if isinstance(size, int) else tuple(int(s) for s in size)
    if len(shape) != spatial_dims:
        raise ValueError(f"size {size} does not have {spatial_dims} entries.")
    return shape


def _check_classes(num_classes: int, low: int, high: int) -> None:
    if not low <= num_classes <= high:
        raise ValueError(f"num_classes must be between {low} and {high} for this generator, got {num_classes}.")


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=g))


def _randint(g: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (1,), generator=g))


def _sq_dist(coords: list[torch.Tensor], centre: Sequence[float]) -> torch.Tensor:
    return sum((c - m) ** 2 for c, m in zip(coords, centre))


def _gaussian(coords: list[torch.Tensor], centre: Sequence[float], radius: float) -> torch.Tensor:
    """Gaussian bump of peak 1 and standard deviation ``radius``.

    The exponent is capped so that far pixels get ~1e-35 rather than denormal floats, which make
    every later operation on the image many times slower on the CPU.
    """
    return torch.exp(-(_sq_dist(coords, centre) / (2 * radius**2)).clamp(max=80.0))


def _ellipsoid(coords: list[torch.Tensor], centre: Sequence[float], radii: Sequence[float]) -> torch.Tensor:
    """Boolean ellipsoid (disc in 2D) with semi-axes ``radii`` along the spatial axes."""
    return sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii)) <= 1.0


def _add_blobs(
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
        r = _uniform(g, *radius) * min(shape)
        lvl = _uniform(g, *level)
        img = img + lvl * _gaussian(coords, centre, r)
    return img


def class_stripes(k: int, spatial_dims: int, scale: int = 1) -> tuple[int, int]:
    """The stripe pattern of class ``k``: ``(axis, period)``.

    Class ``k`` has stripes along spatial axis ``k % spatial_dims`` with period
    ``scale * (2 + k // spatial_dims)`` pixels, so classes differ in orientation or in period.
    """
    return k % spatial_dims, scale * (2 + k // spatial_dims)


def _stripes(coords: list[torch.Tensor], origin: Sequence[float], k: int, scale: int = 1) -> torch.Tensor:
    """Class ``k``'s stripes (``{0, 1}``) over the whole grid, phase-locked to ``origin``."""
    axis, period = class_stripes(k, len(coords), scale)
    return ((coords[axis] - origin[axis]) % period < period / 2).float()


def _noisy(img: torch.Tensor, noise: float, g: torch.Generator) -> torch.Tensor:
    return img + noise * torch.randn(img.shape, generator=g)


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of one ``(*spatial)`` image (zero outside).

    scipy rather than a torch convolution: single-channel convolutions of small images are an order
    of magnitude slower in torch on the CPU, and generation must stay fast.
    """
    return torch.from_numpy(ndimage.gaussian_filter(img.numpy(), sigma, mode="constant")).to(img.dtype)


@functools.lru_cache(maxsize=None)
def _spot_peak(sigma: float, spatial_dims: int) -> float:
    """Peak value of a blurred unit impulse, to scale spots to a peak of 1."""
    delta = torch.zeros((2 * math.ceil(4 * sigma) + 1,) * spatial_dims)
    delta[tuple(s // 2 for s in delta.shape)] = 1.0
    return float(_blur(delta, sigma).max())


def _smooth_noise(shape: tuple[int, ...], g: torch.Generator, sigma: float) -> torch.Tensor:
    """Smooth random texture with zero mean and unit standard deviation."""
    field = _blur(torch.randn(shape, generator=g), sigma)
    return (field - field.mean()) / field.std().clamp_min(1e-6)


def _splat(shape: tuple[int, ...], points: torch.Tensor, sigma: float) -> torch.Tensor:
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
    return (_blur(impulses, sigma) / _spot_peak(sigma, len(shape))).clamp(0, 1)


def _random_points(g: torch.Generator, count: int, shape: tuple[int, ...], inside: torch.Tensor | None = None):
    """``count`` random voxel positions ``(count, spatial_dims)``, within ``inside`` when given."""
    if inside is None:
        return torch.stack([torch.randint(0, s, (count,), generator=g) for s in shape], 1).float()
    candidates = torch.nonzero(inside).float()
    if not len(candidates):
        return candidates
    return candidates[torch.randint(0, len(candidates), (count,), generator=g)]


def _place(
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
        centre = [_uniform(g, lo, max(lo, hi)) for lo, hi in zip(low, high)]
        if all(math.dist(centre, c) > radius + r for c, r in avoid):
            break
    return centre


def _paint(img: torch.Tensor, alpha: torch.Tensor, colour: Sequence[float]) -> torch.Tensor:
    """Composite ``colour`` (one value per channel) over ``img`` ``(C, *spatial)`` with opacity ``alpha``."""
    col = torch.tensor(colour, dtype=img.dtype).view(-1, *([1] * alpha.ndim))
    return img * (1 - alpha) + col * alpha


def _classification_batch(
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


# ---------------------------------------------------------------------------------------------
# Generic marker
# ---------------------------------------------------------------------------------------------


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
    stripe_scale: int = 1,
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
        stripe_scale: multiplies the stripe periods; networks that downsample early (a ResNet stem
            halves the grid twice) need periods of several pixels on large images.
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
    shape = _shape(size, spatial_dims)
    side = marker or max(3, round(0.125 * min(shape)))
    if side + 2 > min(shape):
        raise ValueError(f"marker side {side} does not fit an image of size {shape}.")
    coords = _grid(shape)

    def draw(k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        img = _add_blobs(torch.full(shape, 0.2), coords, distractors, g)
        evidence = torch.zeros(shape)
        start = [int(torch.randint(1, s - side - 1, (1,), generator=g)) for s in shape]
        box = tuple(slice(a, a + side) for a in start)
        if not (absent_class and k == num_classes - 1):
            img[box] = 0.1 + 0.9 * _stripes(coords, start, k, stripe_scale)[box]
            evidence[box] = 1.0
        return _finish(img, noise, channels, spatial_dims, g), evidence

    return _classification_batch(n, num_classes, seed, draw)


def _finish(img: torch.Tensor, noise: float, channels: int, spatial_dims: int, g: torch.Generator) -> torch.Tensor:
    gains = torch.linspace(1.0, 0.8, channels)
    return gains.view(-1, *([1] * spatial_dims)) * _noisy(img, noise, g).clamp(0, 1.5)


# ---------------------------------------------------------------------------------------------
# Histology (BACH-like)
# ---------------------------------------------------------------------------------------------

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
    _check_classes(num_classes, 2, 8)
    shape = _shape(size, 2)
    coords = _grid(shape)
    radius = 0.14 * size

    def draw(k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        eosin = 0.55 + 0.15 * _smooth_noise(shape, g, size / 16)
        nuclei = _splat(shape, _random_points(g, size * size // 80, shape), 0.7)
        centre = _place(g, shape, radius)
        glands = [(centre, radius)]
        for _ in range(distractors):
            c = _place(g, shape, radius, avoid=glands)
            glands.append((c, radius))
            disc = _ellipsoid(coords, c, (radius, radius))
            eosin = torch.where(disc, 0.15, eosin)
            cluster = _splat(shape, _random_points(g, size // 3, shape, inside=disc), 0.7)
            nuclei = torch.where(disc, cluster, nuclei)
        evidence = _ellipsoid(coords, centre, (radius, radius))
        eosin = torch.where(evidence, 0.15, eosin)
        nuclei = torch.where(evidence, 0.9 * _stripes(coords, centre, k), nuclei)
        img = _stain(1.2 * nuclei.clamp(0, 1), eosin.clamp(0, 1))
        return _noisy(img, noise, g).clamp(0, 1), evidence

    return _classification_batch(n, num_classes, seed, draw, BACH_CLASSES if num_classes == 4 else ())


# ---------------------------------------------------------------------------------------------
# Dermoscopy (HAM10000-like)
# ---------------------------------------------------------------------------------------------

_SKIN = (0.88, 0.68, 0.58)
_PIGMENT = (0.55, 0.35, 0.25)
_DARK_PIGMENT = (0.25, 0.13, 0.10)
_HAIR = (0.12, 0.08, 0.06)


def _curve_points(g: torch.Generator, start: Sequence[float], length: float, samples: int) -> torch.Tensor:
    """Points along a gently bending 2D curve (a hair or a vessel) from ``start``."""
    angle = _uniform(g, 0, 2 * math.pi)
    bend = _uniform(g, -1.5, 1.5) / max(length, 1.0)
    t = torch.linspace(0, length, samples)
    theta = angle + bend * t
    step = length / max(samples - 1, 1)
    y = start[0] + torch.cumsum(step * torch.sin(theta), 0)
    x = start[1] + torch.cumsum(step * torch.cos(theta), 0)
    return torch.stack([y, x], 1)


def _clip_points(points: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    keep = ((points >= 0) & (points <= torch.tensor(shape, dtype=points.dtype) - 1)).all(1)
    return points[keep]


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
    _check_classes(num_classes, 2, 8)
    shape = _shape(size, 2)
    coords = _grid(shape)
    centre_img = [(s - 1) / 2 for s in shape]
    r_field = math.dist([0, 0], centre_img)
    vignette = (1 - 0.5 * (_sq_dist(coords, centre_img).sqrt() / r_field) ** 4).clamp(0, 1)
    theta = torch.atan2(coords[0] - centre_img[0], coords[1] - centre_img[1])

    def draw(k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        skin = torch.tensor(_SKIN).view(3, 1, 1) * (1 + 0.04 * _smooth_noise(shape, g, size / 12))
        img = skin.expand(3, *shape).clone()
        for _ in range(distractors):
            c = _random_points(g, 1, shape)[0].tolist()
            r = _uniform(g, 0.025, 0.05) * size
            img = _paint(img, 0.7 * _gaussian(coords, c, r), _PIGMENT)
        lesion_c = [m + _uniform(g, -0.08, 0.08) * size for m in centre_img]
        lesion_r = _uniform(g, 0.26, 0.32) * size
        wobble = 1 + 0.12 * torch.sin(3 * theta + _uniform(g, 0, 2 * math.pi))
        lesion = _sq_dist(coords, lesion_c).sqrt() <= lesion_r * wobble
        img = _paint(img, 0.85 * _blur(lesion.float(), 1.0), _PIGMENT)
        radius = 0.1 * size
        offset = lesion_r - radius - 1.5
        angle = _uniform(g, 0, 2 * math.pi)
        centre = [lesion_c[0] + _uniform(g, 0, offset) * math.sin(angle), lesion_c[1] + _uniform(g, 0, offset) * math.cos(angle)]
        evidence = _ellipsoid(coords, centre, (radius, radius))
        img = _paint(img, evidence * _stripes(coords, centre, k) * 0.9, _DARK_PIGMENT)
        for _ in range(distractors):
            points = _curve_points(g, _random_points(g, 1, shape)[0].tolist(), _uniform(g, 0.4, 0.8) * size, 4 * size)
            img = _paint(img, 0.9 * _splat(shape, _clip_points(points, shape), 0.5), _HAIR)
        return _noisy(img * vignette, noise, g).clamp(0, 1), evidence

    return _classification_batch(n, num_classes, seed, draw, HAM10000_CLASSES if num_classes == 7 else ())


# ---------------------------------------------------------------------------------------------
# Fundus (IDRiD-like)
# ---------------------------------------------------------------------------------------------

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
    _check_classes(num_classes, 2, 5)
    shape = _shape(size, 2)
    coords = _grid(shape)
    centre_img = [(s - 1) / 2 for s in shape]
    dist = _sq_dist(coords, centre_img).sqrt()
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
            centres = [_place(g, shape, 3 * sigma, avoid, *_fundus_bounds(size)) for _ in range(_randint(g, low, high))]
            alpha = _splat(shape, torch.tensor(centres), sigma)
            return alpha, alpha > 0.3, colour
        radius = 0.08 * size
        centre = _place(g, shape, radius, avoid, *_fundus_bounds(size))
        patch = _ellipsoid(coords, centre, (radius, radius))
        return 0.9 * patch * _stripes(coords, centre, 0), patch, _NEW_VESSEL

    def draw(k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.tensor(_RETINA).view(3, 1, 1) * (1 + 0.05 * _smooth_noise(shape, g, size / 10))
        side = 1 if _uniform(g, 0, 1) < 0.5 else -1
        disc_c = [centre_img[0] + _uniform(g, -0.05, 0.05) * size, centre_img[1] + side * 0.28 * size]
        disc_r = 0.08 * size
        img = _paint(img, 0.4 * _gaussian(coords, centre_img, 0.07 * size), _BLOOD)
        for _ in range(distractors):
            points = _curve_points(g, disc_c, _uniform(g, 0.3, 0.55) * size, 4 * size)
            img = _paint(img, 0.8 * _splat(shape, _clip_points(points, shape), 0.6), _VESSEL)
        img = _paint(img, _blur(_ellipsoid(coords, disc_c, (disc_r, disc_r)).float(), 1.0), _OPTIC_DISC)
        alpha, evidence, colour = lesions(k, g, [(disc_c, disc_r + 2), (centre_img, 0.07 * size)])
        img = _paint(img, alpha, colour) * shading
        return _noisy(img, noise, g).clamp(0, 1) * field, evidence & field

    return _classification_batch(n, num_classes, seed, draw, IDRID_GRADES[:num_classes] if num_classes == 5 else ())


def _fundus_bounds(size: int) -> tuple[list[float], list[float]]:
    """Bounds for lesion centres: the central part of the retina, off the black border."""
    return [0.25 * size] * 2, [0.75 * size] * 2


# ---------------------------------------------------------------------------------------------
# Brain MRI (brain tumour MRI set-like)
# ---------------------------------------------------------------------------------------------


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
    shape = _shape(size, spatial_dims)
    coords = _grid(shape)
    s = min(shape)
    centre_img = [(d - 1) / 2 for d in shape]
    head_r = [0.42 * d for d in shape]
    head_r[-1] = 0.36 * shape[-1]
    head = _ellipsoid(coords, centre_img, head_r)
    brain_r = [r - 0.06 * s for r in head_r]
    brain = _ellipsoid(coords, centre_img, brain_r)

    def tumour(k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Intensity ``(value where the tumour is, NaN elsewhere)`` and evidence of class ``k``."""
        empty = torch.zeros(shape, dtype=torch.bool)
        if k == 2:
            return torch.full(shape, float("nan")), empty
        if k == 3:
            r = 0.06 * s
            centre = [m + _uniform(g, -0.03, 0.03) * s for m in centre_img]
            centre[-2] = centre_img[-2] + 0.18 * shape[-2]
            ball = _ellipsoid(coords, centre, [r] * spatial_dims)
            return torch.where(ball, 0.85, float("nan")), ball
        r = _uniform(g, 0.09, 0.12) * s
        direction = torch.randn(spatial_dims, generator=g)
        direction = direction / direction.norm().clamp_min(1e-6)
        if k == 1:  # extra-axial: centred on the inner skull, clipped to the head
            reach = [br * float(u) for br, u in zip(brain_r, direction)]
            centre = [m + d for m, d in zip(centre_img, reach)]
            ball = _ellipsoid(coords, centre, [r] * spatial_dims) & head
            return torch.where(ball, 0.8, float("nan")), ball
        depth = _uniform(g, 0.1, 0.45)  # intra-axial: well inside the brain
        centre = [m + depth * (br - r) * float(u) for m, br, u in zip(centre_img, brain_r, direction)]
        ball = _ellipsoid(coords, centre, [r] * spatial_dims)
        core = _ellipsoid(coords, centre, [0.55 * r] * spatial_dims)
        return torch.where(core, 0.15, torch.where(ball, 0.9, float("nan"))), ball

    def draw(k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        tissue = 0.45 + 0.06 * _smooth_noise(shape, g, s / 20)
        tissue = _add_blobs(tissue, coords, distractors, g, radius=(0.04, 0.08), level=(-0.15, 0.15))
        img = torch.where(head, 0.85, 0.0)
        img = torch.where(brain, tissue, img)
        for side in (-1, 1):
            vc = list(centre_img)
            vc[-1] += side * 0.07 * shape[-1]
            vc[-2] -= 0.05 * shape[-2]
            vr = [0.12 * d for d in shape]
            vr[-1] = 0.04 * shape[-1]
            img = torch.where(_ellipsoid(coords, vc, vr), 0.1, img)
        value, evidence = tumour(k, g)
        img = torch.where(evidence, value, img)
        return _noisy(img, noise, g).clamp(0, 1)[None], evidence

    return _classification_batch(n, 4, seed, draw, BRAIN_MRI_CLASSES)


# ---------------------------------------------------------------------------------------------
# Abdominal CT for segmentation (KiTS23-like)
# ---------------------------------------------------------------------------------------------


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
    shape = _shape(size, spatial_dims)
    coords = _grid(shape)
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
    body = _ellipsoid(plane, mid[-2:], (0.36 * h, 0.46 * w))
    inner = _ellipsoid(plane, mid[-2:], (0.31 * h, 0.41 * w))
    spine = _ellipsoid(plane, (mid[-2] + 0.2 * h, mid[-1]), (0.07 * h, 0.07 * w))

    def draw(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.where(body, 0.25, 0.0)
        img = torch.where(inner, 0.45 + 0.03 * _smooth_noise(shape, g, min(shape) / 12), img)
        liver = _ellipsoid(coords, at(-0.1, -0.08, -0.2), radii(0.3, 0.17, 0.18))
        img = torch.where(liver & inner, 0.62, img)
        for _ in range(distractors):
            c = at(_uniform(g, -0.3, 0.3), _uniform(g, -0.22, 0.0), _uniform(g, 0.0, 0.3))
            img = torch.where(_ellipsoid(coords, c, radii(0.05, 0.05, 0.05)) & inner, 0.02, img)
        img = torch.where(spine, 0.95, img)
        label = torch.zeros(shape, dtype=torch.long)
        kidneys = []
        for side in (-1, 1):
            c = at(_uniform(g, -0.05, 0.05), 0.12 + _uniform(g, -0.02, 0.02), side * 0.2)
            r = radii(0.18, 0.09, 0.065)
            kidneys.append((c, r))
            label[_ellipsoid(coords, c, r)] = 1
        img = torch.where(label == 1, 0.72, img)
        for value, code, chance, scale in ((0.5, 2, tumour_probability, 1.0), (0.2, 3, cyst_probability, 0.6)):
            if _uniform(g, 0, 1) >= chance:
                continue
            c, r = kidneys[_randint(g, 0, 2)]
            spot = [m + _uniform(g, -0.6, 0.6) * q for m, q in zip(c, r)]
            rr = scale * _uniform(g, 0.05, 0.07) * min(h, w)
            ball = _ellipsoid(coords, spot, [rr] * spatial_dims)
            label[ball] = code
            img = torch.where(ball, value, img)
        return _noisy(img, noise, g).clamp(0, 1)[None], label[None]

    g = torch.Generator().manual_seed(seed)
    cases = [draw(g) for _ in range(n)]
    images = torch.stack([c[0] for c in cases]).float()
    labels = torch.stack([c[1] for c in cases])
    return PhantomBatch(
        images=images, labels=labels, evidence=(labels == 2).float(), class_names=KITS_LABELS, task="segmentation"
    )
