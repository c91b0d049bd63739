"""The ``medcam-monai`` command: parse, call the bundle service (:mod:`medcam_monai.bundle`), print.

    medcam-monai demo                              # the main job: train, explain, write every format
    medcam-monai train fundus_resnet18 --epochs 8
    medcam-monai explain kidney_ct_unet3d /data/CT_series/ --output out/
    medcam-monai explain fundus_resnet18 photos/ --steps 100
    medcam-monai evaluate brain_mri_mobilenet_v2 --cases 16
    medcam-monai list

Exit codes: 0 success, 2 a problem with the input (the message says what and how to fix it), 1
other failures (``MEDCAM_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from medcam_monai.errors import InputError
from medcam_monai.threads import configure_threads

__all__ = ["main", "build_parser", "configure_threads", "print_records"]


def print_records(records: list[dict], title: str) -> None:
    """One line per case (method, target, the scores that say how it went) and where each output is."""
    print(f"\n{title}")
    for r in records:
        scores = r.get("scores", {})
        summary = ", ".join(
            f"{k}={scores[k]:.3f}" if isinstance(scores[k], float) else f"{k}={scores[k]}"
            for k in ("prob_x", "prob_e", "area_fraction", "pixels")
            if k in scores and not isinstance(scores[k], list)
        )
        print(f"  {r['case_id']}: {r['method']} target={r['target']} {summary}")
        for writer, path in (r.get("outputs") or {}).items():
            print(f"      {writer:15s} {path}")


# -- subcommands ------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from medcam_monai.bundle import BUNDLES_DIR, project_bundles, read_metadata

    for name in project_bundles():
        print(f"{name:28s} {read_metadata(BUNDLES_DIR / name).get('task', '')}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from medcam_monai.bundle import find_bundle, train_bundle
    from medcam_monai.io.atomic import check_writable_dir

    bundle = find_bundle(args.bundle)
    root = Path(args.bundle_root) if args.bundle_root else bundle
    check_writable_dir(root, "choose another with --bundle-root")
    start = time.perf_counter()
    weights = train_bundle(bundle, root, epochs=args.epochs, num_cases=args.num_cases, image_size=args.image_size,
                           dataset_dir=args.dataset_dir)
    print(f"\nweights: {weights}  ({time.perf_counter() - start:.0f} s)")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from medcam_monai.bundle import WSIRegion, explain_with_bundle, find_bundle, records_path
    from medcam_monai.io.atomic import check_writable_dir
    from medcam_monai.io.formats import input_cases

    bundle = find_bundle(args.bundle)
    kind, datalist = input_cases(args.input)
    output = check_writable_dir(args.output, "choose another with --output")
    records = explain_with_bundle(
        bundle, output, root=args.bundle_root, datalist=datalist, kind=kind, writers=args.writers, weights=args.weights,
        steps=args.steps, target=args.target, layer=args.layer, image_size=args.image_size,
        wsi=WSIRegion(args.wsi_level, tuple(args.wsi_location), args.wsi_size),
    )
    print_records(records, f"{len(records)} case(s) explained; records: {records_path(output)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medcam_monai.evaluation.evaluate import evaluate_bundle

    paths = evaluate_bundle(
        args.bundle, args.output, root=args.bundle_root, weights=args.weights, dataset_dir=args.dataset_dir,
        split=args.split, cases=args.cases, methods=args.methods, steps=args.steps, curve_steps=args.curve_steps,
        baseline=args.baseline, sanity_cases=args.sanity_cases, sanity_stages=args.sanity_stages, epochs=args.epochs,
        train_cases=args.train_cases, image_size=args.image_size, batch_size=args.batch_size, seed=args.seed,
        arguments={k: v for k, v in vars(args).items() if k != "func"},
    )
    print(Path(paths["report"]).read_text())
    print(f"report: {paths['report']}\nfigures: {', '.join(str(p) for p in paths['figures'])}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from medcam_monai.demo import run_demo

    return run_demo(args.output, quick=args.quick, cases=args.cases, steps=args.steps, epochs=args.epochs,
                    train_cases=args.train_cases, image_size=args.image_size, volume_size=args.volume_size)


# -- entry point ---------------------------------------------------------------------------------------
def _add_evaluate(sub) -> None:
    from medcam_monai.registry import CLASSIFICATION, SEGMENTATION, methods_for

    p = sub.add_parser(
        "evaluate",
        help="score the explainers of a bundle on stand-in (or real) data and write a report",
        description="Train the bundle if it has no weights, explain test cases with every method, score the "
                    "explanations and write report.md, figures/*.png, results.json, cases.csv and settings.json.",
    )
    p.add_argument("bundle", nargs="?", default="fundus_resnet18", help="bundle name or folder (default: fundus_resnet18)")
    p.add_argument("--output", default="medcam-evaluation", help="report folder (default: ./medcam-evaluation)")
    p.add_argument("--bundle-root", help="where models/ and stand-in data go (default: <output>/bundle)")
    p.add_argument("--weights", help="a state dict of the bundle's network (default: <bundle-root>/models/model.pt, trained if missing)")
    p.add_argument("--dataset-dir", help="the real dataset (see data_manifests/); stand-in data when absent")
    p.add_argument("--split", default="test", help="split evaluated (default: test)")
    p.add_argument("--cases", type=int, default=8, help="cases evaluated (default: 8)")
    p.add_argument("--methods", nargs="+", help=f"methods (default: {' '.join(methods_for(CLASSIFICATION))} for classifiers, "
                                                f"{' '.join(methods_for(SEGMENTATION))} for segmentation)")
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
    p.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="torch CPU threads (as the global --threads)")
    p.set_defaults(func=cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medcam-monai", description="Explain MONAI bundles' decisions (Med-CAM, Seg-HiRes-Grad CAM).")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: OMP_NUM_THREADS, else the idle cores)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the bundles")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("train", help="train a bundle (on its dataset at dataset_dir, else on stand-in data)")
    p.add_argument("bundle", help="bundle name (see `medcam-monai list`) or folder")
    p.add_argument("--bundle-root", help="where models/ and stand-in data go (default: the bundle folder)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--num-cases", type=int, help="training cases (stand-in data: generated count)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--dataset-dir", help="folder of the real dataset (see data_manifests/)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("explain", help="explain a file or folder (DICOM series, NIfTI, PNG/JPEG, WSI) with a bundle")
    p.add_argument("bundle", help="bundle name or folder")
    p.add_argument("input", help="a file, a DICOM series folder, or a folder of images")
    p.add_argument("--output", default="outputs", help="output folder (default: ./outputs)")
    p.add_argument("--bundle-root", help="folder holding models/model.pt (default: the bundle folder)")
    p.add_argument("--weights", help="a state dict of the bundle's network (default: <bundle-root>/models/model.pt)")
    p.add_argument("--writers", nargs="+", help="output formats (default by input: DICOM -> dicom_seg parametric_map ...)")
    p.add_argument("--steps", type=int, help="Med-CAM optimisation steps")
    p.add_argument("--target", type=int, help="class to explain (default: the prediction)")
    p.add_argument("--layer", help="layer to explain, a named_modules() name (default: the bundle's)")
    p.add_argument("--image-size", type=int, help="network input size, if the bundle was trained at another")
    p.add_argument("--wsi-level", type=int, default=0, help="WSI: pyramid level to read")
    p.add_argument("--wsi-location", type=int, nargs=2, default=(0, 0), metavar=("Y", "X"), help="WSI: region's level-0 top-left")
    p.add_argument("--wsi-size", type=int, help="WSI: region side at the level (default: whole level)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("demo", help="no data needed: train on real anatomy from nilearn's wheel, explain, write every format")
    p.add_argument("--output", default="medcam-demo", help="output folder (default: ./medcam-demo; an earlier run's is kept: -2, -3, ...)")
    p.add_argument("--cases", type=int, help="held-out slices explained with Med-CAM (default 4)")
    p.add_argument("--steps", type=int, help="Med-CAM steps per case (default 150; early stopping may end sooner)")
    p.add_argument("--epochs", type=int, help="training epochs of the 2D lesion classifier (default 6)")
    p.add_argument("--train-cases", type=int, help="training slices with planted lesions (default 480)")
    p.add_argument("--image-size", type=int, help="2D slice side in pixels (default 64: 4 mm pixels)")
    p.add_argument("--volume-size", type=int, help="3D grid: voxels across the head (default 48: 4.2 mm voxels)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps (a smoke test, about a minute; models barely trained)")
    p.set_defaults(func=cmd_demo)

    _add_evaluate(sub)
    from medcam_monai.pipeline.command import add_pipeline_parser

    add_pipeline_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 a problem with the input)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command != "list":
            configure_threads(args.threads)
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"medcam-monai: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medcam-monai: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - report the cause in one line, keep the traceback on request
        from medcam_monai.bundle.workflow import root_cause

        cause = root_cause(e)
        if os.environ.get("MEDCAM_DEBUG"):
            raise
        if isinstance(cause, InputError):
            print(f"medcam-monai: error: {cause}", file=sys.stderr)
            return 2
        print(f"medcam-monai: error: {type(cause).__name__}: {cause}", file=sys.stderr)
        print("(set MEDCAM_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # `python -m medcam_monai.cli`: run the imported module's main, so that its InputError is the one
    # the subcommands raise (this file would otherwise exist twice, as __main__ and medcam_monai.cli)
    from medcam_monai.cli import main as _main

    sys.exit(_main())
