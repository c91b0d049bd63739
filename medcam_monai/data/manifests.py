"""Dataset manifests: where the real data comes from, and whether a local copy matches it.

A manifest (one JSON file per dataset in ``data_manifests/``) records the source, licence,
citation, class names in label order, the expected folder layout, the split rule and, where known,
file checksums. Nothing is ever downloaded: :func:`validate_dataset` checks a copy the user
already has and :func:`load_datalist` turns it into MONAI-style dicts
``{"image": path, "label": int}`` (``"label": path`` for segmentation) for one split.

Layout kinds (``layout.kind``):

- ``class_folders``: ``<subset dir>/<class folder>/<image>`` (BACH, brain tumour MRI).
- ``label_file``: a CSV per subset naming each image and its label (HAM10000, IDRiD); images are
  found by name in the subset's image folder (recursively when ``recursive``).
- ``cases``: ``<subset dir>/<case>/<image file>`` and ``<label file>`` (KiTS23).

Splits: official subsets (``layout.subsets``) are used as they are; ``split.carve`` divides one
subset into named splits by fractions, per class when ``stratify`` and per group (e.g. lesion) when
``group_by``, ordering items by a SHA-256 hash of ``seed`` and the item's key, so a split does not
depend on file-system order, platform or library versions, and adding files moves few items.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST_DIR",
    "ManifestError",
    "DatasetValidationError",
    "DatasetManifest",
    "ValidationReport",
    "available_manifests",
    "load_manifest",
    "validate_dataset",
    "load_datalist",
    "split_names",
    "compute_checksums",
]

# The repository's data_manifests/ (next to the package in a source checkout or editable
# install); MEDCAM_MONAI_MANIFESTS points elsewhere, e.g. for a wheel install.
MANIFEST_DIR = Path(os.environ.get("MEDCAM_MONAI_MANIFESTS", Path(__file__).resolve().parents[2] / "data_manifests"))

_REQUIRED = ("name", "task", "classes", "layout", "split", "source", "license", "citation", "checksums")
_KINDS = ("class_folders", "label_file", "cases")


class ManifestError(ValueError):
    """A manifest that cannot be found or is malformed."""


class DatasetValidationError(ValueError):
    """A local dataset copy that does not match its manifest."""


@dataclass
class DatasetManifest:
    """A parsed, checked manifest.

    Args:
        data: the manifest's JSON content.
        path: the file it was read from (None when built in memory).
    """

    data: dict[str, Any]
    path: Path | None = None

    def __post_init__(self) -> None:
        where = f" in {self.path}" if self.path else ""
        missing = [k for k in _REQUIRED if k not in self.data]
        if missing:
            raise ManifestError(f"Manifest{where} lacks the key(s) {missing}; every manifest needs {list(_REQUIRED)}.")
        layout = self.data["layout"]
        if layout.get("kind") not in _KINDS:
            raise ManifestError(f"Manifest{where}: layout.kind must be one of {list(_KINDS)}, got {layout.get('kind')!r}.")
        if not isinstance(layout.get("subsets"), dict) or not layout["subsets"]:
            raise ManifestError(f"Manifest{where}: layout.subsets must map subset names to their location.")
        carve = self.data["split"].get("carve")
        if carve:
            if carve.get("from") not in layout["subsets"]:
                raise ManifestError(f"Manifest{where}: split.carve.from {carve.get('from')!r} is not a subset {list(layout['subsets'])}.")
            if not carve.get("into") or any(float(v) < 0 for v in carve["into"].values()):
                raise ManifestError(f"Manifest{where}: split.carve.into must map split names to non-negative fractions.")

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def task(self) -> str:
        return self.data["task"]

    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def layout(self) -> dict[str, Any]:
        return self.data["layout"]

    def describe_layout(self) -> str:
        """The expected folder layout, in words, for error messages and reports."""
        lay = self.layout
        lines = [f"{self.name} expects, under dataset_dir:"]
        for subset, where in lay["subsets"].items():
            if lay["kind"] == "class_folders":
                exts = "/".join(lay.get("extensions", []))
                for cls in self.classes:
                    lines.append(f"  {where}/{lay['class_folders'][cls]}/*{exts}   ({subset}, class {cls!r})")
            elif lay["kind"] == "label_file":
                deep = "**/" if lay.get("recursive") else ""
                lines.append(
                    f"  {where['labels']}   ({subset} labels: columns {lay['image_column']!r}, {lay['label_column']!r})"
                )
                lines.append(f"  {where['images']}/{deep}{lay['image_name'].format('<' + lay['image_column'] + '>')}   ({subset} images)")
            else:
                lines.append(f"  {where}/{lay['case_glob']}/{lay['image']} and {lay['label']}   ({subset})")
        if lay.get("example"):
            lines.append("  e.g. " + ", ".join(lay["example"][:3]))
        return "\n".join(lines)


@dataclass
class ValidationReport:
    """What a local copy lacks or has wrong, relative to its manifest.

    Args:
        dataset: manifest name.
        root: the checked ``dataset_dir``.
        missing: expected folders/files/label files that are absent (relative paths).
        altered: files whose checksum differs from the manifest's.
        extra: files the manifest does not expect (unknown class folders; files outside a
            complete checksum list).
        errors: malformed label files, unknown labels.
        warnings: counts that differ from the manifest's, missing checksums.
        counts: subset -> class name -> number of items found.
    """

    dataset: str
    root: Path
    missing: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No missing or altered files and no errors (extra files and warnings are allowed)."""
        return not (self.missing or self.altered or self.errors)

    def summary(self, limit: int = 10) -> str:
        """Readable report naming up to ``limit`` entries of each kind."""
        head = f"{self.dataset} at {self.root}: " + ("OK" if self.ok else "does not match its manifest")
        lines = [head]
        for title, items in (("missing", self.missing), ("altered", self.altered), ("errors", self.errors),
                             ("extra", self.extra), ("warnings", self.warnings)):
            if items:
                shown = "\n    ".join(items[:limit])
                more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
                lines.append(f"  {title} ({len(items)}):\n    {shown}{more}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "root": str(self.root), "ok": self.ok, "missing": self.missing,
            "altered": self.altered, "extra": self.extra, "errors": self.errors, "warnings": self.warnings,
            "counts": self.counts,
        }


# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------


def available_manifests(directory: str | Path | None = None) -> list[str]:
    """Names (file stems) of the manifests in ``directory`` (default :data:`MANIFEST_DIR`)."""
    directory = Path(directory) if directory else MANIFEST_DIR
    return sorted(p.stem for p in directory.glob("*.json"))


def load_manifest(name_or_path: str | Path | DatasetManifest, directory: str | Path | None = None) -> DatasetManifest:
    """Read a manifest by file path, by file stem or by its ``name`` (case-insensitive).

    Raises:
        ManifestError: not found (listing the available ones) or malformed.
    """
    if isinstance(name_or_path, DatasetManifest):
        return name_or_path
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        directory = Path(directory) if directory else MANIFEST_DIR
        wanted = str(name_or_path).lower()
        path = None
        for candidate in sorted(directory.glob("*.json")):
            if candidate.stem.lower() == wanted or _read_json(candidate).get("name", "").lower() == wanted:
                path = candidate
                break
        if path is None:
            raise ManifestError(
                f"No manifest {str(name_or_path)!r} in {directory}; available: {available_manifests(directory)}. "
                f"Pass a path to a .json manifest, or set MEDCAM_MONAI_MANIFESTS to the data_manifests folder."
            )
    return DatasetManifest(_read_json(path), path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"Manifest {path} is not valid JSON: {err}") from err


# ---------------------------------------------------------------------------------------------
# Scanning a local copy
# ---------------------------------------------------------------------------------------------


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _scan(manifest: DatasetManifest, root: Path, report: ValidationReport) -> dict[str, list[dict[str, Any]]]:
    """Items per subset; what is absent or malformed goes into ``report``."""
    kind = manifest.layout["kind"]
    scan = {"class_folders": _scan_class_folders, "label_file": _scan_label_file, "cases": _scan_cases}[kind]
    items = {}
    for subset, where in manifest.layout["subsets"].items():
        items[subset] = scan(manifest, root, where, report)
    return items


def _scan_class_folders(manifest: DatasetManifest, root: Path, where: str, report: ValidationReport):
    lay = manifest.layout
    base = root / where
    if not base.is_dir():
        report.missing.append(f"{where}/")
        return []
    exts = {e.lower() for e in lay.get("extensions", [])}
    folders = {lay["class_folders"][c]: i for i, c in enumerate(manifest.classes)}
    items = []
    for folder, label in folders.items():
        d = base / folder
        if not d.is_dir():
            report.missing.append(f"{where}/{folder}/")
            continue
        files = sorted(p for p in d.iterdir() if p.is_file() and (not exts or p.suffix.lower() in exts))
        if not files:
            report.missing.append(f"{where}/{folder}/*{'/'.join(sorted(exts))} (the class folder is empty)")
        items += [{"image": p, "label": label, "key": _rel(p, root)} for p in files]
    for d in sorted(p for p in base.iterdir() if p.is_dir() and p.name not in folders):
        report.extra.append(f"{_rel(d, root)}/ (not a class folder of {manifest.name}: {sorted(folders)})")
    return items


