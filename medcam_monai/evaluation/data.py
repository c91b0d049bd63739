"""What an evaluation runs on: a bundle's network with its weights, preprocessed cases and, where
known, their true evidence.

The network, weights, data list and preprocessing come from the bundle's own
``configs/inference.json``. On stand-in data (:mod:`medcam_monai.data.phantoms`) the true evidence
of every case is regenerated from its split's seed; on real segmentation data it is the label map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcam_monai.registry import explainer_spec

__all__ = ["EvaluationData", "load_evaluation_data", "standin_truth", "standin_label_map"]


@dataclass
class EvaluationData:
    """What an evaluation runs on.

    Args:
        network: the bundle's network with its trained weights, in eval mode.
        images: ``(N, C, *spatial)`` preprocessed cases (the network's input).
        truth: ``(N, 1, *spatial)`` true evidence (``{0, 1}``), or None when unknown (real data
            without region annotations).
        labels: ``(N,)`` class of each case (classification) or None.
        task: ``"classification"`` or ``"segmentation"``.
        label_map: segmentation: ``(N, 1, *spatial)`` the true label map of every class (for the
            network's per-class Dice), or None when unknown.
        config: the bundle's parsed settings the explainers need (``explainer_kwargs``,
            ``inferer``, ``explain_class``, ``pixels``) and a description of the data.
    """

    network: nn.Module
    images: torch.Tensor
    truth: torch.Tensor | None
    labels: torch.Tensor | None
    task: str
    config: dict[str, Any] = field(default_factory=dict)
    label_map: torch.Tensor | None = None


def _parser(bundle: Path, overrides: dict[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update(overrides)
    return parser


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


def _standin_oriented(dataset: str, images: torch.Tensor, split: str, num_cases: int, image_size: int, pick) -> torch.Tensor | None:
    """``pick(batch)`` ``(N, 1, *spatial)`` of the regenerated stand-in cases, in the axis order the bundle read, or None."""
    from medcam_monai.data.standins import SPLIT_SEEDS, STANDINS  # the seeds the stand-in files were written with

    batch = STANDINS[dataset].make(num_cases, image_size, SPLIT_SEEDS[split])
    maps = pick(batch)
    out = []
    for i in range(images.shape[0]):
        reference = batch.images[i]
        if tuple(reference.shape[1:]) != tuple(images.shape[2:]) and sorted(reference.shape[1:]) != sorted(images.shape[2:]):
            return None
        perm = _best_orientation(images[i], reference[: images.shape[1]])
        if perm is None:
            return None
        out.append(maps[i].permute(0, *perm))
    return torch.stack(out)


def standin_truth(
    dataset: str, images: torch.Tensor, split: str, num_cases: int, image_size: int, explain_class: int | None = None
) -> torch.Tensor | None:
    """True evidence ``(N, 1, *spatial)`` of stand-in cases, regenerated from their seed.

    The stand-in files are written from :mod:`medcam_monai.data.phantoms` with a seed per split, so the
    same call gives back the evidence. Each case is checked against the pixels the bundle read
    (axis order found by :func:`_best_orientation`); None when any case does not match (e.g. the
    bundle resized the images), so no metric is computed against a wrong region.

    Args:
        dataset: the dataset's name (``data_manifests/<dataset>.json``).
        images: ``(N, C, *spatial)`` cases as the bundle preprocessed them, in ``[0, 1]``.
        split, num_cases, image_size: as passed to :func:`medcam_monai.data.standins.standin_datalist`.
        explain_class: segmentation: the evidence is the region of this label.
    """
    pick = (lambda b: b.evidence) if explain_class is None else (lambda b: b.labels == explain_class)
    region = _standin_oriented(dataset, images, split, num_cases, image_size, pick)
    return None if region is None else region.float()


def standin_label_map(dataset: str, images: torch.Tensor, split: str, num_cases: int, image_size: int) -> torch.Tensor | None:
    """The true label map ``(N, 1, *spatial)`` of stand-in segmentation cases (as :func:`standin_truth`), or None."""
    return _standin_oriented(dataset, images, split, num_cases, image_size, lambda b: b.labels.long())


def _load_label_map(entry: dict, image: torch.Tensor) -> torch.Tensor | None:
    """A real case's label map ``(1, *spatial)`` on the image's grid (RAS), or None when it has none."""
    from monai.transforms import LoadImage, Orientation, ResizeWithPadOrCrop

    if not isinstance(entry.get("label"), str):
        return None
    label = LoadImage(image_only=True, ensure_channel_first=True)(entry["label"])
    if image.ndim == 4:
        label = Orientation(axcodes="RAS")(label)
    if tuple(label.shape[1:]) != tuple(image.shape[1:]):
        label = ResizeWithPadOrCrop(image.shape[1:])(label)  # the bundle's padding to the ROI
    return torch.as_tensor(label.as_tensor() if hasattr(label, "as_tensor") else label).round().long()


def load_evaluation_data(
    bundle: str | Path,
    bundle_root: str | Path,
    weights: str | Path,
    num_cases: int,
    split: str = "test",
    image_size: int | None = None,
    dataset_dir: str | None = None,
) -> EvaluationData:
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
    from medcam_monai.bundle import find_bundle
    from medcam_monai.bundle.weights import check_weights_file
    from medcam_monai.data.standins import real_datalist

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
    task = explainer_spec(explainer).task
    dataset = parser["dataset_name"]
    size = parser.get_parsed_content("image_size")
    standin = not real_datalist(dataset, parser.get_parsed_content("dataset_dir"), split)
    explain_class = int(parser.get_parsed_content("explain_class")) if task == "segmentation" else None
    label_map = None
    if standin:
        truth = standin_truth(dataset, images, split, num_cases, size, explain_class)
        if task == "segmentation":
            label_map = standin_label_map(dataset, images, split, num_cases, size)
    elif task == "segmentation":
        maps = [_load_label_map(d, img) for d, img in zip(datalist, images)]
        label_map = None if any(m is None for m in maps) else torch.stack(maps)
        truth = None if label_map is None else (label_map == explain_class).float()
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
    return EvaluationData(network=network, images=images, truth=truth, labels=labels, task=task, config=config,
                          label_map=label_map)
