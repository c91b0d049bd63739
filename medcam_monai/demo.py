"""``medcam-monai demo``: the whole job on a fresh machine, with no data and no downloads.

1. trains the smallest bundle (``fundus_resnet18``) on generated stand-in fundus photographs;
2. runs that bundle's inference config, whose evaluator explains stand-in test cases with Med-CAM
   (PNG overlays, NIfTI, one JSON record per case);
3. the same bundle reads a region of a stand-in whole-slide pyramid (tiled TIFF) and writes the
   explanation as a pyramidal overlay and QuPath GeoJSON in slide coordinates;
4. trains the 3D UNet bundle (``kidney_ct_unet3d``) on stand-in CT volumes;
5. explains the real 5-slice CT series shipped in pydicom's wheel with Seg-HiRes-Grad CAM through
   that bundle's sliding-window inferer: DICOM-SEG and Parametric Map referencing the series,
   ``.seg.nrrd``, NIfTI and PNG;

and prints where every output is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

__all__ = ["run_demo", "make_standin_slide", "DEMO_CT_SERIES"]

DEMO_CT_SERIES = "dicomdirtests/98892001/CT5N"


def make_standin_slide(path: Path, tiles: list[np.ndarray]) -> Path:
    """Write a 2-level tiled RGB pyramid (TIFF, OpenSlide's generic layout) of 2x2 stand-in tiles.

    Args:
        path: the ``.tif`` to write.
        tiles: four ``(H, W, 3)`` uint8 images of one size.
    """
    import tifffile

    top = np.concatenate(tiles[:2], axis=1)
    base = np.concatenate([top, np.concatenate(tiles[2:4], axis=1)], axis=0)
    tile = 16 * max(1, min(base.shape[:2]) // 64)
    with tifffile.TiffWriter(path) as tif:
        for i, f in enumerate((1, 2)):
            tif.write(np.ascontiguousarray(base[::f, ::f]), tile=(tile, tile), photometric="rgb",
                      resolution=(1e4 / (0.5 * f), 1e4 / (0.5 * f)), resolutionunit="CENTIMETER",
                      subfiletype=0 if i == 0 else 1, metadata=None)
    return path


def _step(i: int, n: int, text: str) -> float:
    print(f"\n=== [{i}/{n}] {text}", flush=True)
    return time.perf_counter()


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo with the ``demo`` subcommand's arguments; returns the exit code."""
    from PIL import Image

    from medcam_monai.bundle_utils import find_bundle, standin_datalist
    from medcam_monai.cli import CLIError, _check_writable, _explain, _train, input_cases

    if args.quick:
        args.cases, args.steps, args.epochs, args.train_cases = 2, 5, 1, 16
        args.image_size, args.volume_size = 32, 32
    out = Path(args.output).resolve()
    _check_writable(out)
    start = time.perf_counter()
    fundus, kidney = find_bundle("fundus_resnet18"), find_bundle("kidney_ct_unet3d")
    fundus_root, kidney_root = out / "fundus_resnet18", out / "kidney_ct_unet3d"
    results: dict[str, list[dict]] = {}
    n = 5

    t = _step(1, n, f"train fundus_resnet18 (ResNet-18) on {args.train_cases} stand-in fundus images, {args.epochs} epochs")
    weights = _train(str(fundus), fundus_root, args.epochs, args.train_cases, args.image_size, None)
    print(f"weights: {weights} ({time.perf_counter() - t:.0f} s)")

    t = _step(2, n, f"explain {args.cases} stand-in fundus test images with Med-CAM inside the bundle's evaluator")
    explain_args = argparse.Namespace(writers=None, steps=args.steps, image_size=args.image_size)
    results["Med-CAM, fundus (2D)"] = _explain(
        fundus, fundus_root, out / "fundus_medcam", None, None, explain_args,
        extra={"num_cases": args.cases, "explanation#writers": ["png", "nifti"]},
    )
    print(f"({time.perf_counter() - t:.0f} s)")

    t = _step(3, n, "explain a region of a stand-in whole-slide pyramid (tiled TIFF) with Med-CAM")
    tiles = [np.asarray(Image.open(d["image"]).convert("RGB"))
             for d in standin_datalist("idrid_grading", fundus_root / "standin_data", "test", 4, args.image_size)]
    (out / "inputs").mkdir(exist_ok=True)
    slide = make_standin_slide(out / "inputs" / "standin_slide.tif", tiles)
    wsi_args = argparse.Namespace(writers=["wsi", "geojson", "png"], steps=args.steps, image_size=args.image_size,
                                  wsi_level=0, wsi_location=(0, args.image_size), wsi_size=args.image_size)
    kind, datalist = input_cases(slide)
    results["Med-CAM, whole-slide region"] = _explain(fundus, fundus_root, out / "wsi_medcam", datalist, kind, wsi_args)
    print(f"({time.perf_counter() - t:.0f} s)")

    t = _step(4, n, f"train kidney_ct_unet3d (MONAI 3D UNet) on stand-in CT volumes of {args.volume_size}^3")
    ct_epochs = 1 if args.quick else 12
    ct_cases = 4 if args.quick else 12
    weights = _train(str(kidney), kidney_root, ct_epochs, ct_cases, args.volume_size, None)
    print(f"weights: {weights} ({time.perf_counter() - t:.0f} s)")

    t = _step(5, n, "explain the real CT series from pydicom's wheel with Seg-HiRes-Grad CAM (sliding window)")
    try:
        from pydicom.data import get_testdata_file

        series = get_testdata_file(DEMO_CT_SERIES)
    except Exception as e:  # noqa: BLE001 - an old or trimmed pydicom
        raise CLIError(f"pydicom's test CT series {DEMO_CT_SERIES} is not available ({e}); upgrade pydicom>=3.") from None
    kind, datalist = input_cases(series)
    ct_args = argparse.Namespace(writers=None, steps=None, image_size=None)
    # whole-image pixel set: a phantom-trained net need not predict kidney on this real series
    results["Seg-HiRes-Grad CAM, real CT (DICOM)"] = _explain(
        kidney, kidney_root, out / "ct_seg_hires_grad_cam", datalist, kind, ct_args,
        extra={"explain_class": 1, "pixels": "image"},
    )
    print(f"({time.perf_counter() - t:.0f} s)")

    total = time.perf_counter() - start
    print(f"\n=== demo finished in {total:.0f} s; outputs under {out}")
    for title, records in results.items():
        print(f"\n{title}: records {records and Path(next(iter(records[0]['outputs'].values()))).parent.parent / 'explanations.json'}")
        for r in records:
            scores = r.get("scores", {})
            if "prob_x" in scores:
                info = (f"p(target|image)={scores['prob_x']:.2f} p(target|evidence)={scores['prob_e']:.2f} "
                        f"area={scores['area_fraction']:.1%} steps={r.get('steps')}")
            else:
                info = f"class {r['target']}"
            print(f"  {r['case_id']} [{r['method']}, {info}]")
            for writer, path in r["outputs"].items():
                print(f"      {writer:15s} {path}")
    return 0
