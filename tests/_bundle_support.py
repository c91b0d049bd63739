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


