"""Every bundle: official metadata schema, network in/out, and a real `python -m monai.bundle run`.

Sizes are tiny (32 px images, 32^3 volumes, 1 epoch on 4 stand-in cases, 2 Med-CAM steps): these
tests check that the bundles are wired right, not that they learn.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
try:  # tests/ is a package in this repository; keep working if it is not
    from ._bundle_support import BUNDLES, BUNDLES_DIR, REQUIRED, SCHEMA, SEGMENTATION, monai_bundle_run, tiny, train_tiny
except ImportError:
    from _bundle_support import BUNDLES, BUNDLES_DIR, REQUIRED, SCHEMA, SEGMENTATION, monai_bundle_run, tiny, train_tiny


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_layout_metadata_schema_and_network_io(bundle):
    from monai.bundle import verify_metadata, verify_net_in_out

    root = BUNDLES_DIR / bundle
    assert [f for f in REQUIRED if not (root / f).is_file()] == []
    verify_metadata(meta_file=str(root / "configs/metadata.json"), filepath=str(SCHEMA))
    verify_net_in_out(net_id="network_def", meta_file=str(root / "configs/metadata.json"),
                      config_file=str(root / "configs/inference.json"), device="cpu")
    # networks come untrained from timm/MONAI: nothing is downloaded
    for name in ("inference.json", "train.json"):
        net = json.loads((root / "configs" / name).read_text())["network_def"]
        assert net.get("pretrained", False) is False


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_trains_then_explains_with_monai_bundle_run(bundle, tmp_path):
    train_tiny(bundle, tmp_path)
    monai_bundle_run(bundle, tmp_path, ["inference.json"], tiny(bundle))
    out = tmp_path / "eval" / "explanations"
    records = json.loads((out / "explanations.json").read_text())
    assert len(records) == tiny(bundle)["num_cases"]
    for r in records:
        assert (out / "records" / f"{r['case_id']}.json").is_file()
        assert r["outputs"] and all(Path(p).is_file() for p in r["outputs"].values())
        if bundle in SEGMENTATION:
            assert r["method"] == "seg_hires_grad_cam" and r["kind"] == "heatmap" and r["target"] == 2
            assert r["settings"]["sliding_window"]["roi_size"] == [32, 32, 32]  # the bundle's own inferer
        else:
            assert r["method"] == "medcam" and r["kind"] == "mask" and r["steps"] == 2
            assert r["pred_class"] == r["target"]  # the explained class is the bundle's prediction
    if bundle not in SEGMENTATION:
        assert (tmp_path / "eval" / "predictions.csv").is_file()  # the bundle's own ClassificationSaver ran too
