"""Running a bundle's config as ``python -m monai.bundle run`` does, with overrides and clear errors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcam_monai.bundle.locate import find_bundle
from medcam_monai.errors import InputError

__all__ = ["root_cause", "config_files", "run_workflow"]


def root_cause(e: BaseException) -> BaseException:
    """The error under MONAI's config wrappers ('Failed to instantiate/evaluate ...', 'applying transform ...')."""
    seen = set()
    while e.__cause__ is not None and id(e) not in seen:
        if not (isinstance(e, RuntimeError) and str(e).startswith(("Failed to", "applying transform"))):
            break
        seen.add(id(e))
        e = e.__cause__
    return e


def config_files(bundle: Path, config: str, extra: Sequence[str | os.PathLike] = ()) -> list[str]:
    """``configs/<config>`` of ``bundle`` and any extra config files, checked to exist."""
    files = [Path(bundle) / "configs" / config, *[Path(x) for x in extra]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"Bundle {str(bundle)!r} has no {', '.join(missing)}.")
    return [str(f) for f in files]


def run_workflow(bundle: str | os.PathLike, config: str, extra_configs: Sequence[str | os.PathLike] = (), **override: Any):
    """Run ``configs/<config>`` of ``bundle`` as ``python -m monai.bundle run`` does; return the finished workflow.

    Args:
        bundle: a bundle name or folder.
        config: the config file in ``configs/`` (``"train.json"``, ``"inference.json"``).
        extra_configs: more config files merged after it (as ``--config_file "[a, b]"``).
        override: config ids (``#`` for nesting) and values, e.g. ``epochs=2``.
    """
    from monai.bundle import ConfigWorkflow

    folder = find_bundle(bundle)
    meta = folder / "configs" / "metadata.json"
    logging_conf = folder / "configs" / "logging.conf"
    override.setdefault("bundle_root", str(folder))
    workflow = ConfigWorkflow(
        config_file=config_files(folder, config, extra_configs),
        meta_file=str(meta) if meta.is_file() else None,
        logging_file=str(logging_conf) if logging_conf.is_file() else None,
        workflow_type=None,
        **override,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow
