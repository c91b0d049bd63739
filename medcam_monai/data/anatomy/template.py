"""The MNI152 2009c brain template and its tissue maps, read from nilearn's wheel.

nilearn's wheel ships, in ``nilearn/datasets/data/``, the symmetric MNI152 2009c template of the
ICBM (a real human brain MRI, an average of 152 adults registered together), already skull-stripped,
and its grey- and white-matter probability maps:

- ``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``: T1, uint8 0..255, 197x233x189, 1 mm, RAS,
  0 outside the brain (cerebellum and brainstem kept);
- ``mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz``: grey matter probability, uint8 (p = v / 255);
- ``mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz``: white matter probability, uint8.

There is no CSF map and no brain mask file: CSF and background are ``1 - p_gm - p_wm`` and the brain is
``T1 > 0`` (nilearn's own ``load_mni152_brain_mask`` thresholds the T1 too). nibabel's wheel adds a
real EPI (``nibabel/tests/data/example4d.nii.gz``: 128x96x24x2, 2x2x2.2 mm, LAS and oblique,
T2*-weighted, so CSF is bright: another contrast than the template's).

Nothing here downloads anything: the files are found inside the installed wheels, without importing
nilearn (its import pulls scikit-learn and pandas).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "TEMPLATE_FILES",
    "TISSUE_CLASSES",
    "Template",
    "wheel_file",
    "load_template",
    "resample",
    "rotation_matrix",
    "isotropic_grid",
    "spacing_for_size",
    "LR_EXTENT_MM",
    "tissue_labels",
    "epi_volume",
]

# the nilearn file name of each map
TEMPLATE_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
# label values of the tissue segmentation, in order
TISSUE_CLASSES = ("background or CSF", "grey matter", "white matter")
# the template's extent from left to right (between the first and last voxel centres, 197 voxels of 1 mm)
LR_EXTENT_MM = 196.0


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The {package} package is not installed: pip install {package} (it is a dependency of medcam-monai).")
    return Path(list(spec.submodule_search_locations)[0])


def wheel_file(name: str) -> Path:
    """The path of ``"t1"``, ``"gm"``, ``"wm"`` (nilearn's MNI152 files) or ``"epi"`` (nibabel's EPI).

    Raises:
        FileNotFoundError: the package or the file is missing (a trimmed install), with the fix.
    """
    if name in TEMPLATE_FILES:
        path = _package_dir("nilearn") / "datasets" / "data" / TEMPLATE_FILES[name]
    elif name == "epi":
        path = _package_dir("nibabel") / "tests" / "data" / "example4d.nii.gz"
    else:
        raise ValueError(f"Unknown file {name!r}; choose one of {[*TEMPLATE_FILES, 'epi']}.")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in the installed wheel; reinstall it: pip install --force-reinstall nilearn nibabel.")
    return path


@dataclass(frozen=True)
class Template:
    """The 1 mm template (read-only arrays, axes x, y, z in RAS).

    Args:
        t1: T1 intensities scaled to ``[0, 1]`` (the file's uint8 / 255).
        gm, wm: grey and white matter probabilities in ``[0, 1]``.
        affine: voxel to RAS millimetres.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    affine: np.ndarray

    @property
    def brain(self) -> np.ndarray:
        """The brain mask (the skull-stripped T1 is 0 outside it), float 0/1."""
        return (self.t1 > 0).astype(np.float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.t1.shape)

    @property
    def centre(self) -> np.ndarray:
        """The world (RAS mm) position of the volume's centre."""
        return (self.affine @ np.r_[(np.asarray(self.shape) - 1) / 2.0, 1.0])[:3]

    @property
    def extent_mm(self) -> np.ndarray:
        """Distance between the first and last voxel centres along each axis."""
        return (np.asarray(self.shape) - 1) * np.sqrt((self.affine[:3, :3] ** 2).sum(0))


@lru_cache(maxsize=1)
def load_template() -> Template:
    """Read the template once per process (about 1 s)."""
    import nibabel as nib

    t1 = nib.load(wheel_file("t1"))
    maps = {}
    for key in ("t1", "gm", "wm"):
        img = t1 if key == "t1" else nib.load(wheel_file(key))
        a = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        a.setflags(write=False)
        maps[key] = a
    affine = np.asarray(t1.affine, dtype=np.float64)
    affine.setflags(write=False)
    return Template(maps["t1"], maps["gm"], maps["wm"], affine)


def resample(volume: np.ndarray, affine: np.ndarray, shape, out_affine: np.ndarray, order: int = 1,
             antialias: bool = True) -> np.ndarray:
    """``volume`` (voxels to world by ``affine``) sampled on the grid ``(shape, out_affine)``.

    Uses nibabel's ``resample_from_to`` (spline of ``order``, zero outside). With ``antialias``, the
    volume is first smoothed with nibabel's ``smooth_image`` by a Gaussian of FWHM
    ``sqrt(out^2 - in^2)`` per input axis (out: the output voxel's footprint along that axis), so that
    a probability map becomes the partial-volume fraction of each output voxel and a downsampled
    image does not alias.

    Args:
        volume: ``(X, Y, Z)`` array.
        affine: its voxel-to-world affine.
        shape: output grid shape.
        out_affine: output voxel-to-world affine.
        order: 0 nearest, 1 trilinear, 3 cubic.
        antialias: smooth before downsampling.

    Returns:
        ``shape`` float32 array.
    """
    import nibabel as nib
    from nibabel.processing import resample_from_to, smooth_image

    img = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    if antialias:
        in_mm = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
        # output voxel footprint along each input axis, in input voxels
        steps = np.abs(np.linalg.inv(img.affine[:3, :3]) @ np.asarray(out_affine, float)[:3, :3]).max(1)
        fwhm = np.sqrt(np.clip(steps**2 - 1.0, 0.0, None)) * in_mm
        if fwhm.max() > 0.1 * in_mm.min():
            img = smooth_image(img, fwhm, mode="constant", cval=0.0)
    out = resample_from_to(img, (tuple(int(s) for s in shape), np.asarray(out_affine, float)), order=order, mode="constant", cval=0.0)
    return np.asarray(out.dataobj, dtype=np.float32)


def rotation_matrix(degrees_xyz) -> np.ndarray:
    """Rotation by ``(rx, ry, rz)`` degrees about the x, y then z axes (RAS)."""
    ax, ay, az = np.deg2rad(np.asarray(degrees_xyz, float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def isotropic_grid(spacing: float, rotation_deg=(0.0, 0.0, 0.0), flip_lr: bool = False,
                   template: Template | None = None) -> tuple[tuple[int, int, int], np.ndarray]:
    """An isotropic grid of ``spacing`` mm covering the template's field of view, about its centre.

    Args:
        spacing: voxel size in mm.
        rotation_deg: the grid's rotation about the template centre (an oblique acquisition).
        flip_lr: the first axis points to the patient's left (an LAS grid, as many scanners write).
        template: default :func:`load_template`.

    Returns:
        ``(shape, affine)`` of the grid.
    """
    if spacing <= 0:
        raise ValueError(f"spacing must be > 0 mm, got {spacing}.")
    t = template or load_template()
    n = np.ceil(t.extent_mm / spacing).astype(int) + 1
    axes = rotation_matrix(rotation_deg) @ np.diag([(-1.0 if flip_lr else 1.0) * spacing, spacing, spacing])
    affine = np.eye(4)
    affine[:3, :3] = axes
    affine[:3, 3] = t.centre - axes @ ((n - 1) / 2.0)
    return tuple(int(v) for v in n), affine


def spacing_for_size(image_size: int) -> float:
    """The isotropic spacing (mm) that puts ``image_size`` voxels across the template from left to
    right (:data:`LR_EXTENT_MM`): how the 3D bundle's ``image_size`` is read (64 -> 3.11 mm)."""
    if int(image_size) < 8:
        raise ValueError(f"image_size must be >= 8 voxels, got {image_size}.")
    return float(LR_EXTENT_MM / (int(image_size) - 1))


def tissue_labels(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """The majority tissue of each voxel from its partial-volume fractions: ``argmax(p_bg, p_gm, p_wm)``
    with ``p_bg = clip(1 - p_gm - p_wm, 0, 1)`` (CSF and outside): 0 background/CSF, 1 GM, 2 WM (uint8)."""
    gm, wm = np.asarray(gm, np.float32), np.asarray(wm, np.float32)
    bg = np.clip(1.0 - gm - wm, 0.0, 1.0)
    return np.argmax(np.stack([bg, gm, wm]), 0).astype(np.uint8)


def epi_volume(index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Volume ``index`` of nibabel's example EPI (int16 as float32) and its affine (LAS, oblique)."""
    import nibabel as nib

    img = nib.load(wheel_file("epi"))
    if not 0 <= index < img.shape[3]:
        raise ValueError(f"The EPI has {img.shape[3]} volumes; index {index} does not exist.")
    return np.asarray(img.dataobj[..., index], dtype=np.float32), np.asarray(img.affine, dtype=np.float64)
