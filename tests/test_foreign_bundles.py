"""Bundles in the official MONAI model-zoo layout, written here as a user would bring them, explained unedited.

Stock MONAI transforms only (LoadImaged, EnsureChannelFirstd, Orientationd, Spacingd,
ScaleIntensityRanged, NormalizeIntensityd, Resized), tiny networks of the common families, random
seeded weights in models/model.pt. Sizes are tiny: these tests check the plumbing, not learning.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from medcam_monai.bundle import explain_with_bundle, fragment_path
from medcam_monai.cli import main

try:  # tests/ is a package in this repository; keep working if it is not
    from ._bundle_support import ENV, write_zoo_bundle, zoo_classification_config, zoo_metadata, zoo_segmentation_config
    from ._io_support import CT5N, dciodvfy_errors
except ImportError:
    from _bundle_support import ENV, write_zoo_bundle, zoo_classification_config, zoo_metadata, zoo_segmentation_config
    from _io_support import CT5N, dciodvfy_errors


# tiny networks of the common MONAI segmentation families (3D, 1 channel in, 3 classes) and their windows
SEGMENTATION = {
    "UNet": ({"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8, 16],
              "strides": [2, 2], "num_res_units": 1, "norm": "batch"}, 16),
    "SegResNet": ({"_target_": "SegResNet", "spatial_dims": 3, "init_filters": 8, "in_channels": 1, "out_channels": 3,
                   "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}, 16),
    # instance norm needs more than one voxel at the stride-16 bottom: a 32^3 window
    "BasicUNet": ({"_target_": "BasicUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                   "features": [4, 4, 8, 8, 16, 4]}, 32),
    "DynUNet": ({"_target_": "DynUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "kernel_size": [3, 3, 3],
                 "strides": [1, 2, 2], "upsample_kernel_size": [2, 2], "filters": [4, 8, 16]}, 16),
    "AttentionUnet": ({"_target_": "AttentionUnet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                       "channels": [4, 8, 16], "strides": [2, 2]}, 16),
    "UNETR": ({"_target_": "UNETR", "in_channels": 1, "out_channels": 3, "img_size": [32, 32, 32], "feature_size": 4,
               "hidden_size": 24, "mlp_dim": 32, "num_heads": 2}, 32),
    # batch norm: the tiny 32^3 window leaves one voxel at the deepest stage, where instance norm is undefined
    "SwinUNETR": ({"_target_": "SwinUNETR", "in_channels": 1, "out_channels": 3, "feature_size": 12, "spatial_dims": 3,
                   "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "norm_name": "batch"}, 32),
}
# tiny classifiers of the common families (2D RGB, 3 classes)
CLASSIFICATION = {
    "DenseNet121": {"_target_": "DenseNet121", "spatial_dims": 2, "in_channels": 3, "out_channels": 3},
    "SEResNet50": {"_target_": "SEResNet50", "spatial_dims": 2, "in_channels": 3, "num_classes": 3},
    "ResNet": {"_target_": "monai.networks.nets.resnet10", "spatial_dims": 2, "n_input_channels": 3, "num_classes": 3},
    "EfficientNetBN": {"_target_": "EfficientNetBN", "model_name": "efficientnet-b0", "pretrained": False, "spatial_dims": 2,
                       "in_channels": 3, "num_classes": 3},
    "TorchVisionFCModel": {"_target_": "TorchVisionFCModel", "model_name": "resnet18", "num_classes": 3, "pretrained": False,
                           "pool": None},
    "timm": {"_target_": "timm.create_model", "model_name": "mobilenetv3_small_050", "pretrained": False, "num_classes": 3},
}

# a CT whose axes are flipped and whose origin is offset: x left-to-right reversed, z feet-to-head reversed
CT_AFFINE = np.array([[-1.5, 0, 0, 40.0], [0, 2.0, 0, -25.0], [0, 0, -3.0, 60.0], [0, 0, 0, 1]])


def write_ct(path: Path, shape=(24, 20, 12), affine=CT_AFFINE, seed: int = 0) -> Path:
    """A CT-like volume in HU: a bright blob in noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = np.asarray(shape, np.float32)[:, None, None, None] / 2
    blob = np.exp(-(((grid - centre) ** 2).sum(0)) / (2 * (min(shape) / 4) ** 2))
    nib.save(nib.Nifti1Image((300 * blob + 20 * rng.standard_normal(shape) - 50).astype(np.float32), affine), path)
    return path


