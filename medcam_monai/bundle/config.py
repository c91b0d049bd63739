"""Reading a bundle's config as text, before any of it runs: where its cases, loader and weights are.

Every function here reads the raw (merged) config dict, so nothing of the bundle is evaluated: the
service decides what to override (the datalist, the loading transform, the weights' path) and only
then hands the config to MONAI, which runs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medcam_monai.errors import InputError

__all__ = [
    "BundleConfigError",
    "load_config",
    "config_get",
    "reference",
    "follow",
    "target_name",
    "EvaluatorInput",
    "evaluator_input",
    "checkpoint_loaders",
    "own_explanation_handler",
    "bundle_file",
    "LOADERS",
]

# the loading transforms a bundle's preprocessing starts with (stock MONAI and this project's)
LOADERS = {"LoadImaged", "LoadImage", "LoadDicomd", "LoadImageSourced", "LoadWSId"}
_CHECKPOINT_LOADERS = {"CheckpointLoader", "CheckedCheckpointLoader"}
_HANDLER = "ExplanationHandler"


class BundleConfigError(InputError):
    """A bundle config that cannot be read or lacks what explaining needs; the message is the bundle's own error."""


def load_config(files: Sequence[str | os.PathLike]) -> dict:
    """The merged config of ``files`` (later files override earlier ones, ``+key`` merges), unevaluated;
    what ``ConfigParser.load_config_files`` does, file by file so that an error names its file.

    Raises:
        BundleConfigError: a file that is not valid JSON/YAML, with its name and the parser's message.
    """
    from monai.bundle import ConfigParser
    from monai.bundle.utils import merge_kv

    merged = ConfigParser(config={})
    for f in files:
        try:
            content = ConfigParser.load_config_file(str(f))
        except Exception as e:  # noqa: BLE001 - json/yaml errors: the parser's own words, not a traceback
            raise BundleConfigError(f"The bundle config {str(f)!r} cannot be read: {type(e).__name__}: {e}") from None
        if not isinstance(content, Mapping):
            raise BundleConfigError(f"The bundle config {str(f)!r} is not a JSON object of config items.")
        for key, value in content.items():
            merge_kv(merged, key, value)
    return merged.get()


def config_get(config: Mapping, config_id: str, default: Any = None) -> Any:
    """The raw value at ``config_id`` (``#``/``::`` nesting, list indices), or ``default``."""
    node: Any = config
    for part in config_id.replace("::", "#").split("#"):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return default
    return node


def reference(value: Any) -> str | None:
    """The id ``x#y`` of a plain reference ``"@x#y"`` (None for anything else, e.g. an expression)."""
    if isinstance(value, str) and value.startswith("@") and " " not in value:
        return value[1:].replace("::", "#")
    return None


def follow(config: Mapping, config_id: str) -> tuple[str, Any]:
    """Follow plain references from ``config_id`` to the item they name: ``(its id, its raw value)``."""
    value = config_get(config, config_id)
    seen = {config_id}
    while (ref := reference(value)) is not None and ref not in seen:
        seen.add(ref)
        config_id, value = ref, config_get(config, ref)
    return config_id, value


def target_name(item: Any) -> str:
    """The class name of a config item's ``_target_`` (``"monai.transforms.LoadImaged"`` -> ``"LoadImaged"``)."""
    target = item.get("_target_") if isinstance(item, Mapping) else None
    return str(target).rsplit(".", 1)[-1] if isinstance(target, str) else ""


class EvaluatorInput:
    """Where the evaluator's cases come from in a bundle config.

    Attributes:
        data_id: the id of the dataset's ``data`` (the datalist), replaced by the user's cases.
        transforms_id: the id of the preprocessing's transform list (None when it is not a plain list).
        image_key: the key the first (loading) transform reads.
        handlers_id: the id of the evaluator's handler list.
    """

    def __init__(self, data_id: str, transforms_id: str | None, image_key: str, handlers_id: str | None) -> None:
        self.data_id, self.transforms_id, self.image_key, self.handlers_id = data_id, transforms_id, image_key, handlers_id


