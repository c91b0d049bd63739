"""Finding a bundle: the project's own by name, anyone's by folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from medcam_monai.errors import InputError

__all__ = ["BUNDLES_DIR", "project_bundles", "find_bundle", "read_metadata"]

# the repository's bundles (an editable install keeps them next to the package)
BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"


def project_bundles() -> list[str]:
    """Names of the project's bundles (folders of ``bundles/`` with a ``configs/metadata.json``)."""
    if not BUNDLES_DIR.is_dir():
        return []
    return sorted(p.parent.parent.name for p in BUNDLES_DIR.glob("*/configs/metadata.json"))


def find_bundle(name_or_path: str | os.PathLike) -> Path:
    """A bundle folder from a path or the name of one of the project's bundles.

    Raises:
        InputError: the folder does not exist or has no ``configs/`` (with what was expected).
    """
    path = Path(name_or_path)
    if not path.exists() and (BUNDLES_DIR / str(name_or_path)).exists():
        path = BUNDLES_DIR / str(name_or_path)
    if not path.is_dir():
        raise InputError(f"Bundle {str(name_or_path)!r} not found: give a bundle folder or one of {project_bundles()}.")
    if not (path / "configs").is_dir():
        raise InputError(
            f"{str(path)!r} is not a MONAI bundle: it has no configs/ folder. A bundle holds "
            f"configs/metadata.json and configs/inference.json (see bundles/fundus_resnet18)."
        )
    return path


def read_metadata(bundle: Path) -> dict:
    """The bundle's ``configs/metadata.json`` (an empty dict when it has none)."""
    path = Path(bundle) / "configs" / "metadata.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}); fix the bundle's metadata.") from None
