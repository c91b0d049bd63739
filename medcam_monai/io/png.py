"""PNG figures of an explanation that a person can read without the JSON record.

Every figure has a title (the case, the method and its layer, the class explained with its name and,
where the explanation has them, its probability on the image and on the evidence), lettered panel
titles, a colour bar with its scale for heatmaps (raw map values or normalised, and whether ReLU was
applied), and masks drawn as a tint plus a contour with a dark outline in a colour chosen against the
image's own colours (:func:`contrasting_colour`), so that the mask shows on grey MRI, orange fundus
photographs and pink histology alike.

- 2D sources: (a) the image, (b) the explanation on it, (c) for a mask the evidence (the image where
  the mask is 1), for a heatmap its most salient region (``>= threshold`` of its scale) as a contour.
- 3D sources: three orthogonal planes (axial, coronal, sagittal) through the map's peak, reoriented
  to RAS and drawn in the radiological convention (the patient's right on the viewer's left, anterior
  up in axial planes, anterior on the left in sagittal ones), with orientation letters on every side,
  the planes' world coordinates and crosshairs at the peak.

The pixels of every panel are composed by :func:`compose_panels` (numpy, on the source grid) and laid
out by matplotlib; tests check the composition, people look at the layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medcam_monai.explanation import MASK, Explanation
from medcam_monai.io.reference import SourceReference, WSIReference
from medcam_monai.io.source_image import load_source_image
from medcam_monai.io.writer import Labels, PreparedCase, Writer, check_channel, check_threshold

__all__ = ["PngOverlayWriter", "write_png_overlay", "Panel", "compose_panels", "contrasting_colour", "TINTS"]

# candidate mask colours (RGB): saturated hues, one of which is always far from an image's own colours
TINTS: dict[str, tuple[int, int, int]] = {
    "cyan": (0, 229, 255),
    "magenta": (255, 0, 220),
    "lime": (57, 255, 20),
    "yellow": (255, 221, 0),
    "blue": (30, 90, 255),
}
TINT_ALPHA = 0.35
HEAT_ALPHA = 0.75
# a heatmap is drawn signed (diverging colours) when its negative part is at least this share of sum |map|
SIGNED_SHARE = 0.05


def contrasting_colour(rgb: np.ndarray) -> tuple[str, tuple[int, int, int]]:
    """The :data:`TINTS` colour farthest from the image's own colours.

    Each candidate is scored by the 5th percentile of its RGB distance to the image's pixels (the
    colour must differ from nearly every pixel, not on average); the best one wins. Grey images get
    a saturated hue, an orange fundus gets blue or cyan, a pink H&E slide gets lime.

    Args:
        rgb: ``(H, W, 3)`` uint8 display image.
    """
    pixels = rgb.reshape(-1, 3).astype(np.float32)
    if len(pixels) > 20000:  # a fixed subsample: the choice must not depend on chance
        pixels = pixels[:: len(pixels) // 20000]
    best, best_score = "cyan", -1.0
    for name, colour in TINTS.items():
        score = float(np.percentile(np.linalg.norm(pixels - np.asarray(colour, np.float32), axis=1), 5))
        if score > best_score:
            best, best_score = name, score
    return best, TINTS[best]


@dataclass
class Panel:
    """One panel of a figure, composed on the source grid in display orientation.

    Args:
        title: the panel's title (lettered by the figure).
        rgb: ``(H, W, 3)`` uint8 pixels, row 0 at the top.
        contour: ``(H, W)`` boolean region whose edge is drawn as a line, or None.
        reference: ``(H, W)`` boolean known evidence (e.g. a planted lesion) drawn as a dashed line, or None.
        letters: orientation letters ``(left, right, top, bottom)`` or None.
        aspect: height / width of one pixel (anisotropic voxels).
        crosshair: ``(row, column)`` of a point to mark, or None.
        colorbar: draw the figure's colour bar next to this panel.
    """

    title: str
    rgb: np.ndarray
    contour: np.ndarray | None = None
    reference: np.ndarray | None = None
    letters: tuple[str, str, str, str] | None = None
    aspect: float = 1.0
    crosshair: tuple[float, float] | None = None
    colorbar: bool = False


@dataclass
class HeatScale:
    """How a heatmap's values become colours: a diverging map centred on 0 for signed maps, else one-sided."""

    vmin: float
    vmax: float
    signed: bool
    label: str
    cmap: str

    def colours(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rgb float [0, 1], alpha)``; alpha follows |value| so weak regions leave the anatomy visible."""
        from matplotlib import colormaps

        norm = self.norm()
        if not self.signed:
            values = np.clip(values, self.vmin, None)
        rgb = colormaps[self.cmap](norm(values))[..., :3]
        top = max(abs(self.vmin), abs(self.vmax)) if self.signed else self.vmax - self.vmin
        magnitude = np.abs(values) if self.signed else values - self.vmin
        alpha = np.clip(magnitude / max(top, 1e-12) / 0.5, 0, 1) * HEAT_ALPHA
        return rgb, alpha

    def norm(self):
        from matplotlib.colors import Normalize, TwoSlopeNorm

        if self.signed:
            top = max(abs(self.vmin), abs(self.vmax), 1e-12)
            return TwoSlopeNorm(vcenter=0.0, vmin=-top, vmax=top)
        return Normalize(self.vmin, self.vmax if self.vmax > self.vmin else self.vmin + 1e-12)


@dataclass
class Figure:
    """What the PNG shows: a title, the panels and the heat scale of their colour bar (if any)."""

    title: str
    panels: list[Panel] = field(default_factory=list)
    scale: HeatScale | None = None
    mask_colour: str | None = None
    reference_colour: str | None = None


# -- pixels ----------------------------------------------------------------------------------------
def _display_rgb(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W, 3)`` uint8; grey images windowed to the 0.5-99.5th percentile of the
    pixels above the image's minimum (the black background of an MRI does not set the window)."""
    if image.shape[0] >= 3:
        rgb = np.moveaxis(image[:3], 0, -1)
        return np.clip(rgb, 0, 255).astype(np.uint8) if rgb.max() > 1.5 else (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    grey = image[0].astype(np.float32)
    foreground = grey[grey > grey.min()]
    lo, hi = np.percentile(foreground if foreground.size else grey, [0.5, 99.5]) if grey.size > 1 else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(grey.min()), float(grey.max()) + 1e-6
    g = (np.clip((grey - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def _tint(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    out = rgb.astype(np.float32)
    out[mask] = (1 - TINT_ALPHA) * out[mask] + TINT_ALPHA * np.asarray(colour, np.float32)
    return out.round().astype(np.uint8)


def _heat(rgb: np.ndarray, values: np.ndarray, scale: HeatScale) -> np.ndarray:
    colour, alpha = scale.colours(values)
    out = (1 - alpha[..., None]) * rgb.astype(np.float32) / 255 + alpha[..., None] * colour
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def _heat_scale(case: PreparedCase, values: np.ndarray) -> HeatScale:
    """A diverging scale centred on 0 when the negative part matters (>= :data:`SIGNED_SHARE` of
    ``sum |map|``), else a one-sided scale from 0 whose label says how much negative map it leaves
    out; the label also says whether the values are raw or normalised and whether ReLU was applied."""
    settings = case.explanation.settings or {}
    lo, hi = float(values.min()), float(values.max())
    label = "normalised map (÷ max)" if settings.get("normalize") else "raw map value"
    if settings.get("relu"):
        label += ", ReLU"
    total = float(np.abs(values).sum())
    negative = float(np.clip(-values, 0, None).sum()) / total if total > 0 else 0.0
    if negative >= SIGNED_SHARE:
        return HeatScale(lo, hi, True, label + " (red: for the class, blue: against)", "RdBu_r")
    if negative > 0:
        label += f"; values < 0 ({negative:.0%} of |map|) drawn as 0"
    return HeatScale(min(lo, 0.0) if negative == 0 else 0.0, max(hi, 0.0), False, label, "inferno")


# -- orientation -------------------------------------------------------------------------------------
def _to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(C, X, Y, Z)`` reordered and flipped to the closest RAS axes; returns it and its affine."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(("R", "A", "S")))
    out = np.stack([nib.orientations.apply_orientation(c, transform) for c in volume])
    return out, affine @ nib.orientations.inv_ornt_aff(transform, volume.shape[1:])


def _plane(a: np.ndarray) -> np.ndarray:
    """A RAS plane ``a[u, v]`` (u: x or y, v: y or z) as displayed: ``v`` decreasing down the rows, ``u``
    decreasing along the columns (the patient's right, or anterior, on the viewer's left)."""
    return np.ascontiguousarray(a[::-1, ::-1].T)


def _peak(values: np.ndarray, signed: bool) -> tuple[int, ...]:
    """The map's peak: the largest (|value| for signed maps) after a 3-voxel mean, so a coarse map's
    flat maximum gives its middle, not its first corner."""
    v = ndimage.uniform_filter(np.abs(values) if signed else values, size=3, mode="nearest")
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(v)), v.shape))


# -- text -----------------------------------------------------------------------------------------
def _class_name(labels: Labels, target: int) -> str:
    if labels is None:
        return f"class {target}"
    try:
        return f"{labels[target]} (class {target})"
    except (IndexError, KeyError):
        raise ValueError(f"labels has no entry for target class {target}; give a name for every class explained.") from None


def _score(scores: Mapping[str, Any], key: str, k: int = 0) -> float | None:
    v = scores.get(key)
    if v is None:
        return None
    a = np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=np.float64).reshape(-1)
    return float(a[min(k, a.size - 1)]) if a.size else None


def _flag(scores: Mapping[str, Any], key: str) -> bool | None:
    """A per-case yes/no score (a tensor, array, list or bool; the first case), None when absent."""
    value = scores.get(key)
    if value is None:
        return None
    return bool(np.asarray(value.cpu() if hasattr(value, "cpu") else value).reshape(-1)[0])


def _title(case: PreparedCase, channel: int, labels: Labels, case_name: str) -> str:
    from medcam_monai.registry import display_name

    e = case.explanation
    target = case.targets[channel]
    layer = (e.settings or {}).get("layer")
    layer = ", ".join(layer) if isinstance(layer, (list, tuple)) else layer
    first = f"{case_name} | {display_name(e.method)}{' @ ' + str(layer) if layer else ''} | {_class_name(labels, target)}"
    s = e.scores or {}
    facts = []
    p_x, p_e, p_b = _score(s, "prob_x"), _score(s, "prob_e"), _score(s, "prob_e_binary")
    if p_x is None and s.get("probs") is not None:  # classifier CAMs: the class's probability on the image
        probs = np.asarray(s["probs"].detach().cpu() if hasattr(s["probs"], "detach") else s["probs"]).reshape(-1)
        p_x = float(probs[target]) if target < probs.size else None
    if p_x is not None:
        facts.append(f"p(class | image) = {p_x:.2f}")
    if p_e is not None:
        facts.append(f"p(class | evidence) = {p_e:.2f}" + (f" (binary mask {p_b:.2f})" if p_b is not None else ""))
    kept = _flag(s, "decision_kept")
    if kept is not None:
        facts.append("decision kept" if kept else "decision NOT kept")
    if _flag(s, "sufficient") is False:  # Med-CAM reports the whole image then
        facts.append("no smaller mask keeps the decision")
    pixels = _score(s, "pixels", channel)
    if pixels is not None:
        what = (e.settings or {}).get("pixels", "pixel set")
        what = str(what.get("type", "pixel set") if isinstance(what, Mapping) else what).lower()
        noun = "voxels" if case.explanation.spatial_dims == 3 else "pixels"
        facts.append(f"pixel set: the {int(pixels):,} {noun} predicted as the class" if what == "predicted" else f"pixel set: {what} ({int(pixels):,} {noun})")
        y = _score(s, "target_score", channel)
        if y is not None:
            facts.append(f"Y = {y:.4g} (sum of the class's {'probabilities' if (e.settings or {}).get('use_probabilities') else 'logits'} there)")
    return first + ("\n" + "; ".join(facts) if facts else "")


# -- panels ---------------------------------------------------------------------------------------
def compose_panels(
    case: PreparedCase,
    pixels: np.ndarray,
    *,
    channel: int = 0,
    threshold: float = 0.5,
    point: Sequence[int] | None = None,
    labels: Labels = None,
    case_name: str | None = None,
    evidence: np.ndarray | None = None,
) -> Figure:
    """The figure of ``case`` (channel ``channel``) drawn on ``pixels`` ``(C, *spatial)`` (the source grid).

    Args:
        case: the prepared case (map on the source grid).
        pixels: the source image on the same grid.
        channel: the map channel drawn.
        threshold: a heatmap's region is ``>= threshold`` of its min-max scale.
        point: 3D: the voxel (source grid) the three planes pass through; None: the map's peak.
        labels: class names by index.
        case_name: shown first in the title (default: the source file's name).
        evidence: 2D: the known evidence (``(*spatial)`` on the source grid, e.g. a planted lesion),
            drawn on the explanation panel as a dashed contour in a second colour; its IoU with the
            mask (or the heatmap's region) goes to that panel's title.
    """
    ref = case.reference
    values = case.values[channel]
    name = case_name or Path(str(ref.path)).name
    title = _title(case, channel, labels, name)
    if len(ref.spatial_shape) == 3:
        return _compose_3d(case, pixels, values, title, point, threshold)
    # MONAI reads 2D files as (x, y): rows are y; whole-slide regions are read as (row, column)
    rows = (lambda a: a) if isinstance(ref, WSIReference) else (lambda a: np.swapaxes(a, -1, -2))
    rgb = _display_rgb(rows(pixels))
    v = rows(values)
    mask = (v >= 0.5) if case.kind == MASK else (rows(case.unit()[channel]) >= threshold)
    colour_name, colour = contrasting_colour(rgb)
    figure = Figure(title, mask_colour=colour_name)
    reference, known = None, ""
    if evidence is not None:
        evidence = np.asarray(evidence)
        if tuple(evidence.shape) != tuple(ref.spatial_shape):
            raise ValueError(f"evidence must be on the source grid {tuple(ref.spatial_shape)}, got {evidence.shape}.")
        reference = rows(evidence) >= 0.5
        figure.reference_colour = next(n for n in ("yellow", "magenta", "lime") if n != colour_name)
        iou = (mask & reference).sum() / max(1, (mask | reference).sum())
        known = f"\ndashed {figure.reference_colour}: known evidence (IoU {iou:.2f})"
    figure.panels.append(Panel("image", rgb))
    if case.kind == MASK:
        figure.panels.append(Panel(f"evidence mask ({colour_name}): {mask.mean():.1%} of the image{known}", _tint(rgb, mask, colour),
                                   contour=mask, reference=reference))
        figure.panels.append(Panel("evidence: the image where the mask is 1", np.where(mask[..., None], rgb, 0).astype(np.uint8)))
    else:
        figure.scale = _heat_scale(case, v)
        figure.panels.append(Panel("heatmap", _heat(rgb, v, figure.scale), colorbar=True))
        figure.panels.append(Panel(f"region >= {threshold:g} of the map's range ({colour_name}){known}", _tint(rgb, mask, colour),
                                   contour=mask, reference=reference))
    return figure


def _compose_3d(case: PreparedCase, pixels: np.ndarray, values: np.ndarray, title: str, point, threshold: float) -> Figure:
    affine = case.reference.affine_array
    stack, ras_affine = _to_ras(np.concatenate([pixels[:1], values[None]]).astype(np.float32), affine)
    image, heat = stack[0], stack[1]
    scale = _heat_scale(case, heat)
    if point is None and case.kind == MASK and (heat >= 0.5).any():
        i, j, k = (int(round(c)) for c in np.argwhere(heat >= 0.5).mean(0))
        where = "mask centre"
    elif point is None:
        i, j, k = _peak(heat, scale.signed)
        where = "peak |map|" if scale.signed else "peak"
    else:
        marker = np.zeros(values.shape, np.float32)
        marker[tuple(int(p) for p in point)] = 1
        i, j, k = (int(v[0]) for v in np.nonzero(_to_ras(marker[None], affine)[0][0]))
        where = "chosen point"
    world = ras_affine @ np.array([i, j, k, 1.0])
    spacing = np.sqrt((ras_affine[:3, :3] ** 2).sum(0))
    rgb_volume = _display_rgb(image[None].reshape(1, -1)).reshape(*image.shape, 3)  # one window for the volume
    mask_volume = heat >= 0.5 if case.kind == MASK else None
    colour_name, colour = contrasting_colour(rgb_volume[image > image.min()] if (image > image.min()).any() else rgb_volume)
    figure = Figure(
        f"{title}\n{where} at ({world[0]:.0f}, {world[1]:.0f}, {world[2]:.0f}) mm RAS; radiological view (patient's right on the viewer's left)",
        mask_colour=colour_name,
    )
    if case.kind != MASK:
        figure.scale = scale
    planes = (
        ("axial", f"z = {world[2]:.0f} mm", (slice(None), slice(None), k), (i, j), ("R", "L", "A", "P"), spacing[1] / spacing[0]),
        ("coronal", f"y = {world[1]:.0f} mm", (slice(None), j, slice(None)), (i, k), ("R", "L", "S", "I"), spacing[2] / spacing[0]),
        ("sagittal", f"x = {world[0]:.0f} mm", (i, slice(None), slice(None)), (j, k), ("A", "P", "S", "I"), spacing[2] / spacing[1]),
    )
    for n, (name, where_mm, index, (u, v), letters, aspect) in enumerate(planes):
        base = np.stack([_plane(rgb_volume[index][..., c]) for c in range(3)], -1)
        hp = _plane(heat[index])
        cross = (hp.shape[0] - 1 - v, hp.shape[1] - 1 - u)  # _plane reverses both axes
        if case.kind == MASK:
            m = _plane(mask_volume[index])
            panel = Panel(f"{name}, {where_mm}", _tint(base, m, colour), contour=m, letters=letters, aspect=aspect, crosshair=cross)
        else:
            panel = Panel(f"{name}, {where_mm}", _heat(base, hp, scale), letters=letters, aspect=aspect, crosshair=cross, colorbar=n == 2)
        figure.panels.append(panel)
    return figure


# -- layout ----------------------------------------------------------------------------------------
def render(figure: Figure, path: Path, dpi: int = 110, panel_inches: float = 4.2) -> None:
    """Lay ``figure`` out with matplotlib and save it as PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.patheffects as pe
    import matplotlib.pyplot as plt
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable

    outline = [pe.Stroke(linewidth=3.0, foreground="black"), pe.Normal()]
    text_outline = [pe.withStroke(linewidth=2.5, foreground="black")]
    n = len(figure.panels)
    bar = figure.scale is not None
    fig = plt.figure(figsize=(panel_inches * n + (0.9 if bar else 0.0), panel_inches + 1.1), dpi=dpi)
    grid = fig.add_gridspec(1, n + bar, width_ratios=[1] * n + ([0.05] if bar else []), wspace=0.08)
    tint = TINTS.get(figure.mask_colour or "", (0, 229, 255))
    for p, panel in enumerate(figure.panels):
        ax = fig.add_subplot(grid[0, p])
        h, w = panel.rgb.shape[:2]
        ax.imshow(panel.rgb, interpolation="nearest", aspect=panel.aspect)
        if panel.contour is not None and panel.contour.any() and not panel.contour.all():
            ax.contour(panel.contour.astype(float), levels=[0.5], colors=[np.asarray(tint) / 255], linewidths=1.6).set_path_effects(outline)
        if panel.reference is not None and panel.reference.any() and not panel.reference.all():
            known = np.asarray(TINTS[figure.reference_colour or "yellow"]) / 255
            ax.contour(panel.reference.astype(float), levels=[0.5], colors=[known], linewidths=1.4,
                       linestyles="dashed").set_path_effects(outline)
        if panel.crosshair is not None:
            ax.axhline(panel.crosshair[0], color="w", lw=0.6, ls=(0, (4, 4)), alpha=0.7)
            ax.axvline(panel.crosshair[1], color="w", lw=0.6, ls=(0, (4, 4)), alpha=0.7)
        if panel.letters is not None:
            kw = dict(color="white", fontsize=12, fontweight="bold", path_effects=text_outline, transform=ax.transAxes)
            left, right, top, bottom = panel.letters
            ax.text(0.02, 0.5, left, ha="left", va="center", **kw)
            ax.text(0.98, 0.5, right, ha="right", va="center", **kw)
            ax.text(0.5, 0.98, top, ha="center", va="top", **kw)
            ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **kw)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_facecolor("black")
        ax.set_title(f"({'abcdefgh'[p]}) {panel.title}", fontsize=10.5)
    if bar:
        cax = fig.add_subplot(grid[0, n])
        colorbar = fig.colorbar(ScalarMappable(norm=figure.scale.norm(), cmap=colormaps[figure.scale.cmap]), cax=cax)
        colorbar.set_label(figure.scale.label, fontsize=10)
    fig.suptitle(figure.title, fontsize=11.5)
    fig.subplots_adjust(left=0.01, right=0.93 if bar else 0.99, top=0.80, bottom=0.02)
    fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)


def _source_pixels(image: Any, ref: SourceReference) -> np.ndarray:
    """The caller's source pixels on the source grid (a MetaTensor on another grid is resampled by
    affine, bilinear), or the source loaded once when the caller has none."""
    if image is None:
        return load_source_image(ref)
    if hasattr(image, "affine"):
        from medcam_monai.io.geometry import on_grid

        return on_grid(image, ref.affine_array, ref.spatial_shape, nearest=False)
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim != len(ref.spatial_shape) + 1 or tuple(pixels.shape[1:]) != tuple(ref.spatial_shape):
        raise ValueError(f"image must be (C, *{tuple(ref.spatial_shape)}) on the source grid, got {pixels.shape}.")
    return pixels


class PngOverlayWriter(Writer):
    """Write a readable PNG figure of one map channel (see the module): titled with the case, method,
    class and probabilities, lettered panels, a colour bar for heatmaps, masks as a tint plus an
    outlined contour in a colour chosen against the image, and 3D sources as three orthogonal planes
    through the map's peak in the radiological convention.

    Args:
        explanation: the Explanation (``map`` is ``(B, K, *spatial)``).
        source: any source (a :class:`SourceReference`, its JSON, or the loaded image).
        path: output ``.png``; written atomically.
        case: which case of the batch to draw.
        channel: which map channel to draw.
        image: the source pixels when the caller has them: ``(C, *spatial)`` on the source grid, or a
            MetaTensor on another grid (e.g. the network input; resampled by its affine). ``None``
            loads the source once (a DICOM series from the files its reference names).
        point: 3D sources: the voxel ``(i, j, k)`` of the source grid the planes pass through;
            ``None`` uses the map's peak (a mask's centre).
        threshold: 2D heatmaps: the region drawn as a contour is ``>= threshold`` of the map's scale.
        labels: class names by index (a sequence or a mapping), shown in the title.
        title: the case's name in the title (default: the source file's name).
        evidence: 2D sources: the known evidence ``(*spatial)`` on the source grid (e.g. a planted
            lesion), drawn as a dashed contour in a second colour with its IoU.
        dpi: resolution of the figure.

    Returns:
        The path written.
    """

    name = "png"
    function = "write_png_overlay"
    suffix = ".png"

    def check_options(self, explanation: Explanation, reference: SourceReference, **options: Any) -> None:
        super().check_options(explanation, reference, **options)
        point = options.get("point")
        if point is not None:
            shape = tuple(reference.spatial_shape)
            if len(shape) != 3 or len(point) != 3:
                raise ValueError(f"point must be (i, j, k) of a 3D source; the source is {len(shape)}D {shape}.")
            bad = [int(p) for p, s in zip(point, shape) if not 0 <= int(p) < s]
            if bad:
                raise ValueError(f"point {tuple(point)} out of range for a volume of shape {shape}.")
        if not 20 <= int(options.get("dpi", 110)) <= 600:
            raise ValueError(f"dpi must be in 20..600, got {options.get('dpi')}.")

    def write(
        self,
        case: PreparedCase,
        path: Path,
        *,
        channel: int = 0,
        image: Any = None,
        point: Sequence[int] | None = None,
        threshold: float = 0.5,
        labels: Labels = None,
        title: str | None = None,
        evidence: Any = None,
        dpi: int = 110,
    ) -> None:
        channel = check_channel(channel, case.channels)
        if evidence is not None and len(case.reference.spatial_shape) != 2:
            raise ValueError("evidence (the known evidence drawn as a dashed contour) is for 2D sources.")
        figure = compose_panels(case, _source_pixels(image, case.reference), channel=channel, threshold=check_threshold(threshold),
                                point=point, labels=labels, case_name=title,
                                evidence=None if evidence is None else np.asarray(evidence, dtype=np.float32).squeeze())
        render(figure, path, dpi=dpi)


write_png_overlay = PngOverlayWriter()
