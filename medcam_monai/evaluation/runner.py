"""Explain every case with every method and score the explanations (the evaluation's runner).

- classification bundles: Med-CAM against Grad-CAM and HiResCAM at the same layer;
- segmentation bundles: Seg-HiRes-Grad CAM against Seg-Grad CAM, through the bundle's inferer.

Metrics (all from :mod:`medcam_monai.evaluation.metrics`), per case and method:

- faithfulness of the binary mask (a heatmap is binarised to its most salient pixels at the area of
  Med-CAM's mask for the same case, so every method is judged at equal area): the target's
  probability on the evidence ``m * x`` and on ``m * x + (1 - m) * blur(x)``, decisions kept;
- minimality: area fraction and connected components of the binary mask;
- deletion and insertion AUC of the continuous map (Med-CAM's soft mask, the CAM heatmaps);
- localisation against the true evidence: IoU of the binary mask, IoU of the map's top pixels at
  the true region's area (threshold-free), pointing game, energy inside;
- sanity (Adebayo et al. 2018): rank correlation with the map of a model whose top layers were
  re-initialised (a map that stays the same is not explaining the model);
- seconds per case.

And the model explained, on the same cases, so a reader can tell a bad explanation from a bad
model: a classifier's accuracy against chance and its calibration (ECE, reliability bins); a
segmentation network's per-class Dice and the share of voxels it predicts per class.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medcam_monai.evaluation import metrics as M
from medcam_monai.evaluation.metrics.common import forward_logits
from medcam_monai.explanation import MASK, Explanation
from medcam_monai.hooks import frozen
from medcam_monai.registry import CLASSIFICATION, SEGMENTATION, build_explainer, explainer_spec, methods_for

__all__ = [
    "Explainer",
    "EvaluationResult",
    "PixelSetScore",
    "classification_explainers",
    "segmentation_explainers",
    "evaluate_classification",
    "evaluate_segmentation",
]

Explainer = Callable[[nn.Module, torch.Tensor], Explanation]


def _check_methods(methods: Sequence[str], task: str) -> None:
    known = methods_for(task)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"Unknown {task} method(s) {unknown}; choose from {sorted(known)}.")


def classification_explainers(
    methods: Sequence[str], medcam_kwargs: dict[str, Any] | None = None, cam_layer: str | None = None
) -> dict[str, Explainer]:
    """``name -> (model, x) -> Explanation`` for the classification explainers of the registry.

    The CAMs are taken at Med-CAM's (first) matched layer unless ``cam_layer`` is given, so the
    methods see the same features; ReLU as both CAM papers apply it (only positive evidence for the
    class is drawn and ranked). Built per call on the model given, so the sanity check can run them
    on randomised copies.
    """
    _check_methods(methods, CLASSIFICATION)
    medcam = dict(medcam_kwargs or {})
    layers = medcam.get("layer")
    layer = cam_layer or (layers[0] if isinstance(layers, (list, tuple)) and layers else layers)
    kwargs = {m: (medcam if explainer_spec(m).kind == "mask" else {"layer": layer, "relu": True}) for m in methods}
    return {m: (lambda model, x, m=m: build_explainer(m, model, **kwargs[m])(x)) for m in methods}


def segmentation_explainers(
    methods: Sequence[str], cam_kwargs: dict[str, Any] | None = None, inferer=None, explain_class: int = 1,
    pixels: str = "predicted",
) -> dict[str, Explainer]:
    """``name -> (model, x) -> Explanation`` for the segmentation explainers of the registry, with the
    bundle's settings and inferer."""
    _check_methods(methods, SEGMENTATION)
    kwargs = dict(cam_kwargs or {})
    return {
        m: (lambda model, x, m=m: build_explainer(m, model, inferer=inferer, **kwargs)(x, target=explain_class, pixels=pixels))
        for m in methods
    }


def _saliency(e: Explanation) -> torch.Tensor:
    """The continuous map a method ranks pixels by: Med-CAM's soft mask, a CAM's heatmap (first target)."""
    m = e.soft_map if e.kind == MASK and e.soft_map is not None else e.map
    m = m.as_tensor() if hasattr(m, "as_tensor") else m
    return m[:, :1].detach().float()




