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


def run_demo(
    output: str | Path = "medcam-demo",
    *,
    quick: bool = False,
    cases: int = 4,
    steps: int = 150,
    epochs: int = 8,
    train_cases: int = 192,
    image_size: int = 64,
    volume_size: int = 48,
) -> int:
    """Run the demo into ``output``; returns the exit code.

    Args:
        output: the demo's folder.
        quick: tiny sizes and few steps (a smoke test, about a minute).
        cases: 2D cases explained with Med-CAM.
        steps: Med-CAM steps per case (early stopping may end sooner).
        epochs, train_cases, image_size: training of the 2D classifier.
        volume_size: stand-in CT volume side for the 3D bundle.
    """
    from PIL import Image

    from medcam_monai.bundle import WSIRegion, explain_with_bundle, find_bundle, train_bundle
    from medcam_monai.data.standins import standin_datalist
    from medcam_monai.errors import InputError
    from medcam_monai.io.atomic import check_writable_dir
    from medcam_monai.io.formats import input_cases

    if quick:
        cases, steps, epochs, train_cases, image_size, volume_size = 2, 5, 1, 16, 32, 32
    out = check_writable_dir(Path(output).resolve(), "choose another with --output")
    start = time.perf_counter()
    fundus, kidney = find_bundle("fundus_resnet18"), find_bundle("kidney_ct_unet3d")
    fundus_root, kidney_root = out / "fundus_resnet18", out / "kidney_ct_unet3d"
    results: dict[str, list[dict]] = {}
    n = 5

    t = _step(1, n, f"train fundus_resnet18 (ResNet-18) on {train_cases} stand-in fundus images, {epochs} epochs")
    weights = train_bundle(fundus, fundus_root, epochs=epochs, num_cases=train_cases, image_size=image_size)
    print(f"weights: {weights} ({time.perf_counter() - t:.0f} s)")

    t = _step(2, n, f"explain {cases} stand-in fundus test images with Med-CAM inside the bundle's evaluator")
    results["Med-CAM, fundus (2D)"] = explain_with_bundle(
        fundus, out / "fundus_medcam", root=fundus_root, writers=["png", "nifti"], steps=steps, image_size=image_size,
        overrides={"num_cases": cases},
    )
    print(f"({time.perf_counter() - t:.0f} s)")

    t = _step(3, n, "explain a region of a stand-in whole-slide pyramid (tiled TIFF) with Med-CAM")
    tiles = [np.asarray(Image.open(d["image"]).convert("RGB"))
             for d in standin_datalist("idrid_grading", fundus_root / "standin_data", "test", 4, image_size)]
    (out / "inputs").mkdir(exist_ok=True)
    slide = make_standin_slide(out / "inputs" / "standin_slide.tif", tiles)
    kind, datalist = input_cases(slide)
    results["Med-CAM, whole-slide region"] = explain_with_bundle(
        fundus, out / "wsi_medcam", root=fundus_root, datalist=datalist, kind=kind, writers=["wsi", "geojson", "png"],
        steps=steps, image_size=image_size, wsi=WSIRegion(0, (0, image_size), image_size),
    )
    print(f"({time.perf_counter() - t:.0f} s)")

    t = _step(4, n, f"train kidney_ct_unet3d (MONAI 3D UNet) on stand-in CT volumes of {volume_size}^3")
    weights = train_bundle(kidney, kidney_root, epochs=1 if quick else 12, num_cases=4 if quick else 12, image_size=volume_size)
    print(f"weights: {weights} ({time.perf_counter() - t:.0f} s)")

    t = _step(5, n, "explain the real CT series from pydicom's wheel with Seg-HiRes-Grad CAM (sliding window)")
    try:
        from pydicom.data import get_testdata_file

        series = get_testdata_file(DEMO_CT_SERIES)
    except Exception as e:  # noqa: BLE001 - an old or trimmed pydicom
        raise InputError(f"pydicom's test CT series {DEMO_CT_SERIES} is not available ({e}); upgrade pydicom>=3.") from None
    kind, datalist = input_cases(series)
    # whole-image pixel set: a phantom-trained net need not predict kidney on this real series
    results["Seg-HiRes-Grad CAM, real CT (DICOM)"] = explain_with_bundle(
        kidney, out / "ct_seg_hires_grad_cam", root=kidney_root, datalist=datalist, kind=kind,
        overrides={"explain_class": 1, "pixels": "image"},
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