def evaluator_input(config: Mapping, bundle: str | os.PathLike = "the bundle", evaluator_id: str = "evaluator") -> EvaluatorInput:
    """Find where ``evaluator_id`` reads its cases: evaluator -> data loader -> dataset -> data and transform.

    Raises:
        BundleConfigError: when the chain is not made of plain references (e.g. the dataset is built by an
            expression), so the user's cases cannot be put in; the message says what was found.
    """
    evaluator = config_get(config, evaluator_id)
    if not isinstance(evaluator, Mapping):
        raise BundleConfigError(
            f"The inference config of {str(bundle)!r} has no '{evaluator_id}' entry: explaining runs the bundle's "
            f"evaluator (a MONAI SupervisedEvaluator), as the model zoo's inference.json defines it."
        )
    loader_id, loader = follow(config, f"{evaluator_id}#val_data_loader")
    dataset_id, dataset = follow(config, f"{loader_id}#dataset") if isinstance(loader, Mapping) else (None, None)
    if not isinstance(dataset, Mapping) or "data" not in dataset:
        found = json.dumps(dataset if dataset is not None else loader)[:200]
        raise BundleConfigError(
            f"Cannot give your input to the bundle {str(bundle)!r}: its evaluator reads its cases from "
            f"'{loader_id}', which is not a data loader of a dataset with a 'data' list (found {found}). Put your "
            f"files in the bundle's own datalist, or run it with `python -m monai.bundle run` and the fragment."
        )
    transform_id, transform = follow(config, f"{dataset_id}#transform")
    transforms_id = f"{transform_id}#transforms" if isinstance(transform, Mapping) and isinstance(transform.get("transforms"), list) else None
    image_key = "image"
    if transforms_id is not None:
        first = config_get(config, f"{transforms_id}#0")
        keys = first.get("keys") if isinstance(first, Mapping) else None
        keys = keys[0] if isinstance(keys, list) and keys else keys
        if isinstance(keys, str) and not keys.startswith(("$", "@")):
            image_key = keys
    handlers_id, handlers = follow(config, f"{evaluator_id}#val_handlers")
    return EvaluatorInput(f"{dataset_id}#data", transforms_id, image_key, handlers_id if isinstance(handlers, list) else None)


def checkpoint_loaders(config: Mapping, handlers_id: str | None) -> list[str]:
    """Ids of the ``CheckpointLoader`` items that load the network's weights: in the evaluator's handlers,
    and any top-level one (the model zoo's newer ``"checkpointloader"`` called in ``initialize``)."""
    ids = []
    if handlers_id is not None:
        for i, item in enumerate(config_get(config, handlers_id) or []):
            ref = reference(item)
            rid, value = (ref, config_get(config, ref)) if ref else (f"{handlers_id}#{i}", item)
            if target_name(value) in _CHECKPOINT_LOADERS:
                ids.append(rid)
    for key, value in config.items():
        if key not in ids and target_name(value) in _CHECKPOINT_LOADERS:
            ids.append(key)
    return ids


def own_explanation_handler(config: Mapping) -> str | None:
    """The id of the bundle's own :class:`~medcam_monai.handlers.ExplanationHandler` entry (this project's
    bundles have ``explanation``), or None for a bundle without one."""
    for key, value in config.items():
        if target_name(value) == _HANDLER:
            return key
    return None


def bundle_file(folder: str | os.PathLike, name: str) -> Path:
    """``configs/<name>`` of a bundle, or a clear error naming what a bundle holds."""
    path = Path(folder) / "configs" / name
    if not path.is_file():
        raise BundleConfigError(
            f"The bundle {str(folder)!r} has no configs/{name}. A MONAI bundle in the model-zoo layout holds "
            f"configs/metadata.json, configs/inference.json (network_def, preprocessing, inferer, evaluator) and "
            f"models/model.pt."
        )
    return path
