"""The evaluation: its numbers are the metrics' (known answers), and `evaluate` writes a readable report folder.

Sizes are tiny (32 px, one training epoch, 2 cases, 3 Med-CAM steps): these tests check the wiring
and the report, not how good the explainers are (docs/evaluation.md has a realistic run).
"""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medcam_monai.cli import main
from medcam_monai.evaluation import metrics
from medcam_monai.evaluation.data import standin_truth
from medcam_monai.evaluation.runner import PixelSetScore, evaluate_classification, evaluate_segmentation
from medcam_monai.explanation import HEATMAP, MASK, Explanation
from medcam_monai.data.phantoms import marker_phantoms
from medcam_monai.evaluation.report import METRICS, format_cell, markdown_table, summarise, write_report
from medcam_monai.evaluation.report.model_quality import classifier_lines, reliability_table, segmentation_lines

torch.set_num_threads(1)  # two xdist workers on two cores: more threads only oversubscribe


def _classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()


def _mask_method(fn):
    """An explainer returning a fixed binary mask: the known-answer cases."""
    return lambda model, x: Explanation(map=fn(x), kind=MASK, method="fixed", target=torch.zeros(x.shape[0], 1, dtype=torch.long))


@pytest.fixture(scope="module")
def known():
    batch = marker_phantoms(4, size=32, seed=3)
    truth = batch.evidence
    # the marker is 4 px wide: half the image away it cannot overlap itself
    explainers = {
        "perfect": _mask_method(lambda x: truth[: x.shape[0]].clone()),
        "empty": _mask_method(lambda x: torch.zeros_like(truth[: x.shape[0]])),
        "wrong": _mask_method(lambda x: torch.roll(truth[: x.shape[0]], shifts=(16, 16), dims=(2, 3))),
    }
    model = _classifier()
    result = evaluate_classification(model, batch.images, truth, explainers, batch.labels, curve_steps=4, batch_size=4)
    return model, batch, result


def test_known_answers_reach_the_table(known):
    model, batch, result = known
    v = result.values
    assert torch.equal(v["perfect"]["iou"], torch.ones(4)) and torch.equal(v["perfect"]["energy_inside"], torch.ones(4))
    assert torch.equal(v["perfect"]["pointing"], torch.ones(4))
    for name in ("empty", "wrong"):
        assert torch.equal(v[name]["iou"], torch.zeros(4)), name
        assert torch.equal(v[name]["pointing"], torch.zeros(4)), name
        assert torch.equal(v[name]["energy_inside"], torch.zeros(4)), name
    assert torch.equal(v["empty"]["area_fraction"], torch.zeros(4))
    assert torch.allclose(v["perfect"]["area_fraction"], metrics.area_fraction(batch.evidence)[:, 0])
    # faithfulness is the metric's own, on the model's decision
    f = metrics.faithfulness(model, batch.images, batch.evidence, target=result.predictions)
    assert torch.allclose(v["perfect"]["prob_e"], f["prob_e"]) and torch.allclose(v["perfect"]["prob_rob"], f["prob_rob"])
    d = metrics.deletion_curve(model, batch.images, batch.evidence, result.predictions, steps=4)
    assert torch.allclose(v["perfect"]["deletion_auc"], d.auc)

    table = markdown_table(result)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    iou_row = [c.strip() for c in rows[METRICS["iou"].label].split("|")[3:6]]
    assert iou_row == ["**1.00 [1.00, 1.00]**", "0.00 [0.00, 0.00]", "0.00 [0.00, 0.00]"]
    pointing = [c.strip() for c in rows[METRICS["pointing"].label].split("|")[3:6]]
    assert pointing == ["**100% (4/4)**", "0% (0/4)", "0% (0/4)"]
    # the pipe in a label is escaped, so every row has one cell per method
    prob_rows = [line for line in table.splitlines() if line.startswith("| p(")]
    assert prob_rows and all(len(re.findall(r"(?<!\\)\|", line)) == 3 + 3 for line in prob_rows)