def _scan_label_file(manifest: DatasetManifest, root: Path, where: dict[str, str], report: ValidationReport):
    lay = manifest.layout
    labels_path, images_dir = root / where["labels"], root / where["images"]
    if not labels_path.is_file():
        report.missing.append(where["labels"])
        return []
    if not images_dir.is_dir():
        report.missing.append(f"{where['images']}/")
        return []
    with labels_path.open(newline="", encoding="utf-8-sig") as f:
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(f)]
    columns = [lay["image_column"], lay["label_column"]] + ([lay["group_column"]] if lay.get("group_column") else [])
    absent = [c for c in columns if rows and c not in rows[0]]
    if not rows or absent:
        report.errors.append(f"{where['labels']}: no rows or missing column(s) {absent or columns}; expected columns {columns}.")
        return []
    pattern = "**/*" if lay.get("recursive") else "*"
    found = {p.name: p for p in sorted(images_dir.glob(pattern)) if p.is_file()}
    by_index = lay.get("label_values") == "indices"
    items = []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        if not row[lay["image_column"]]:
            continue  # trailing blank lines in spreadsheets' CSV exports
        value = row[lay["label_column"]]
        label = _label_index(value, manifest.classes, by_index)
        if label is None:
            report.errors.append(f"{where['labels']} line {n}: label {value!r} is not one of "
                                 f"{list(range(len(manifest.classes))) if by_index else manifest.classes}.")
            continue
        name = lay["image_name"].format(row[lay["image_column"]])
        path = found.get(name)
        if path is None:
            report.missing.append(f"{where['images']}/{'**/' if lay.get('recursive') else ''}{name}")
            continue
        group = row.get(lay.get("group_column") or "", "") or None
        items.append({"image": path, "label": label, "key": _rel(path, root), "group": group})
    return items


def _label_index(value: str, classes: list[str], by_index: bool) -> int | None:
    if by_index:
        try:
            index = int(float(value))
        except ValueError:
            return None
        return index if 0 <= index < len(classes) else None
    return classes.index(value) if value in classes else None


def _scan_cases(manifest: DatasetManifest, root: Path, where: str, report: ValidationReport):
    lay = manifest.layout
    base = root / where
    if not base.is_dir():
        report.missing.append(f"{where}/")
        return []
    cases = sorted(p for p in base.glob(lay["case_glob"]) if p.is_dir())
    if not cases:
        report.missing.append(f"{where}/{lay['case_glob']}/ (no case folders)")
    items = []
    for case in cases:
        image, label = case / lay["image"], case / lay["label"]
        absent = [p for p in (image, label) if not p.is_file()]
        report.missing += [_rel(p, root) for p in absent]
        if not absent:
            items.append({"image": image, "label": label, "key": _rel(case, root)})
    return items


def _file_hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _item_files(items: Iterable[dict[str, Any]]) -> list[Path]:
    files = []
    for it in items:
        files.append(it["image"])
        if isinstance(it["label"], Path):
            files.append(it["label"])
    return files


def _check(manifest: DatasetManifest, root: Path, items: dict[str, list[dict[str, Any]]], report: ValidationReport, verify: bool):
    for subset, subset_items in items.items():
        if manifest.task == "segmentation":
            report.counts[subset] = {"total": len(subset_items)}
        else:
            tally = Counter(manifest.classes[it["label"]] for it in subset_items)
            report.counts[subset] = {c: tally.get(c, 0) for c in manifest.classes} | {"total": len(subset_items)}
        for cls, n in manifest.data.get("expected_counts", {}).get(subset, {}).items():
            got = report.counts[subset].get(cls, 0)
            if got != n:
                report.warnings.append(f"{subset}/{cls}: {got} items, the manifest expects {n}.")
    sums = manifest.data["checksums"]
    listed = sums.get("files", {})
    if not listed:
        report.warnings.append(f"The manifest lists no checksums ({sums.get('note', 'none known')}); altered files cannot be detected.")
        return
    if not verify:
        return
    algorithm = sums.get("algorithm", "sha256")
    for rel, digest in sorted(listed.items()):
        path = root / rel
        if not path.is_file():
            report.missing.append(rel)
        elif _file_hash(path, algorithm) != digest.lower():
            report.altered.append(f"{rel} ({algorithm} differs from the manifest's)")
    if sums.get("complete"):
        present = {_rel(p, root) for subset_items in items.values() for p in _item_files(subset_items)}
        report.extra += sorted(f"{rel} (not in the manifest's checksum list)" for rel in present - set(listed))


def validate_dataset(manifest: str | Path | DatasetManifest, dataset_dir: str | Path, verify_checksums: bool = True) -> ValidationReport:
    """Check a local copy at ``dataset_dir`` against its manifest; nothing is downloaded or changed.

    Args:
        manifest: a :class:`DatasetManifest`, a manifest name (``"bach"``) or a path.
        dataset_dir: the folder that holds the dataset as the manifest's layout describes.
        verify_checksums: hash the files the manifest has checksums for (can take minutes on a
            full dataset).

    Returns:
        A :class:`ValidationReport`; ``report.ok`` is False when something is missing or altered.
    """
    manifest = load_manifest(manifest)
    root = Path(dataset_dir)
    report = ValidationReport(dataset=manifest.name, root=root)
    if not root.is_dir():
        report.missing.append(f"{root} (dataset_dir does not exist)")
        return report
    items = _scan(manifest, root, report)
    _check(manifest, root, items, report, verify_checksums)
    return report


