"""The ``medcam-monai`` command: train a bundle, explain files with it, or run the demo.

Every subcommand runs a bundle's own configs (``configs/train.json``, ``configs/inference.json``)
through MONAI's ``ConfigWorkflow``, as ``python -m monai.bundle run`` does, with a few overrides:
the cases to read, the loader for the input's format, the writers and the output folder.

    medcam-monai demo                              # the main job: train, explain, write every format
    medcam-monai train fundus_resnet18 --epochs 8
    medcam-monai explain kidney_ct_unet3d /data/CT_series/ --output out/
    medcam-monai explain fundus_resnet18 photos/ --steps 100
    medcam-monai list
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "input_cases", "run_bundle", "configure_threads", "CLIError"]

_2D = (".png", ".jpg", ".jpeg", ".bmp")
_NIFTI = (".nii", ".nii.gz", ".mha", ".nrrd")
_WSI = (".tif", ".tiff", ".svs", ".ndpi")

# writers that can serve each kind of input (DICOM writers need a DICOM source, WSI writers a slide)
DEFAULT_WRITERS = {
    "dicom": ["dicom_seg", "parametric_map", "slicer_seg", "nifti", "png"],
    "nifti": ["nifti", "slicer_seg", "png"],
    "2d": ["png", "nifti"],
    "wsi": ["wsi", "geojson", "png"],
}


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


# -- inputs ---------------------------------------------------------------------------------------
def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            if f.read(4) == b"DICM":
                return True
    except OSError:
        return False
    return path.suffix.lower() == ".dcm"


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if path.is_dir():
        return "dicom" if any(_is_dicom(p) for p in path.iterdir() if p.is_file()) else None
    if name.endswith(_2D):
        return "2d"
    if name.endswith(_NIFTI):
        return "nifti"
    if name.endswith(_WSI):
        return "wsi"
    if _is_dicom(path):
        return "dicom"
    return None


def input_cases(path: str | os.PathLike) -> tuple[str, list[dict[str, str]]]:
    """The input's kind (``"dicom"``, ``"nifti"``, ``"2d"``, ``"wsi"``) and one datalist entry per case.

    A DICOM series folder is one case; a folder of image files gives one case per file (all of
    one kind); a file is one case.

    Raises:
        CLIError: the path is missing, empty, or holds no readable image format.
    """
    path = Path(path)
    if not path.exists():
        raise CLIError(f"Input {str(path)!r} does not exist.")
    kind = _kind(path)
    if kind is not None:
        return kind, [{"image": str(path)}]
    if not path.is_dir():
        raise CLIError(
            f"Cannot tell the format of {str(path)!r}: expected a DICOM file or series folder, NIfTI "
            f"(.nii/.nii.gz), PNG/JPEG, or a whole-slide TIFF/SVS."
        )
    cases: dict[str, list[dict[str, str]]] = {}
    for p in sorted(path.iterdir()):
        k = _kind(p)
        if k is not None:
            cases.setdefault(k, []).append({"image": str(p)})
    if not cases:
        raise CLIError(f"No images in {str(path)!r} (DICOM series folders, NIfTI, PNG/JPEG or WSI files).")
    if len(cases) > 1:
        raise CLIError(f"{str(path)!r} mixes formats {sorted(cases)}; give one format per call.")
    kind, items = next(iter(cases.items()))
    return kind, items


def _loader(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """The loading transform for DICOM and WSI inputs (bundles read files with ``LoadImageSourced``)."""
    if kind == "dicom":
        return {"_target_": "medcam_monai.io.LoadDicomd", "keys": "image"}
    return {
        "_target_": "medcam_monai.io.LoadWSId",
        "keys": "image",
        "level": args.wsi_level,
        "location": list(args.wsi_location),
        "size": None if args.wsi_size is None else [args.wsi_size, args.wsi_size],
    }


# -- running bundles ----------------------------------------------------------------------------------
def _root_cause(e: BaseException) -> BaseException:
    """MONAI's config parser wraps errors in 'Failed to instantiate/evaluate': report the cause."""
    seen = set()
    while id(e) not in seen and (e.__cause__ is not None):
        seen.add(id(e))
        if not (isinstance(e, RuntimeError) and str(e).startswith(("Failed to", "applying transform"))):
            break
        e = e.__cause__
    return e


