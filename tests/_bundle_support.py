"""Helpers of the bundle tests: tiny training and `python -m monai.bundle run` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from medcam_monai.bundle import BUNDLES_DIR

torch.set_num_threads(1)  # two xdist workers on two cores: more threads only oversubscribe

# MONAI's official bundle metadata schema (meta_schema_20240725.json), kept in the repo so that
# verify_metadata runs offline on any checkout (it would otherwise download it)
SCHEMA = Path(__file__).resolve().parent / "data" / "meta_schema_20240725.json"
BUNDLES = ["fundus_resnet18", "brain_mri_mobilenet_v2", "dermoscopy_convnext_small", "histology_vit_b16", "kidney_ct_unet3d"]
SEGMENTATION = {"kidney_ct_unet3d"}
# one subprocess environment for all runs: single-threaded, the repository importable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
REQUIRED = ["configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/logging.conf",
            "configs/multi_process_inference.json", "docs/README.md", "LICENSE"]


def tiny(bundle: str) -> dict:
    """Overrides that make a bundle run in seconds."""
    size = 32
    return {"image_size": size, "num_cases": 2, "medcam_steps": 2} if bundle not in SEGMENTATION else {"image_size": size, "num_cases": 1}


def train_tiny(bundle: str, root: Path) -> Path:
    """Train ``bundle`` for one epoch on 4 stand-in cases into ``root`` (the Python API of `monai.bundle run`)."""
    from monai.bundle import run

    cfg = BUNDLES_DIR / bundle / "configs"
    run(config_file=str(cfg / "train.json"), bundle_root=str(root), epochs=1, num_cases=4, image_size=32,
        batch_size=2, progress=False)
    weights = root / "models" / "model.pt"
    assert weights.is_file()
    return weights


def monai_bundle_run(bundle: str, root: Path, configs: list[str], overrides: dict, launcher=(sys.executable,), timeout=400):
    cfg = BUNDLES_DIR / bundle / "configs"
    files = "[" + ",".join(f"'{cfg / c}'" for c in configs) + "]"
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", files, "--meta_file", str(cfg / "metadata.json"),
           "--logging_file", str(cfg / "logging.conf"), "--bundle_root", str(root)]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    # own session: on a timeout the whole group (torchrun and its workers) is killed, no orphans
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=root,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {' '.join(cmd)}\n{stdout[-2000:]}\n{stderr[-3000:]}") from None
    assert proc.returncode == 0, stdout[-3000:] + stderr[-5000:]
    return stdout




# -- bundles in the official MONAI model-zoo layout, written inside the tests --------------------------
# (stock MONAI transforms only, as model-zoo bundles use them: see Project-MONAI/model-zoo
# models/spleen_ct_segmentation/configs/inference.json for the segmentation layout)
ZOO_LOGGING = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def zoo_segmentation_config(network_def: dict, roi: list[int], pixdim=(2.0, 2.0, 2.0), window=(-100, 200),
                            checkpoint_in_handlers: bool = False) -> dict:
    """A spleen_ct_segmentation-style ``inference.json``: NIfTI glob datalist, Orientation/Spacing/intensity
    window, sliding-window inferer, Invertd + SaveImaged postprocessing, checkpoint loaded in ``initialize``."""
    loader = {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'", "load_dict": {"model": "@network"}}
    config = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": list(pixdim), "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": window[0], "a_max": window[1], "b_min": 0, "b_max": 1, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(roi), "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image", "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg", "separate_folder": False},
        ]},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader", "network": "@network",
                      "inferer": "@inferer", "postprocessing": "@postprocessing", "val_handlers": "@handlers", "amp": False},
        "checkpointloader": loader,
        "initialize": ["$monai.utils.set_determinism(seed=123)", "$@checkpointloader(@evaluator)"],
        "run": ["$@evaluator.run()"],
    }
    if checkpoint_in_handlers:  # the older model-zoo layout
        del config["checkpointloader"]
        config["initialize"] = config["initialize"][:1]
        config["handlers"] = [loader, *config["handlers"]]
    return config


def zoo_classification_config(network_def: dict, size: int = 32, intensity=(0, 255)) -> dict:
    """A 2D classifier ``inference.json`` (endoscopic_inbody_classification-style): PNG/JPEG in, resized,
    scaled and normalised, ``SimpleInferer``, softmax, checkpoint loader among the handlers."""
    return {
        "imports": ["$import glob"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/images",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.png')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Resized", "keys": "image", "spatial_size": [size, size]},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": intensity[0], "a_max": intensity[1], "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 2, "shuffle": False, "num_workers": 0},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}]},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'", "load_dict": {"model": "@network"}, "map_location": "@device"},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader", "network": "@network",
                      "inferer": "@inferer", "postprocessing": "@postprocessing", "val_handlers": "@handlers"},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def zoo_metadata(task: str | None, channels: int, in_channels: int = 1) -> dict:
    """``metadata.json`` with ``network_data_format`` as the model zoo writes it (None: no outputs declared)."""
    outputs = {}
    if task == "segmentation":
        outputs = {"pred": {"type": "image", "format": "segmentation", "num_channels": channels, "spatial_shape": [32, 32, 32],
                            "dtype": "float32", "value_range": [0, 1], "is_patch_data": True}}
    elif task == "classification":
        outputs = {"pred": {"type": "probabilities", "format": "classes", "num_channels": channels, "spatial_shape": [1, channels],
                            "dtype": "float32", "value_range": [0, 1], "is_onehot": True}}
    return {"version": "0.1.0", "changelog": {"0.1.0": "test bundle"}, "monai_version": "1.6.1", "pytorch_version": "2.4.0",
            "numpy_version": "2.0.0", "required_packages_version": {}, "task": "test", "description": "test bundle",
            "authors": "tests", "copyright": "tests",
            "network_data_format": {"inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": in_channels,
                                                         "spatial_shape": [32, 32, 32], "dtype": "float32", "value_range": [0, 1]}},
                                    "outputs": outputs}}


def write_zoo_bundle(folder: Path, config: dict, metadata: dict, seed: int = 0, weights: bool = True) -> Path:
    """Write a bundle in the model-zoo layout (configs/, models/model.pt with random seeded weights of its
    ``network_def``, docs/README.md, LICENSE) and return its folder."""
    from monai.bundle import ConfigParser

    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "docs").mkdir(exist_ok=True)
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (folder / "configs" / "logging.conf").write_text(ZOO_LOGGING)
    (folder / "docs" / "README.md").write_text("A test bundle.\n")
    (folder / "LICENSE").write_text("Apache-2.0\n")
    if weights:
        (folder / "models").mkdir(exist_ok=True)
        torch.manual_seed(seed)
        net = ConfigParser({"net": config["network_def"]}).get_parsed_content("net")
        torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder
