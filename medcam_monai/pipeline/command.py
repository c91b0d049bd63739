"""``medcam-monai pipeline``: the command line of the nightly step.

    medcam-monai pipeline kidney_ct_unet3d /incoming/study1 /incoming/study2 \\
        --pacs http://pacs:8042/dicom-web --pacs-user medcam        # password: $MEDCAM_PACS_PASSWORD
    medcam-monai pipeline kidney_ct_unet3d 1.2.840.113619.2.55.3.1234 --pacs http://pacs:8042/dicom-web
    medcam-monai pipeline kidney_ct_unet3d /incoming/study1 --pacs dimse://ORTHANC@pacs:4242 --calling-aet MEDCAM

Exit code: 0 every study stored, already stored, or without a matching series; 1 some study failed
or has results waiting in the outbox; 2 the command itself is wrong (arguments, bundle, weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

__all__ = ["add_pipeline_parser", "build_pipeline_parser", "run_pipeline", "build_step", "check_private_file", "PASSWORD_ENV"]

from medcam_monai.io.formats import SEG_TYPES

PASSWORD_ENV = "MEDCAM_PACS_PASSWORD"
logger = logging.getLogger("medcam_monai.pipeline")


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("bundle", help="bundle name (see `medcam-monai list`) or folder")
    p.add_argument("studies", nargs="*", metavar="STUDY",
                   help="a folder of DICOM files (every study in it), or a Study Instance UID on the --source-url server")
    p.add_argument("--studies-file", help="a file with one STUDY per line (e.g. tonight's worklist); # starts a comment")
    p.add_argument("--pacs", required=True, metavar="URL",
                   help="where results go: http(s)://host:port/dicom-web (STOW-RS) or dimse://AET@host:port (C-STORE)")
    p.add_argument("--source-url", metavar="URL", help="DICOMweb server to read Study Instance UIDs from (default: --pacs when it is DICOMweb)")
    p.add_argument("--pacs-user", help=f"DICOMweb user (HTTP basic); the password comes from ${PASSWORD_ENV} (removed from the "
                                       f"step's environment once read) or --pacs-password-file")
    p.add_argument("--pacs-password-file", help="file holding the DICOMweb password (first line); must be private (chmod 600)")
    p.add_argument("--calling-aet", default="MEDCAM", help="our AE title for DIMSE (default: MEDCAM)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the PACS per request (default: 30)")
    p.add_argument("--retries", type=int, default=5, help="tries per PACS operation before giving up for this run (default: 5)")
    p.add_argument("--retry-delay", type=float, default=2.0, help="seconds before the first retry; doubles each time (default: 2)")
    p.add_argument("--retry-max-delay", type=float, default=60.0, help="longest wait between retries (default: 60)")
    p.add_argument("--work-dir", default="medcam-pipeline", help="outbox, JSON log (pipeline.jsonl) and lock (default: ./medcam-pipeline)")
    p.add_argument("--keep-sent", action="store_true", help="keep stored objects under <work-dir>/sent instead of deleting them")
    p.add_argument("--bundle-root", help="folder holding models/model.pt (default: the bundle folder)")
    p.add_argument("--weights", help="state dict of the bundle's network (default: <bundle-root>/models/model.pt)")
    p.add_argument("--seg-type", default="BINARY", choices=SEG_TYPES, type=str.upper,
                   help="DICOM-SEG type (default BINARY: every PACS stores it; LABELMAP is refused by many)")
    p.add_argument("--rules", help="series selection rules as JSON or a JSON file (default: the bundle's \"series_selection\")")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="bundle config override, value in JSON (repeatable), e.g. --override explain_class=1")
    p.add_argument("--uid-root", help="UID root for the outputs' derived UIDs (default: pydicom's)")
    return p


def add_pipeline_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``pipeline`` subcommand to ``medcam-monai``'s subparsers (its ``func`` is :func:`run_pipeline`)."""
    p = subparsers.add_parser(
        "pipeline",
        help="nightly step: select series, explain, store DICOM-SEG and Parametric Map in a PACS (no duplicates)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _configure(p)
    p.set_defaults(func=run_pipeline)
    return p


def build_pipeline_parser() -> argparse.ArgumentParser:
    """A standalone parser (``python -m medcam_monai.pipeline``)."""
    p = argparse.ArgumentParser(prog="medcam-monai pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return _configure(p)


def check_private_file(path: Path, what: str) -> None:
    """Refuse a secret file that the group or others may read or write, as ssh refuses a private key.

    Raises:
        ValueError: with the mode found and the ``chmod 600`` that fixes it.
    """
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(
            f"{what} {str(path)!r} is accessible by other users (mode {mode:04o}); a password file must be private. "
            f"Fix it with: chmod 600 {str(path)!r}"
        )


def _password(args: argparse.Namespace) -> str | None:
    """The DICOMweb password, from --pacs-password-file or $MEDCAM_PACS_PASSWORD.

    The variable is removed from this process's environment once read (also when unused): the step
    evaluates the bundle's config expressions, which can read the environment and start processes
    that inherit it, and they have no business with the PACS password.
    """
    from_env = os.environ.pop(PASSWORD_ENV, None)
    if args.pacs_user is None:
        if args.pacs_password_file:
            raise ValueError("--pacs-password-file needs --pacs-user.")
        return None
    if args.pacs_password_file:
        path = Path(args.pacs_password_file)
        if not path.is_file():
            raise ValueError(f"--pacs-password-file {str(path)!r} does not exist.")
        check_private_file(path, "--pacs-password-file")
        lines = path.read_text().splitlines()
        return lines[0] if lines else ""
    if from_env is None:
        raise ValueError(f"--pacs-user {args.pacs_user!r} needs a password: set ${PASSWORD_ENV} or pass --pacs-password-file.")
    return from_env


def _rules(args: argparse.Namespace, bundle_folder: Path):
    from medcam_monai.pipeline.selection import SeriesRules, rules_for_bundle

    if not args.rules:
        return rules_for_bundle(bundle_folder)
    text, source = args.rules, "--rules"
    if Path(text).is_file():
        text, source = Path(text).read_text(), args.rules
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--rules is neither a JSON object nor a JSON file ({e}).") from None
    return SeriesRules.from_dict(data.get("series_selection", data) if isinstance(data, dict) else data, source=source)


def _inputs(args: argparse.Namespace) -> list[str]:
    items = list(args.studies)
    if args.studies_file:
        path = Path(args.studies_file)
        if not path.is_file():
            raise ValueError(f"--studies-file {str(path)!r} does not exist.")
        items += [ln.split("#")[0].strip() for ln in path.read_text().splitlines() if ln.split("#")[0].strip()]
    return items


def build_step(args: argparse.Namespace, out=None):
    """The :class:`PipelineStep` the arguments describe (raises ValueError/FileNotFoundError/WeightsError on bad ones)."""
    from medcam_monai.pipeline.bundle_run import BundleRunner, parse_override
    from medcam_monai.pipeline.pacs import DicomWebPacs, open_pacs, parse_pacs_url
    from medcam_monai.pipeline.retry import RetryPolicy
    from medcam_monai.pipeline.step import PipelineStep

    password = _password(args)
    pacs = open_pacs(args.pacs, args.pacs_user, password, args.calling_aet, args.timeout)
    source_url = args.source_url or (args.pacs if parse_pacs_url(args.pacs).protocol == "dicomweb" else None)
    source = None
    if source_url:
        if parse_pacs_url(source_url).protocol != "dicomweb":
            raise ValueError(f"--source-url must be a DICOMweb URL (http(s)://...), got {source_url!r}.")
        source = pacs if source_url == args.pacs else DicomWebPacs(source_url, args.pacs_user, password, args.timeout)
    runner = BundleRunner(args.bundle, args.bundle_root, args.weights, args.seg_type,
                          dict(parse_override(o) for o in args.override), args.uid_root)
    retry = RetryPolicy(args.retries, args.retry_delay, 2.0, max(args.retry_max_delay, args.retry_delay))
    return PipelineStep(runner, _rules(args, runner.folder), pacs, args.work_dir, retry, source, args.keep_sent, out)


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record (tests and wrappers replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging() -> None:
    # our own handler on stderr: stdout carries only the JSON lines, and bundles reconfigure the root logger
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s medcam-monai pipeline %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # bundles set the root logger to INFO; dicomweb-client would then log every request
    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)


def run_pipeline(args: argparse.Namespace) -> int:
    """Run the step with parsed arguments; returns the exit code (0 ok, 1 some study not done, 2 bad command)."""
    from medcam_monai.pipeline.errors import PipelineError
    from medcam_monai.pipeline.step import OK_STATUSES
    from medcam_monai.bundle.weights import WeightsError

    _setup_logging()
    try:
        inputs = _inputs(args)
        step = build_step(args)
        if not inputs and not step.outbox.studies():
            raise ValueError("Nothing to do: give at least one STUDY (folder or Study Instance UID) or --studies-file.")
        records = step.run(inputs)
    except (ValueError, FileNotFoundError, WeightsError, PipelineError) as e:
        print(f"medcam-monai pipeline: error: {e}", file=sys.stderr)
        return 2
    done = sum(r["status"] in OK_STATUSES for r in records)
    logger.info("%d of %d studies done; log: %s", done, len(records), step.log_path)
    return 0 if done == len(records) else 1
