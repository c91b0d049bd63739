"""`torchrun --nproc_per_node=2 -m monai.bundle run` with the multi-process override, on CPU (gloo)."""

from __future__ import annotations

import json
import shutil

import pytest

try:  # tests/ is a package in this repository; keep working if it is not
    from ._bundle_support import monai_bundle_run, train_tiny
except ImportError:
    from _bundle_support import monai_bundle_run, train_tiny


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_two_processes_shard_cases_write_their_own_and_gather_records(tmp_path):
    train_tiny("fundus_resnet18", tmp_path)
    launcher = ("torchrun", "--standalone", "--nproc_per_node=2")  # standalone: a free port
    monai_bundle_run("fundus_resnet18", tmp_path, ["inference.json", "multi_process_inference.json"],
                     {"image_size": 32, "num_cases": 3, "medcam_steps": 2}, launcher=launcher)
    out = tmp_path / "eval" / "explanations"
    records = json.loads((out / "explanations.json").read_text())
    # 3 cases on 2 ranks: the DistributedSampler (even_divisible=False) gives rank 0 two, rank 1 one
    assert sorted(r["case_id"] for r in records) == [f"idrid_grading_test_000{i}" for i in range(3)]
    assert sorted(r["rank"] for r in records) == [0, 0, 1]
    for r in records:  # each rank wrote its own case files
        assert (out / "records" / f"{r['case_id']}.json").is_file()
        assert all((out / w / f"{r['case_id']}{s}").is_file() for w, s in (("png", ".png"), ("nifti", ".nii.gz")))