def test_the_model_explained_reaches_the_report(known, tmp_path):
    """Accuracy, chance and calibration are the metrics' own on the model's logits, and the report states them."""
    model, batch, result = known
    with torch.no_grad():
        probs = torch.softmax(model(batch.images), 1)
    expected = metrics.calibration(probs, batch.labels)
    assert result.calibration.ece == pytest.approx(expected.ece) and torch.equal(result.calibration.counts, expected.counts)
    assert result.chance.correct == int((probs.argmax(1) == batch.labels).sum()) and result.chance.num_classes == 2
    paths = write_report(result, tmp_path, {"bundle": "toy", "task": "classification"})
    report = paths["report"].read_text()
    assert "## The model explained" in report and f"expected calibration error {expected.ece:.2f}" in report
    assert "| confidence bin | cases | mean confidence | accuracy |" in report
    assert "(figures/reliability.png)" in report and any(p.name == "reliability.png" for p in paths["figures"])
    saved = json.loads(paths["results"].read_text())["model"]
    assert saved["calibration"]["ece"] == pytest.approx(expected.ece) and saved["chance"]["cases"] == 4


def test_report_says_plainly_when_the_classifier_has_not_learned():
    probs = torch.full((4, 4), 0.01 / 3)
    probs[:, 0] = 0.99
    labels = torch.tensor([0, 1, 2, 3])
    lines = "\n".join(classifier_lines(metrics.chance_test(labels, probs.argmax(1), 4), metrics.calibration(probs, labels)))
    assert "accuracy 25% (1/4) on 4 classes: at chance (25%); explanations of a model that has not learned mean little" in lines
    assert "predicts class 0 on all 4 cases" in lines and "overconfident" in lines
    assert "expected calibration error 0.74 (10 equal-width confidence bins" in lines
    assert reliability_table(metrics.calibration(probs, labels)).splitlines()[2:] == ["| (0.90, 1.00] | 4 | 0.99 | 25% | -0.74 |"]
    # wrong on most cases, but above chance on 10 classes
    wrong = "\n".join(classifier_lines(metrics.chance_test(torch.arange(10), torch.tensor([0, 1, 2, 3] + [0] * 6), 10),
                                       metrics.calibration(torch.full((10, 10), 0.1), torch.arange(10))))
    assert "wrong on most cases (4/10 right)" in wrong and "at chance" not in wrong and "below chance" not in wrong
    below = "\n".join(classifier_lines(metrics.chance_test(torch.tensor([0, 0, 0, 1]), torch.tensor([1, 1, 1, 0]), 2),
                                       metrics.calibration(torch.tensor([[0.4, 0.6]] * 3 + [[0.6, 0.4]]), torch.tensor([0, 0, 0, 1]))))
    assert "accuracy 0% (0/4) on 2 classes: below chance (75%); explanations of a model that has not learned mean little" in below
    # a model that has learned gets no warning
    good = torch.eye(4)[labels] * 0.9 + 0.025
    fine = "\n".join(classifier_lines(metrics.chance_test(labels.repeat(5), labels.repeat(5), 4),
                                      metrics.calibration(good.repeat(5, 1), labels.repeat(5))))
    assert "Warning" not in fine and "Caution" not in fine and "above chance (one-sided binomial test p = 9.1e-13)" in fine


def test_report_says_plainly_when_the_segmenter_has_not_learned():
    background = torch.zeros(3, 1, 4, 4, dtype=torch.long)
    truth = background.clone()
    truth[:, :, 1:3, 1:3] = 2
    overlap = metrics.class_overlap(background, truth, 3)
    lines = "\n".join(segmentation_lines(overlap, 2, 0, float(overlap.dice[:, 2].median())))
    assert "segments class 2 poorly (median Dice 0.00" in lines
    assert "predicts no voxel of class 2 on most cases (0/3 with any)" in lines
    assert "predicts class 0 on every voxel of every case: it has not learned to segment" in lines
    assert segmentation_lines(metrics.class_overlap(truth, truth, 3), 2, 3, 1.0) == []
    # a network that is right where background fills 99% of the voxels gets no warning
    mostly_background = torch.zeros(2, 1, 10, 10, 10, dtype=torch.long)
    mostly_background[:, :, 4:6, 4:6, 4:6] = 2
    assert segmentation_lines(metrics.class_overlap(mostly_background, mostly_background, 3), 2, 2, 1.0) == []


def test_summary_cells():
    s = summarise(torch.tensor([1.0, 2.0, 3.0, float("nan")]))
    assert (s["median"], s["q1"], s["q3"], s["n"]) == (2.0, 1.5, 2.5, 3)
    assert format_cell(s, METRICS["iou"], total=4) == "2.00 [1.50, 2.50] n=3"
    assert format_cell(summarise([1.0, 0.0, 1.0]), METRICS["pointing"], total=3) == "67% (2/3)"
    assert format_cell(summarise([float("nan")]), METRICS["iou"], total=1) == "n/a"