@dataclass
class EvaluationResult:
    """Everything the report shows.

    Args:
        task: ``"classification"`` or ``"segmentation"``.
        methods: method names, in column order.
        values: ``method -> metric -> (N,)`` per-case values (NaN where undefined).
        curves: ``method -> "deletion"/"insertion" -> PerturbationCurve`` over all cases.
        saliency: ``method -> (N, 1, *spatial)`` continuous maps.
        binary: ``method -> (N, 1, *spatial)`` the binary masks the mask metrics were computed on.
        images: ``(N, C, *spatial)``; ``truth``: ``(N, 1, *spatial)`` or None.
        labels, predictions: ``(N,)`` (classification) or None.
        sanity: ``method -> SanityCheckResult`` for the sanity cases, when run.
        info: facts about the run (model accuracy or Dice, timings).
        calibration: the classifier's calibration on the cases, when labels are known.
        chance: the classifier's accuracy against chance, when labels are known.
        overlap: the segmentation network's per-class Dice and voxel shares.
    """

    task: str
    methods: list[str]
    values: dict[str, dict[str, torch.Tensor]]
    curves: dict[str, dict[str, M.PerturbationCurve]]
    saliency: dict[str, torch.Tensor]
    binary: dict[str, torch.Tensor]
    images: torch.Tensor
    truth: torch.Tensor | None
    labels: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    sanity: dict[str, M.SanityCheckResult] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    calibration: M.Calibration | None = None
    chance: M.ChanceTest | None = None
    overlap: M.ClassOverlap | None = None


def _localisation(values: dict, saliency: torch.Tensor, binary: torch.Tensor, truth: torch.Tensor | None) -> None:
    n = saliency.shape[0]
    nan = torch.full((n,), float("nan"))
    if truth is None:
        for k in ("iou", "iou_at_true_area", "pointing", "energy_inside"):
            values[k] = nan.clone()
        return
    has_region = truth.flatten(1).amax(1) > 0.5
    true_area = M.area_fraction(truth)[:, 0]
    at_area = M.top_fraction_mask(saliency, true_area)
    # localisation is undefined where a case has no evidence to find (e.g. a "no lesion" class)
    values["iou"] = torch.where(has_region, M.iou(binary, truth)[:, 0], nan)
    values["iou_at_true_area"] = torch.where(has_region, M.iou(at_area, truth)[:, 0], nan)
    values["pointing"] = M.pointing_game(saliency, truth)[:, 0]
    values["energy_inside"] = torch.where(has_region, M.energy_inside(saliency, truth)[:, 0], nan)


def _sanity(model, images, explainers, stages, seed) -> dict[str, M.SanityCheckResult]:
    if stages <= 0 or images.shape[0] == 0:
        return {}
    layers = M.randomization_layers(model)[:stages]
    out = {}
    for name, explain in explainers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a randomised segmenter predicts nothing: an empty pixel set is expected
            out[name] = M.cascading_randomization(
                model, images, lambda m, x, f=explain: _saliency(f(m, x)), layers=layers, cascade=True, seed=seed
            )
    return out