def network_grid(ct: Path, pixdim=(2.0, 2.0, 2.0)) -> tuple[int, ...]:
    """The spatial size the segmentation bundles' preprocessing gives ``ct`` (stock MONAI, as in the bundle)."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    d = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", "RAS"), Spacingd("image", pixdim)])({"image": str(ct)})
    return tuple(d["image"].shape[1:])


def write_photos(folder: Path, n: int = 2, size=(40, 36), seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / f"photo_{i}.png")
    return folder


@pytest.fixture(scope="module")
def seg_bundle(tmp_path_factory):
    net, roi = SEGMENTATION["UNet"]
    return write_zoo_bundle(tmp_path_factory.mktemp("zoo") / "spleen_like", zoo_segmentation_config(net, [roi] * 3),
                            zoo_metadata("segmentation", 3))


@pytest.fixture(scope="module")
def cls_bundle(tmp_path_factory):
    return write_zoo_bundle(tmp_path_factory.mktemp("zoo") / "classifier", zoo_classification_config(CLASSIFICATION["DenseNet121"]),
                            zoo_metadata("classification", 3, 3))


def records(out: Path) -> list[dict]:
    return json.loads((out / "explanations" / "explanations.json").read_text())


# -- the command line on an unedited model-zoo bundle ----------------------------------------------------
def test_cli_explains_a_zoo_bundle_without_an_explanation_entry(seg_bundle, tmp_path, capsys):
    """Issue 11: `medcam-monai explain path/to/bundle ct.nii.gz` stopped with KeyError 'explanation'."""
    assert "explanation" not in json.loads((seg_bundle / "configs" / "inference.json").read_text())
    ct = write_ct(tmp_path / "ct.nii.gz")
    assert main(["explain", str(seg_bundle), str(ct), "--output", str(tmp_path / "out"), "--writers", "none",
                 "--trust-bundle"]) == 0
    printed = capsys.readouterr().out
    assert f"bundle: {seg_bundle.resolve()} (given as a path)" in printed
    (r,) = records(tmp_path / "out")
    # the task from metadata.json: a segmentation network gets Seg-HiRes-Grad CAM through its own inferer
    assert r["method"] == "seg_hires_grad_cam" and r["target"] == [1, 2] and r["source"] == str(ct)
    assert r["settings"]["sliding_window"]["roi_size"] == [16, 16, 16] and r["settings"]["sliding_window"]["windows"] > 1
    assert (tmp_path / "out" / "ct_seg.nii.gz").is_file()  # the bundle's own SaveImaged wrote into --output


def test_dicom_series_smaller_than_the_window_into_a_zoo_bundle_writes_checked_dicom(seg_bundle, tmp_path):
    """The real CT5N series (5 slices) is shallower than the 16^3 window: padded like MONAI's inferer, and the
    DICOM-SEG and Parametric Map reference the source series and pass dciodvfy."""
    out = tmp_path / "out"
    assert main(["explain", str(seg_bundle), str(CT5N), "--output", str(out), "--target", "1", "--pixels", "image",
                 "--writers", "dicom_seg", "parametric_map", "nifti", "--trust-bundle"]) == 0
    (r,) = records(out)
    window = r["settings"]["sliding_window"]
    assert window["padding"] is not None and window["padding"]["mode"] == "constant"
    files = sorted(CT5N.iterdir())
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    seg = pydicom.dcmread(r["outputs"]["dicom_seg"])
    referenced = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    nifti = nib.load(r["outputs"]["nifti"])
    assert nifti.shape == (int(first.Columns), int(first.Rows), len(files))  # the source grid, not the 16^3 window
    for path in (r["outputs"]["dicom_seg"], r["outputs"]["parametric_map"]):
        assert dciodvfy_errors(Path(path)) == []


def test_nifti_outputs_of_a_zoo_bundle_are_on_the_source_grid(seg_bundle, tmp_path):
    """NIfTI in with flipped axes and an offset origin (Orientationd + Spacingd in the bundle): the map comes back
    on the source grid, shape and affine equal."""
    ct = write_ct(tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    assert main(["explain", str(seg_bundle), str(ct), "--output", str(out), "--writers", "nifti", "--trust-bundle"]) == 0
    (r,) = records(out)
    written, source = nib.load(r["outputs"]["nifti"]), nib.load(ct)
    assert written.shape[:3] == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)


def test_png_outputs_of_a_zoo_classifier_are_on_the_source_grid(cls_bundle, tmp_path):
    photos = write_photos(tmp_path / "photos", n=1, size=(40, 36))
    out = tmp_path / "out"
    assert main(["explain", str(cls_bundle), str(photos), "--output", str(out), "--steps", "2", "--writers", "nifti", "png",
                 "--trust-bundle"]) == 0
    (r,) = records(out)
    assert sorted(nib.load(r["outputs"]["nifti"]).shape[:2]) == [36, 40]  # the photo's grid, not the 32x32 input


# -- the common families ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(SEGMENTATION))
def test_segmentation_families_explain_through_the_bundles_inferer(family, tmp_path):
    net, roi = SEGMENTATION[family]
    bundle = write_zoo_bundle(tmp_path / family, zoo_segmentation_config(net, [roi] * 3), zoo_metadata("segmentation", 3))
    # larger than the window on two axes (36 x 40 mm at 2 mm), smaller on the third (12 mm)
    ct = write_ct(tmp_path / "ct.nii.gz", shape=(24, 20, 4))
    grid = network_grid(ct)
    assert grid[2] < 16 < min(grid[:2])
    result = explain_with_bundle(bundle, tmp_path / "out", datalist=[{"image": str(ct)}], kind="nifti", writers=[],
                                 progress=False, target=1, pixels="image")
    (r,) = result
    assert result.task == "segmentation" and r["method"] == "seg_hires_grad_cam" and r["target"] == 1
    assert r["settings"]["layer"] and r["settings"]["sliding_window"]["roi_size"] == [roi] * 3
    assert r["scores"]["pixels"] == int(np.prod(grid)) and np.isfinite(r["scores"]["target_score"])


@pytest.mark.parametrize("family", sorted(CLASSIFICATION))
def test_classifier_families_explain_with_medcam(family, tmp_path):
    bundle = write_zoo_bundle(tmp_path / family, zoo_classification_config(CLASSIFICATION[family]), zoo_metadata("classification", 3, 3))
    photos = write_photos(tmp_path / "photos", n=1)
    result = explain_with_bundle(bundle, tmp_path / "out", datalist=[{"image": str(p)} for p in sorted(photos.iterdir())],
                                 kind="2d", writers=[], progress=False, steps=2)
    (r,) = result
    assert result.task == "classification" and r["method"] == "medcam" and r["steps"] == 2
    # the bundle's decision is explained (random weights may tie classes to float precision)
    assert r["pred"][r["target"]] >= max(r["pred"]) - 1e-4 and 0 <= r["scores"]["area_fraction"] <= 1


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_task_from_the_networks_output_when_metadata_is_silent(task, tmp_path):
    if task == "segmentation":
        config, inputs = zoo_segmentation_config(SEGMENTATION["UNet"][0], [16] * 3), [{"image": str(write_ct(tmp_path / "ct.nii.gz"))}]
    else:
        photos = write_photos(tmp_path / "photos", n=1)
        config, inputs = zoo_classification_config(CLASSIFICATION["ResNet"]), [{"image": str(p)} for p in photos.iterdir()]
    bundle = write_zoo_bundle(tmp_path / "bundle", config, zoo_metadata(None, 3))
    result = explain_with_bundle(bundle, tmp_path / "out", datalist=inputs, writers=[], progress=False, steps=None if task == "segmentation" else 2,
                                 kind="nifti" if task == "segmentation" else "2d")
    assert result.task == task and result[0]["method"] == ("seg_hires_grad_cam" if task == "segmentation" else "medcam")


@pytest.mark.parametrize("method", ["grad_cam", "hires_cam"])
def test_method_chooses_any_explainer_of_the_task(cls_bundle, tmp_path, method):
    photos = write_photos(tmp_path / "photos", n=2)
    assert main(["explain", str(cls_bundle), str(photos), "--output", str(tmp_path / "out"), "--method", method,
                 "--target", "2", "--layer", "features.denseblock4", "--writers", "none", "--trust-bundle"]) == 0
    for r in records(tmp_path / "out"):
        assert r["method"] == method and r["target"] == 2 and r["settings"]["layer"] == "features.denseblock4"


def test_pixels_box_point_and_mask_file(seg_bundle, tmp_path):
    ct = write_ct(tmp_path / "ct.nii.gz")
    base = ["explain", str(seg_bundle), str(ct), "--writers", "none", "--trust-bundle", "--target", "1"]
    assert main([*base, "--output", str(tmp_path / "box"), "--pixels", "box:2,3,4:6,8,9"]) == 0
    assert records(tmp_path / "box")[0]["scores"]["pixels"] == 4 * 5 * 5
    assert main([*base, "--output", str(tmp_path / "point"), "--pixels", "point:5,5,5"]) == 0
    assert records(tmp_path / "point")[0]["scores"]["pixels"] == 1
    # a mask drawn on the source grid (flipped, offset) lands on the resampled network input
    mask = np.zeros((24, 20, 12), np.uint8)
    mask[:12] = 1  # half of the volume along x
    nib.save(nib.Nifti1Image(mask, CT_AFFINE), tmp_path / "mask.nii.gz")
    assert main([*base, "--output", str(tmp_path / "mask"), "--pixels", f"mask:{tmp_path / 'mask.nii.gz'}"]) == 0
    (r,) = records(tmp_path / "mask")
    assert r["settings"]["pixels"]["type"] == "Mask" and 0.35 < r["scores"]["pixels"] / np.prod(network_grid(ct)) < 0.65


# -- the fragment route ----------------------------------------------------------------------------------------
def _bundle_run(bundle: Path, configs: list[str], overrides: dict, launcher=(sys.executable,), timeout=400):
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(bundle)]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=bundle, timeout=timeout)


def test_fragment_attaches_the_handler_with_monai_bundle_run(tmp_path):
    net, roi = SEGMENTATION["UNet"]
    bundle = write_zoo_bundle(tmp_path / "zoo", zoo_segmentation_config(net, [roi] * 3), zoo_metadata("segmentation", 3))
    images = tmp_path / "data" / "imagesTs"
    images.mkdir(parents=True)
    for i in range(2):
        write_ct(images / f"case_{i}.nii.gz", seed=i)
    fragment = fragment_path()
    assert fragment.is_file() and fragment.parent.name == "configs" and fragment.parent.parent.name == "medcam_monai"
    proc = _bundle_run(bundle, [str(bundle / "configs" / "inference.json"), str(fragment)],
                       {"dataset_dir": str(tmp_path / "data"), "medcam#writers": [], "medcam#target": 1})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    index = json.loads((bundle / "eval" / "explanations" / "explanations.json").read_text())
    assert [r["case_id"] for r in index] == ["case_0", "case_1"]
    assert all(r["method"] == "seg_hires_grad_cam" and r["target"] == 1 for r in index)
    assert (bundle / "eval" / "case_0_seg.nii.gz").is_file()  # the bundle's own inference ran as well


def test_fragment_route_writes_outputs_on_the_source_grid(tmp_path):
    net, roi = SEGMENTATION["UNet"]
    bundle = write_zoo_bundle(tmp_path / "zoo", zoo_segmentation_config(net, [roi] * 3), zoo_metadata("segmentation", 3))
    images = tmp_path / "data" / "imagesTs"
    images.mkdir(parents=True)
    ct = write_ct(images / "case_0.nii.gz")
    proc = _bundle_run(bundle, [str(bundle / "configs" / "inference.json"), str(fragment_path())], {"dataset_dir": str(tmp_path / "data")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (r,) = json.loads((bundle / "eval" / "explanations" / "explanations.json").read_text())
    written = nib.load(r["outputs"]["nifti"])
    assert written.shape[:3] == nib.load(ct).shape
    np.testing.assert_allclose(written.affine, nib.load(ct).affine, atol=1e-4)


MULTI_PROCESS = {
    "device": "$torch.device('cuda:' + os.environ['LOCAL_RANK']) if torch.cuda.is_available() else torch.device('cpu')",
    "network": {"_target_": "torch.nn.parallel.DistributedDataParallel", "module": "$@network_def.to(@device)",
                "device_ids": "$[@device] if torch.cuda.is_available() else None"},
    "sampler": {"_target_": "DistributedSampler", "dataset": "@dataset", "even_divisible": False, "shuffle": False},
    "dataloader#sampler": "@sampler",
    "initialize": ["$import torch.distributed as dist",
                   "$dist.is_initialized() or dist.init_process_group(backend='nccl' if torch.cuda.is_available() else 'gloo')",
                   "$@checkpointloader(@evaluator)"],
    "run": ["$@evaluator.run()"],
    "finalize": ["$dist.is_initialized() and dist.barrier()", "$dist.is_initialized() and dist.destroy_process_group()"],
}


@pytest.mark.skipif(__import__("shutil").which("torchrun") is None, reason="torchrun is not on PATH")
def test_fragment_under_torchrun_with_the_bundles_multi_gpu_config(tmp_path):
    net, roi = SEGMENTATION["UNet"]
    bundle = write_zoo_bundle(tmp_path / "zoo", zoo_segmentation_config(net, [roi] * 3), zoo_metadata("segmentation", 3))
    (bundle / "configs" / "multi_gpu_inference.json").write_text(json.dumps(MULTI_PROCESS))
    images = tmp_path / "data" / "imagesTs"
    images.mkdir(parents=True)
    for i in range(3):
        write_ct(images / f"case_{i}.nii.gz", seed=i)
    configs = [str(bundle / "configs" / c) for c in ("inference.json", "multi_gpu_inference.json")] + [str(fragment_path())]
    proc = _bundle_run(bundle, configs, {"dataset_dir": str(tmp_path / "data"), "medcam#writers": []},
                       launcher=("torchrun", "--standalone", "--nproc_per_node=2"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    index = json.loads((bundle / "eval" / "explanations" / "explanations.json").read_text())
    assert [r["case_id"] for r in index] == ["case_0", "case_1", "case_2"]
    assert sorted(r["rank"] for r in index) == [0, 0, 1]  # each rank explained its shard, all in one index