def test_heatmaps_are_scored_at_the_mask_area():
    """A heatmap is binarised at the mask method's area, so both are compared on equal amounts of image."""
    batch = marker_phantoms(2, size=32, seed=1)
    heat = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    explainers = {
        "mask": _mask_method(lambda x: batch.evidence[: x.shape[0]].clone()),
        "heat": lambda m, x: Explanation(map=heat[: x.shape[0]], kind=HEATMAP, method="heat", target=torch.zeros(x.shape[0], 1, dtype=torch.long)),
    }
    r = evaluate_classification(_classifier(), batch.images, batch.evidence, explainers, curve_steps=2)
    assert torch.allclose(r.values["heat"]["area_fraction"], r.values["mask"]["area_fraction"])
    expected = metrics.iou(metrics.top_fraction_mask(heat, metrics.area_fraction(batch.evidence)[:, 0]), batch.evidence)[:, 0]
    assert torch.allclose(r.values["heat"]["iou_at_true_area"], expected)


def test_pixel_set_score_and_segmentation_known_answer(tmp_path):
    """The segmentation curves follow the class's mean probability over the pixel set; a CAM equal to
    the true region localises perfectly."""
    net = nn.Conv2d(1, 3, 1).eval()
    x = torch.rand(1, 1, 16, 16)
    pixels = torch.zeros(1, 1, 16, 16)
    pixels[..., 4:8, 4:8] = 1
    with torch.no_grad():
        expected = torch.softmax(net(x), 1)[..., 4:8, 4:8].mean((-1, -2))
        assert torch.allclose(PixelSetScore(net, pixels)(x), expected, atol=1e-6)
    truth = pixels.clone()
    oracle = lambda m, xx: Explanation(map=truth.clone(), kind=HEATMAP, method="oracle", target=torch.ones(1, 1, dtype=torch.long))  # noqa: E731
    r = evaluate_segmentation(net, x, truth, {"oracle": oracle}, explain_class=1, curve_steps=2)
    assert float(r.values["oracle"]["iou_at_true_area"][0]) == 1.0 and float(r.values["oracle"]["energy_inside"][0]) == 1.0
    paths = write_report(r, tmp_path, {"bundle": "toy", "task": "segmentation"})
    assert {p.name for p in paths["figures"]} == {"overlays.png", "curves.png", "distributions.png"}


def _run(argv) -> int:
    return main(argv)


def _check_png(path, min_side=200):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_side, (path, im.size)
        # a figure someone can look at: not one flat colour
        assert len(np.unique(np.asarray(im.convert("L")))) > 20


def test_evaluate_command_writes_the_report(tmp_path):
    out = tmp_path / "report"
    rc = _run(["evaluate", "fundus_resnet18", "--output", str(out), "--bundle-root", str(tmp_path / "bundle"),
               "--image-size", "32", "--train-cases", "4", "--epochs", "1", "--cases", "2", "--steps", "3",
               "--curve-steps", "3", "--sanity-cases", "1", "--sanity-stages", "1", "--seed", "0"])
    assert rc == 0
    assert (tmp_path / "bundle" / "models" / "model.pt").is_file()  # the bundle was trained by its own config
    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| metric"))
    assert [c.strip() for c in header.split("|")[3:6]] == ["Med-CAM", "Grad-CAM", "HiResCAM"]
    for key in ("prob_e", "deletion_auc", "insertion_auc", "iou", "pointing", "energy_inside", "sanity_spearman", "seconds"):
        assert f"| {METRICS[key].label.replace('|', chr(92) + '|')} |" in report, key
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == {"overlays.png", "curves.png", "distributions.png", "confidence.png", "sanity.png", "reliability.png"}
    assert "expected calibration error" in report and "on 5 classes" in report
    for name in figures:
        _check_png(out / "figures" / name)
        assert f"(figures/{name})" in report

    settings = json.loads((out / "settings.json").read_text())
    assert settings["bundle"] == "fundus_resnet18" and settings["data"].startswith("stand-in")
    assert settings["explainers"]["medcam"]["steps"] == 3 and settings["image_size"] == 32
    assert settings["ground_truth"] == "phantom evidence" and "monai" in settings["versions"]

    # the table's cells are the summaries of the per-case values written alongside
    results = json.loads((out / "results.json").read_text())
    iou = results["cases"]["medcam"]["iou"]
    cell = format_cell(summarise([math.nan if v is None else v for v in iou]), METRICS["iou"], 2)
    assert cell in report
    with open(out / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 and {r["method"] for r in rows} == {"medcam", "grad_cam", "hires_cam"}


def test_standin_truth_matches_the_files_the_bundle_read(tmp_path):
    """Regenerated evidence lines up with the bundle's (transposed) reading of the stand-in PNGs."""
    from monai.bundle import ConfigParser

    from medcam_monai.bundle import BUNDLES_DIR

    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / "fundus_resnet18" / "configs" / "inference.json"))
    parser.update({"bundle_root": str(tmp_path), "num_cases": 3, "image_size": 32})
    pre = parser.get_parsed_content("preprocessing")
    images = torch.stack([pre(dict(d))["image"].as_tensor() for d in parser.get_parsed_content("datalist")])
    truth = standin_truth("idrid_grading", images, "test", 3, 32)
    assert truth is not None and truth.shape == (3, 1, 32, 32)
    from medcam_monai.data.standins import STANDINS

    batch = STANDINS["idrid_grading"].make(3, 32, 20_000)
    assert torch.equal(truth, batch.evidence.transpose(-1, -2))  # MONAI reads 2D files as (x, y)
    assert standin_truth("idrid_grading", images.flip(-1), "test", 3, 32) is None  # not the same pixels: no truth


