"""Where a bundle's cases come from: the real dataset when the user has it, else stand-in files.

The project's bundles call this from their configs (``$medcam_monai.data.standins.datalist(...)``).
Every bundle names its dataset once (``"dataset_name": "idrid_grading"``) and asks :func:`datalist`
for the cases of a split. When the real dataset is at ``dataset_dir`` (laid out as its file in
``data_manifests/`` says), its files are listed; otherwise the project's stand-in generator for that
modality (:mod:`medcam_monai.data.phantoms`) writes image files once into ``standin_dir``, so the
bundle's own ``LoadImaged`` preprocessing reads stand-in and real data the same way. The seed of
each split is public (:data:`SPLIT_SEEDS`), so the true evidence of a stand-in case can be made again.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["STANDINS", "StandIn", "SPLIT_SEEDS", "split_of_seed", "datalist", "standin_datalist", "real_datalist"]

logger = logging.getLogger(__name__)

# stand-in CT is written in Hounsfield units so the CT bundle's intensity window applies unchanged
_HU_LOW, _HU_HIGH = -200.0, 300.0


@dataclass(frozen=True)
class StandIn:
    """How to make stand-in files for one dataset.

    Args:
        generator: name of a :mod:`medcam_monai.data.phantoms` function, or ``"module:function"``
            (e.g. the real-anatomy generators of :mod:`medcam_monai.data.anatomy`), returning a
            ``PhantomBatch``; called as ``generator(n, size=size, seed=seed, **kwargs)``, plus
            ``split=`` when it takes one (generators that hold slices or places out of training).
        kwargs: fixed arguments of the generator (e.g. ``spatial_dims``).
        suffix: ``".png"`` (2D, uint8) or ``".nii.gz"`` (3D, with a label map for segmentation).
        hounsfield: NIfTI images are stored in Hounsfield units (the ``[0, 1]`` image mapped onto the
            CT window the bundle applies); otherwise as generated.
    """

    generator: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    suffix: str = ".png"
    hounsfield: bool = False

    def function(self) -> Callable:
        """The generator function."""
        if ":" in self.generator:
            import importlib

            module, _, name = self.generator.partition(":")
            return getattr(importlib.import_module(module), name)
        from medcam_monai.data import phantoms

        return getattr(phantoms, self.generator)

    def make(self, n: int, size: int, seed: int):
        fn = self.function()
        kwargs = dict(self.kwargs)
        if "split" in inspect.signature(fn).parameters:
            kwargs["split"] = split_of_seed(seed)
        return fn(n, size=size, seed=seed, **kwargs)


# dataset name (the file name in data_manifests/) -> its stand-in
STANDINS: dict[str, StandIn] = {
    "bach": StandIn("histology_phantoms"),
    "ham10000": StandIn("dermoscopy_phantoms"),
    "idrid_grading": StandIn("fundus_phantoms"),
    "brain_tumor_mri": StandIn("mri_phantoms", {"spatial_dims": 2}),
    "kits23": StandIn("ct_phantoms", {"spatial_dims": 3}, suffix=".nii.gz", hounsfield=True),
    # real anatomy from nilearn's wheel (medcam_monai.data.anatomy): no download, no manifest
    "mni152_lesions": StandIn("medcam_monai.data.anatomy.lesions:lesion_slices", {"num_classes": 3}),
    "mni152_tissue": StandIn("medcam_monai.data.anatomy.tissue:tissue_cases", suffix=".nii.gz"),
}

# the seed of each split's stand-in cases; the evaluation regenerates their true evidence from it
SPLIT_SEEDS = {"train": 0, "val": 10_000, "test": 20_000}


def split_of_seed(seed: int) -> str:
    """The split whose seed is ``seed`` (:data:`SPLIT_SEEDS`); another seed counts as held out (``"test"``)."""
    return next((name for name, s in SPLIT_SEEDS.items() if s == seed), "test")


def _write_png(path: Path, image: torch.Tensor) -> None:
    from PIL import Image

    arr = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # (C, H, W)
    arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    Image.fromarray(arr).save(path)


def _write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume, affine), str(path))


def standin_datalist(
    dataset: str, standin_dir: str | os.PathLike, split: str = "train", num_cases: int = 16, image_size: int = 64
) -> list[dict[str, Any]]:
    """Write (once) and list ``num_cases`` stand-in cases of ``dataset`` for ``split``.

    Files are cached in ``standin_dir/<dataset>/<split>_n<num_cases>_s<image_size>/`` with a
    ``datalist.json``; another call with the same arguments reuses them.

    Returns:
        ``[{"image": path, "label": int}]`` for classification, ``[{"image": path, "label": path}]``
        (label map NIfTI) for segmentation.
    """
    if dataset not in STANDINS:
        raise ValueError(f"No stand-in generator for dataset {dataset!r}; known: {sorted(STANDINS)}.")
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}.")
    if num_cases < 1 or image_size < 16:
        raise ValueError(f"num_cases must be >= 1 and image_size >= 16, got {num_cases} and {image_size}.")
    folder = Path(standin_dir) / dataset / f"{split}_n{num_cases}_s{image_size}"
    index = folder / "datalist.json"
    if index.is_file():
        return [{k: (str(folder / v) if k in ("image", "label") and isinstance(v, str) else v) for k, v in d.items()}
                for d in json.loads(index.read_text())]
    # write into a private folder and rename it into place: ranks of a torchrun job (or two
    # engineers' runs) that generate the same cases at once never read a half-written file
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    standin = STANDINS[dataset]
    batch = standin.make(num_cases, image_size, SPLIT_SEEDS[split])
    entries = []
    for i in range(num_cases):
        name = f"{dataset}_{split}_{i:04d}"
        if standin.suffix == ".png":
            _write_png(tmp / f"{name}.png", batch.images[i])
            entries.append({"image": f"{name}.png", "label": int(batch.labels[i])})
        else:
            # the generator's grid, else a ~24 cm field of view whatever the grid size
            affine = batch.affine.numpy() if batch.affine is not None else np.diag([240.0 / image_size] * 3 + [1.0])
            volume = batch.images[i, 0].numpy().astype(np.float32)
            if standin.hounsfield:
                volume = _HU_LOW + volume * (_HU_HIGH - _HU_LOW)
            _write_nifti(tmp / f"{name}.nii.gz", volume, affine)
            _write_nifti(tmp / f"{name}_label.nii.gz", batch.labels[i, 0].numpy().astype(np.uint8), affine)
            entries.append({"image": f"{name}.nii.gz", "label": f"{name}_label.nii.gz"})
    (tmp / index.name).write_text(json.dumps(entries, indent=1))
    try:
        tmp.rename(folder)
        logger.info("wrote %d stand-in %s cases (%s) to %s", num_cases, dataset, split, folder)
    except OSError:  # another process finished the same cases first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not index.is_file():
            raise FileExistsError(f"{folder} exists but holds no datalist.json (an interrupted run?): delete it.") from None
    return standin_datalist(dataset, standin_dir, split, num_cases, image_size)


def real_datalist(dataset: str, dataset_dir: str | os.PathLike | None, split: str = "train") -> list[dict[str, Any]] | None:
    """The real dataset's cases of ``split`` when ``dataset_dir`` exists, else None.

    The layout and split rule come from ``data_manifests/<dataset>.json``
    (:func:`medcam_monai.data.manifests.load_datalist`); a folder that exists but does not match the
    layout raises its ``DatasetValidationError``, naming what is missing.
    """
    if not dataset_dir or not Path(dataset_dir).is_dir():
        return None
    from medcam_monai.data.manifests import load_datalist

    return load_datalist(dataset, dataset_dir, split)


def datalist(
    dataset: str,
    dataset_dir: str | os.PathLike | None,
    split: str = "train",
    standin_dir: str | os.PathLike = "./standin_data",
    num_cases: int = 16,
    image_size: int = 64,
    use_standin: bool | None = None,
) -> list[dict[str, Any]]:
    """Cases of ``split``: the real ``dataset`` at ``dataset_dir`` if present, else stand-in data.

    Args:
        dataset: the dataset's name, as in ``data_manifests/<dataset>.json``.
        dataset_dir: where the user keeps the real dataset (may not exist).
        split: ``"train"``, ``"val"`` or ``"test"`` (the manifests' split names).
        standin_dir: cache folder for generated stand-in files.
        num_cases: at most this many real cases; exactly this many stand-in cases.
        image_size: side of generated stand-in images.
        use_standin: True forces stand-in data, False requires the real data, None picks.
    """
    if use_standin is not True:
        real = real_datalist(dataset, dataset_dir, split)
        if real:
            logger.info("using %d %s cases of %s from %s", min(len(real), num_cases), split, dataset, dataset_dir)
            return real[:num_cases]
        if use_standin is False:
            raise FileNotFoundError(
                f"The {dataset} dataset was not found at {str(dataset_dir)!r}. Get it as described in "
                f"data_manifests/{dataset}.json and pass --dataset_dir, or drop use_standin=False to "
                f"train on generated stand-in data."
            )
        logger.info("%s not found at %r: using generated stand-in data", dataset, str(dataset_dir))
    return standin_datalist(dataset, standin_dir, split, num_cases, image_size)
