"""Where the bundles' cases come from: the real dataset when present, else cached stand-in files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medcam_monai.bundle import find_bundle
from medcam_monai.data.standins import STANDINS, datalist, standin_datalist


def test_standin_files_are_written_once_and_reused(tmp_path):
    first = standin_datalist("idrid_grading", tmp_path, "train", num_cases=3, image_size=32)
    assert [d["label"] for d in first] == [int(d["label"]) for d in first] and len(first) == 3
    assert all(np.asarray(Image.open(d["image"])).shape == (32, 32, 3) for d in first)
    stamp = [(tmp_path / d["image"]).stat().st_mtime_ns for d in first]
    assert standin_datalist("idrid_grading", tmp_path, "train", num_cases=3, image_size=32) == first
    assert [(tmp_path / d["image"]).stat().st_mtime_ns for d in first] == stamp  # not regenerated
    assert not list((tmp_path / "idrid_grading").glob(".*"))  # no private temp folder left behind
    test = standin_datalist("idrid_grading", tmp_path, "test", num_cases=3, image_size=32)
    assert not np.array_equal(np.asarray(Image.open(test[0]["image"])), np.asarray(Image.open(first[0]["image"])))


def test_standin_ct_is_in_hounsfield_units_with_a_label_map(tmp_path):
    import nibabel as nib

    (case,) = standin_datalist("kits23", tmp_path, "train", num_cases=1, image_size=32)
    image, label = nib.load(case["image"]).get_fdata(), nib.load(case["label"]).get_fdata()
    assert image.shape == label.shape == (32, 32, 32)
    assert -200 <= image.min() and image.max() <= 300 and set(np.unique(label)) <= {0, 1, 2, 3}


def test_every_bundle_dataset_has_a_standin_and_a_manifest():
    from medcam_monai.data.manifests import available_manifests

    names = set()
    for bundle in ("fundus_resnet18", "brain_mri_mobilenet_v2", "dermoscopy_convnext_small", "histology_vit_b16", "kidney_ct_unet3d"):
        for config in ("inference.json", "train.json"):
            names.add(json.loads((find_bundle(bundle) / "configs" / config).read_text())["dataset_name"])
    assert names <= set(STANDINS) and names <= set(available_manifests())


def test_real_dataset_is_used_when_present(tmp_path):
    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    for subset in ("Training", "Testing"):
        for k, name in enumerate(classes):
            folder = tmp_path / "brain" / subset / name
            folder.mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(folder / f"{subset[:2]}-{k}.jpg")
    cases = datalist("brain_tumor_mri", tmp_path / "brain", "test", standin_dir=tmp_path / "standin", num_cases=10)
    assert sorted(d["label"] for d in cases) == [0, 1, 2, 3]
    assert all("/Testing/" in d["image"] for d in cases) and not (tmp_path / "standin").exists()


def test_missing_dataset_falls_back_to_standin_or_says_where_to_get_it(tmp_path):
    cases = datalist("bach", tmp_path / "nowhere", "train", standin_dir=tmp_path, num_cases=2, image_size=32)
    assert len(cases) == 2 and all(str(tmp_path / "bach") in d["image"] for d in cases)
    with pytest.raises(FileNotFoundError, match="data_manifests/bach.json"):
        datalist("bach", tmp_path / "nowhere", "train", standin_dir=tmp_path, use_standin=False)
