"""``medcam-monai bench``: score every explainer of a trained bundle on cases with known evidence.

A bundle is benchmarked as it runs: its network, weights, data list and preprocessing come from its
own ``configs/inference.json`` (trained first with ``configs/train.json`` when it has no weights).
On stand-in data (:mod:`medcam_monai.phantoms`) the true evidence of every case is known, so the
explanations are scored for localisation as well as for faithfulness:

- classification bundles: Med-CAM against Grad-CAM and HiResCAM at the same layer;
- segmentation bundles: Seg-HiRes-Grad CAM against Seg-Grad CAM, through the bundle's inferer.

Metrics (all from :mod:`medcam_monai.metrics`), per case and method:

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

The report itself (table, figures, settings) is written by :mod:`medcam_monai.report`.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcam_monai import metrics
from medcam_monai.explanation import MASK, Explanation
from medcam_monai.hooks import frozen

__all__ = [
    "CLASSIFICATION_METHODS",
    "SEGMENTATION_METHODS",
    "BenchData",
    "BenchResult",
    "PixelSetScore",
    "ensure_weights",
    "load_bench_data",
    "standin_truth",
    "classification_explainers",
    "segmentation_explainers",
    "evaluate_classification",
    "evaluate_segmentation",
    "add_bench_parser",
    "run_bench",
    "main",
]


CLASSIFICATION_METHODS = ("medcam", "grad_cam", "hires_cam")
SEGMENTATION_METHODS = ("seg_hires_grad_cam", "seg_grad_cam")

Explainer = Callable[[nn.Module, torch.Tensor], Explanation]


# ---------------------------------------------------------------------------------------------
# Data: a bundle's network, cases and (on stand-in data) their true evidence
# ---------------------------------------------------------------------------------------------


@dataclass
class BenchData:
    """What a benchmark runs on.

    Args:
        network: the bundle's network with its trained weights, in eval mode.
        images: ``(N, C, *spatial)`` preprocessed cases (the network's input).
        truth: ``(N, 1, *spatial)`` true evidence (``{0, 1}``), or None when unknown (real data
            without region annotations).
        labels: ``(N,)`` class of each case (classification) or None.
        task: ``"classification"`` or ``"segmentation"``.
        config: the bundle's parsed settings the explainers need (``explainer_kwargs``,
            ``inferer``, ``explain_class``, ``pixels``) and a description of the data.
    """

    network: nn.Module
    images: torch.Tensor
    truth: torch.Tensor | None
    labels: torch.Tensor | None
    task: str
    config: dict[str, Any] = field(default_factory=dict)


def _parser(bundle: Path, overrides: dict[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update(overrides)
    return parser


def ensure_weights(
    bundle: str | Path,
    bundle_root: str | Path,
    weights: str | Path | None = None,
    epochs: int | None = None,
    train_cases: int | None = None,
    image_size: int | None = None,
    dataset_dir: str | None = None,
) -> Path:
    """The bundle's trained weights: ``weights`` if given, ``<bundle_root>/models/model.pt`` if it
    exists, else trained now with the bundle's ``configs/train.json`` into ``bundle_root``.

    Training runs the bundle's own config as ``python -m monai.bundle run`` does, on the real data
    at ``dataset_dir`` when present, else on its stand-in data.
    """
    from medcam_monai.bundle_utils import find_bundle

    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"No weights at {str(path)!r}.")
        return path
    root = Path(bundle_root)
    path = root / "models" / "model.pt"
    if path.is_file():
        return path
    from monai.bundle import run

    overrides: dict[str, Any] = {"bundle_root": str(root), "progress": False}
    for key, value in (("epochs", epochs), ("num_cases", train_cases), ("image_size", image_size), ("dataset_dir", dataset_dir)):
        if value is not None:
            overrides[key] = value
    cfg = find_bundle(bundle) / "configs"
    run(config_file=str(cfg / "train.json"), meta_file=str(cfg / "metadata.json"), **overrides)
    if not path.is_file():
        raise RuntimeError(f"Training {bundle} finished without writing {path}.")
    return path


def _best_orientation(image: torch.Tensor, reference: torch.Tensor) -> tuple[int, ...] | None:
    """The axis order of ``reference`` ``(C, *spatial)`` that reproduces ``image``, or None.

    MONAI reads 2D files as (x, y), transposed from how they are drawn, and a reorientation may
    permute volume axes; rather than assume either, every spatial permutation is tried and the one
    matching the pixels (within 8-bit quantisation) is used.
    """
    import itertools

    d = image.ndim - 1
    best, err = None, float("inf")
    for perm in itertools.permutations(range(1, d + 1)):
        cand = reference.permute(0, *perm)
        if cand.shape != image.shape:
            continue
        e = float((cand.clamp(0, 1) - image.clamp(0, 1)).abs().mean())
        if e < err:
            best, err = perm, e
    return best if err < 0.01 else None


def standin_truth(
    dataset: str, images: torch.Tensor, split: str, num_cases: int, image_size: int, explain_class: int | None = None
) -> torch.Tensor | None:
    """True evidence ``(N, 1, *spatial)`` of stand-in cases, regenerated from their seed.

    The stand-in files are written from :mod:`medcam_monai.phantoms` with a seed per split, so the
    same call gives back the evidence. Each case is checked against the pixels the bundle read
    (axis order found by :func:`_best_orientation`); None when any case does not match (e.g. the
    bundle resized the images), so no metric is computed against a wrong region.

    Args:
        dataset: the dataset's name (``data_manifests/<dataset>.json``).
        images: ``(N, C, *spatial)`` cases as the bundle preprocessed them, in ``[0, 1]``.
        split, num_cases, image_size: as passed to :func:`medcam_monai.bundle_utils.standin_datalist`.
        explain_class: segmentation: the evidence is the region of this label.
    """
    from medcam_monai.bundle_utils import STANDINS, _SPLIT_SEEDS  # the seeds the stand-in files were written with

    batch = STANDINS[dataset].make(num_cases, image_size, _SPLIT_SEEDS[split])
    region = batch.evidence if explain_class is None else (batch.labels == explain_class).float()
    out = []
    for i in range(images.shape[0]):
        reference = batch.images[i]
        if tuple(reference.shape[1:]) != tuple(images.shape[2:]) and sorted(reference.shape[1:]) != sorted(images.shape[2:]):
            return None
        perm = _best_orientation(images[i], reference[: images.shape[1]])
        if perm is None:
            return None
        out.append(region[i].permute(0, *perm))
    return torch.stack(out).float()


def _load_label_region(entry: dict, image: torch.Tensor, explain_class: int) -> torch.Tensor | None:
    """The region of ``explain_class`` in a real case's label map, on the image's grid (RAS), or None."""
    from monai.transforms import LoadImage, Orientation, ResizeWithPadOrCrop

    if not isinstance(entry.get("label"), str):
        return None
    label = LoadImage(image_only=True, ensure_channel_first=True)(entry["label"])
    if image.ndim == 4:
        label = Orientation(axcodes="RAS")(label)
    if tuple(label.shape[1:]) != tuple(image.shape[1:]):
        label = ResizeWithPadOrCrop(image.shape[1:])(label)  # the bundle's padding to the ROI
    return (torch.as_tensor(label.as_tensor() if hasattr(label, "as_tensor") else label) == explain_class).float()


def load_bench_data(
    bundle: str | Path,
    bundle_root: str | Path,
    weights: str | Path,
    num_cases: int,
    split: str = "test",
    image_size: int | None = None,
    dataset_dir: str | None = None,
) -> BenchData:
    """Read the bundle's network, weights and ``num_cases`` cases of ``split`` as its inference config does.

    Args:
        bundle: bundle name or folder.
        bundle_root: where its stand-in data is cached (``standin_data/``).
        weights: a state dict of the bundle's ``network_def``.
        num_cases: cases to benchmark.
        split: the split to read (``"test"``: never seen in training).
        image_size: input size (default: the bundle's).
        dataset_dir: the real dataset (``data_manifests/``); stand-in data when absent.
    """
    from medcam_monai.bundle_utils import find_bundle, real_datalist
    from medcam_monai.weights import check_weights_file

    bundle = find_bundle(bundle)
    overrides: dict[str, Any] = {"bundle_root": str(bundle_root), "num_cases": num_cases, "split": split}
    if image_size is not None:
        overrides["image_size"] = image_size
    if dataset_dir is not None:
        overrides["dataset_dir"] = dataset_dir
    parser = _parser(bundle, overrides)
    network = parser.get_parsed_content("network_def").to("cpu")
    check_weights_file(weights)  # missing or TorchScript weights fail with the fix named
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    # CheckpointSaver writes the bare state dict for one saved object, {"model": ...} for several
    network.load_state_dict(state["model"] if isinstance(state.get("model"), dict) else state)
    network.eval()
    datalist = parser.get_parsed_content("datalist")
    preprocessing = parser.get_parsed_content("preprocessing")
    cases = [preprocessing(dict(d)) for d in datalist[:num_cases]]
    images = torch.stack([c["image"].as_tensor() if hasattr(c["image"], "as_tensor") else c["image"] for c in cases]).float()
    # the bundle's own explainer says what kind of network it is (the handler config names it)
    explainer = (parser.get("explanation") or {}).get("explainer", "medcam")
    kwargs = parser.get_parsed_content("explanation#explainer_kwargs") if "explanation#explainer_kwargs" in parser else {}
    task = "segmentation" if explainer in SEGMENTATION_METHODS else "classification"
    dataset = parser["dataset_name"]
    size = parser.get_parsed_content("image_size")
    standin = not real_datalist(dataset, parser.get_parsed_content("dataset_dir"), split)
    explain_class = int(parser.get_parsed_content("explain_class")) if task == "segmentation" else None
    if standin:
        truth = standin_truth(dataset, images, split, num_cases, size, explain_class)
    elif task == "segmentation":
        regions = [_load_label_region(d, img, explain_class) for d, img in zip(datalist, images)]
        truth = None if any(r is None for r in regions) else torch.stack(regions)
    else:
        truth = None  # the classification manifests hold image-level labels only
    labels = None
    if task == "classification":
        labels = torch.tensor([int(d["label"]) for d in datalist[:num_cases]]) if all("label" in d for d in datalist[:num_cases]) else None
    config = {
        "explainer_kwargs": dict(kwargs or {}),
        "inferer": parser.get_parsed_content("inferer") if task == "segmentation" and "inferer" in parser else None,
        "explain_class": explain_class,
        "pixels": parser.get_parsed_content("pixels") if "pixels" in parser else "predicted",
        "dataset": dataset,
        "standin": standin,
        "split": split,
        "image_size": size,
        "num_classes": parser.get_parsed_content("num_classes") if "num_classes" in parser else None,
        "network": parser.get("network_def"),
        "bundle": bundle.name,
        "weights": str(weights),
    }
    return BenchData(network=network, images=images, truth=truth, labels=labels, task=task, config=config)


# ---------------------------------------------------------------------------------------------
# Explainers under test
# ---------------------------------------------------------------------------------------------


def classification_explainers(
    methods: Sequence[str], medcam_kwargs: dict[str, Any] | None = None, cam_layer: str | None = None
) -> dict[str, Explainer]:
    """``name -> (model, x) -> Explanation`` for Med-CAM, Grad-CAM and HiResCAM.

    The CAMs are taken at Med-CAM's (first) matched layer unless ``cam_layer`` is given, so the
    three methods see the same features. Built per call on the model given, so the sanity check
    can run them on randomised copies.
    """
    from medcam_monai.cam import GradCAM, HiResCAM
    from medcam_monai.medcam import MedCAM

    kwargs = dict(medcam_kwargs or {})
    layers = kwargs.get("layers")
    layer = cam_layer or (layers[0] if isinstance(layers, (list, tuple)) and layers else layers)
    table: dict[str, Explainer] = {
        "medcam": lambda m, x: MedCAM(m, **kwargs)(x),
        # ReLU as both papers apply it: only positive evidence for the class is drawn and ranked
        "grad_cam": lambda m, x: GradCAM(m, layer=layer, relu=True)(x),
        "hires_cam": lambda m, x: HiResCAM(m, layer=layer, relu=True)(x),
    }
    unknown = [m for m in methods if m not in table]
    if unknown:
        raise ValueError(f"Unknown classification method(s) {unknown}; choose from {sorted(table)}.")
    return {m: table[m] for m in methods}


def segmentation_explainers(
    methods: Sequence[str], cam_kwargs: dict[str, Any] | None = None, inferer=None, explain_class: int = 1,
    pixels: str = "predicted",
) -> dict[str, Explainer]:
    """``name -> (model, x) -> Explanation`` for Seg-HiRes-Grad CAM and Seg-Grad CAM with the bundle's settings."""
    from medcam_monai.cam import SegGradCAM, SegHiResGradCAM

    kwargs = dict(cam_kwargs or {})
    table = {"seg_hires_grad_cam": SegHiResGradCAM, "seg_grad_cam": SegGradCAM}
    unknown = [m for m in methods if m not in table]
    if unknown:
        raise ValueError(f"Unknown segmentation method(s) {unknown}; choose from {sorted(table)}.")

    def make(cls):
        return lambda m, x: cls(m, inferer=inferer, **kwargs)(x, classes=explain_class, pixels=pixels)

    return {m: make(table[m]) for m in methods}


def _saliency(e: Explanation) -> torch.Tensor:
    """The continuous map a method ranks pixels by: Med-CAM's soft mask, a CAM's heatmap (first target)."""
    m = e.soft_map if e.kind == MASK and e.soft_map is not None else e.map
    m = m.as_tensor() if hasattr(m, "as_tensor") else m
    return m[:, :1].detach().float()


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class BenchResult:
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
    """

    task: str
    methods: list[str]
    values: dict[str, dict[str, torch.Tensor]]
    curves: dict[str, dict[str, metrics.PerturbationCurve]]
    saliency: dict[str, torch.Tensor]
    binary: dict[str, torch.Tensor]
    images: torch.Tensor
    truth: torch.Tensor | None
    labels: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    sanity: dict[str, metrics.SanityCheckResult] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _localisation(values: dict, saliency: torch.Tensor, binary: torch.Tensor, truth: torch.Tensor | None) -> None:
    n = saliency.shape[0]
    nan = torch.full((n,), float("nan"))
    if truth is None:
        for k in ("iou", "iou_at_true_area", "pointing", "energy_inside"):
            values[k] = nan.clone()
        return
    has_region = truth.flatten(1).amax(1) > 0.5
    true_area = metrics.area_fraction(truth)[:, 0]
    at_area = metrics.top_fraction_mask(saliency, true_area)
    # localisation is undefined where a case has no evidence to find (e.g. a "no lesion" class)
    values["iou"] = torch.where(has_region, metrics.iou(binary, truth)[:, 0], nan)
    values["iou_at_true_area"] = torch.where(has_region, metrics.iou(at_area, truth)[:, 0], nan)
    values["pointing"] = metrics.pointing_game(saliency, truth)[:, 0]
    values["energy_inside"] = torch.where(has_region, metrics.energy_inside(saliency, truth)[:, 0], nan)


def _sanity(model, images, explainers, stages, seed) -> dict[str, metrics.SanityCheckResult]:
    if stages <= 0 or images.shape[0] == 0:
        return {}
    layers = metrics.randomization_layers(model)[:stages]
    out = {}
    for name, explain in explainers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a randomised segmenter predicts nothing: an empty pixel set is expected
            out[name] = metrics.cascading_randomization(
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
) -> BenchResult:
    """Explain every case with every method and score the explanations.

    Args:
        model: classifier ``(B, C, *spatial) -> (B, num_classes)``.
        images: ``(N, C, *spatial)``.
        truth: ``(N, 1, *spatial)`` true evidence or None.
        explainers: ``name -> (model, x) -> Explanation`` (see :func:`classification_explainers`).
        labels: ``(N,)`` true classes (for the model's accuracy in the report).
        curve_steps: deletion/insertion steps.
        baseline: what deleted pixels become (and the robustness background): a Med-CAM background name.
        area: a heatmap's binary mask covers this fraction when no mask method (Med-CAM) sets the area.
        batch_size: cases explained together.
        sanity_cases: the first cases run through the cascading randomisation check (0: skip).
        sanity_stages: top layers re-initialised, one after the other.
        seed: seeds backgrounds and tie-breaking.

    Returns:
        A :class:`BenchResult`; ``values`` hold per case: ``prob_x``, ``prob_e``, ``prob_rob``,
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
    reference_area = metrics.area_fraction(next(iter(masks.values())))[:, 0] if masks else torch.full((n,), float(area))
    with torch.no_grad():
        predictions = torch.cat([model(images[i : i + batch_size]) for i in range(0, n, batch_size)]).argmax(1)
    values, curves, binary = {}, {}, {}
    for name in explainers:
        b = masks.get(name, metrics.top_fraction_mask(saliency[name], reference_area, seed=seed))
        binary[name] = b
        v: dict[str, torch.Tensor] = {}
        f = metrics.faithfulness(model, images, b, target=predictions, background=baseline, batch_size=batch_size, seed=seed)
        for k in ("prob_x", "prob_e", "prob_rob", "confidence_gain"):
            v[k] = f[k].cpu()
        v["kept_e"], v["kept_rob"] = f["kept_e"].float().cpu(), f["kept_rob"].float().cpu()
        v["area_fraction"] = metrics.area_fraction(b)[:, 0]
        v["components"] = metrics.connected_components(b)[:, 0].float()
        curves[name] = {
            "deletion": metrics.deletion_curve(model, images, saliency[name], predictions, curve_steps, baseline, seed=seed),
            "insertion": metrics.insertion_curve(model, images, saliency[name], predictions, curve_steps, baseline, seed=seed),
        }
        v["deletion_auc"], v["insertion_auc"] = curves[name]["deletion"].auc, curves[name]["insertion"].auc
        _localisation(v, saliency[name], b, truth)
        v["seconds"] = torch.tensor(seconds[name])
        values[name] = v
    info: dict[str, Any] = {"cases": n}
    if labels is not None:
        info["accuracy"] = float((predictions.cpu() == labels.cpu()).float().mean())
    if truth is not None:
        info["cases_with_evidence"] = int((truth.flatten(1).amax(1) > 0.5).sum())
    sanity = _sanity(model, images[:sanity_cases], explainers, sanity_stages, seed) if sanity_cases else {}
    for name, s in sanity.items():
        values[name]["sanity_spearman"] = _pad(s.spearman[-1], n)
    return BenchResult("classification", list(explainers), values, curves, saliency, binary, images, truth,
                       labels, predictions.cpu(), sanity, info)


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
) -> BenchResult:
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

    Returns:
        A :class:`BenchResult`; ``values`` per case: ``dice`` (the model's, for the class),
        ``pixels`` (size of the predicted pixel set), ``deletion_auc``, ``insertion_auc``,
        ``iou`` (top pixels at the predicted set's area), ``iou_at_true_area``, ``pointing``,
        ``energy_inside``, ``seconds``.
    """
    n = images.shape[0]
    run = (lambda x: inferer(x, model)) if inferer is not None else model
    saliency, seconds, preds = {m: [] for m in explainers}, {m: [] for m in explainers}, []
    with torch.no_grad(), frozen(model):
        for i in range(n):
            preds.append(run(images[i : i + 1]).argmax(1, keepdim=True) == explain_class)
    pred = torch.cat(preds).float()
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
    dice = nan.clone()
    if truth is not None:
        inter = (pred * truth).flatten(1).sum(1)
        total = pred.flatten(1).sum(1) + truth.flatten(1).sum(1)
        dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones(n))
    for name in explainers:
        s = saliency[name]
        b = metrics.top_fraction_mask(s, metrics.area_fraction(pred)[:, 0], seed=seed)
        binary[name] = b
        dele, ins = [], []
        for i in range(n):
            scorer = PixelSetScore(model, pred[i : i + 1], inferer)
            kw = dict(target=[explain_class], steps=curve_steps, baseline=baseline, batch_size=2, probability=False, seed=seed)
            dele.append(metrics.deletion_curve(scorer, images[i : i + 1], s[i : i + 1], **kw))
            ins.append(metrics.insertion_curve(scorer, images[i : i + 1], s[i : i + 1], **kw))
        curves[name] = {"deletion": _stack_curves(dele), "insertion": _stack_curves(ins)}
        v = {
            "dice": dice,
            "pixels": pred.flatten(1).sum(1),
            "deletion_auc": torch.where(has_pred, curves[name]["deletion"].auc, nan),
            "insertion_auc": torch.where(has_pred, curves[name]["insertion"].auc, nan),
        }
        _localisation(v, s, b, truth)
        v["seconds"] = torch.tensor(seconds[name])
        values[name] = v
    info = {"cases": n, "explain_class": explain_class, "cases_with_prediction": int(has_pred.sum())}
    if truth is not None:
        info["dice_median"] = float(dice.nanmedian())
    sanity = _sanity(model, images[:sanity_cases], explainers, sanity_stages, seed) if sanity_cases else {}
    for name, s in sanity.items():
        values[name]["sanity_spearman"] = _pad(s.spearman[-1], n)
    return BenchResult("segmentation", list(explainers), values, curves, saliency, binary, images, truth,
                       None, None, sanity, info)


def _stack_curves(curves: list[metrics.PerturbationCurve]) -> metrics.PerturbationCurve:
    return metrics.PerturbationCurve(
        mode=curves[0].mode,
        fractions=curves[0].fractions,
        scores=torch.cat([c.scores for c in curves]),
        auc=torch.cat([c.auc for c in curves]),
        target=torch.cat([c.target for c in curves]),
    )


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an ``argparse`` subparsers object; its ``func`` is :func:`run_bench`."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark the explainers of a bundle on stand-in (or real) data and write a report",
        description="Train the bundle if it has no weights, explain test cases with every method, score the "
                    "explanations and write report.md, figures/*.png, results.json, cases.csv and settings.json.",
    )
    p.add_argument("bundle", nargs="?", default="fundus_resnet18", help="bundle name or folder (default: fundus_resnet18)")
    p.add_argument("--output", default="medcam-bench", help="report folder (default: ./medcam-bench)")
    p.add_argument("--bundle-root", help="where models/ and stand-in data go (default: <output>/bundle)")
    p.add_argument("--weights", help="a state dict of the bundle's network (default: <bundle-root>/models/model.pt, trained if missing)")
    p.add_argument("--dataset-dir", help="the real dataset (see data_manifests/); stand-in data when absent")
    p.add_argument("--split", default="test", help="split benchmarked (default: test)")
    p.add_argument("--cases", type=int, default=8, help="cases benchmarked (default: 8)")
    p.add_argument("--methods", nargs="+", help=f"methods (default: {' '.join(CLASSIFICATION_METHODS)} for classifiers, "
                                                f"{' '.join(SEGMENTATION_METHODS)} for segmentation)")
    p.add_argument("--steps", type=int, default=150, help="Med-CAM optimisation steps (default: 150)")
    p.add_argument("--curve-steps", type=int, help="deletion/insertion steps (default: 20 classification, 10 segmentation)")
    p.add_argument("--baseline", default="blur", help="what deleted pixels become, and the robustness background (default: blur)")
    p.add_argument("--sanity-cases", type=int, default=2, help="cases run through the model-randomisation check (0: skip)")
    p.add_argument("--sanity-stages", type=int, default=3, help="top layers re-initialised in the check (default: 3)")
    p.add_argument("--epochs", type=int, help="training epochs when the bundle must be trained (default: the bundle's)")
    p.add_argument("--train-cases", type=int, help="training cases when trained (default: the bundle's)")
    p.add_argument("--image-size", type=int, help="input size (default: the bundle's)")
    p.add_argument("--batch-size", type=int, default=8, help="cases explained together (default: 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.set_defaults(func=run_bench)
    return p


def _versions() -> dict[str, str]:
    import monai

    import medcam_monai

    return {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "medcam_monai": medcam_monai.__version__, "platform": platform.platform()}


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark with the ``bench`` subcommand's arguments; returns the exit code."""
    from medcam_monai.report import write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.bundle_root).resolve() if args.bundle_root else out / "bundle"
    torch.manual_seed(args.seed)
    weights = ensure_weights(args.bundle, root, args.weights, args.epochs, args.train_cases, args.image_size, args.dataset_dir)
    trained_s = time.perf_counter() - start
    data = load_bench_data(args.bundle, root, weights, args.cases, args.split, args.image_size, args.dataset_dir)
    cfg = data.config
    if data.task == "classification":
        methods = args.methods or list(CLASSIFICATION_METHODS)
        medcam_kwargs = {**cfg["explainer_kwargs"], "steps": args.steps, "progress": False, "seed": args.seed,
                         "background": args.baseline}
        explainers = classification_explainers(methods, medcam_kwargs)
        result = evaluate_classification(
            data.network, data.images, data.truth, explainers, data.labels, args.curve_steps or 20, args.baseline,
            batch_size=args.batch_size, sanity_cases=args.sanity_cases, sanity_stages=args.sanity_stages, seed=args.seed,
        )
        explainer_settings = {"medcam": medcam_kwargs, "cam_layer": (medcam_kwargs.get("layers") or [None])[0]}
    else:
        methods = args.methods or list(SEGMENTATION_METHODS)
        explainers = segmentation_explainers(methods, cfg["explainer_kwargs"], cfg["inferer"], cfg["explain_class"], cfg["pixels"])
        result = evaluate_segmentation(
            data.network, data.images, data.truth, explainers, cfg["explain_class"], cfg["inferer"],
            args.curve_steps or 10, args.baseline, args.sanity_cases, args.sanity_stages, args.seed,
        )
        explainer_settings = {"cam": cfg["explainer_kwargs"], "explain_class": cfg["explain_class"], "pixels": cfg["pixels"]}
    settings = {
        "argv": list(sys.argv),
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
        "bundle": cfg["bundle"],
        "task": data.task,
        "dataset": cfg["dataset"],
        "data": "stand-in (medcam_monai.phantoms)" if cfg["standin"] else f"real, from {args.dataset_dir}",
        "split": cfg["split"],
        "image_size": cfg["image_size"],
        "network": cfg["network"],
        "weights": cfg["weights"],
        "methods": methods,
        "explainers": explainer_settings,
        "ground_truth": None if data.truth is None else ("phantom evidence" if cfg["standin"] else "label map"),
        "training_seconds": round(trained_s, 1),
        "versions": _versions(),
        "threads": torch.get_num_threads(),
    }
    settings["seconds"] = round(time.perf_counter() - start, 1)
    paths = write_report(result, out, settings)
    print((out / "report.md").read_text())
    print(f"report: {paths['report']}\nfigures: {', '.join(str(p) for p in paths['figures'])}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medcam_monai.bench [bundle] [options]``: the ``bench`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="python -m medcam_monai")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