def test_label_maps_of_standin_and_real_segmentation_cases(tmp_path):
    """The per-class Dice is computed against the whole label map, in the axis order the bundle read."""
    import nibabel as nib

    from medcam_monai.data.standins import SPLIT_SEEDS, STANDINS
    from medcam_monai.evaluation.data import _load_label_map, standin_label_map

    batch = STANDINS["kits23"].make(2, 16, SPLIT_SEEDS["test"])
    assert torch.equal(standin_label_map("kits23", batch.images, "test", 2, 16), batch.labels.long())
    swapped = batch.images.transpose(2, 4)  # a reader that swapped two axes: the labels follow
    assert torch.equal(standin_label_map("kits23", swapped, "test", 2, 16), batch.labels.long().transpose(2, 4))
    assert standin_label_map("kits23", batch.images.flip(-1), "test", 2, 16) is None  # not these pixels: no labels
    assert set(batch.labels.unique().tolist()) >= {0, 1, 2}
    # a real case's label file (RAS NIfTI), read on the image's grid
    labels = np.zeros((6, 6, 4), dtype=np.uint8)
    labels[1:3, 2:4, 1:3] = 2
    labels[4, 4, 0] = 1
    path = tmp_path / "case_label.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(path))
    read = _load_label_map({"label": str(path)}, torch.zeros(1, 6, 6, 4))
    assert read.dtype == torch.long and torch.equal(read[0], torch.from_numpy(labels).long())
    assert _load_label_map({"label": str(path)}, torch.zeros(1, 8, 8, 4)).shape == (1, 8, 8, 4)  # padded to the ROI
    assert _load_label_map({}, torch.zeros(1, 6, 6, 4)) is None


def test_evaluate_command_segmentation_bundle(tmp_path):
    """A segmentation bundle is evaluated with Seg-HiRes-Grad CAM against Seg-Grad CAM, through its inferer."""
    out = tmp_path / "report"
    rc = _run(["evaluate", "kidney_ct_unet3d", "--output", str(out), "--bundle-root", str(tmp_path / "bundle"),
               "--image-size", "32", "--train-cases", "2", "--epochs", "1", "--cases", "1", "--curve-steps", "2",
               "--sanity-cases", "1", "--sanity-stages", "1"])
    assert rc == 0
    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| metric"))
    assert [c.strip() for c in header.split("|")[3:5]] == ["Seg-HiRes-Grad CAM", "Seg-Grad CAM"]
    assert "median Dice for class 2" in report
    assert "| class | Dice (mean [min, max] over cases) | voxels predicted | voxels true |" in report and "| 2 (explained) |" in report
    overlap = json.loads((out / "results.json").read_text())["model"]["overlap"]
    assert overlap["num_classes"] == 4 and len(overlap["dice_mean"]) == 4
    assert sum(overlap["predicted_fraction_mean"]) == pytest.approx(1.0, abs=1e-5)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["task"] == "segmentation" and settings["explainers"]["explain_class"] == 2
    assert settings["ground_truth"] == "phantom evidence"
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == {"overlays.png", "curves.png", "distributions.png", "sanity.png"}
    for name in figures:
        _check_png(out / "figures" / name)
