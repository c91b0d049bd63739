"""Manifests and the local-copy validator/loader, on small fake datasets laid out in tmp_path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from medcam_monai.data.manifests import (
    DatasetManifest,
    DatasetValidationError,
    ManifestError,
    available_manifests,
    compute_checksums,
    load_datalist,
    load_manifest,
    split_names,
    validate_dataset,
)

MANIFESTS = ["bach", "brain_tumor_mri", "ham10000", "idrid_grading", "kits23"]


def touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def brain_mri(root: Path, per_class: int = 4) -> None:
    for subset in ("Training", "Testing"):
        for cls in ("glioma", "meningioma", "notumor", "pituitary"):
            for i in range(per_class):
                touch(root / subset / cls / f"{cls}_{i}.jpg", f"{subset}{cls}{i}".encode())


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_manifest_is_complete(name):
    m = load_manifest(name)
    assert m.classes and m.data["source"]["homepage"].startswith("https://")
    assert m.data["license"]["name"] and m.data["citation"]
    # no invented checksums: an empty list must say why
    assert m.data["checksums"]["files"] or m.data["checksums"]["note"]
    assert "train" in split_names(m)
    assert m.describe_layout().startswith(m.name)


def test_available_and_lookup_by_name():
    assert set(MANIFESTS) <= set(available_manifests())
    assert load_manifest("KiTS23").name == "KiTS23"  # by the manifest's name, any case
    with pytest.raises(ManifestError, match="available"):
        load_manifest("no_such_dataset")
    with pytest.raises(ManifestError, match="lacks the key"):
        DatasetManifest({"name": "x"})


def test_phantom_classes_match_manifests():
    from medcam_monai.data import phantoms

    assert tuple(load_manifest("bach").classes) == phantoms.BACH_CLASSES
    assert tuple(load_manifest("ham10000").classes) == phantoms.HAM10000_CLASSES
    assert tuple(load_manifest("idrid_grading").classes) == phantoms.IDRID_GRADES
    assert tuple(load_manifest("brain_tumor_mri").classes) == phantoms.BRAIN_MRI_CLASSES
    assert tuple(load_manifest("kits23").classes) == phantoms.KITS_LABELS


def test_class_folders_complete_copy(tmp_path):
    brain_mri(tmp_path)
    report = validate_dataset("brain_tumor_mri", tmp_path)
    assert report.ok, report.summary()
    assert report.counts["train"]["glioma"] == 4 and report.counts["test"]["total"] == 16
    assert any("manifest expects" in w for w in report.warnings)  # the fake is smaller than the real set
    train, val, test = (load_datalist("brain_tumor_mri", tmp_path, s) for s in ("train", "val", "test"))
    assert len(test) == 16 and len(train) + len(val) == 16
    assert {d["image"] for d in train}.isdisjoint(d["image"] for d in val)
    assert all(set(d) == {"image", "label"} and isinstance(d["label"], int) for d in train + val + test)
    # labels follow the manifest's class order
    assert all(Path(d["image"]).parent.name == load_manifest("brain_tumor_mri").classes[d["label"]] for d in test)
    # deterministic
    assert load_datalist("brain_tumor_mri", tmp_path, "val") == val


def test_class_folders_missing_and_extra(tmp_path):
    brain_mri(tmp_path)
    for f in (tmp_path / "Testing" / "pituitary").iterdir():
        f.unlink()
    (tmp_path / "Testing" / "pituitary").rmdir()
    (tmp_path / "Training" / "Unknown").mkdir()
    report = validate_dataset("brain_tumor_mri", tmp_path)
    assert not report.ok
    assert report.missing == ["Testing/pituitary/"]
    assert any("Training/Unknown" in e for e in report.extra)
    with pytest.raises(DatasetValidationError) as err:
        load_datalist("brain_tumor_mri", tmp_path, "test")
    text = str(err.value)
    assert "Testing/pituitary/" in text and "expects, under dataset_dir" in text and "Testing/glioma/*" in text
    # without validation, what is there is used
    assert len(load_datalist("brain_tumor_mri", tmp_path, "test", validate=False)) == 12


def test_missing_dataset_dir(tmp_path):
    report = validate_dataset("bach", tmp_path / "nowhere")
    assert not report.ok and "does not exist" in report.missing[0]
    with pytest.raises(DatasetValidationError, match="ICIAR2018_BACH_Challenge/Photos/Normal"):
        load_datalist("bach", tmp_path / "nowhere")


def test_unknown_split(tmp_path):
    brain_mri(tmp_path)
    with pytest.raises(ValueError, match="splits"):
        load_datalist("brain_tumor_mri", tmp_path, "holdout")


def ham(root: Path) -> None:
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    for i in range(40):
        dx = ["nv", "mel", "bkl", "bcc"][i % 4]
        rows.append(f"HAM_{i // 2:07d},ISIC_{i:07d},{dx},histo,50,male,back")  # two images per lesion
        touch(root / f"HAM10000_images_part_{1 + i % 2}" / f"ISIC_{i:07d}.jpg", str(i).encode())
    (root / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")


def test_label_file_groups_stay_together(tmp_path):
    ham(tmp_path)
    assert validate_dataset("ham10000", tmp_path).ok
    splits = {s: load_datalist("ham10000", tmp_path, s) for s in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == 40
    lesion = lambda d: int(Path(d["image"]).stem.split("_")[1]) // 2  # noqa: E731
    seen = {s: {lesion(d) for d in v} for s, v in splits.items()}
    assert seen["train"].isdisjoint(seen["val"]) and seen["train"].isdisjoint(seen["test"]) and seen["val"].isdisjoint(seen["test"])
    classes = load_manifest("ham10000").classes
    assert {classes[d["label"]] for d in splits["train"]} == {"nv", "mel", "bkl", "bcc"}  # stratified


def test_label_file_missing_image_and_bad_label(tmp_path):
    ham(tmp_path)
    (tmp_path / "HAM10000_images_part_2" / "ISIC_0000003.jpg").unlink()
    csv = tmp_path / "HAM10000_metadata.csv"
    csv.write_text(csv.read_text() + "HAM_9999999,ISIC_0000040,xyz,histo,1,male,back\n")
    report = validate_dataset("ham10000", tmp_path)
    assert report.missing == ["./**/ISIC_0000003.jpg"]
    assert any("'xyz'" in e for e in report.errors)


def test_label_file_with_indices_and_header_spaces(tmp_path):
    base = tmp_path / "B. Disease Grading"
    for subset, folder, csv_name, n in (
        ("train", "a. Training Set", "a. IDRiD_Disease Grading_Training Labels.csv", 10),
        ("test", "b. Testing Set", "b. IDRiD_Disease Grading_Testing Labels.csv", 5),
    ):
        rows = ["Image name,Retinopathy grade,Risk of macular edema "]  # the real header ends with a space
        for i in range(n):
            rows.append(f"IDRiD_{i:03d},{i % 5},0")
            touch(base / "1. Original Images" / folder / f"IDRiD_{i:03d}.jpg", f"{subset}{i}".encode())
        touch(base / "2. Groundtruths" / csv_name, ("\n".join(rows) + "\n,,\n").encode())  # a blank trailing row
    assert validate_dataset("idrid_grading", tmp_path).ok
    test = load_datalist("idrid_grading", tmp_path, "test")
    assert [d["label"] for d in test] == [0, 1, 2, 3, 4]
    assert len(load_datalist("idrid_grading", tmp_path, "train")) + len(load_datalist("idrid_grading", tmp_path, "val")) == 10


def test_cases_layout(tmp_path):
    for i in (0, 1, 2, 5, 400):
        touch(tmp_path / "dataset" / f"case_{i:05d}" / "imaging.nii.gz")
        touch(tmp_path / "dataset" / f"case_{i:05d}" / "segmentation.nii.gz")
    (tmp_path / "dataset" / "case_00005" / "segmentation.nii.gz").unlink()
    report = validate_dataset("kits23", tmp_path)
    assert report.missing == ["dataset/case_00005/segmentation.nii.gz"]
    items = [d for s in ("train", "val", "test") for d in load_datalist("kits23", tmp_path, s, validate=False)]
    assert len(items) == 4 and all(d["label"].endswith("segmentation.nii.gz") for d in items)


def test_checksums_detect_altered_and_extra_files(tmp_path):
    brain_mri(tmp_path, per_class=2)
    data = json.loads(load_manifest("brain_tumor_mri").path.read_text())
    sums = compute_checksums("brain_tumor_mri", tmp_path)
    assert len(sums) == 16
    first = next(iter(sums))
    assert sums[first] == hashlib.sha256((tmp_path / first).read_bytes()).hexdigest()
    data["checksums"] = {"algorithm": "sha256", "files": sums, "complete": True}
    manifest = DatasetManifest(data)
    assert validate_dataset(manifest, tmp_path).ok
    (tmp_path / first).write_bytes(b"tampered")
    touch(tmp_path / "Training" / "glioma" / "new.jpg")
    report = validate_dataset(manifest, tmp_path)
    assert not report.ok
    assert report.altered == [f"{first} (sha256 differs from the manifest's)"]
    assert report.extra == ["Training/glioma/new.jpg (not in the manifest's checksum list)"]
    assert "altered (1)" in report.summary()
