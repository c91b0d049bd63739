"""The ``medcam-monai`` command: parse, call the bundle service (:mod:`medcam_monai.bundle`), print.

    medcam-monai demo                              # the main job: train, explain, write every format
    medcam-monai train fundus_resnet18 --epochs 8
    medcam-monai explain kidney_ct_unet3d /data/CT_series/ --output out/
    medcam-monai explain fundus_resnet18 photos/ --steps 100
    medcam-monai explain ./spleen_ct_segmentation ct.nii.gz --target 1    # any bundle in the model-zoo layout
    medcam-monai fragment                          # the config fragment for `python -m monai.bundle run`
    medcam-monai evaluate brain_mri_mobilenet_v2 --cases 16
    medcam-monai list

A bare bundle name is one of the project's bundles; anyone else's bundle is given as a path.

Exit codes: 0 success, 2 a problem with the input (the message says what and how to fix it; in a
batch, cases that could not be explained are listed and the others are done), 1 other failures
(``MEDCAM_DEBUG=1`` shows the traceback).
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

__all__ = ["main", "build_parser", "configure_threads", "print_records", "parse_pixels", "cli_message"]

# environment variables holding credentials: never visible to a bundle's config expressions
SECRET_ENV = ("MEDCAM_PACS_PASSWORD",)

# the command-line fix for errors whose message speaks of Python arguments (by error class name)
CLI_FIXES = {
    "MultipleSeriesError": "On the command line: --series-uid UID (one of those listed).",
    "IrregularSpacingError": "On the command line: --allow-irregular-spacing.",
    "MissingGeometryError": "On the command line: --bundle-loader reads it with the bundle's own loading transform (e.g. as a 2D image).",
}


def cli_message(error: BaseException | str, type_name: str | None = None) -> str:
    """An error's message with the command-line fix for it (see :data:`CLI_FIXES`)."""
    text = str(error)
    fix = CLI_FIXES.get(type_name or type(error).__name__)
    return f"{text} {fix}" if fix and fix not in text else text


