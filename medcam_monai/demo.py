"""``medcam-monai demo``: the whole job on a fresh machine, on real anatomy, with no data and no downloads.

The anatomy is the MNI152 brain template that ships inside nilearn's wheel (a real T1 MRI with grey-
and white-matter maps, :mod:`medcam_monai.data.anatomy`):

1. trains ``brain_lesion_resnet10t`` on axial slices of the template with planted lesions (no lesion,
   bright nodule, ring lesion), and measures its accuracy on held-out slices and places;
2. explains held-out slices with Med-CAM inside the bundle's evaluator (PNG figures, NIfTI, one JSON
   record per case); each case line says whether the prediction is right and whether the mask
   overlaps the planted lesion;
3. explains one region of a tiled pyramidal TIFF (a mosaic of held-out slices standing in for a whole
   slide: no real slide ships in a wheel) and writes a pyramidal overlay and QuPath GeoJSON;
4. trains ``brain_tissue_unet3d`` (MONAI 3D UNet, grey/white matter) on the template with augmentation;
5. segments and explains a copy of the head it never saw (2 mm LAS oblique grid, tilted head, bias
   field, noise) with Seg-HiRes-Grad CAM through the bundle's sliding window: NIfTI, ``.seg.nrrd``, PNG;
   and, to compare, with Seg-Grad CAM (its share of the map inside the brain is printed for both);
6. writes that volume as a DICOM MR series (real geometry tags) and explains the series: DICOM-SEG
   and Parametric Map referencing it;

then writes ``report.html`` (every figure with its case line) and prints where every output is. An
existing, non-empty output folder is never overwritten: the run goes to the next free
``<output>-2``, ``-3``, ... and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
import numpy as np

__all__ = ["run_demo", "DemoSettings", "QUICK", "free_output_folder", "make_mosaic_slide", "weak_model_warning", "check_settings",
           "lesion_overlap_phrase", "USEFUL_ACCURACY"]

LESION_BUNDLE = "brain_lesion_resnet10t"
TISSUE_BUNDLE = "brain_tissue_unet3d"


@dataclass(frozen=True)
class DemoSettings:
    """The demo's sizes.

    Args:
        cases: held-out slices explained with Med-CAM.
        steps: Med-CAM optimisation steps per case (early stopping may end sooner).
        epochs, train_cases, image_size: training of the 2D lesion classifier.
        test_cases: held-out slices its accuracy is measured on.
        volume_size: 3D grid: voxels across the head from left to right (48: 4.2 mm voxels).
        roi_size: the 3D sliding window's side.
        channels, strides: the 3D UNet's.
        volume_epochs, volume_samples: 3D training (augmented crops per epoch).
        held_aside: the held-aside 3D case explained (:data:`medcam_monai.data.anatomy.tissue.HELD_ASIDE`).
    """

    cases: int = 4
    steps: int = 150
    epochs: int = 6
    train_cases: int = 480
    image_size: int = 64
    test_cases: int = 60
    volume_size: int = 48
    roi_size: int = 32
    channels: tuple[int, ...] = (16, 32, 64)
    strides: tuple[int, ...] = (2, 2)
    volume_epochs: int = 4
    volume_samples: int = 100
    held_aside: str = "mni_las2mm_oblique"


# a smoke run: every step and format in about a minute, models barely trained
QUICK = DemoSettings(cases=2, steps=5, epochs=1, train_cases=48, test_cases=12, volume_size=32, channels=(8, 16, 32),
                     volume_epochs=1, volume_samples=10, held_aside="mni_3p5mm_tilted")


def check_settings(s: DemoSettings) -> None:
    """Refuse sizes the demo cannot run with, before anything is trained or written.

    Raises:
        InputError: naming the option and the smallest value it takes.
    """
    from medcam_monai.errors import InputError

    minimum = {"cases": (s.cases, 1), "steps": (s.steps, 1), "epochs": (s.epochs, 1), "train_cases": (s.train_cases, 3),
               "image_size": (s.image_size, 16), "volume_size": (s.volume_size, 16)}
    for name, (value, smallest) in minimum.items():
        if int(value) < smallest:
            raise InputError(f"--{name.replace('_', '-')} must be at least {smallest}, got {value}.")
    if s.cases > s.test_cases:
        raise InputError(f"--cases must be at most {s.test_cases} (the held-out slices the accuracy is measured on), got {s.cases}.")


def free_output_folder(output: str | Path) -> tuple[Path, str | None]:
    """``output`` if it is missing or empty, else the first missing or empty ``<output>-2``, ``-3``, ...

    Returns:
        The folder and, when it is not ``output``, a sentence saying why.
    """
    base = Path(output).resolve()
    folder, n = base, 1
    while folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    note = None if folder == base else f"{base} holds an earlier run; this run writes to {folder} (nothing is overwritten)."
    return folder, note


def make_mosaic_slide(path: Path, tiles: list[np.ndarray], columns: int = 4, mpp: float = 0.5) -> Path:
    """Write grey ``(H, W)`` uint8 tiles as a ``columns``-wide mosaic in a tiled RGB pyramid (TIFF,
    OpenSlide's generic layout, 3 levels), the layout scanners and QuPath use for whole slides."""
    import tifffile

    from medcam_monai.io.wsi import pyramid

    rows = [np.concatenate(tiles[r : r + columns], axis=1) for r in range(0, len(tiles), columns)]
    grey = np.concatenate(rows, axis=0)
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(pyramid(grey, min_level_size=max(grey.shape), min_levels=3)):  # the overlays' halving
            f = 2**i
            tif.write(np.repeat(level[..., None], 3, axis=-1), tile=(64, 64), photometric="rgb",
                      resolution=(1e4 / (mpp * f), 1e4 / (mpp * f)), resolutionunit="CENTIMETER",
                      subfiletype=0 if i == 0 else 1, metadata=None)
    return path


# below this held-out accuracy the demo says that its classifier's masks mean little
USEFUL_ACCURACY = 0.8


def weak_model_warning(accuracy: float, quick: bool) -> str | None:
    """The warning printed (and put on the report page) when the demo's models are too weak for their
    explanations to mean much: always with ``--quick``, else when the held-out accuracy is below
    :data:`USEFUL_ACCURACY`. None when the classifier is good enough."""
    if quick:
        return (f"WARNING: --quick trains both networks for a few steps only: they are barely trained (the classifier "
                f"scores {accuracy:.0%} on held-out slices), their decisions are close to guesses and their masks and maps "
                "mean little. Run `medcam-monai demo` without --quick for explanations worth reading.")
    if accuracy < USEFUL_ACCURACY:
        return (f"WARNING: the classifier is barely trained ({accuracy:.0%} on held-out slices, below "
                f"{USEFUL_ACCURACY:.0%}): its masks mean little. Train longer (--epochs, --train-cases).")
    return None


def lesion_overlap_phrase(iou: float | None, area: float | None, covered: float | None = None) -> str:
    """What a Med-CAM mask says about the planted lesion, for the case line: a mask over most of the
    image "overlaps" every lesion, so it is called what it is (no localisation); a mask that holds the
    lesion but is much larger is said to be so (its IoU alone would read as a miss); '' without a lesion.

    Args:
        iou: IoU of the mask with the lesion (None: no lesion in the case).
        area: the mask's fraction of the image.
        covered: the fraction of the lesion inside the mask.
    """
    if iou is None:
        return ""
    area_text = "" if area is None else f"{float(area):.0%} of the image, "
    if area is not None and float(area) > 0.5:
        return f"; the mask covers {area_text}so it does not localise the planted lesion (IoU {iou:.2f})"
    if iou >= 0.1:
        return f"; the mask overlaps the planted lesion (IoU {iou:.2f})"
    if covered is not None and covered >= 0.5 and iou > 0:
        return (f"; the mask holds {covered:.0%} of the planted lesion but is about {covered / iou:.0f}x its size "
                f"(IoU {iou:.2f}): it points at the lesion's region, not the lesion")
    if iou > 0:
        return f"; the mask barely touches the planted lesion (IoU {iou:.2f})"
    return "; the mask misses the planted lesion"


def _step(i: int, n: int, text: str) -> float:
    print(f"\n=== [{i}/{n}] {text}", flush=True)
    return time.perf_counter()


def _done(t: float) -> None:
    print(f"({time.perf_counter() - t:.0f} s)", flush=True)


def _accuracy(bundle, root: Path, weights: Path, n: int, image_size: int):
    """The classifier, its held-out test cases (preprocessed as the bundle does, with the planted
    lesions as truth) and its accuracy on them."""
    import torch

    from medcam_monai.evaluation.data import load_evaluation_data

    data = load_evaluation_data(bundle, root, weights, n, "test", image_size)
    with torch.no_grad():
        predictions = data.network(data.images).argmax(1)
    return data, float((predictions == data.labels).float().mean())


def _mask_overlap(record: dict, truth) -> tuple[float | None, float | None]:
    """IoU of a record's NIfTI mask with the true lesion (both on the source grid) and the fraction of
    the lesion inside the mask; (None, None) without a lesion."""
    import nibabel as nib

    if truth is None or float(truth.max()) < 0.5 or not record["outputs"].get("nifti"):
        return None, None
    import torch

    from medcam_monai.evaluation.metrics import iou

    mask = np.asarray(nib.load(record["outputs"]["nifti"]).dataobj).squeeze() >= 0.5
    true = np.asarray(truth).squeeze() >= 0.5
    if mask.shape != true.shape:
        return None, None
    covered = float((mask & true).sum()) / max(1.0, float(true.sum()))
    return float(iou(torch.from_numpy(mask)[None, None].float(), torch.from_numpy(true)[None, None])), covered


def _redraw_with_lesion(record: dict, truth, class_names) -> None:
    """Draw the record's PNG again with the planted lesion as a dashed contour: the figure the bundle
    wrote cannot know the truth, the demo does. Rebuilt from the record's NIfTI mask and scores."""
    import nibabel as nib
    import torch
    from monai.data import MetaTensor

    from medcam_monai.explanation import Explanation
    from medcam_monai.io import LoadImageSourced, write_png_overlay

    source = LoadImageSourced("image", grayscale=True)({"image": record["source"]})
    mask = np.asarray(nib.load(record["outputs"]["nifti"]).dataobj, dtype=np.float32).reshape(source["image"].shape[1:])
    target = record["target"][0] if isinstance(record["target"], list) else record["target"]
    scores = {k: torch.as_tensor([record["scores"][k]]) for k in ("prob_x", "prob_e", "prob_e_binary", "decision_kept")
              if record.get("scores", {}).get(k) is not None}
    explanation = Explanation(map=MetaTensor(torch.from_numpy(mask)[None, None], affine=source["image"].affine), kind="mask",
                              method=record["method"], target=torch.tensor([[int(target)]]), scores=scores,
                              settings=record.get("settings") or {})
    write_png_overlay(explanation, source["source_image"], record["outputs"]["png"], labels=list(class_names),
                      title=record["case_id"], evidence=np.asarray(truth, dtype=np.float32).squeeze())


def _dice(prediction: Path, label: Path) -> dict[int, float]:
    """Dice of grey (1) and white matter (2) between two label-map files (MONAI's, through the
    evaluation's :func:`~medcam_monai.evaluation.metrics.class_overlap`)."""
    import nibabel as nib
    import torch

    from medcam_monai.evaluation.metrics import class_overlap

    p, t = (torch.from_numpy(np.asarray(nib.load(str(f)).dataobj).squeeze().astype(np.int64))[None, None] for f in (prediction, label))
    dice = class_overlap(p, t, num_classes=3).dice[0]
    return {c: float(dice[c]) for c in (1, 2)}


def _energy_inside(record: dict, brain: Path) -> float:
    """Share of ``sum |map|`` inside the brain, from the NIfTI map on the source grid."""
    import nibabel as nib

    import torch

    from medcam_monai.evaluation.metrics import energy_inside

    h = np.abs(np.asarray(nib.load(record["outputs"]["nifti"]).dataobj, dtype=np.float64).squeeze())
    b = np.asarray(nib.load(str(brain)).dataobj).squeeze() > 0
    return float(energy_inside(torch.from_numpy(h)[None, None], torch.from_numpy(b)[None, None]))


def run_demo(
    output: str | Path = "medcam-demo",
    *,
    quick: bool = False,
    cases: int | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    train_cases: int | None = None,
    image_size: int | None = None,
    volume_size: int | None = None,
) -> int:
    """Run the demo into ``output`` (or the next free ``<output>-N``); returns the exit code.

    Args:
        output: the demo's folder.
        quick: :data:`QUICK` sizes (a smoke test: models barely trained, the output says so).
        cases, steps, epochs, train_cases, image_size, volume_size: override the :class:`DemoSettings`.
    """
    import dataclasses

    import nibabel as nib

    from medcam_monai.bundle import WSIRegion, explain_with_bundle, find_bundle, train_bundle
    from medcam_monai.data.anatomy import dicom_mr, tissue
    from medcam_monai.data.anatomy.lesions import LESION_CLASSES
    from medcam_monai.data.anatomy.template import TISSUE_CLASSES
    from medcam_monai.io.atomic import check_writable_dir
    from medcam_monai.io.formats import input_cases
    from medcam_monai.io.report_page import Section, case_summary, write_report_page

    settings = QUICK if quick else DemoSettings()
    given = {"cases": cases, "steps": steps, "epochs": epochs, "train_cases": train_cases, "image_size": image_size, "volume_size": volume_size}
    settings = dataclasses.replace(settings, **{k: v for k, v in given.items() if v is not None})
    s = settings
    check_settings(s)
    out, note = free_output_folder(output)
    out = check_writable_dir(out, "choose another with --output")
    if note:
        print(note, flush=True)
    start = time.perf_counter()
    lesion, tissue_bundle = find_bundle(LESION_BUNDLE), find_bundle(TISSUE_BUNDLE)
    lesion_root, tissue_root, inputs = out / LESION_BUNDLE, out / TISSUE_BUNDLE, out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    n = 6
    png_lesion = {"name": "png", "labels": list(LESION_CLASSES)}
    png_tissue = {"name": "png", "labels": list(TISSUE_CLASSES)}

    # -- 1: the 2D classifier ------------------------------------------------------------------------
    t = _step(1, n, f"train {LESION_BUNDLE} (timm ResNet-10-T, from scratch) on {s.train_cases} axial slices of the real "
                    f"MNI152 T1 (nilearn's wheel) with planted lesions, {s.epochs} epoch(s)")
    weights = train_bundle(lesion, lesion_root, epochs=s.epochs, num_cases=s.train_cases, image_size=s.image_size)
    data, accuracy = _accuracy(lesion, lesion_root, weights, s.test_cases, s.image_size)
    chance = 1 / len(LESION_CLASSES)
    quality = (f"accuracy on {s.test_cases} held-out slices (slices and lesion places never trained on): "
               f"{accuracy:.0%} (chance {chance:.0%})")
    print(f"weights: {weights}\n{quality}")
    warning = weak_model_warning(accuracy, quick)
    weak = warning is not None
    if weak:
        print(warning)
    _done(t)

    # -- 2: Med-CAM on held-out slices ---------------------------------------------------------------
    t = _step(2, n, f"explain {s.cases} held-out slices with Med-CAM inside the bundle's evaluator")
    test_cases = _test_datalist(lesion_root, s.test_cases, s.image_size)  # the cases the accuracy was measured on
    records = explain_with_bundle(lesion, out / "lesion_medcam", root=lesion_root, datalist=test_cases[: s.cases],
                                  writers=[png_lesion, "nifti"], steps=s.steps, image_size=s.image_size)
    by_source = {d["image"]: i for i, d in enumerate(test_cases)}
    for r in records:
        truth = data.truth[by_source[r["source"]]] if data.truth is not None and r["source"] in by_source else None
        iou, covered = _mask_overlap(r, truth)
        r["lesion_iou"], r["lesion_covered"] = iou, covered
        r["note"] = lesion_overlap_phrase(iou, (r.get("scores") or {}).get("area_fraction"), covered)
        if iou is not None and r["outputs"].get("png"):
            _redraw_with_lesion(r, truth, LESION_CLASSES)
        print(f"  {r['case_id']}: {case_summary(r, LESION_CLASSES)}{r['note']}")
    sections.append(Section("Med-CAM on held-out MRI slices with planted lesions", records,
                            [quality] + ([warning] if weak else []), LESION_CLASSES))
    _done(t)

    # -- 3: a whole-slide region ---------------------------------------------------------------------
    t = _step(3, n, "explain one region of a tiled pyramidal TIFF (a mosaic of held-out slices) with Med-CAM")
    from PIL import Image

    mosaic = test_cases[:16]
    tiles = [np.asarray(Image.open(d["image"]).convert("L")) for d in mosaic]
    slide = make_mosaic_slide(inputs / "mosaic_slide.tif", tiles)
    cell = next((i for i, d in enumerate(mosaic) if int(d["label"]) > 0), 0)
    side = tiles[0].shape[0]
    kind, slide_list = input_cases(slide)
    slide_list = [{**slide_list[0], "label": int(mosaic[cell]["label"])}]
    region = WSIRegion(0, ((cell // 4) * side, (cell % 4) * side), side)
    wsi_records = explain_with_bundle(lesion, out / "wsi_medcam", root=lesion_root, datalist=slide_list, kind=kind,
                                      writers=["wsi", {"name": "geojson", "labels": list(LESION_CLASSES)}, png_lesion],
                                      steps=s.steps, image_size=s.image_size, wsi=region)
    for r in wsi_records:
        print(f"  {r['case_id']} (region at level-0 y, x = {region.location}): {case_summary(r, LESION_CLASSES)}")
    sections.append(Section("Med-CAM on a region of a pyramidal TIFF (whole-slide route)", wsi_records,
                            ["A 4x4 mosaic of held-out slices written as a tiled 3-level pyramid stands in for a whole "
                             "slide: the overlay is a pyramidal TIFF in slide coordinates, the mask a QuPath GeoJSON."],
                            LESION_CLASSES))
    _done(t)

    # -- 4: the 3D segmentation network --------------------------------------------------------------
    spacing = tissue.spacing_for_size(s.volume_size)
    volume = {"image_size": s.volume_size, "roi_size": [s.roi_size] * 3, "channels": list(s.channels), "strides": list(s.strides)}
    t = _step(4, n, f"train {TISSUE_BUNDLE} (MONAI 3D UNet) to segment grey and white matter on the MNI152 template "
                    f"({spacing:.1f} mm voxels) with augmentation, {s.volume_epochs * s.volume_samples // 2} iterations")
    weights3d = train_bundle(tissue_bundle, tissue_root, epochs=s.volume_epochs, samples_per_epoch=s.volume_samples, **volume)
    print(f"weights: {weights3d}")
    _done(t)

    # -- 5: a held-aside MRI as NIfTI ----------------------------------------------------------------
    (case,) = tissue.held_aside_datalist(inputs, [s.held_aside])
    acq = tissue.HELD_ASIDE[s.held_aside]
    t = _step(5, n, f"segment and explain an MRI the network never saw ({acq.spacing:g} mm{' LAS' if acq.flip_lr else ''} "
                    f"oblique grid, head tilted, bias field, noise) with Seg-HiRes-Grad CAM for grey matter (sliding window)")
    mri_records = explain_with_bundle(tissue_bundle, out / "mri_seg_hires_grad_cam", root=tissue_root, datalist=[{"image": case["image"]}],
                                      kind="nifti", writers=["nifti", "slicer_seg", png_tissue], overrides=volume)
    seg = out / "mri_seg_hires_grad_cam" / "segmentation" / f"{Path(case['image']).name.split('.')[0]}_tissue.nii.gz"
    dice = _dice(seg, Path(case["label"]))
    inside = _energy_inside(mri_records[0], Path(case["brain"]))
    brain_share = float(np.asarray(nib.load(case["brain"]).dataobj).mean())
    # the same case with Seg-Grad CAM: its pooled channel weights also light up the background's
    # activations, which is why the bundle explains with Seg-HiRes-Grad CAM; shown so the reader can compare
    grad_records = explain_with_bundle(tissue_bundle, out / "mri_seg_grad_cam", root=tissue_root, datalist=[{"image": case["image"]}],
                                       kind="nifti", writers=["nifti", png_tissue], overrides=volume, method="seg_grad_cam",
                                       layer=(mri_records[0].get("settings") or {}).get("layer"))  # the same layer
    grad_inside = _energy_inside(grad_records[0], Path(case["brain"]))
    lines = [f"segmentation {seg}: Dice against the template's tissue labels: grey matter {dice[1]:.2f}, white matter {dice[2]:.2f}",
             f"the grey-matter map puts {inside:.0%} of its |value| inside the brain, which is {brain_share:.0%} of the volume "
             f"(Seg-Grad CAM on the same case: {grad_inside:.0%})"]
    print("\n".join(lines))
    sections.append(Section("Seg-HiRes-Grad CAM and Seg-Grad CAM on a held-aside MRI (NIfTI)", mri_records + grad_records, lines,
                            TISSUE_CLASSES))
    _done(t)

    # -- 6: the same MRI as a DICOM series ---------------------------------------------------------------
    t = _step(6, n, "write that MRI as a DICOM MR series (real geometry tags) and explain the series: DICOM-SEG and Parametric Map")
    img = nib.load(case["image"])
    series = dicom_mr.write_mr_series(np.asarray(img.dataobj, dtype=np.float32), img.affine, inputs / "mri_dicom_series",
                                      series_description=f"T1 MNI152 {s.held_aside}")
    kind, dicom_list = input_cases(series.folder)
    dicom_records = explain_with_bundle(tissue_bundle, out / "mri_dicom_seg_hires_grad_cam", root=tissue_root, datalist=dicom_list, kind=kind,
                                        writers=["dicom_seg", "parametric_map", "slicer_seg", "nifti", png_tissue], overrides=volume)
    print(f"series: {series.folder} ({len(series.files)} slices, SeriesInstanceUID {series.series_instance_uid})")
    sections.append(Section("Seg-HiRes-Grad CAM on the same MRI as a DICOM series", dicom_records,
                            ["The DICOM-SEG and Parametric Map reference the series' slices (open them with the series in 3D Slicer or OHIF)."],
                            TISSUE_CLASSES))
    _done(t)

    total = time.perf_counter() - start
    page = write_report_page(sections, out / "report.html", title="medcam-monai demo" + (" (--quick: barely trained models)" if quick else ""))
    print(f"\n=== demo finished in {total:.0f} s; outputs under {out}; every figure with its case line: {page}")
    if weak:
        print(warning)
    for section in sections:
        records = section.records
        print(f"\n{section.title}: records {records and Path(next(iter(records[0]['outputs'].values()))).parent.parent / 'explanations.json'}")
        for r in records:
            print(f"  {r['case_id']}: {case_summary(r, section.class_names)}{r.get('note') or ''}")
            for writer, path in r["outputs"].items():
                for p in path if isinstance(path, list) else [path]:
                    print(f"      {writer:15s} {p}")
    return 0


def _test_datalist(root: Path, n: int, image_size: int) -> list[dict]:
    """The lesion bundle's ``n`` held-out test cases (written once under its ``standin_data``, as its
    inference config and the evaluation read them)."""
    from medcam_monai.data.standins import standin_datalist

    return standin_datalist("mni152_lesions", root / "standin_data", "test", n, image_size)
