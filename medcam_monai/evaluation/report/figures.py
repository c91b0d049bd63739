"""The report's figures: explanations over their images, deletion/insertion curves, confidence,
per-case distributions, the sanity check and the classifier's reliability, as PNGs a person can
read without the JSON."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from medcam_monai.evaluation.report.tables import METRICS
from medcam_monai.registry import display_name

__all__ = ["plot_overlays", "plot_curves", "plot_confidence", "plot_distributions", "plot_sanity", "plot_reliability"]

_COLOURS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
# methods can coincide (Grad-CAM equals HiResCAM under global average pooling): line styles keep both visible
_STYLES = ["-", "--", ":", "-.", "-", "--"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, top: float = 1.0) -> Path:
    """Lay out (leaving ``1 - top`` of the height for a suptitle), write the PNG and free the figure."""
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


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
                ax.set_title((f"{display_name(m)}\n" if i == 0 else "") + ", ".join(bits), fontsize=8)
            if truth is not None and truth.any():
                ax.contour(truth, levels=[0.5], colors="cyan", linewidths=1.0, linestyles="--")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Explanations (white: the binary mask scored; cyan dashed: true evidence)", fontsize=10)
    return _save(fig, path, top=1 - 0.35 / fig.get_figheight())  # room for the suptitle


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
                    label=f"{display_name(m)} (AUC {auc:.2f})")
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
    return _save(fig, path)


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
        ax.set_title(f"{display_name(m)}\ndecision kept on evidence: {kept:.0%}", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("p(predicted class)")
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Confidence before and after masking (each method's mask at equal area)", fontsize=10)
    return _save(fig, path, top=0.95)


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
        ax.set_xticks(range(1, len(result.methods) + 1), [display_name(m) for m in result.methods], rotation=30, fontsize=8, ha="right")
        spec = METRICS[key]
        ax.set_title(f"{spec.label}\n({spec.better} is better)", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


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
        ax.plot(x, curve.mean(1), color=colour, lw=2.5, marker="o", label=display_name(m))
        ax.set_xticks(x, ["original"] + [f"+{n}" for n in s.layers], rotation=30, ha="right", fontsize=7)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("Spearman corr. with the original map")
    ax.set_ylim(-1.02, 1.02)
    ax.set_title("Sanity check: cascading randomisation (lower = depends on the weights)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_reliability(calibration, path: Path) -> Path:
    """Reliability diagram of a classifier on the cases explained: accuracy per confidence bin against
    the diagonal of perfect calibration (the gap shaded), cases per bin written on each bar, and the
    ECE and mean confidence in the title; beside it, how many cases fall in each bin.

    Args:
        calibration: a :class:`~medcam_monai.evaluation.metrics.Calibration`.
        path: the PNG to write.
    """
    plt = _plt()
    edges = calibration.edges.numpy()
    width = np.diff(edges)
    left = edges[:-1]
    counts = calibration.counts.numpy()
    filled = counts > 0
    acc = np.nan_to_num(calibration.bin_accuracy.numpy())
    conf = np.nan_to_num(calibration.confidence.numpy())
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    ax.plot([0, 1], [0, 1], color="black", ls="--", lw=1, label="perfect calibration")
    ax.bar(left[filled], acc[filled], width=width[filled], align="edge", color="#1f77b4", edgecolor="black",
           label="accuracy in the bin")
    # the gap between what the model claims (its mean confidence in the bin) and how often it is right
    ax.bar(left[filled], conf[filled] - acc[filled], bottom=acc[filled], width=width[filled], align="edge",
           color="#d62728", alpha=0.35, hatch="//", edgecolor="#d62728", label="gap to mean confidence")
    for x0, w, a, c, n in zip(left[filled], width[filled], acc[filled], conf[filled], counts[filled]):
        ax.text(x0 + w / 2, max(a, c) + 0.02, f"n={int(n)}", ha="center", va="bottom", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy (fraction right)")
    ax.set_title(f"Reliability on {int(counts.sum())} cases: ECE {calibration.ece:.2f}, accuracy {calibration.accuracy:.0%}, "
                 f"mean confidence {calibration.mean_confidence:.2f}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    hist.bar(left, counts, width=width, align="edge", color="grey", edgecolor="black")
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence (top-class probability)")
    hist.set_ylabel("cases")
    hist.yaxis.get_major_locator().set_params(integer=True)
    hist.set_title(f"Cases per bin ({calibration.bins} equal-width bins)", fontsize=9)
    hist.grid(alpha=0.3, axis="y")
    return _save(fig, path)
