"""Whole volumes through a MONAI ``SlidingWindowInferer``, one window-batch of graph at a time.

The inferer's blended prediction is ``P(p) = sum_w beta_w(p) * y_w(p)`` with
``beta_w = importance / sum_w importance`` (MONAI's blending). ``Y`` depends on the window outputs
only through ``P``, so ``dY/dA_w = d/dA_w sum_p G(p) * beta_w(p) * y_w(p)`` with ``G = dY/dP`` taken
at the whole-volume prediction (``G = M`` on channel ``c`` for logits). Each window-batch is
forwarded with gradient, back-propagated and freed before the next: the gradients are exactly the
whole-volume ones while memory stays at one window's graph plus the whole-volume buffers.

Steps:

1. When ``M`` depends on the prediction (``Predicted``) or ``Y`` uses probabilities, the bundle's
   inferer itself predicts the whole input without gradients, and ``M`` is defined on that blended
   prediction.
2. Per window-batch: forward with the layer output as a leaf, ``Y_w = sum(G * beta_w * y_w)``, one
   backward per target. Windows whose ``G`` is zero for every target are skipped (their gradient is
   zero).

How overlapping windows' maps are combined:

- Seg-HiRes-Grad CAM: window maps are **summed**. Each window's gradient already carries its blend
  share ``beta_w``, so the sum is ``sum_k dY/dA^k A^k`` of the blended network; e.g. with a 1x1 head
  it is ``M * (P_c - b_c)``, the whole-input formula on the blended logits.
- Seg-Grad CAM: ``alpha_k = (1/Z) sum_w sum_p dY/dA_w^k(p)`` over all windows (``Z`` = layer positions
  covering the volume), then a second no-grad pass maps ``sum_k alpha_k A_w^k`` per window and
  blends them with the inferer's importance weights, like predictions.

With one window covering the input both equal the direct whole-input result. Under overlap they
are close for translation-equivariant networks (batch norm in eval mode); a network with instance
norm normalises each window by its own statistics, so its windows (and their maps) differ from the
whole input by design, exactly as its sliding-window predictions do.

Like MONAI's ``sliding_window_inference``: an input smaller than the window on some axis is padded
(the inferer's ``padding_mode`` and ``cval``, half before and half after) and every map is cropped
back to the input; ``roi_size`` entries that are None or non-positive take the input's size;
``overlap`` and ``sigma_scale`` may be given per axis; windows run on ``sw_device`` and the
whole-volume buffers (prediction, masks, maps) live on ``device`` (or on the CPU above
``cpu_thresh`` voxels), each defaulting to the input's device. ``buffer_steps`` only changes how
MONAI stages its output buffer, not the result, so it is ignored here; ``with_coord`` predictors
are refused (the explained network is called with the window alone).

Windows are resized to the input grid one at a time (linear, the explainer's ``align_corners``).
``layer_map`` is assembled on the whole-volume layer grid only when every window starts on it
(``roi`` and window starts multiples of the layer stride); otherwise it is None and the settings say why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.utils import PytorchPadMode, ensure_tuple_rep, fall_back_tuple, look_up_option

from medcam_monai.cam.core import BaseCAM, target_gradient, target_value
from medcam_monai.cam.layers import as_feature_map
from medcam_monai.cam.pixel_sets import PixelSet, resolve_activation
from medcam_monai.checks import check_segmentation_output
from medcam_monai.hooks import LayerRecorder, resolve_layer
from medcam_monai.targets import TargetSpec, segmentation_targets

__all__ = ["WindowPlan", "plan_windows", "window_padding", "SlidingWindowRoute"]


class WindowPlan:
    """The windows, importance map and normaliser of a ``SlidingWindowInferer`` on one input size.

    Args:
        spatial: the input's spatial size (already padded to at least the window on every axis).
        inferer: a ``monai.inferers.SlidingWindowInferer``.
        device, dtype: of the importance and count maps.
        roi: the window size (default: the inferer's ``roi_size`` with non-positive entries taken
            from ``spatial``, as MONAI's ``fall_back_tuple``).

    Attributes:
        roi: window size; slices: one tuple of slices per window (MONAI's ``dense_patch_slices``
        order); importance: ``(*roi)`` blend weights; count: ``(*spatial)`` sum of the weights.
    """

    def __init__(self, spatial: Sequence[int], inferer, device, dtype, roi: Sequence[int] | None = None) -> None:
        spatial = tuple(int(s) for s in spatial)
        dims = len(spatial)
        self.spatial = spatial
        self.roi = tuple(int(r) for r in (roi if roi is not None else fall_back_tuple(inferer.roi_size, spatial)))
        if len(self.roi) != dims:
            raise ValueError(f"roi_size {inferer.roi_size} has {len(self.roi)} dims for a {dims}D input.")
        if any(r > s for r, s in zip(self.roi, spatial)):
            raise ValueError(f"Internal error: the padded input {spatial} is smaller than the window {self.roi}.")
        overlap = ensure_tuple_rep(inferer.overlap, dims)
        if any(not 0 <= o < 1 for o in overlap):
            raise ValueError(f"overlap must be >= 0 and < 1 on every axis, got {inferer.overlap}.")
        interval = tuple(
            r if r == s else max(int(r * (1 - o)), 1) for r, s, o in zip(self.roi, spatial, overlap)
        )  # MONAI's scan interval (monai.inferers.utils._get_scan_interval)
        self.overlap = overlap
        self.slices = [tuple(s) for s in dense_patch_slices(spatial, self.roi, interval)]
        weight = getattr(inferer, "roi_weight_map", None)
        if weight is None or tuple(weight.shape[-dims:]) != self.roi:
            weight = compute_importance_map(self.roi, mode=inferer.mode, sigma_scale=inferer.sigma_scale, device=device, dtype=dtype)
        self.importance = weight.to(device=device, dtype=dtype).reshape(self.roi)
        self.count = torch.zeros(spatial, device=device, dtype=dtype)
        for s in self.slices:
            self.count[s] += self.importance

    def __len__(self) -> int:
        return len(self.slices)

    def share(self, s: tuple) -> torch.Tensor:
        """``beta_w = importance / count`` of window ``s``, ``(*roi)``."""
        return self.importance / self.count[s]

    def layer_grid(self, grid: Sequence[int]) -> tuple[tuple[int, ...] | None, str]:
        """The layer stride when every window lands on the whole-volume layer grid, else None and why."""
        stride = [r // g if g and r % g == 0 else 0 for r, g in zip(self.roi, grid)]
        if not all(stride):
            return None, f"window {self.roi} is not a multiple of the layer grid {tuple(grid)}"
        if any(sp % st for sp, st in zip(self.spatial, stride)):
            return None, f"input {self.spatial} is not a multiple of the layer stride {tuple(stride)}"
        if any(sl.start % st for s in self.slices for sl, st in zip(s, stride)):
            return None, f"window starts are not multiples of the layer stride {tuple(stride)}"
        return tuple(stride), "assembled on the whole-volume layer grid"


def plan_windows(spatial: Sequence[int], inferer, device="cpu", dtype=torch.float32) -> WindowPlan:
    """The :class:`WindowPlan` of ``inferer`` on an input of spatial size ``spatial`` (padded first,
    as the inferer pads an input smaller than its window)."""
    roi, pad = window_padding(spatial, inferer.roi_size)
    padded = [s + pad[2 * (len(spatial) - 1 - i)] + pad[2 * (len(spatial) - 1 - i) + 1] for i, s in enumerate(spatial)]
    return WindowPlan(padded, inferer, device, dtype, roi=roi)


def window_padding(spatial: Sequence[int], roi_size) -> tuple[tuple[int, ...], list[int]]:
    """The window size and MONAI's padding of an input of size ``spatial``.

    Returns:
        ``roi`` (non-positive/None entries of ``roi_size`` replaced by the input's size) and the
        ``torch.nn.functional.pad`` list (last axis first, half before and half after), all zeros
        when the input is at least the window on every axis: exactly what ``sliding_window_inference``
        computes.
    """
    spatial = tuple(int(s) for s in spatial)
    roi = tuple(int(r) for r in fall_back_tuple(roi_size, spatial))
    if len(roi) != len(spatial):
        raise ValueError(f"roi_size {roi_size} has {len(roi)} dims for a {len(spatial)}D input of size {spatial}.")
    pad: list[int] = []
    for k in range(len(spatial) - 1, -1, -1):
        diff = max(roi[k] - spatial[k], 0)
        pad.extend([diff // 2, diff - diff // 2])
    return roi, pad


def _crop(t: torch.Tensor, pad: list[int], spatial: Sequence[int], scale: Sequence[int] | None = None) -> torch.Tensor:
    """Undo :func:`window_padding` on the spatial axes of ``t`` (divided by ``scale`` on a layer grid)."""
    dims = len(spatial)
    index = [slice(None)] * (t.ndim - dims)
    for i, size in enumerate(spatial):
        before = pad[2 * (dims - 1 - i)]
        st = 1 if scale is None else scale[i]
        index.append(slice(before // st, (before + size) // st))
    return t[tuple(index)]


def _window_batches(plan: WindowPlan, batch: int, sw_batch_size: int):
    """``[(case, slices), ...]`` per window-batch, in MONAI's order (cases outer, windows inner)."""
    items = [(i // len(plan), plan.slices[i % len(plan)]) for i in range(batch * len(plan))]
    for start in range(0, len(items), sw_batch_size):
        yield items[start : start + sw_batch_size]


def _gather(t: torch.Tensor, items, lead=(slice(None),)) -> torch.Tensor:
    return torch.cat([t[(slice(b, b + 1), *lead, *s)] for b, s in items])


class SlidingWindowRoute:
    """A segmentation CAM run window by window through a MONAI ``SlidingWindowInferer``.

    Args:
        inferer: the bundle's ``monai.inferers.SlidingWindowInferer``.
    """

    def __init__(self, inferer) -> None:
        from monai.inferers import SlidingWindowInferer

        if not isinstance(inferer, SlidingWindowInferer):
            raise TypeError(f"inferer must be a monai.inferers.SlidingWindowInferer or None, got {type(inferer).__name__}.")
        self.inferer = inferer

    def describe(self, result: dict) -> dict:
        """The windows and blending used, for the explanation's record."""
        return result["settings"]

    def run(self, cam: BaseCAM, x: torch.Tensor, target: TargetSpec, pixel_set: PixelSet) -> dict:
        """Explain ``x`` with ``cam``'s public steps, one window-batch of graph at a time.

        Args:
            cam: the explainer (a ``SegHiResGradCAM``/``SegGradCAM``; its network is already frozen
                and in eval mode).
            x: ``(B, C_in, *spatial)`` plain tensor (padded here where it is smaller than the window).
            target: see :func:`~medcam_monai.targets.segmentation_targets`.
            pixel_set: the pixel set ``M``, defined on the whole-input prediction.

        Returns:
            dict with ``layer``, ``map`` ``(B, K, *spatial)``, ``layer_map`` (or None), ``classes``,
            ``pixels``, ``target_score`` ``(B, K)`` and ``settings``.
        """
        return _run(cam, x, target, pixel_set, self.inferer)


def _devices(inferer, x: torch.Tensor) -> tuple[torch.device, torch.device]:
    """``(sw_device, device)`` as ``SlidingWindowInferer`` chooses them: windows on ``sw_device``, the
    stitched buffers on ``device`` (the CPU above ``cpu_thresh`` voxels), each defaulting to the input's."""
    device = inferer.device
    if device is None and getattr(inferer, "cpu_thresh", None) is not None and x.shape[2:].numel() > inferer.cpu_thresh:
        device = "cpu"
    return torch.device(inferer.sw_device or x.device), torch.device(device or x.device)


def _run(cam: BaseCAM, x: torch.Tensor, target: TargetSpec, pixel_set: PixelSet, inferer) -> dict:
    if getattr(inferer, "with_coord", False):
        raise ValueError(
            "The inferer has with_coord=True (its predictor takes window coordinates); the explainers call the "
            "network with the window alone. Use a SlidingWindowInferer with with_coord=False."
        )
    model, batch, spatial = cam.model, x.shape[0], tuple(x.shape[2:])
    sw_device, device = _devices(inferer, x)
    roi, pad = window_padding(spatial, inferer.roi_size)
    padded = any(pad)
    # an input smaller than the window is padded exactly as the inferer pads it; maps are cropped back
    xp = F.pad(x, pad, mode=look_up_option(inferer.padding_mode, PytorchPadMode), value=inferer.cval) if padded else x
    plan = WindowPlan(xp.shape[2:], inferer, device, x.dtype, roi=roi)
    first = xp[(slice(0, 1), slice(None), *plan.slices[0])].to(sw_device)
    layer = cam.layer_for(first)
    resolve_layer(model, layer)

    # one window without gradients: the output's form, the layer grid and the dependence check
    with LayerRecorder(model, [layer]) as rec, torch.no_grad():
        out0, acts0 = cam.forward_recorded(rec, layer, first)
    out0 = check_segmentation_output(out0, first.shape)
    cam.check_layer_depends_on_input(layer, first, acts0)
    grid = tuple(as_feature_map(acts0, plan.roi).shape[2:])
    n_channels = out0.shape[1]
    del out0, acts0
    activation = resolve_activation(cam.activation, n_channels)
    cls = segmentation_targets(target, batch, n_channels, device)
    n_targets = cls.shape[1]

    needs_prediction = pixel_set.needs_prediction or cam.use_probabilities
    if needs_prediction:
        with torch.no_grad():  # the bundle's own inferer: padding, blending and cropping are MONAI's
            pred = check_segmentation_output(inferer(x, model), x.shape)
        pred = (pred.as_tensor() if hasattr(pred, "as_tensor") else pred).to(device)
        masks = pixel_set.masks(pred, cls, activation)
        scores = torch.stack(
            [target_value(pred, masks[:, k], cls[:, k], activation, cam.use_probabilities) for k in range(n_targets)], 1
        )
        pred = F.pad(pred, pad) if padded else pred  # padded voxels are outside M: their values never count
    else:
        pred = None
        shape_only = torch.zeros((), dtype=x.dtype, device=device).expand(batch, n_channels, *spatial)
        masks = pixel_set.masks(shape_only, cls, activation)
        scores = torch.zeros(batch, n_targets, dtype=x.dtype, device=device)
    pixels = masks.flatten(2).sum(-1)
    masks = F.pad(masks, pad) if padded else masks

    stride, layer_note = plan.layer_grid(grid)
    if stride is not None and padded and any(p % st for i, st in enumerate(reversed(stride)) for p in pad[2 * i : 2 * i + 2]):
        stride, layer_note = None, f"the padding {pad} (input smaller than the window) is not a multiple of the layer stride"
    out_map = torch.zeros(batch, n_targets, *plan.spatial, dtype=x.dtype, device=device)
    layer_map = None
    if stride is not None:
        layer_map = torch.zeros(batch, n_targets, *[s // st for s, st in zip(plan.spatial, stride)], dtype=x.dtype, device=device)
    alpha = None  # pooled methods: sum over windows of the per-channel gradient sums
    sw_batch_size = int(inferer.sw_batch_size)

    for items in _window_batches(plan, batch, sw_batch_size):
        window_masks = _gather(masks, items)  # (n, K, *roi)
        if not bool(window_masks.any()):
            continue  # M misses these windows: zero gradient, zero contribution
        win = _gather(xp, items).to(sw_device)
        with LayerRecorder(model, [layer], as_leaf=True) as rec:
            out, acts = cam.forward_recorded(rec, layer, win)
        out = check_segmentation_output(out, win.shape)
        share = torch.stack([plan.share(s) for _, s in items])[:, None]  # (n, 1, *roi)
        logits = _gather(pred, items) if pred is not None else out.detach().to(device)
        cases = [b for b, _ in items]
        for k in range(n_targets):
            g, _ = target_gradient(logits, window_masks[:, k], cls[cases, k], activation, cam.use_probabilities)
            g = (g * share).to(sw_device)
            if pred is None:
                scores[:, k].index_add_(0, torch.tensor(cases, device=device), (g * out.detach()).flatten(1).sum(1).to(device))
            grads = cam.layer_gradient((g * out).sum(), acts, layer, retain=k < n_targets - 1)
            g_map, a_map = as_feature_map(grads, plan.roi), as_feature_map(acts.detach(), plan.roi)
            if cam.pooled:
                if alpha is None:
                    alpha = torch.zeros(batch, n_targets, g_map.shape[1], dtype=x.dtype, device=device)
                alpha[:, k].index_add_(0, torch.tensor(cases, device=device), g_map.flatten(2).sum(-1).to(device))
                continue
            window_cam = cam.combine(g_map, a_map)[:, None]  # (n, 1, *grid)
            up = cam.upsample_map(window_cam, plan.roi).to(device)
            window_cam = window_cam.to(device)
            for i, (b, s) in enumerate(items):
                out_map[(b, k, *s)] += up[i, 0]
                if layer_map is not None:
                    layer_map[(b, k, *[slice(sl.start // st, sl.stop // st) for sl, st in zip(s, stride)])] += window_cam[i, 0]
        del out, acts

    if cam.pooled:
        positions = math.prod(s * g / r for s, g, r in zip(plan.spatial, grid, plan.roi))
        alpha = (alpha if alpha is not None else torch.zeros(batch, n_targets, 0)) / positions
        _pooled_pass(cam, xp, plan, layer, alpha, out_map, layer_map, stride, grid, batch, sw_batch_size, sw_device)

    if padded:
        out_map = _crop(out_map, pad, spatial)
        if layer_map is not None:
            layer_map = _crop(layer_map, pad, spatial, stride)
    settings = {
        "sliding_window": {
            "roi_size": list(plan.roi),
            "overlap": list(plan.overlap),
            "mode": str(inferer.mode),
            "sigma_scale": inferer.sigma_scale,
            "sw_batch_size": sw_batch_size,
            "padding": {"mode": str(inferer.padding_mode), "cval": inferer.cval, "pad": pad} if padded else None,
            "sw_device": str(sw_device),
            "device": str(device),
            "windows": len(plan),
            "combine": "importance-weighted average" if cam.pooled else "sum (gradients carry the blend share)",
            "layer_map": layer_note,
        }
    }
    return {
        "layer": layer,
        "map": out_map,
        "layer_map": layer_map,
        "classes": cls,
        "pixels": pixels,
        "target_score": scores,
        "settings": settings,
    }


def _pooled_pass(cam, x, plan, layer, alpha, out_map, layer_map, stride, grid, batch, sw_batch_size, sw_device) -> None:
    """Second pass of the pooled methods: blend ``sum_k alpha_k A_w^k`` like the inferer blends outputs."""
    if alpha.shape[-1] == 0:
        return  # every pixel set was empty: the maps stay zero
    layer_weight = F.interpolate(plan.importance[None, None], size=grid, mode="area")[0, 0] if layer_map is not None else None
    layer_count = torch.zeros(layer_map.shape[2:], dtype=x.dtype, device=out_map.device) if layer_map is not None else None
    if layer_map is not None:
        for s in plan.slices:
            layer_count[tuple(slice(sl.start // st, sl.stop // st) for sl, st in zip(s, stride))] += layer_weight
    for items in _window_batches(plan, batch, sw_batch_size):
        win = _gather(x, items).to(sw_device)
        with LayerRecorder(cam.model, [layer]) as rec, torch.no_grad():
            _, acts = cam.forward_recorded(rec, layer, win)
        a_map = as_feature_map(acts, plan.roi)
        cases = [b for b, _ in items]
        weights = alpha[cases].to(sw_device).reshape(*alpha[cases].shape, *[1] * len(grid))  # (n, K, D, 1...)
        window_cam = (weights * a_map[:, None]).sum(2)  # (n, K, *grid)
        up = cam.upsample_map(window_cam, plan.roi).to(out_map.device)
        window_cam = window_cam.to(out_map.device)
        for i, (b, s) in enumerate(items):
            out_map[(b, slice(None), *s)] += up[i] * plan.importance
            if layer_map is not None:
                ls = tuple(slice(sl.start // st, sl.stop // st) for sl, st in zip(s, stride))
                layer_map[(b, slice(None), *ls)] += window_cam[i] * layer_weight
    out_map /= plan.count
    if layer_map is not None:
        layer_map /= layer_count