def _config_files(bundle: Path, config: str, extra: Sequence[str] = ()) -> list[str]:
    files = [bundle / "configs" / config, *[bundle / "configs" / x for x in extra]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CLIError(f"Bundle {str(bundle)!r} has no {', '.join(missing)}.")
    return [str(f) for f in files]


def _bundle_config(bundle: Path, name: str) -> dict:
    path = bundle / "configs" / name
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CLIError(f"Cannot read {path}: {e}") from None


def run_bundle(bundle: str | os.PathLike, config: str, **override: Any):
    """Run ``configs/<config>`` of ``bundle`` as ``python -m monai.bundle run`` does; return the workflow.

    ``override`` holds config ids (``#`` for nesting) and values, e.g. ``epochs=2``.
    """
    from monai.bundle import ConfigWorkflow

    from medcam_monai.bundle_utils import find_bundle

    bundle = find_bundle(bundle)
    meta = bundle / "configs" / "metadata.json"
    logging_conf = bundle / "configs" / "logging.conf"
    override.setdefault("bundle_root", str(bundle))
    workflow = ConfigWorkflow(
        config_file=_config_files(bundle, config),
        meta_file=str(meta) if meta.is_file() else None,
        logging_file=str(logging_conf) if logging_conf.is_file() else None,
        workflow_type=None,
        **override,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".medcam_write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise CLIError(f"Cannot write to output folder {str(folder)!r}: {e.strerror or e}. Choose another with --output.") from None


def _records(output_dir: Path) -> list[dict]:
    path = output_dir / "explanations" / "explanations.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _print_outputs(records: list[dict], title: str) -> None:
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
    from medcam_monai.bundle_utils import BUNDLES_DIR

    for meta in sorted(BUNDLES_DIR.glob("*/configs/metadata.json")):
        info = json.loads(meta.read_text())
        print(f"{meta.parent.parent.name:28s} {info.get('task', '')}")
    return 0


def _train(bundle: str, root: Path, epochs: int | None, num_cases: int | None, image_size: int | None,
           dataset_dir: str | None, progress: bool = True) -> Path:
    override: dict[str, Any] = {"bundle_root": str(root), "progress": progress}
    # models/ and stand-in data go under bundle_root; the configs are read from the bundle itself
    for key, value in (("epochs", epochs), ("num_cases", num_cases), ("image_size", image_size), ("dataset_dir", dataset_dir)):
        if value is not None:
            override[key] = value
    run_bundle(bundle, "train.json", **override)
    weights = root / "models" / "model.pt"
    if not weights.is_file():
        raise CLIError(f"Training finished but wrote no {weights}.")
    return weights


def cmd_train(args: argparse.Namespace) -> int:
    from medcam_monai.bundle_utils import find_bundle

    bundle = find_bundle(args.bundle)
    root = Path(args.bundle_root) if args.bundle_root else bundle
    _check_writable(root)
    start = time.perf_counter()
    weights = _train(str(bundle), root, args.epochs, args.num_cases, args.image_size, args.dataset_dir)
    print(f"\nweights: {weights}  ({time.perf_counter() - start:.0f} s)")
    return 0


def _explain(bundle: Path, root: Path, output: Path, datalist: list[dict] | None, kind: str | None,
             args: argparse.Namespace, extra: dict[str, Any] | None = None) -> list[dict]:
    override: dict[str, Any] = {"bundle_root": str(root), "output_dir": str(output), "progress": True}
    if datalist is not None:
        override["datalist"] = datalist
        if kind in ("dicom", "wsi"):  # files are read by the bundle's own loader (e.g. grayscale for MRI)
            override["preprocessing#transforms#0"] = _loader(kind, args)
        override["explanation#writers"] = list(args.writers or DEFAULT_WRITERS[kind])
    elif args.writers:
        override["explanation#writers"] = list(args.writers)
    if getattr(args, "weights", None):
        override["ckpt_path"] = args.weights
    if getattr(args, "steps", None) is not None:
        override["medcam_steps"] = args.steps
    if getattr(args, "target", None) is not None:
        override["explanation#target"] = args.target
    if getattr(args, "image_size", None) is not None:
        override["image_size"] = args.image_size
    if getattr(args, "layer", None):
        # Med-CAM matches a list of layers, the gradient CAMs take one
        explainer = _bundle_config(bundle, "inference.json").get("explanation", {}).get("explainer", "medcam")
        if explainer == "medcam":
            override["explanation#explainer_kwargs#layers"] = [args.layer]
        else:
            override["explanation#explainer_kwargs#layer"] = args.layer
    override.update(extra or {})
    run_bundle(bundle, "inference.json", **override)
    return _records(output)


def cmd_explain(args: argparse.Namespace) -> int:
    from medcam_monai.bundle_utils import find_bundle

    bundle = find_bundle(args.bundle)
    kind, datalist = input_cases(args.input)
    output = Path(args.output)
    _check_writable(output)
    root = Path(args.bundle_root) if args.bundle_root else bundle
    records = _explain(bundle, root, output, datalist, kind, args)
    _print_outputs(records, f"{len(records)} case(s) explained; records: {output / 'explanations' / 'explanations.json'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from medcam_monai.demo import run_demo

    return run_demo(args)


# -- entry point ---------------------------------------------------------------------------------------
def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op threads: ``threads``, else ``OMP_NUM_THREADS``, else the idle cores.

    OpenMP threads spin while they wait: on cores that other processes keep busy, more threads than
    idle cores made small ops many times slower here (a Med-CAM step went from 0.27 s to 4 s with 2
    threads on 2 cores shared with other jobs), so by default only the idle cores are used.
    """
    import torch

    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    if threads is None:
        cores = os.cpu_count() or 1
        try:
            busy = int(os.getloadavg()[0] + 0.5)
        except OSError:  # no load average on this platform
            busy = 0
        threads = max(1, min(torch.get_num_threads(), cores - busy))
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


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

    p = sub.add_parser("demo", help="no data needed: train on stand-in data, explain, write every format")
    p.add_argument("--output", default="medcam-demo", help="output folder (default: ./medcam-demo)")
    p.add_argument("--cases", type=int, default=4, help="2D cases explained with Med-CAM")
    p.add_argument("--steps", type=int, default=150, help="Med-CAM steps per case (early stopping may end sooner)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs of the 2D classifier")
    p.add_argument("--train-cases", type=int, default=192, help="stand-in training images")
    p.add_argument("--image-size", type=int, default=64, help="2D image side")
    p.add_argument("--volume-size", type=int, default=48, help="stand-in CT volume side for the 3D bundle")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps (a smoke test, about a minute)")
    p.set_defaults(func=cmd_demo)

    from medcam_monai.bench import add_bench_parser
    from medcam_monai.pipeline.command import add_pipeline_parser

    add_bench_parser(sub)
    add_pipeline_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 a problem with the input)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command != "list":
            configure_threads(args.threads)
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"medcam-monai: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medcam-monai: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - report the cause in one line, keep the traceback on request
        cause = _root_cause(e)
        if os.environ.get("MEDCAM_DEBUG"):
            raise
        print(f"medcam-monai: error: {type(cause).__name__}: {cause}", file=sys.stderr)
        print("(set MEDCAM_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # `python -m medcam_monai.cli`: run the imported module's main, so that its CLIError is the one
    # the subcommands raise (this file would otherwise exist twice, as __main__ and medcam_monai.cli)
    from medcam_monai.cli import main as _main

    sys.exit(_main())
