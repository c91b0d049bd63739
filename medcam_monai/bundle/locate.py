"""Finding a bundle: the project's own by name, anyone's by path, and who wrote it.

A bare name (``fundus_resnet18``) is looked up only among the project's bundles: a folder of the
same name in the current directory never shadows one of them, because MONAI bundle configs run
code. Anyone else's bundle is given as a path (it holds a separator or starts with ``.`` or ``~``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from medcam_monai.errors import InputError

__all__ = [
    "BUNDLES_DIR",
    "CODE_EXECUTION_ADVISORY",
    "project_bundles",
    "looks_like_path",
    "find_bundle",
    "is_project_bundle",
    "untrusted_bundle_warning",
    "read_metadata",
]

# the repository's bundles (an editable install keeps them next to the package)
BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"

# MONAI's advisory: bundle configs are evaluated as Python ("$" expressions, "_target_" imports)
CODE_EXECUTION_ADVISORY = "GHSA-873f-pvrv-4x83"


def project_bundles() -> list[str]:
    """Names of the project's bundles (folders of ``bundles/`` with a ``configs/metadata.json``)."""
    if not BUNDLES_DIR.is_dir():
        return []
    return sorted(p.parent.parent.name for p in BUNDLES_DIR.glob("*/configs/metadata.json"))


def looks_like_path(name_or_path: str | os.PathLike) -> bool:
    """Whether the user gave a path (a ``Path``, or text with a separator or starting with ``.``/``~``)
    rather than a bundle name."""
    if isinstance(name_or_path, os.PathLike):
        return True
    text = str(name_or_path)
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(s in text for s in seps) or text.startswith((".", "~"))


def find_bundle(name_or_path: str | os.PathLike) -> Path:
    """A bundle folder: one of the project's bundles by name, or the folder at a given path.

    Raises:
        InputError: an unknown name (listing the project's bundles, and how to give a folder of that
            name as a path), a missing folder, or a folder without ``configs/``.
    """
    if looks_like_path(name_or_path):
        path = Path(os.path.expanduser(str(name_or_path)))
        if not path.is_dir():
            raise InputError(f"Bundle folder {str(name_or_path)!r} does not exist.")
    else:
        name = str(name_or_path)
        path = BUNDLES_DIR / name
        if name not in project_bundles():
            local = f" To use the folder {name!r} here, give it as a path: ./{name}" if Path(name).is_dir() else ""
            raise InputError(
                f"{name!r} is not one of the project's bundles {project_bundles()}; another bundle is given as a "
                f"path to its folder.{local}"
            )
    if not (path / "configs").is_dir():
        raise InputError(
            f"{str(path)!r} is not a MONAI bundle: it has no configs/ folder. A bundle holds "
            f"configs/metadata.json and configs/inference.json (see bundles/fundus_resnet18)."
        )
    return path


def is_project_bundle(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is one of the project's own bundles."""
    try:
        return Path(folder).resolve().parent == BUNDLES_DIR.resolve()
    except OSError:
        return False


def untrusted_bundle_warning(folder: str | os.PathLike) -> str | None:
    """The warning to show before running a bundle from outside the project (None for the project's own)."""
    if is_project_bundle(folder):
        return None
    return (
        f"{str(folder)!r} is not one of the project's bundles. MONAI bundle configs run code when they are read "
        f"('$' expressions and '_target_' imports; MONAI advisory {CODE_EXECUTION_ADVISORY}): run only bundles "
        f"you trust. Pass --trust-bundle to run it without this warning."
    )


def read_metadata(bundle: Path) -> dict:
    """The bundle's ``configs/metadata.json`` (an empty dict when it has none)."""
    path = Path(bundle) / "configs" / "metadata.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}); fix the bundle's metadata.") from None
