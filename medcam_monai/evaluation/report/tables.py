"""The report's table: how each metric is shown, per-method summaries (median [interquartile range]) and Markdown."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from medcam_monai.registry import display_name

__all__ = ["MetricSpec", "METRICS", "summarise", "format_cell", "summaries", "markdown_table"]


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
    header = "| metric | better | " + " | ".join(display_name(m) for m in result.methods) + " |"
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
