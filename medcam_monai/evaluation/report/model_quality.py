"""What the report says about the model explained: accuracy against chance and calibration (classifiers),
per-class Dice and voxel shares (segmentation networks), and a plain warning when the model has not learned.

A reader who sees a poor explanation must be able to tell whether the explainer failed or the model
did; these lines come before the explanation metrics for that reason.
"""

from __future__ import annotations

import math

from medcam_monai.evaluation.metrics import Calibration, ChanceTest, ClassOverlap
from medcam_monai.evaluation.metrics.chance import ABOVE_CHANCE, AT_CHANCE, NOT_SHOWN

__all__ = ["model_lines", "classifier_lines", "segmentation_lines", "reliability_table", "class_table"]

# below this Dice a class is not segmented well enough for its explanation to be read as the network's reasoning
POOR_DICE = 0.5
# ECE above this, with confidence above accuracy: the probabilities on the figures overstate the model
OVERCONFIDENT_ECE = 0.2


def _share(v: float) -> str:
    """A share of voxels as a percentage that does not round a small class to 0%."""
    return "0%" if v == 0 else (f"{v:.1%}" if v >= 0.001 else f"{v * 100:.2g}%")


def _chance_basis(chance: ChanceTest) -> str:
    uniform = 1 / chance.num_classes
    if math.isclose(chance.chance, uniform):
        return f"1/{chance.num_classes}"
    return "the most common label's share"


def classifier_lines(chance: ChanceTest, calibration: Calibration) -> list[str]:
    """Markdown lines on a classifier's accuracy, chance and calibration, warnings first."""
    k, n, c = chance.correct, chance.cases, chance.num_classes
    lines = []
    if chance.verdict == AT_CHANCE:
        where = "at" if math.isclose(chance.accuracy, chance.chance) else "below"
        lines.append(f"- **Warning: accuracy {chance.accuracy:.0%} ({k}/{n}) on {c} classes: {where} chance "
                     f"({chance.chance:.0%}); explanations of a model that has not learned mean little.**")
    elif chance.wrong_on_most:
        lines.append(f"- **Warning: the classifier is wrong on most cases ({k}/{n} right): the explanations show what a "
                     f"wrong model used, not the evidence for the true class.**")
    if chance.single_class is not None:
        lines.append(f"- **Warning: the classifier predicts class {chance.single_class} on all {n} cases: it does not "
                     f"tell the cases apart.**")
    if chance.verdict == NOT_SHOWN:
        lines.append(f"- **Caution: accuracy {chance.accuracy:.0%} ({k}/{n}) is not significantly above chance "
                     f"({chance.chance:.0%}) on {n} cases (one-sided binomial test p = {chance.p_value:.2g}): too few "
                     f"cases to tell whether the model has learned.**")
    # the warnings above already give the verdict when it is not "above chance"
    verdict = f"; above chance (one-sided binomial test p = {chance.p_value:.2g})" if chance.verdict == ABOVE_CHANCE else ""
    lines.append(f"- the classifier on these cases: accuracy {chance.accuracy:.0%} ({k}/{n}) on {c} classes; chance "
                 f"{chance.chance:.0%} ({_chance_basis(chance)}: what a model scores without looking){verdict}")
    lines.append(f"- calibration: mean confidence (top-class probability) {calibration.mean_confidence:.2f} against "
                 f"accuracy {calibration.accuracy:.2f}; expected calibration error {calibration.ece:.2f} "
                 f"({calibration.bins} equal-width confidence bins; table and figure below)")
    if calibration.ece > OVERCONFIDENT_ECE and calibration.mean_confidence > calibration.accuracy:
        lines.append(f"- **Warning: overconfident: the probabilities on the figures (mean {calibration.mean_confidence:.2f}) "
                     f"overstate how often the model is right ({calibration.accuracy:.0%}).**")
    return lines


def reliability_table(calibration: Calibration) -> str:
    """Markdown table of the non-empty confidence bins: cases, mean confidence, accuracy, gap."""
    rows = ["| confidence bin | cases | mean confidence | accuracy | accuracy - confidence |", "|---|---|---|---|---|"]
    edges = calibration.edges.tolist()
    for b in range(calibration.bins):
        count = int(calibration.counts[b])
        if count == 0:
            continue
        conf, acc = float(calibration.confidence[b]), float(calibration.bin_accuracy[b])
        left = "[" if b == 0 else "("
        rows.append(f"| {left}{edges[b]:.2f}, {edges[b + 1]:.2f}] | {count} | {conf:.2f} | {acc:.0%} | {acc - conf:+.2f} |")
    return "\n".join(rows)


def segmentation_lines(
    overlap: ClassOverlap, explain_class: int, cases_with_prediction: int, dice_median: float | None
) -> list[str]:
    """Markdown warnings on a segmentation network that has not learned the class explained (empty when it has)."""
    n = int(overlap.predicted_fraction.shape[0])
    lines = []
    median = dice_median
    if median is not None and median < POOR_DICE:
        lines.append(f"- **Warning: the network segments class {explain_class} poorly (median Dice {median:.2f} on these "
                     f"cases): explanations of its predictions show what a network that has not learned the class used.**")
    if cases_with_prediction < n / 2:
        lines.append(f"- **Warning: the network predicts no voxel of class {explain_class} on most cases "
                     f"({cases_with_prediction}/{n} with any): there is little to explain.**")
    # background alone can hold 99% of a CT's voxels, so only a network that answers one class on every
    # voxel is flagged here; a class it misses shows in its Dice
    for c in range(overlap.num_classes):
        if bool((overlap.predicted_fraction[:, c] == 1).all()):
            lines.append(f"- **Warning: the network predicts class {c} on every voxel of every case: it has not learned "
                         f"to segment.**")
    return lines


def class_table(overlap: ClassOverlap, explain_class: int) -> str:
    """Markdown table per class: mean Dice over the cases, share of voxels predicted and true."""
    has_truth = overlap.dice is not None
    header = "| class | Dice (mean [min, max] over cases) | voxels predicted | voxels true |" if has_truth else "| class | voxels predicted |"
    rows = [header, "|---|---|---|---|" if has_truth else "|---|---|"]
    for c in range(overlap.num_classes):
        name = f"{c} (explained)" if c == explain_class else str(c)
        pred = _share(float(overlap.predicted_fraction[:, c].mean()))
        if not has_truth:
            rows.append(f"| {name} | {pred} |")
            continue
        d = overlap.dice[:, c]
        rows.append(f"| {name} | {float(d.mean()):.2f} [{float(d.min()):.2f}, {float(d.max()):.2f}] | {pred} | "
                    f"{_share(float(overlap.true_fraction[:, c].mean()))} |")
    return "\n".join(rows)


def model_lines(result) -> list[str]:
    """The report's lines on the model explained (warnings, numbers, tables), for a
    :class:`~medcam_monai.evaluation.runner.EvaluationResult`; empty when nothing is known."""
    info = result.info
    if result.task == "classification":
        if result.chance is None or result.calibration is None:
            return ["- no labels for these cases: the classifier's accuracy and calibration are unknown"]
        return [*classifier_lines(result.chance, result.calibration), "", reliability_table(result.calibration), ""]
    lines = []
    if result.overlap is not None:
        lines += segmentation_lines(result.overlap, info["explain_class"], info["cases_with_prediction"], info.get("dice_median"))
    if "dice_median" in info:
        lines.append(f"- the network's median Dice for class {info['explain_class']} on these cases: {info['dice_median']:.2f}; "
                     f"cases with predicted pixels of the class: {info['cases_with_prediction']}/{info['cases']}")
    else:
        lines.append(f"- no true label map for these cases: the network's Dice is unknown; cases with predicted pixels of "
                     f"class {info['explain_class']}: {info['cases_with_prediction']}/{info['cases']}")
    if result.overlap is not None:
        lines += ["", class_table(result.overlap, info["explain_class"]), ""]
    return lines
