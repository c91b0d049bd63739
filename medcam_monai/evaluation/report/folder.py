"""The report folder: a Markdown table of every metric per method, PNG figures, and the run's settings.

:func:`write_report` turns an :class:`~medcam_monai.evaluation.runner.EvaluationResult` into a folder::

    report.md        the model explained on these cases first (a classifier's accuracy against
                     chance and its calibration, with a reliability table; a segmentation network's
                     per-class Dice and voxel shares; a plain warning when it has not learned),
                     then the table (median [interquartile range] per method; rates as % (hits/n))
                     and links to the figures
    figures/         overlays.png, curves.png, distributions.png, confidence.png and reliability.png
                     (classification), sanity.png (when the randomisation check ran)
    results.json     every per-case value, the summaries, the curves
    cases.csv        one row per case and method
    settings.json    the run's settings (bundle, data, explainers, versions)
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from medcam_monai.evaluation.report.figures import (
    plot_confidence,
    plot_curves,
    plot_distributions,
    plot_overlays,
    plot_reliability,
    plot_sanity,
)
from medcam_monai.evaluation.report.model_quality import model_lines
from medcam_monai.evaluation.report.tables import markdown_table, summaries
from medcam_monai.explanation import to_json_value

__all__ = ["write_report"]


def _info_lines(result, settings: dict) -> list[str]:
    info = result.info
    lines = [
        f"- bundle `{settings.get('bundle')}` ({settings.get('task')}), dataset `{settings.get('dataset')}` "
        f"({settings.get('data')}), split `{settings.get('split')}`, {info.get('cases')} cases, "
        f"input size {settings.get('image_size')}",
    ]
    if result.truth is None:
        lines.append("- no ground-truth regions for these cases: localisation metrics are n/a")
    elif "cases_with_evidence" in info:
        lines.append(f"- cases with true evidence (localisation is scored on these): {info['cases_with_evidence']}/{info['cases']}")
    return lines


_NOTES = {
    "classification": (
        "Med-CAM's mask is binary. Each heatmap (Grad-CAM, HiResCAM) is binarised to its most salient "
        "pixels at the area of Med-CAM's mask for the same case, so p(target | evidence), decisions kept, "
        "components and IoU compare equal amounts of image. Deletion/insertion and pointing rank the "
        "continuous maps (Med-CAM's soft mask). Removed pixels and the new background are a blurred copy "
        "of the image. \"IoU, top pixels at the true area\" binarises every map at the true evidence's "
        "area (threshold-free). Cells: median [interquartile range] over cases; rates: % (hits/n); "
        "best in bold."
    ),
    "segmentation": (
        "Both CAMs explain Y = sum of the class's logits over the pixels the network predicts for it, "
        "through the bundle's inferer. Deletion/insertion follow the class's mean probability over those "
        "pixels as the most salient voxels are replaced by a blurred copy. \"IoU of the mask\" binarises "
        "each map at the predicted region's size; \"top pixels at the true area\" at the true region's. "
        "Cells: median [interquartile range] over cases; rates: % (hits/n); best in bold."
    ),
}


def write_report(result, folder: str | os.PathLike, settings: dict[str, Any]) -> dict[str, Any]:
    """Write the report folder (see the module docstring).

    Args:
        result: a :class:`~medcam_monai.evaluation.runner.EvaluationResult`.
        folder: output folder (created).
        settings: the run's settings, written to ``settings.json`` and summarised in the report.

    Returns:
        ``{"report", "results", "cases", "settings": Path, "figures": [Path]}``.
    """
    out = Path(folder)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures = [plot_overlays(result, figures_dir / "overlays.png"), plot_curves(result, figures_dir / "curves.png"),
               plot_distributions(result, figures_dir / "distributions.png")]
    if result.task == "classification" and all("prob_e" in result.values[m] for m in result.methods):
        figures.append(plot_confidence(result, figures_dir / "confidence.png"))
    if result.calibration is not None:
        figures.append(plot_reliability(result.calibration, figures_dir / "reliability.png"))
    if result.sanity:
        figures.append(plot_sanity(result, figures_dir / "sanity.png"))

    table = markdown_table(result)
    captions = {
        "overlays.png": "Explanations of the first cases",
        "curves.png": "Deletion and insertion curves",
        "distributions.png": "Per-case distributions",
        "confidence.png": "Confidence before and after masking",
        "sanity.png": "Sanity check (cascading model randomisation)",
        "reliability.png": "Reliability of the classifier's confidence on these cases",
    }
    body = [
        f"# Explainer benchmark: {settings.get('bundle')}",
        "",
        *_info_lines(result, settings),
        "",
        "## The model explained",
        "",
        *model_lines(result),
        "",
        "## The explanations",
        "",
        table,
        "",
        _NOTES[result.task],
        "",
        *[f"![{captions[p.name]}](figures/{p.name})\n" for p in figures],
        "Settings: [settings.json](settings.json); every case: [cases.csv](cases.csv), [results.json](results.json).",
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(body))

    stats = summaries(result)
    results = {
        "task": result.task,
        "methods": result.methods,
        "info": result.info,
        "summary": stats,
        "cases": {m: {k: v for k, v in result.values[m].items()} for m in result.methods},
        "curves": {m: {mode: {"fractions": c.fractions, "scores": c.scores, "auc": c.auc} for mode, c in cs.items()}
                   for m, cs in result.curves.items()},
        "sanity": {m: s.to_dict() for m, s in result.sanity.items()},
        "model": {k: getattr(result, k).to_dict() for k in ("calibration", "chance", "overlap") if getattr(result, k) is not None},
    }
    results_path = out / "results.json"
    results_path.write_text(json.dumps(to_json_value(results), indent=1))
    settings_path = out / "settings.json"
    settings_path.write_text(json.dumps(to_json_value(settings), indent=1))

    cases_path = out / "cases.csv"
    keys = sorted({k for m in result.methods for k in result.values[m]})
    with open(cases_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "method", *keys])
        for m in result.methods:
            for i in range(result.images.shape[0]):
                row = []
                for k in keys:
                    v = result.values[m].get(k)
                    x = float(v[i]) if v is not None else float("nan")
                    row.append("" if not math.isfinite(x) else f"{x:.6g}")
                w.writerow([i, m, *row])
    return {"report": report, "results": results_path, "cases": cases_path, "settings": settings_path, "figures": figures}
