"""What kind of image a path holds, and the one table of file suffixes.

Kinds: ``"dicom"`` (a series folder or a DICOM file), ``"nifti"`` (and other 3D volumes ITK reads),
``"2d"`` (PNG/JPEG/BMP and plain TIFF) and ``"wsi"`` (whole-slide images). A ``.tif``/``.tiff`` is a
whole slide when it is tiled or holds a pyramid (several levels), as scanners and QuPath write them,
and a 2D image otherwise.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from medcam_monai.errors import InputError

__all__ = [
    "SUFFIXES",
    "INPUT_KINDS",
    "DEFAULT_WRITERS",
    "SEG_TYPES",
    "is_dicom_file",
    "is_whole_slide",
    "is_scan_leftover",
    "suffix_kind",
    "input_kind",
    "input_cases",
    "case_id",
]

# suffix -> kind; ".tif"/".tiff" are decided by the file's structure (is_whole_slide)
SUFFIXES: dict[str, str] = {
    ".png": "2d",
    ".jpg": "2d",
    ".jpeg": "2d",
    ".bmp": "2d",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".svs": "wsi",
    ".ndpi": "wsi",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".mha": "nifti",
    ".nrrd": "nifti",
    ".dcm": "dicom",
}
INPUT_KINDS = ("dicom", "nifti", "2d", "wsi")

# the writers that can serve each kind of input (DICOM writers need a DICOM source, WSI writers a slide)
DEFAULT_WRITERS: dict[str, list[str]] = {
    "dicom": ["dicom_seg", "parametric_map", "slicer_seg", "nifti", "png"],
    "nifti": ["nifti", "slicer_seg", "png"],
    "2d": ["png", "nifti"],
    "wsi": ["wsi", "geojson", "png"],
}

# DICOM Segmentation types, BINARY first: every PACS stores it (LABELMAP is a 2024 SOP class many refuse)
SEG_TYPES = ("BINARY", "FRACTIONAL", "LABELMAP")

# hidden files (".*", macOS "._*" resource forks) and the temporary files of a killed write
# (atomic_path's ".name.XXXX.part.nii.gz", a download's "x.part") are never input images
_LEFTOVER = re.compile(r"^\.|\.part(\.|$)", re.IGNORECASE)

# output suffixes are stripped from case ids too, so that an output read back keeps its case's name
_STRIP = sorted({*SUFFIXES, ".seg.nrrd"}, key=len, reverse=True)


def _suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if lower.endswith(s)), None)


def suffix_kind(name: str) -> str | None:
    """The kind :data:`SUFFIXES` gives ``name``'s suffix (``"tiff"`` for .tif/.tiff), or None."""
    suffix = _suffix(name)
    return None if suffix is None else SUFFIXES[suffix]


def is_scan_leftover(name: str) -> bool:
    """Whether a folder scan skips the file ``name``: hidden files (``.*``, macOS ``._*``) and partial
    files left by a killed run (``*.part``, ``*.part.<suffix>``)."""
    return bool(_LEFTOVER.search(name))


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A file with the DICOM preamble (``DICM`` at byte 128), or named ``.dcm``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            f.seek(128)
            if f.read(4) == b"DICM":
                return True
    except OSError:
        return False
    return path.suffix.lower() == ".dcm"


def is_whole_slide(path: str | os.PathLike) -> bool:
    """Whether a TIFF is a whole-slide image: tiled, or a pyramid of several levels."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0] if tif.series else None
            return bool(tif.pages[0].is_tiled or (series is not None and len(series.levels) > 1))
    except Exception:  # noqa: BLE001 - not a TIFF tifffile can read: let the 2D reader say what is wrong
        return False


def input_kind(path: str | os.PathLike) -> str | None:
    """The kind of image at ``path`` (see the module docstring), or None for anything else."""
    path = Path(path)
    if path.is_dir():
        return "dicom" if any(is_dicom_file(p) for p in path.iterdir() if p.is_file() and not is_scan_leftover(p.name)) else None
    kind = suffix_kind(path.name)
    if kind is not None:
        if kind == "tiff":
            return "wsi" if is_whole_slide(path) else "2d"
        return kind
    return "dicom" if is_dicom_file(path) else None


def input_cases(path: str | os.PathLike) -> tuple[str, list[dict[str, str]]]:
    """The input's kind and one datalist entry ``{"image": path}`` per case.

    A DICOM series folder is one case; a folder of image files gives one case per file (all of one
    kind); a file is one case. Hidden files and partial files of a killed run are skipped
    (:func:`is_scan_leftover`).

    Raises:
        InputError: the path is missing, empty, or holds no readable image format.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input {str(path)!r} does not exist.")
    kind = input_kind(path)
    if kind is not None:
        return kind, [{"image": str(path)}]
    if not path.is_dir():
        raise InputError(
            f"Cannot tell the format of {str(path)!r}: expected a DICOM file or series folder, NIfTI "
            f"(.nii/.nii.gz), PNG/JPEG, or a whole-slide TIFF/SVS."
        )
    cases: dict[str, list[dict[str, str]]] = {}
    for p in sorted(path.iterdir()):
        if is_scan_leftover(p.name):
            continue
        k = input_kind(p)
        if k is not None:
            cases.setdefault(k, []).append({"image": str(p)})
    if not cases:
        raise InputError(f"No images in {str(path)!r} (DICOM series folders, NIfTI, PNG/JPEG or WSI files).")
    if len(cases) > 1:
        raise InputError(f"{str(path)!r} mixes formats {sorted(cases)}; give one format per call.")
    kind, items = next(iter(cases.items()))
    return kind, items


def case_id(source: str | os.PathLike | None, fallback: str) -> str:
    """A file-name-safe case id: the source file (or DICOM folder) name without its suffix."""
    if not source:
        return fallback
    name = Path(str(source).rstrip("/\\")).name
    lower = name.lower()
    for suffix in _STRIP:
        if lower.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or fallback
