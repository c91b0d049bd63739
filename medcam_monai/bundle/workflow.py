"""Running a bundle's config as ``python -m monai.bundle run`` does, with overrides and clear errors.

A config that cannot be built (a broken reference, an unknown ``_target_``, wrong arguments) is a
:class:`~medcam_monai.bundle.config.BundleConfigError` carrying the bundle's own error, found while
the bundle is initialised and its evaluator built; errors while it runs are the run's own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcam_monai.bundle.config import BundleConfigError, bundle_file
from medcam_monai.bundle.locate import find_bundle
from medcam_monai.errors import InputError

__all__ = ["root_cause", "config_files", "make_workflow", "build_item", "run_workflow", "start_workflow"]


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
    first = bundle_file(bundle, config)
    missing = [str(x) for x in extra if not Path(x).is_file()]
    if missing:
        raise InputError(f"Config file(s) {', '.join(missing)} do not exist.")
    return [str(first), *[str(x) for x in extra]]


def make_workflow(bundle: str | os.PathLike, config: str, extra_configs: Sequence[str | os.PathLike] = (), **override: Any):
    """A ``monai.bundle.ConfigWorkflow`` of ``configs/<config>`` (and ``extra_configs`` merged after it), not yet run.

    Args:
        bundle: a bundle name or folder.
        config: the config file in ``configs/`` (``"train.json"``, ``"inference.json"``).
        extra_configs: more config files merged after it (as ``--config_file "[a, b]"``).
        override: config ids (``#`` for nesting) and values, e.g. ``epochs=2``.
    """
    from monai.bundle import ConfigWorkflow

    from medcam_monai.bundle.config import load_config

    folder = find_bundle(bundle)
    files = config_files(folder, config, extra_configs)
    load_config(files)  # a file that does not parse fails here with its name and the parser's words
    meta = folder / "configs" / "metadata.json"
    logging_conf = folder / "configs" / "logging.conf"
    override.setdefault("bundle_root", str(folder))
    return ConfigWorkflow(
        config_file=files,
        meta_file=str(meta) if meta.is_file() else None,
        logging_file=str(logging_conf) if logging_conf.is_file() else None,
        workflow_type=None,
        **override,
    )


def _config_error(e: Exception, bundle: str | os.PathLike, where: str) -> InputError:
    """The bundle's own error under MONAI's wrappers, in one line (an input error underneath stays itself)."""
    cause = root_cause(e)
    if isinstance(cause, InputError):
        return cause
    return BundleConfigError(f"The config of bundle {str(bundle)!r} {where}: {type(cause).__name__}: {cause}")


def build_item(workflow, config_id: str, bundle: str | os.PathLike = "the bundle") -> Any:
    """Build (or evaluate) the config item ``config_id``; a failure is the bundle's own error, in one line."""
    try:
        return workflow.parser.get_parsed_content(config_id)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - the bundle's config is at fault: say where and what
        raise _config_error(e, bundle, f"fails at '{config_id}'") from None


def start_workflow(workflow, bundle: str | os.PathLike = "the bundle", evaluator_id: str | None = "evaluator") -> None:
    """``initialize`` the workflow and build its evaluator, with config errors as :class:`BundleConfigError`."""
    try:
        workflow.initialize()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _config_error(e, bundle, "fails to initialise") from None
    if evaluator_id and evaluator_id in workflow.parser:
        build_item(workflow, evaluator_id, bundle)


def run_workflow(bundle: str | os.PathLike, config: str, extra_configs: Sequence[str | os.PathLike] = (), **override: Any):
    """Run ``configs/<config>`` of ``bundle`` as ``python -m monai.bundle run`` does; return the finished workflow.

    Args:
        bundle: a bundle name or folder.
        config: the config file in ``configs/`` (``"train.json"``, ``"inference.json"``).
        extra_configs: more config files merged after it (as ``--config_file "[a, b]"``).
        override: config ids (``#`` for nesting) and values, e.g. ``epochs=2``.
    """
    workflow = make_workflow(bundle, config, extra_configs, **override)
    start_workflow(workflow, bundle, evaluator_id=None)
    workflow.run()
    workflow.finalize()
    return workflow