def parse_pixels(text: str):
    """``--pixels``: ``predicted``, ``image``, ``box:X0,Y0[,Z0]:X1,Y1[,Z1]``, ``point:X,Y[,Z]`` (voxels of the
    network input), or ``mask:FILE`` (any mask image with an affine; a plain existing file path works too)."""
    if text in ("predicted", "image"):
        return text
    kind, _, rest = text.partition(":")
    try:
        if kind == "box":
            start, end = rest.split(":")
            return {"box": [[int(v) for v in start.split(",")], [int(v) for v in end.split(",")]]}
        if kind == "point":
            return {"point": [int(v) for v in rest.split(",")]}
    except ValueError:
        pass
    else:
        if kind == "mask" and rest:
            return {"mask": rest}
        if Path(text).is_file():
            return {"mask": text}
    raise argparse.ArgumentTypeError(
        f"{text!r}: use predicted, image, box:X0,Y0,Z0:X1,Y1,Z1, point:X,Y,Z (voxels of the network input) or mask:FILE."
    )


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
    from medcam_monai.bundle import InputOptions, WSIRegion, explain_with_bundle, find_bundle, records_path, untrusted_bundle_warning
    from medcam_monai.bundle.locate import is_project_bundle
    from medcam_monai.io.atomic import check_writable_dir
    from medcam_monai.io.formats import input_cases
    from medcam_monai.pipeline.bundle_run import parse_override

    bundle = find_bundle(args.bundle)
    origin = "one of the project's bundles" if is_project_bundle(bundle) else "given as a path"
    print(f"bundle: {bundle.resolve()} ({origin})")
    warning = None if args.trust_bundle else untrusted_bundle_warning(bundle)
    if warning:
        print(f"medcam-monai: warning: {warning}", file=sys.stderr)
    kind, datalist = input_cases(args.input)
    if Path(args.input).is_dir():  # hidden files (a killed run's .part leftovers, macOS ._ files) are not cases
        datalist = [d for d in datalist if not Path(d["image"]).name.startswith(".")]
        if not datalist:
            raise InputError(f"{args.input!r} holds only hidden files.")
    try:
        overrides = dict(parse_override(o) for o in args.override)
    except ValueError as e:
        raise InputError(str(e)) from None
    output = check_writable_dir(args.output, "choose another with --output")
    for name in SECRET_ENV:  # the bundle's config runs code; it has no business with PACS credentials
        os.environ.pop(name, None)
    inputs = InputOptions(
        kind=kind, series_uid=args.series_uid, allow_irregular_spacing=args.allow_irregular_spacing,
        bundle_loader=args.bundle_loader, wsi=WSIRegion(args.wsi_level, tuple(args.wsi_location), args.wsi_size),
        volume=args.volume, slice=args.slice, rgb=args.rgb, grey=args.grey, nan_to_num=args.nan_to_num,
    )
    writers = [] if args.writers == ["none"] else args.writers
    result = explain_with_bundle(
        bundle, output, root=args.bundle_root, datalist=datalist, writers=writers, weights=args.weights,
        steps=args.steps, target=args.target, layer=args.layer, image_size=args.image_size, method=args.method,
        pixels=args.pixels, inputs=inputs, overrides=overrides,
        fail_fast=args.fail_fast or bool(os.environ.get("MEDCAM_DEBUG")),  # debugging wants the first traceback
    )
    print_records(list(result), f"{len(result)} case(s) explained with {result.method} ({result.task} network); "
                                f"records: {records_path(output)}")
    if result.failures:
        code = 2 if all(f.get("input_problem") for f in result.failures) else 1
        if len(datalist) == 1:  # one input: one clear message
            print(f"medcam-monai: error: {cli_message(result.failures[0]['error'], result.failures[0].get('error_type'))}",
                  file=sys.stderr)
            return code
        print(f"\n{len(result.failures)} of {len(datalist)} case(s) not explained (listed in "
              f"{records_path(output).parent / 'failures.json'}; the others are done):", file=sys.stderr)
        for f in result.failures:
            print(f"  {f['case_id']}: {cli_message(f['error'], f.get('error_type'))}", file=sys.stderr)
        return code
    return 0


def cmd_fragment(args: argparse.Namespace) -> int:
    from medcam_monai.bundle import fragment_path

    path = fragment_path()
    print(path)
    if args.usage:
        print(
            f"\nAttach the explanation handler to any bundle (run from the bundle's folder; the fragment comes last):\n"
            f"  python -m monai.bundle run --config_file \"['configs/inference.json', '{path}']\" --bundle_root .\n"
            f"  torchrun --nproc_per_node=2 -m monai.bundle run --config_file \"['configs/inference.json', "
            f"'configs/multi_gpu_inference.json', '{path}']\"\n"
            f"Settings: --medcam#explainer, #target, #pixels, #writers, #output_dir (see the file)."
        )
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
    from medcam_monai.registry import EXPLAINERS

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

    p = sub.add_parser(
        "explain",
        help="explain a file or folder (DICOM series, NIfTI, PNG/JPEG, WSI) with any bundle",
        description="Explain files with a bundle: one of the project's (by name) or any bundle in the MONAI model-zoo "
                    "layout (by path), run as it is with its own preprocessing, weights, inferer and evaluator. The task "
                    "comes from metadata.json (else the network's output): classifiers get Med-CAM, segmentation "
                    "networks Seg-HiRes-Grad CAM.",
    )
    p.add_argument("bundle", help="one of the project's bundles by name (`medcam-monai list`), or a bundle folder as a path (./my_bundle)")
    p.add_argument("input", help="a file, a DICOM series folder, or a folder of images")
    p.add_argument("--output", default="outputs", help="output folder (default: ./outputs)")
    p.add_argument("--bundle-root", help="folder holding models/model.pt (default: the bundle folder)")
    p.add_argument("--weights", help="a state dict of the bundle's network (default: what the bundle's CheckpointLoader loads)")
    p.add_argument("--writers", nargs="+",
                   help="output formats (default by input: DICOM -> dicom_seg parametric_map ...); none: the records only")
    p.add_argument("--method", choices=sorted(EXPLAINERS),
                   help="explainer (default: medcam for classifiers, seg_hires_grad_cam for segmentation networks)")
    p.add_argument("--steps", type=int, help="Med-CAM optimisation steps")
    p.add_argument("--target", type=int, help="class to explain (default: the prediction; every foreground class of a segmentation)")
    p.add_argument("--pixels", type=parse_pixels, metavar="SET",
                   help="segmentation: where the class score is summed: predicted (default), image, box:X0,Y0,Z0:X1,Y1,Z1, "
                        "point:X,Y,Z (voxels of the network input) or mask:FILE (a mask image with an affine)")
    p.add_argument("--layer", help="layer to explain, a named_modules() name (default: the bundle's)")
    p.add_argument("--image-size", type=int, help="network input size, if the bundle was trained at another")
    p.add_argument("--series-uid", help="DICOM: the series to explain in a folder holding several")
    p.add_argument("--allow-irregular-spacing", action="store_true", help="DICOM: read a series whose slice gaps differ")
    p.add_argument("--bundle-loader", action="store_true",
                   help="read every input with the bundle's own loading transform (default: DICOM and WSI with the project's loaders)")
    p.add_argument("--volume", type=int, metavar="N", help="4D image: explain volume N")
    p.add_argument("--slice", type=int, metavar="K", help="3D image into a 2D bundle: explain slice K (last axis)")
    p.add_argument("--rgb", action="store_true", help="greyscale image into an RGB network: repeat the channel")
    p.add_argument("--grey", action="store_true", help="colour image into a one-channel network: average the channels")
    p.add_argument("--nan-to-num", action="store_true", help="replace NaN/Inf voxels (torch.nan_to_num) after loading")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="bundle config override, value in JSON (repeatable), e.g. --override preprocessing#transforms#4#a_max=65535")
    p.add_argument("--trust-bundle", action="store_true",
                   help="run a bundle from outside the project without the warning that its config runs code")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first case that cannot be explained (default: skip and report it)")
    p.add_argument("--wsi-level", type=int, default=0, help="WSI: pyramid level to read")
    p.add_argument("--wsi-location", type=int, nargs=2, default=(0, 0), metavar=("Y", "X"), help="WSI: region's level-0 top-left")
    p.add_argument("--wsi-size", type=int, help="WSI: region side at the level (default: whole level)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("fragment", help="print the path of the config fragment that attaches the explanation handler to any bundle")
    p.add_argument("--usage", action="store_true", help="also print how to use it with python -m monai.bundle run and torchrun")
    p.set_defaults(func=cmd_fragment)

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
        if args.command not in ("list", "fragment"):
            configure_threads(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("medcam-monai: interrupted", file=sys.stderr)
        return 130
    except BaseException as e:  # noqa: BLE001 - report the cause in one line, keep the traceback on request
        if isinstance(e, SystemExit):
            raise
        from medcam_monai.bundle.workflow import root_cause

        if os.environ.get("MEDCAM_DEBUG"):
            raise
        cause = root_cause(e)
        if _is_input_problem(cause):
            print(f"medcam-monai: error: {cli_message(cause)}", file=sys.stderr)
            return 2
        print(f"medcam-monai: error: {type(cause).__name__}: {cause}", file=sys.stderr)
        print("(set MEDCAM_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 1


def _is_input_problem(error: BaseException) -> bool:
    """Problems the user fixes with other input or options (exit code 2): this project's input errors and the
    image readers' (:mod:`medcam_monai.io.errors`)."""
    from medcam_monai.io.errors import SourceImageError

    return isinstance(error, (InputError, SourceImageError))


if __name__ == "__main__":
    # `python -m medcam_monai.cli`: run the imported module's main, so that its InputError is the one
    # the subcommands raise (this file would otherwise exist twice, as __main__ and medcam_monai.cli)
    from medcam_monai.cli import main as _main

    sys.exit(_main())
