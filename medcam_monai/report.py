"""The benchmark report: a Markdown table of every metric per method, PNG figures, and the run's settings.

:func:`write_report` turns a :class:`~medcam_monai.bench.BenchResult` into a folder::

    report.md        the table (median [interquartile range] per method; rates as % (hits/n)),
                     the model's own accuracy, and links to the figures
    figures/         overlays.png, curves.png, distributions.png, confidence.png (classification),
                     sanity.png (when the randomisation check ran)
    results.json     every per-case value, the summaries, the curves
    cases.csv        one row per case and method
    settings.json    the run's settings (bundle, data, explainers, versions)
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["MetricSpec", "METRICS", "METHOD_NAMES", "summarise", "format_cell", "markdown_table", "write_report"]


@dataclass(frozen=True)
class MetricSpec:
    """How a metric is shown.

    Args:
        label: row title.
        better: ``"higher"``, ``"lower"`` or ``""`` (no direction: shown for context).
        rate: the values are 0/1 outcomes: shown as a percentage of hits.
        digits: decimals of a value metric.
    """

    label: str
    better: str = "higher"
    rate: bool = False
    digits: int = 2


# row order of the table; a metric a result does not hold is skipped
METRICS: dict[str, MetricSpec] = {
    "prob_e": MetricSpec("p(target | evidence m·x)"),
    "prob_rob": MetricSpec("p(target | m·x + (1-m)·background)"),
    "kept_e": MetricSpec("decision kept on the evidence", rate=True),
    "kept_rob": MetricSpec("decision kept over a new background", rate=True),
    "confidence_gain": MetricSpec("confidence gain p(e) - p(x)"),
    "area_fraction": MetricSpec("mask area (fraction of image)", "lower", digits=3),
    "components": MetricSpec("connected components of the mask", "lower", digits=0),
    "deletion_auc": MetricSpec("deletion AUC", "lower"),
    "insertion_auc": MetricSpec("insertion AUC"),
    "iou": MetricSpec("IoU of the mask with the true evidence"),
    "iou_at_true_area": MetricSpec("IoU, top pixels at the true area"),
    "pointing": MetricSpec("pointing game (peak inside the evidence)", rate=True),
    "energy_inside": MetricSpec("energy inside the evidence"),
    "sanity_spearman": MetricSpec("rank corr. with map of randomised model", "lower"),
    "seconds": MetricSpec("seconds per case", "lower"),
}

METHOD_NAMES = {
    "medcam": "Med-CAM",
    "grad_cam": "Grad-CAM",
    "hires_cam": "HiResCAM",
    "seg_hires_grad_cam": "Seg-HiRes-Grad CAM",
    "seg_grad_cam": "Seg-Grad CAM",
}

_COLOURS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
# methods can coincide (Grad-CAM equals HiResCAM under global average pooling): line styles keep both visible
_STYLES = ["-", "--", ":", "-.", "-", "--"]


def _name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------


def summarise(values: torch.Tensor | np.ndarray | list) -> dict[str, float]:
    """Median, quartiles, mean, standard deviation and count of the finite values.

    Args:
        values: ``(N,)`` per-case values; NaN marks a case where the metric is undefined.

    Returns:
        ``{"median", "q1", "q3", "mean", "std", "n", "sum"}`` (NaN statistics when ``n == 0``).
    """
    a = np.asarray(torch.as_tensor(values, dtype=torch.float64).flatten())
    a = a[np.isfinite(a)]
    if a.size == 0:
        nan = float("nan")
        return {"median": nan, "q1": nan, "q3": nan, "mean": nan, "std": nan, "n": 0, "sum": 0.0}
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "mean": float(a.mean()),
            "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size), "sum": float(a.sum())}


def format_cell(summary: dict[str, float], spec: MetricSpec, total: int) -> str:
    """One table cell: ``median [q1, q3]`` for values, ``hit% (hits/n)`` for rates, ``n/a`` when undefined.

    ``total`` is the number of cases; fewer defined values are shown as ``n=...``.
    """
    if summary["n"] == 0:
        return "n/a"
    if spec.rate:
        return f"{100 * summary['mean']:.0f}% ({int(round(summary['sum']))}/{summary['n']})"
    d = spec.digits

    def num(v: float) -> str:
        return f"{(0.0 if round(v, d) == 0 else v):.{d}f}"  # no "-0.00" for a tiny negative

    cell = f"{num(summary['median'])} [{num(summary['q1'])}, {num(summary['q3'])}]"
    return cell + (f" n={summary['n']}" if summary["n"] < total else "")


def _best(summaries: dict[str, dict[str, float]], spec: MetricSpec) -> set[str]:
    """Methods with the best central value of a row (none when there is no direction or a single method)."""
    key = "mean" if spec.rate else "median"
    # compared as shown: a difference hidden by the rounding is no win
    digits = 2 if spec.rate else spec.digits
    scored = {m: round(s[key], digits) for m, s in summaries.items() if s["n"] and math.isfinite(s[key])}
    if spec.better not in ("higher", "lower") or len(scored) < 2:
        return set()
    target = max(scored.values()) if spec.better == "higher" else min(scored.values())
    if all(abs(v - target) < 1e-12 for v in scored.values()):
        return set()  # a tie everywhere says nothing
    return {m for m, v in scored.items() if abs(v - target) < 1e-12}


def summaries(result) -> dict[str, dict[str, dict[str, float]]]:
    """``metric -> method -> summary`` for every metric of :data:`METRICS` the result holds."""
    out = {}
    for metric in METRICS:
        if any(metric in result.values[m] for m in result.methods):
            out[metric] = {m: summarise(result.values[m].get(metric, [])) for m in result.methods}
    return out


def markdown_table(result) -> str:
    """The metrics table in Markdown: one row per metric, one column per method, best in bold."""
    total = result.images.shape[0]
    header = "| metric | better | " + " | ".join(_name(m) for m in result.methods) + " |"
    lines = [header, "|---|:-:|" + "---|" * len(result.methods)]
    for metric, per_method in summaries(result).items():
        spec = METRICS[metric]
        best = _best(per_method, spec)
        cells = []
        for m in result.methods:
            cell = format_cell(per_method[m], spec, total)
            cells.append(f"**{cell}**" if m in best else cell)
        arrow = {"higher": "↑", "lower": "↓"}.get(spec.better, "")
        label = spec.label.replace("|", "\\|")  # a bare pipe would split the Markdown cell
        lines.append(f"| {label} | {arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def _display(a: np.ndarray) -> np.ndarray:
    """MONAI reads 2D files as (x, y): swap the last two axes so images appear as stored (rows first)."""
    return np.swapaxes(a, -1, -2)


def _slice_index(result) -> list[int | None]:
    """Per case, the slice (last axis) to draw of a 3D case: most true evidence, else most saliency."""
    if result.images.ndim == 4:
        return [None] * result.images.shape[0]
    out = []
    first = result.saliency[result.methods[0]]
    for i in range(result.images.shape[0]):
        source = result.truth[i, 0] if result.truth is not None and result.truth[i].sum() > 0 else first[i, 0].clamp_min(0)
        per_slice = source.flatten(0, -2).sum(0)
        # nothing to show anywhere: the middle slice shows the anatomy rather than the edge of the volume
        out.append(int(per_slice.argmax()) if per_slice.max() > 0 else per_slice.shape[0] // 2)
    return out


def _plane(t: torch.Tensor, z: int | None) -> np.ndarray:
    """``(C, *spatial)`` -> ``(C, H, W)`` numpy for display (a slice of a volume)."""
    a = t.detach().float().cpu().numpy()
    return _display(a if z is None else a[..., z])


def _rgb(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W, 3)`` in ``[0, 1]``; one channel windowed to its 1st-99th percentile."""
    if image.shape[0] >= 3:
        return np.clip(np.moveaxis(image[:3], 0, -1), 0, 1)
    g = image[0]
    lo, hi = np.percentile(g, [1, 99])
    g = np.clip((g - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat(g[..., None], 3, axis=-1)


def _case_title(result, i: int) -> str:
    if result.task == "classification" and result.predictions is not None:
        label = "" if result.labels is None else f"label {int(result.labels[i])}, "
        return f"case {i}\n{label}pred {int(result.predictions[i])}"
    return f"case {i}"


def plot_overlays(result, path: Path, max_cases: int = 6) -> Path:
    """Grid of cases (rows) by methods (columns): the map over the image, the mask's contour (white)
    and the true evidence's contour (cyan, dashed); the first column is the image alone."""
    plt = _plt()
    n = min(max_cases, result.images.shape[0])
    cols = 1 + len(result.methods)
    fig, axes = plt.subplots(n, cols, figsize=(2.6 * cols, 2.7 * n), squeeze=False)
    slices = _slice_index(result)
    for i in range(n):
        z = slices[i]
        rgb = _rgb(_plane(result.images[i], z))
        truth = None if result.truth is None else _plane(result.truth[i], z)[0] > 0.5
        for j in range(cols):
            ax = axes[i, j]
            ax.imshow(rgb, interpolation="nearest")
            if j == 0:
                ax.set_ylabel(_case_title(result, i) + (f"\nslice {z}" if z is not None else ""), fontsize=9)
                if i == 0:
                    ax.set_title("image (cyan: true evidence)", fontsize=9)
            else:
                m = result.methods[j - 1]
                heat = _plane(result.saliency[m][i], z)[0]
                heat = np.clip(heat, 0, None)
                heat = heat / heat.max() if heat.max() > 0 else heat
                # opacity follows the map, so the image stays readable where the map is low
                ax.imshow(heat, cmap="jet", alpha=0.6 * heat, vmin=0, vmax=1, interpolation="bilinear")
                mask = _plane(result.binary[m][i], z)[0] > 0.5
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors="white", linewidths=1.2)
                v = result.values[m]
                bits = []
                if "iou" in v and math.isfinite(float(v["iou"][i])):
                    bits.append(f"IoU {float(v['iou'][i]):.2f}")
                if "prob_e" in v:
                    bits.append(f"p(e) {float(v['prob_e'][i]):.2f}")
                if "deletion_auc" in v and math.isfinite(float(v["deletion_auc"][i])):
                    bits.append(f"del {float(v['deletion_auc'][i]):.2f}")
                ax.set_title((f"{_name(m)}\n" if i == 0 else "") + ", ".join(bits), fontsize=8)
            if truth is not None and truth.any():
                ax.contour(truth, levels=[0.5], colors="cyan", linewidths=1.0, linestyles="--")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Explanations (white: the binary mask scored; cyan dashed: true evidence)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the suptitle
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(result, path: Path) -> Path:
    """Deletion and insertion curves: median over cases per method, interquartile band, median AUC."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ylabel = "p(target)" if result.task == "classification" else "mean p(class) over the predicted pixels"
    for ax, mode, better in zip(axes, ("deletion", "insertion"), ("lower", "higher")):
        for k, m in enumerate(result.methods):
            c = result.curves[m][mode]
            keep = np.isfinite(result.values[m][f"{mode}_auc"].numpy())
            if not keep.any():
                continue
            s = c.scores.numpy()[keep]
            x = c.fractions.numpy()
            q1, med, q3 = np.percentile(s, [25, 50, 75], axis=0)
            auc = float(np.median(result.values[m][f"{mode}_auc"].numpy()[keep]))
            ax.plot(x, med, color=_COLOURS[k % len(_COLOURS)], ls=_STYLES[k % len(_STYLES)], lw=2,
                    label=f"{_name(m)} (AUC {auc:.2f})")
            ax.fill_between(x, q1, q3, color=_COLOURS[k % len(_COLOURS)], alpha=0.15)
        ax.set_xlabel(f"fraction of pixels {'removed' if mode == 'deletion' else 'inserted'} (most salient first)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{mode.capitalize()} ({better} AUC is better)")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:  # no case had a defined curve (e.g. nothing predicted for the class)
            ax.text(0.5, 0.5, "no defined curve", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confidence(result, path: Path) -> Path:
    """Per method: the target's probability on the image, on the evidence and over a new background,
    one line per case, the median in black."""
    plt = _plt()
    k = len(result.methods)
    fig, axes = plt.subplots(1, k, figsize=(3.4 * k, 3.8), sharey=True, squeeze=False)
    stages = ("prob_x", "prob_e", "prob_rob")
    for ax, m in zip(axes[0], result.methods):
        v = np.stack([result.values[m][s].numpy() for s in stages], 1)
        for row in v:
            ax.plot(range(3), row, color="grey", alpha=0.5, marker="o", ms=3)
        ax.plot(range(3), np.median(v, 0), color="black", lw=2.5, marker="o", label="median")
        kept = float(result.values[m]["kept_e"].mean())
        ax.set_xticks(range(3), ["image x", "evidence m·x", "new background"], fontsize=8)
        ax.set_title(f"{_name(m)}\ndecision kept on evidence: {kept:.0%}", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("p(predicted class)")
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Confidence before and after masking (each method's mask at equal area)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_distributions(result, path: Path) -> Path:
    """Per-case values of the main metrics as box plots with every case as a dot."""
    plt = _plt()
    keys = [k for k in ("iou", "iou_at_true_area", "energy_inside", "deletion_auc", "insertion_auc", "area_fraction")
            if all(k in result.values[m] for m in result.methods)]
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    rng = np.random.default_rng(0)
    for ax, key in zip(axes.flat, keys):
        data = [result.values[m][key].numpy() for m in result.methods]
        data = [d[np.isfinite(d)] for d in data]
        if all(len(d) == 0 for d in data):
            ax.set_visible(False)
            continue
        ax.boxplot([d if len(d) else [np.nan] for d in data], widths=0.5, showfliers=False)
        for k, d in enumerate(data):
            ax.scatter(k + 1 + rng.uniform(-0.12, 0.12, len(d)), d, s=10, color=_COLOURS[k % len(_COLOURS)], zorder=3)
        ax.set_xticks(range(1, len(result.methods) + 1), [_name(m) for m in result.methods], rotation=30, fontsize=8, ha="right")
        spec = METRICS[key]
        ax.set_title(f"{spec.label}\n({spec.better} is better)", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sanity(result, path: Path) -> Path:
    """Rank correlation with the original map as the top layers are re-initialised one after the other."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, (m, s) in enumerate(result.sanity.items()):
        sp = s.spearman.numpy()  # (L, B)
        x = np.arange(len(s.layers) + 1)
        curve = np.concatenate([np.ones((1, sp.shape[1])), sp], 0)
        colour = _COLOURS[k % len(_COLOURS)]
        for b in range(curve.shape[1]):
            ax.plot(x, curve[:, b], color=colour, alpha=0.3)
        ax.plot(x, curve.mean(1), color=colour, lw=2.5, marker="o", label=_name(m))
        ax.set_xticks(x, ["original"] + [f"+{n}" for n in s.layers], rotation=30, ha="right", fontsize=7)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("Spearman corr. with the original map")
    ax.set_ylim(-1.02, 1.02)
    ax.set_title("Sanity check: cascading randomisation (lower = depends on the weights)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# The folder
# ---------------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, os.PathLike):
        return str(value)
    return repr(value)


def _info_lines(result, settings: dict) -> list[str]:
    info = result.info
    lines = [
        f"- bundle `{settings.get('bundle')}` ({settings.get('task')}), dataset `{settings.get('dataset')}` "
        f"({settings.get('data')}), split `{settings.get('split')}`, {info.get('cases')} cases, "
        f"input size {settings.get('image_size')}",
    ]
    if "accuracy" in info:
        lines.append(f"- the classifier's accuracy on these cases: {info['accuracy']:.0%}; "
                     f"median p(predicted class | image) {summarise(result.values[result.methods[0]]['prob_x'])['median']:.2f}")
    if "dice_median" in info:
        lines.append(f"- the network's median Dice for class {info['explain_class']} on these cases: {info['dice_median']:.2f}; "
                     f"cases with predicted pixels of the class: {info['cases_with_prediction']}/{info['cases']}")
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
        result: a :class:`~medcam_monai.bench.BenchResult`.
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
    if result.sanity:
        figures.append(plot_sanity(result, figures_dir / "sanity.png"))

    table = markdown_table(result)
    captions = {
        "overlays.png": "Explanations of the first cases",
        "curves.png": "Deletion and insertion curves",
        "distributions.png": "Per-case distributions",
        "confidence.png": "Confidence before and after masking",
        "sanity.png": "Sanity check (cascading model randomisation)",
    }
    body = [
        f"# Explainer benchmark: {settings.get('bundle')}",
        "",
        *_info_lines(result, settings),
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
    }
    results_path = out / "results.json"
    results_path.write_text(json.dumps(_json_safe(results), indent=1))
    settings_path = out / "settings.json"
    settings_path.write_text(json.dumps(_json_safe(settings), indent=1))

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
