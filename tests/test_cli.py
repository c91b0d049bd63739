"""The `medcam-monai` command: explain files with a bundle, the demo, and clear errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medcam_monai.cli import main
from medcam_monai.io.formats import input_cases

try:  # tests/ is a package in this repository; keep working if it is not
    from ._bundle_support import ENV, train_tiny
except ImportError:
    from _bundle_support import ENV, train_tiny

CT5N = "dicomdirtests/98892001/CT5N"


@pytest.fixture(scope="module")
def fundus_root(tmp_path_factory):
    """fundus_resnet18 trained for one tiny epoch (32 px) once for this module."""
    root = tmp_path_factory.mktemp("fundus")
    train_tiny("fundus_resnet18", root)
    return root


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((40, 36, 3)) * 255).astype(np.uint8)).save(folder / f"eye {i}.jpg")
    return folder


def explain(fundus_root, inputs, out, *extra):
    return main(["explain", "fundus_resnet18", str(inputs), "--bundle-root", str(fundus_root), "--output", str(out),
                 "--image-size", "32", "--steps", "2", *extra])


def test_explain_a_folder_of_photos_prints_where_outputs_are(fundus_root, photos, tmp_path, capsys):
    assert explain(fundus_root, photos, tmp_path / "out") == 0
    printed = capsys.readouterr().out
    records = json.loads((tmp_path / "out" / "explanations" / "explanations.json").read_text())
    assert sorted(r["case_id"] for r in records) == ["eye_0", "eye_1"]
    for r in records:
        assert set(r["outputs"]) == {"png", "nifti"}  # the writers for 2D input
        for path in r["outputs"].values():
            assert Path(path).is_file() and path in printed
        assert r["source"].endswith(".jpg")


def test_explain_a_dicom_series_with_the_3d_bundle_writes_dicom_seg_and_parametric_map(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    root = tmp_path / "kidney"
    train_tiny("kidney_ct_unet3d", root)
    series = get_testdata_file(CT5N)
    assert main(["explain", "kidney_ct_unet3d", series, "--bundle-root", str(root), "--output", str(tmp_path / "out"),
                 "--target", "1", "--writers", "dicom_seg", "parametric_map", "nifti"]) == 0
    (record,) = json.loads((tmp_path / "out" / "explanations" / "explanations.json").read_text())
    assert record["case_id"] == "CT5N" and record["method"] == "seg_hires_grad_cam" and record["target"] == 1
    seg = pydicom.dcmread(record["outputs"]["dicom_seg"])
    source_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in Path(series).iterdir()}
    referenced = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert seg.Modality == "SEG" and referenced == source_uids  # the SEG points at the real series' slices
    assert pydicom.dcmread(record["outputs"]["parametric_map"]).SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"


def test_bundle_path_without_configs(tmp_path, photos, capsys):
    assert main(["explain", str(tmp_path), str(photos)]) != 0
    assert "no configs/ folder" in capsys.readouterr().err


def test_unknown_bundle_name_lists_the_known_ones(photos, capsys):
    assert main(["explain", "fundus_resnet81", str(photos)]) != 0
    assert "fundus_resnet18" in capsys.readouterr().err


def test_layer_the_network_lacks(fundus_root, photos, tmp_path, capsys):
    assert explain(fundus_root, photos, tmp_path / "out", "--layer", "layer5") != 0
    err = capsys.readouterr().err
    assert "'layer5' is not in" in err and "layer4" in err  # names the nearest valid layers


def test_weights_that_do_not_fit_the_network(fundus_root, photos, tmp_path, capsys):
    import timm

    wrong = tmp_path / "other.pt"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=3).state_dict(), wrong)
    assert explain(fundus_root, photos, tmp_path / "out", "--weights", str(wrong)) != 0
    err = capsys.readouterr().err
    assert "do not fit the network" in err and "fc.weight" in err


def test_torchscript_weights_explain_why_and_what_to_use(fundus_root, photos, tmp_path, capsys):
    scripted = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    assert explain(fundus_root, photos, tmp_path / "out", "--weights", str(scripted)) != 0
    err = capsys.readouterr().err
    assert "TorchScript" in err and "hooks" in err and "network_def" in err and "model.pt" in err


def test_missing_weights_say_how_to_train(photos, tmp_path, capsys):
    assert explain(tmp_path / "untrained", photos, tmp_path / "out") != 0
    assert "medcam-monai train" in capsys.readouterr().err


def test_output_folder_that_cannot_be_written(fundus_root, photos, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert explain(fundus_root, photos, blocker / "out") == 2
    assert "Cannot write to output folder" in capsys.readouterr().err


def test_missing_or_unknown_input(tmp_path, capsys):
    assert main(["explain", "fundus_resnet18", str(tmp_path / "nope.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["explain", "fundus_resnet18", str(tmp_path / "notes.txt")]) == 2
    assert "Cannot tell the format" in capsys.readouterr().err


def test_input_kinds(tmp_path):
    from pydicom.data import get_testdata_file

    assert input_cases(get_testdata_file(CT5N))[0] == "dicom"
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "b.nii.gz").write_bytes(b"")
    kind, cases = input_cases(tmp_path)
    assert kind == "nifti" and len(cases) == 2
    assert input_cases(tmp_path / "a.nii.gz") == ("nifti", [{"image": str(tmp_path / "a.nii.gz")}])


def test_train_writes_the_bundles_weights_under_bundle_root(tmp_path, capsys):
    assert main(["train", "brain_mri_mobilenet_v2", "--bundle-root", str(tmp_path), "--epochs", "1",
                 "--num-cases", "4", "--image-size", "32"]) == 0
    weights = tmp_path / "models" / "model.pt"
    assert weights.is_file() and str(weights) in capsys.readouterr().out
    state = torch.load(weights, weights_only=True)
    assert state["conv_stem.weight"].shape[1] == 1  # the bundle's one-channel MobileNet-V2
    assert (tmp_path / "standin_data" / "brain_tumor_mri" / "train_n4_s32" / "datalist.json").is_file()


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("fundus_resnet18", "histology_vit_b16", "dermoscopy_convnext_small", "brain_mri_mobilenet_v2", "kidney_ct_unet3d"):
        assert name in out


def test_demo_quick_writes_every_format_and_prints_where(tmp_path):
    """The README's main job at smoke-test sizes, as a user runs it: the installed command. An earlier
    run's folder is there already: the demo writes next to it and says so."""
    earlier = tmp_path / "demo"
    earlier.mkdir()
    (earlier / "report.html").write_text("an earlier run")
    proc = subprocess.run([sys.executable, "-m", "medcam_monai.cli", "demo", "--quick", "--output", str(earlier)],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "demo-2"
    assert f"this run writes to {out}" in proc.stdout and (earlier / "report.html").read_text() == "an earlier run"
    printed = [line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("      ")]
    formats = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("      ")}
    assert formats == {"png", "nifti", "wsi", "geojson", "dicom_seg", "parametric_map", "slicer_seg"}
    assert printed and all(Path(p).is_file() and str(out) in p for p in printed)
    assert "demo finished" in proc.stdout
    # it tells the truth: --quick says its models are barely trained; every classifier line says right or wrong
    assert "barely trained" in proc.stdout and "barely trained" in (out / "report.html").read_text()
    lines = [line for line in proc.stdout.splitlines() if line.startswith("  mni152_lesions_test_")]
    assert lines and all(": right" in line or "the model is wrong here" in line for line in lines)
    assert "grey matter" in proc.stdout and "inside the brain" in proc.stdout  # the 3D case is the MNI brain
    assert "(Seg-Grad CAM on the same case: " in proc.stdout  # and the two segmentation CAMs are compared


def test_demo_fails_with_non_zero_exit_and_a_message(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["demo", "--quick", "--output", str(blocker / "x")]) == 2
    assert "Cannot write to output folder" in capsys.readouterr().err


def test_threads_option_sets_torch_threads(monkeypatch):
    from medcam_monai.threads import configure_threads

    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert 1 <= configure_threads(None) <= max(1, os.cpu_count() or 1)
    finally:
        torch.set_num_threads(before)
