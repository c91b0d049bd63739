"""The demo tells the truth (issue 13): case lines say whether the model is right, a barely trained
model is called so, an earlier run is never overwritten, and the report page shows every case."""

from __future__ import annotations

import html

import numpy as np
from PIL import Image

from medcam_monai.demo import free_output_folder
from medcam_monai.io.report_page import Section, case_summary, write_report_page

CLASSES = ("no lesion", "bright nodule", "ring lesion")


def _record(pred, label, **scores):
    return {"case_id": "case0", "pred_class": pred, "label": label, "target": pred, "scores": scores, "outputs": {}}


def test_case_line_says_when_the_model_is_wrong():
    wrong = case_summary(_record(1, 2, prob_x=0.99, prob_e=0.97, decision_kept=True, area_fraction=0.02), CLASSES)
    assert wrong.startswith("predicted 1 (bright nodule), label 2 (ring lesion): the model is wrong here")
    assert "p(image) 0.99 -> p(evidence) 0.97, decision kept, mask 2.0% of the image" in wrong
    right = case_summary(_record(2, 2, prob_x=0.8, prob_e=0.7, decision_kept=False, area_fraction=0.1), CLASSES)
    assert right.startswith("predicted 2 (ring lesion), label 2 (ring lesion): right") and "decision NOT kept" in right
    assert "wrong" not in right
    # Med-CAM's whole-image answer says why it is the whole image
    whole = case_summary(_record(0, 0, prob_x=0.86, prob_e=0.86, decision_kept=True, area_fraction=1.0, sufficient=False), CLASSES)
    assert whole.endswith("mask 100.0% of the image; no mask smaller than the image keeps the decision, so the whole image is shown")
    assert "no mask smaller" not in wrong
    unknown = case_summary(_record(0, None), CLASSES)
    assert unknown == "predicted 0 (no lesion); no label, so whether it is right is unknown"
    # records store a batch's label as a one-element list; segmentation records have no decision
    assert "label 1 (bright nodule): right" in case_summary(_record(1, [1]), CLASSES)
    seg = case_summary({"target": [1], "scores": {"pixels": [1234]}}, ("bg", "grey matter"))
    assert seg == "explains class 1 (grey matter); over the 1,234 voxels predicted as the class"


def test_an_earlier_run_is_never_overwritten(tmp_path):
    base = tmp_path / "medcam-demo"
    assert free_output_folder(base) == (base.resolve(), None)  # missing: used as given
    base.mkdir()
    assert free_output_folder(base) == (base.resolve(), None)  # empty: used as given
    (base / "report.html").write_text("earlier run")
    folder, note = free_output_folder(base)
    assert folder == base.resolve().with_name("medcam-demo-2") and "nothing is overwritten" in note and str(base.resolve()) in note
    folder.mkdir()
    (folder / "x").write_text("")
    assert free_output_folder(base)[0].name == "medcam-demo-3"
    assert (base / "report.html").read_text() == "earlier run"


def test_report_page_shows_the_cases_side_by_side(tmp_path):
    figures = tmp_path / "run" / "png"
    figures.mkdir(parents=True)
    records = []
    for i, (pred, label) in enumerate(((1, 1), (0, 2))):
        png = figures / f"case{i}.png"
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
        records.append({**_record(pred, label), "case_id": f"case<{i}>", "outputs": {"png": str(png), "nifti": str(png)},
                        "note": f"; the mask overlaps the planted lesion (IoU 0.{i + 3})"})
    page = write_report_page([Section("Med-CAM", records, ["accuracy 50 %"], CLASSES)], tmp_path / "report.html", title="demo")
    text = page.read_text()
    assert text.count('<div class="case">') == 2 and 'src="run/png/case0.png"' in text and 'src="run/png/case1.png"' in text
    assert html.escape("case<1>") in text and "case<1>" not in text  # names are escaped
    assert "the model is wrong here" in text and "accuracy 50 %" in text and "planted lesion (IoU 0.4)" in text
    assert all((page.parent / src).is_file() for src in ("run/png/case0.png", "run/png/case1.png"))


def test_a_weak_classifier_is_called_so():
    from medcam_monai.demo import USEFUL_ACCURACY, weak_model_warning

    assert "barely trained" in weak_model_warning(0.97, quick=True) and "--quick" in weak_model_warning(0.97, quick=True)
    assert "barely trained (40% on held-out slices" in weak_model_warning(0.4, quick=False)
    assert weak_model_warning(USEFUL_ACCURACY, quick=False) is None and weak_model_warning(0.95, quick=False) is None


def test_a_mask_over_most_of_the_image_is_not_called_a_localisation():
    from medcam_monai.demo import lesion_overlap_phrase

    assert lesion_overlap_phrase(None, 0.3) == ""  # a control: no lesion to overlap
    assert "does not localise" in lesion_overlap_phrase(0.02, 1.0) and "overlaps" not in lesion_overlap_phrase(0.02, 1.0)
    assert lesion_overlap_phrase(0.45, 0.02) == "; the mask overlaps the planted lesion (IoU 0.45)"
    assert "barely touches" in lesion_overlap_phrase(0.05, 0.02)
    assert lesion_overlap_phrase(0.0, 0.0) == "; the mask misses the planted lesion"
    # the whole lesion inside a mask 16x its size: said so, not "barely touches" (a demo run printed that)
    held = lesion_overlap_phrase(0.06, 0.28, covered=0.96)
    assert "holds 96% of the planted lesion" in held and "16x its size" in held and "barely" not in held, held
    assert "barely touches" in lesion_overlap_phrase(0.05, 0.02, covered=0.2)


def test_bad_demo_sizes_are_refused_before_any_work(tmp_path, capsys):
    from medcam_monai.cli import main

    for option, value in (("--image-size", "8"), ("--cases", "0"), ("--volume-size", "4"), ("--train-cases", "2")):
        assert main(["demo", "--output", str(tmp_path / "out"), option, value]) == 2
        assert option in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_case_line_numbers_are_the_evaluation_metrics_on_the_written_files(tmp_path):
    """The demo reads its masks and maps back from the NIfTI files it wrote: a 4x4 mask around a 2x2
    lesion has IoU 4/16 and holds all of it; a map with |values| 3 inside and 1 outside puts 75 % inside."""
    import nibabel as nib
    import numpy as np

    from medcam_monai.demo import _energy_inside, _mask_overlap

    mask, lesion, heat = (np.zeros((8, 8), np.float32) for _ in range(3))
    mask[2:6, 2:6], lesion[3:5, 3:5], heat[0, 0], heat[3, 3] = 1, 1, -1, 3
    for name, a in (("mask", mask), ("lesion", lesion), ("heat", heat)):
        nib.save(nib.Nifti1Image(a, np.eye(4)), tmp_path / f"{name}.nii.gz")
    assert _mask_overlap({"outputs": {"nifti": str(tmp_path / "mask.nii.gz")}}, lesion) == (0.25, 1.0)
    assert _mask_overlap({"outputs": {"nifti": str(tmp_path / "mask.nii.gz")}}, np.zeros((8, 8))) == (None, None)
    assert _energy_inside({"outputs": {"nifti": str(tmp_path / "heat.nii.gz")}}, tmp_path / "lesion.nii.gz") == 0.75