# ---------------------------------------------------------------------------------------------
# Splits and data lists
# ---------------------------------------------------------------------------------------------


def split_names(manifest: str | Path | DatasetManifest) -> list[str]:
    """The splits :func:`load_datalist` accepts: official subsets, with the carved one replaced by its parts."""
    manifest = load_manifest(manifest)
    carve = manifest.data["split"].get("carve")
    names = []
    for subset in manifest.layout["subsets"]:
        names += list(carve["into"]) if carve and subset == carve["from"] else [subset]
    return list(dict.fromkeys(names))


def _hash_key(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def _carve(items: list[dict[str, Any]], carve: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Divide ``items`` by ``carve["into"]`` fractions (per class, per group), deterministically."""
    names = list(carve["into"])
    fractions = [float(carve["into"][n]) for n in names]
    total = sum(fractions) or 1.0
    seed = int(carve.get("seed", 0))
    grouped = bool(carve.get("group_by"))
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        groups[(it.get("group") or it["key"]) if grouped else it["key"]].append(it)
    strata: dict[Any, list[str]] = defaultdict(list)
    for key, members in groups.items():
        label = members[0]["label"] if carve.get("stratify") and not isinstance(members[0]["label"], Path) else None
        strata[label].append(key)
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for _, keys in sorted(strata.items(), key=lambda kv: str(kv[0])):
        keys.sort(key=lambda k: _hash_key(seed, k))
        start, cum = 0, 0.0
        for name, frac in zip(names, fractions):
            cum += frac / total
            stop = round(cum * len(keys))
            for k in keys[start:stop]:
                out[name] += groups[k]
            start = stop
    for name in names:
        out[name].sort(key=lambda it: it["key"])
    return out


def load_datalist(
    manifest: str | Path | DatasetManifest,
    dataset_dir: str | Path,
    split: str = "train",
    validate: bool = True,
    verify_checksums: bool = False,
) -> list[dict[str, Any]]:
    """MONAI-style dicts for one split of a local copy.

    Args:
        manifest: a :class:`DatasetManifest`, a manifest name or a path.
        dataset_dir: the folder that holds the dataset.
        split: one of :func:`split_names` (e.g. ``"train"``, ``"val"``, ``"test"``).
        validate: raise when the copy lacks files or has errors (else use what is there).
        verify_checksums: also hash files the manifest has checksums for.

    Returns:
        ``[{"image": str, "label": int}]`` for classification, ``[{"image": str, "label": str}]``
        (label map path) for segmentation, sorted by path.

    Raises:
        DatasetValidationError: with ``validate``, naming what is missing and the expected layout.
        ValueError: an unknown split name.
    """
    manifest = load_manifest(manifest)
    names = split_names(manifest)
    if split not in names:
        raise ValueError(f"{manifest.name} has the splits {names}, not {split!r}.")
    root = Path(dataset_dir)
    report = ValidationReport(dataset=manifest.name, root=root)
    if not root.is_dir():
        report.missing.append(f"{root} (dataset_dir does not exist)")
        items: dict[str, list[dict[str, Any]]] = {}
    else:
        items = _scan(manifest, root, report)
        _check(manifest, root, items, report, verify_checksums)
    if validate and not report.ok:
        raise DatasetValidationError(f"{report.summary()}\n{manifest.describe_layout()}")
    carve = manifest.data["split"].get("carve")
    if carve and split in carve["into"]:
        chosen = _carve(items.get(carve["from"], []), carve)[split]
    else:
        chosen = items.get(split, [])
    return [{"image": str(it["image"]), "label": str(it["label"]) if isinstance(it["label"], Path) else int(it["label"])} for it in chosen]


def compute_checksums(
    manifest: str | Path | DatasetManifest, dataset_dir: str | Path, algorithm: str = "sha256"
) -> dict[str, str]:
    """Checksums of every file the layout finds in a (trusted) local copy, to record in the manifest.

    Returns:
        ``{relative posix path: hex digest}``, for ``checksums.files`` (with ``"complete": true``
        when the copy is the whole dataset, so that extra files are reported too).
    """
    manifest = load_manifest(manifest)
    root = Path(dataset_dir)
    report = ValidationReport(dataset=manifest.name, root=root)
    items = _scan(manifest, root, report)
    files = sorted({p for subset_items in items.values() for p in _item_files(subset_items)})
    return {_rel(p, root): _file_hash(p, algorithm) for p in files}