def evaluate_classification(
    model: nn.Module,
    images: torch.Tensor,
    truth: torch.Tensor | None,
    explainers: dict[str, Explainer],
    labels: torch.Tensor | None = None,
    curve_steps: int = 20,
    baseline: str = "blur",
    area: float = 0.05,
    batch_size: int = 8,
    sanity_cases: int = 0,
    sanity_stages: int = 3,
    seed: int = 0,
) -> EvaluationResult:
    """Explain every case with every method and score the explanations.

    Args:
        model: classifier ``(B, C, *spatial) -> (B, num_classes)``.
        images: ``(N, C, *spatial)``.
        truth: ``(N, 1, *spatial)`` true evidence or None.
        explainers: ``name -> (model, x) -> Explanation`` (see :func:`classification_explainers`).
        labels: ``(N,)`` true classes (for the model's accuracy and calibration in the report).
        curve_steps: deletion/insertion steps.
        baseline: what deleted pixels become (and the robustness background): a Med-CAM background name.
        area: a heatmap's binary mask covers this fraction when no mask method (Med-CAM) sets the area.
        batch_size: cases explained together.
        sanity_cases: the first cases run through the cascading randomisation check (0: skip).
        sanity_stages: top layers re-initialised, one after the other.
        seed: seeds backgrounds and tie-breaking.

    Returns:
        A :class:`EvaluationResult`; ``values`` hold per case: ``prob_x``, ``prob_e``, ``prob_rob``,
        ``kept_e``, ``kept_rob``, ``confidence_gain``, ``area_fraction``, ``components``,
        ``deletion_auc``, ``insertion_auc``, ``iou``, ``iou_at_true_area``, ``pointing``,
        ``energy_inside``, ``seconds``.
    """
    n = images.shape[0]
    explanations: dict[str, list[Explanation]] = {m: [] for m in explainers}
    seconds: dict[str, list[float]] = {m: [] for m in explainers}
    for start in range(0, n, batch_size):
        xb = images[start : start + batch_size]
        for name, explain in explainers.items():
            t = time.perf_counter()
            e = explain(model, xb)
            dt = time.perf_counter() - t
            explanations[name].append(e)
            seconds[name] += [dt / xb.shape[0]] * xb.shape[0]
    saliency = {m: torch.cat([_saliency(e) for e in es]) for m, es in explanations.items()}
    # every heatmap is binarised at the area of the mask method's mask for the same case, so
    # sufficiency and IoU compare equal amounts of image
    masks = {m: torch.cat([e.map.as_tensor() if hasattr(e.map, "as_tensor") else e.map for e in es])[:, :1].float()
             for m, es in explanations.items() if es and es[0].kind == MASK}
    reference_area = M.area_fraction(next(iter(masks.values())))[:, 0] if masks else torch.full((n,), float(area))
    with frozen(model):
        logits = forward_logits(model, images, batch_size)
    predictions = logits.argmax(1)
    values, curves, binary = {}, {}, {}
    for name in explainers:
        b = masks.get(name, M.top_fraction_mask(saliency[name], reference_area, seed=seed))
        binary[name] = b
        v: dict[str, torch.Tensor] = {}
        f = M.faithfulness(model, images, b, target=predictions, background=baseline, batch_size=batch_size, seed=seed)
        for k in ("prob_x", "prob_e", "prob_rob", "confidence_gain"):
            v[k] = f[k].cpu()
        v["kept_e"], v["kept_rob"] = f["kept_e"].float().cpu(), f["kept_rob"].float().cpu()
        v["area_fraction"] = M.area_fraction(b)[:, 0]
        v["components"] = M.connected_components(b)[:, 0].float()
        curves[name] = {
            mode: M.perturbation_curve(model, images, saliency[name], mode, predictions, steps=curve_steps, baseline=baseline, seed=seed)
            for mode in M.MODES
        }
        v["deletion_auc"], v["insertion_auc"] = curves[name]["deletion"].auc, curves[name]["insertion"].auc
        _localisation(v, saliency[name], b, truth)
        v["seconds"] = torch.tensor(seconds[name])
        values[name] = v
    info: dict[str, Any] = {"cases": n, "num_classes": int(logits.shape[1])}
    calibration = chance = None
    if labels is not None:
        calibration = M.calibration(logits.softmax(1), labels)
        chance = M.chance_test(labels, predictions, logits.shape[1])
        info["accuracy"] = chance.accuracy
    if truth is not None:
        info["cases_with_evidence"] = int((truth.flatten(1).amax(1) > 0.5).sum())
    sanity = _sanity(model, images[:sanity_cases], explainers, sanity_stages, seed) if sanity_cases else {}
    for name, s in sanity.items():
        values[name]["sanity_spearman"] = _pad(s.spearman[-1], n)
    return EvaluationResult("classification", list(explainers), values, curves, saliency, binary, images, truth,
                            labels, predictions.cpu(), sanity, info, calibration=calibration, chance=chance)


def _pad(v: torch.Tensor, n: int) -> torch.Tensor:
    """Per-case values of the first cases, NaN for the rest (cases the check did not run on)."""
    out = torch.full((n,), float("nan"))
    out[: v.shape[0]] = v.float()
    return out


class PixelSetScore(nn.Module):
    """A segmentation network seen as a classifier: the mean probability of each class over a fixed pixel set.

    This is what the deletion/insertion curves of a segmentation CAM follow: the CAM explains
    ``Y = sum_{p in M} y_c(p)``; as pixels are deleted, the class's mean probability over the same
    pixels ``M`` should fall.

    Args:
        network: ``(B, C_in, *spatial) -> (B, C, *spatial)`` logits.
        pixels: ``(1, 1, *spatial)`` the pixel set ``M`` of one case.
        inferer: the bundle's inferer (sliding window) or None.

    Returns (forward): ``(B, C)`` mean class probabilities inside ``M`` (0 when ``M`` is empty).
    """

    def __init__(self, network: nn.Module, pixels: torch.Tensor, inferer=None) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("pixels", pixels.float())
        self.inferer = inferer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inferer(x, self.network) if self.inferer is not None else self.network(x)
        probs = torch.softmax(logits.float(), 1)
        w = self.pixels.expand(x.shape[0], 1, *x.shape[2:])
        return (probs * w).flatten(2).sum(-1) / w.flatten(1).sum(-1, keepdim=True).clamp_min(1)


def evaluate_segmentation(
    model: nn.Module,
    images: torch.Tensor,
    truth: torch.Tensor | None,
    explainers: dict[str, Explainer],
    explain_class: int,
    inferer=None,
    curve_steps: int = 10,
    baseline: str = "blur",
    sanity_cases: int = 0,
    sanity_stages: int = 3,
    seed: int = 0,
    label_map: torch.Tensor | None = None,
) -> EvaluationResult:
    """Explain every case's class ``explain_class`` with every method and score the maps.

    Args:
        model: segmentation network ``(B, C_in, *spatial) -> (B, C, *spatial)``.
        images: ``(N, C_in, *spatial)``.
        truth: ``(N, 1, *spatial)`` the true region of ``explain_class`` or None.
        explainers: see :func:`segmentation_explainers`.
        explain_class: the class explained.
        inferer: the bundle's inferer (used for predictions and curves).
        curve_steps: deletion/insertion steps (each step is one full inference).
        baseline, sanity_cases, sanity_stages, seed: as :func:`evaluate_classification`.
        label_map: ``(N, 1, *spatial)`` the true label map of every class, for the network's
            per-class Dice (without it, Dice is of ``explain_class`` against ``truth`` only).

    Returns:
        A :class:`EvaluationResult`; ``values`` per case: ``dice`` (the model's, for the class),
        ``pixels`` (size of the predicted pixel set), ``deletion_auc``, ``insertion_auc``,
        ``iou`` (top pixels at the predicted set's area), ``iou_at_true_area``, ``pointing``,
        ``energy_inside``, ``seconds``.
    """
    n = images.shape[0]
    run = (lambda x: inferer(x, model)) if inferer is not None else model
    saliency, seconds = {m: [] for m in explainers}, {m: [] for m in explainers}
    labels_pred, num_classes = [], 0
    with torch.no_grad(), frozen(model):
        for i in range(n):
            out = run(images[i : i + 1])
            num_classes = int(out.shape[1])
            labels_pred.append(out.argmax(1, keepdim=True).cpu())
    predicted = torch.cat(labels_pred)  # (N, 1, *spatial) label map
    pred = (predicted == explain_class).float()
    for i in range(n):
        for name, explain in explainers.items():
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an empty predicted set is reported as NaN below
                e = explain(model, images[i : i + 1])
            seconds[name].append(time.perf_counter() - t)
            saliency[name].append(_saliency(e))
    saliency = {m: torch.cat(v) for m, v in saliency.items()}
    has_pred = pred.flatten(1).amax(1) > 0
    values, curves, binary = {}, {}, {}
    nan = torch.full((n,), float("nan"))
    overlap = M.class_overlap(predicted, label_map, num_classes)
    dice = nan.clone()
    if overlap.dice is not None:
        dice = overlap.dice[:, explain_class]
    elif truth is not None:  # the explained class against its region alone: a two-class overlap
        dice = M.class_overlap(pred.long(), (truth > 0.5).long(), 2).dice[:, 1]
    for name in explainers:
        s = saliency[name]
        b = M.top_fraction_mask(s, M.area_fraction(pred)[:, 0], seed=seed)
        binary[name] = b
        per_case: dict[str, list[M.PerturbationCurve]] = {mode: [] for mode in M.MODES}
        for i in range(n):
            scorer = PixelSetScore(model, pred[i : i + 1], inferer)
            for mode in M.MODES:
                per_case[mode].append(M.perturbation_curve(
                    scorer, images[i : i + 1], s[i : i + 1], mode, [explain_class], steps=curve_steps, baseline=baseline,
                    batch_size=2, probability=False, seed=seed,
                ))
        curves[name] = {mode: _stack_curves(c) for mode, c in per_case.items()}
        v = {
            "dice": dice,
            "pixels": pred.flatten(1).sum(1),
            "deletion_auc": torch.where(has_pred, curves[name]["deletion"].auc, nan),
            "insertion_auc": torch.where(has_pred, curves[name]["insertion"].auc, nan),
        }
        _localisation(v, s, b, truth)
        v["seconds"] = torch.tensor(seconds[name])
        values[name] = v
    info = {"cases": n, "explain_class": explain_class, "num_classes": num_classes, "cases_with_prediction": int(has_pred.sum())}
    if bool(dice.isfinite().any()):
        info["dice_median"] = float(dice.nanmedian())
    sanity = _sanity(model, images[:sanity_cases], explainers, sanity_stages, seed) if sanity_cases else {}
    for name, s in sanity.items():
        values[name]["sanity_spearman"] = _pad(s.spearman[-1], n)
    return EvaluationResult("segmentation", list(explainers), values, curves, saliency, binary, images, truth,
                            None, None, sanity, info, overlap=overlap)


def _stack_curves(curves: list[M.PerturbationCurve]) -> M.PerturbationCurve:
    return M.PerturbationCurve(
        mode=curves[0].mode,
        fractions=curves[0].fractions,
        scores=torch.cat([c.scores for c in curves]),
        auc=torch.cat([c.auc for c in curves]),
        target=torch.cat([c.target for c in curves]),
    )
