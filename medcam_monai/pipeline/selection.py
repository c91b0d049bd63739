"""Which series of a study a bundle accepts: rules from the bundle config, applied to DICOM headers.

A bundle says what it accepts in ``configs/inference.json`` (or ``configs/metadata.json``) under
``"series_selection"``::

    "series_selection": {
        "modality": ["CT"],                          # required: DICOM Modality codes
        "body_part": ["ABDOMEN", "KIDNEY"],           # BodyPartExamined, case-insensitive; [] = any
        "allow_missing_body_part": true,             # many scanners leave BodyPartExamined empty
        "series_description": "abd|kidney|renal",    # regex searched in SeriesDescription (case-insensitive)
        "exclude_series_description": "scout|localizer|topogram",
        "min_slices": 3                              # fewer slices is not a volume for this bundle
    }

Without that key the modality of ``network_data_format.inputs.image.modality`` in
``metadata.json`` is used alone. On top of the rules, a series must be a volume: cross-sectional
image storage (CT, MR, PET; never a SEG, Parametric Map or SR, so earlier outputs are never
re-explained), one stack as the loader checks it (one orientation, size and pixel spacing, distinct
and evenly spaced slice positions), at least ``min_slices`` slices, and a SeriesInstanceUID that
is a DICOM UID (it names a scratch folder).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom import uid as _uid

from medcam_monai.io.errors import IrregularSpacingError, MissingGeometryError
from medcam_monai.io.slice_stack import SliceStackError, planes_of, slice_stack
from medcam_monai.pipeline.errors import NoMatchingSeriesError
from medcam_monai.pipeline.paths import is_uid

__all__ = [
    "SeriesRules",
    "SeriesInfo",
    "VOLUME_SOP_CLASSES",
    "rules_for_bundle",
    "group_series",
    "volume_problem",
    "select_series",
    "partition_series",
    "uid_problem",
    "no_match_error",
]

# cross-sectional image storage SOP classes a 3D bundle can read (single- and multi-frame)
VOLUME_SOP_CLASSES = {
    _uid.CTImageStorage: "CT Image",
    _uid.EnhancedCTImageStorage: "Enhanced CT Image",
    _uid.LegacyConvertedEnhancedCTImageStorage: "Legacy Converted Enhanced CT Image",
    _uid.MRImageStorage: "MR Image",
    _uid.EnhancedMRImageStorage: "Enhanced MR Image",
    _uid.LegacyConvertedEnhancedMRImageStorage: "Legacy Converted Enhanced MR Image",
    _uid.PositronEmissionTomographyImageStorage: "PET Image",
    _uid.EnhancedPETImageStorage: "Enhanced PET Image",
    _uid.LegacyConvertedEnhancedPETImageStorage: "Legacy Converted Enhanced PET Image",
}

_KEYS = ("modality", "body_part", "allow_missing_body_part", "series_description", "exclude_series_description", "min_slices")
_RULES_KEY = "series_selection"


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"series_selection.{name} must be a string or a list of non-empty strings, got {value!r}.")
    return tuple(v.strip().upper() for v in value)


def _regex(value: str | None, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"series_selection.{name} must be a regular expression string, got {value!r}.")
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"series_selection.{name} is not a valid regular expression ({e}): {value!r}.") from None
    return value


@dataclass(frozen=True)
class SeriesRules:
    """What series a bundle accepts.

    Args:
        modality: accepted DICOM Modality codes (e.g. ``("CT",)``); at least one.
        body_part: accepted BodyPartExamined values (case-insensitive); empty accepts any.
        allow_missing_body_part: accept series without BodyPartExamined when ``body_part`` is set.
        series_description: regular expression that SeriesDescription must contain (case-insensitive).
        exclude_series_description: regular expression that rejects a series whose description contains it.
        min_slices: fewest slices (instances, or frames of a multi-frame image) of an accepted volume.
        source: where the rules came from, for messages.
    """

    modality: tuple[str, ...]
    body_part: tuple[str, ...] = ()
    allow_missing_body_part: bool = True
    series_description: str | None = None
    exclude_series_description: str | None = None
    min_slices: int = 3
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modality", _strings(self.modality, "modality"))
        object.__setattr__(self, "body_part", _strings(self.body_part, "body_part"))
        if not self.modality:
            raise ValueError(f"series_selection.modality is empty{self._where()}: name at least one DICOM Modality, e.g. [\"CT\"].")
        object.__setattr__(self, "series_description", _regex(self.series_description, "series_description"))
        object.__setattr__(self, "exclude_series_description", _regex(self.exclude_series_description, "exclude_series_description"))
        if not isinstance(self.allow_missing_body_part, bool):
            raise ValueError(f"series_selection.allow_missing_body_part must be true or false, got {self.allow_missing_body_part!r}.")
        if isinstance(self.min_slices, bool) or not isinstance(self.min_slices, int) or self.min_slices < 2:
            raise ValueError(f"series_selection.min_slices must be an integer >= 2 (a volume has slices), got {self.min_slices!r}.")

    def _where(self) -> str:
        return f" (in {self.source})" if self.source else ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "") -> SeriesRules:
        """Rules from the JSON form (keys as in the module docstring); unknown keys are refused
        (a typo would otherwise silently accept every series)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"series_selection must be a JSON object{' in ' + source if source else ''}, got {type(d).__name__}.")
        unknown = sorted(set(d) - set(_KEYS))
        if unknown:
            raise ValueError(f"Unknown series_selection key(s) {unknown}{' in ' + source if source else ''}; known keys: {list(_KEYS)}.")
        if "modality" not in d:
            raise ValueError(f"series_selection needs \"modality\"{' in ' + source if source else ''}, e.g. {{\"modality\": [\"CT\"]}}.")
        return cls(source=source, **dict(d))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(self, k)) for k in _KEYS)}

    def rule_problem(self, series: SeriesInfo) -> str | None:
        """Why ``series`` fails the modality/body part/description rules, or None when it passes."""
        if series.modality.upper() not in self.modality:
            return f"modality {series.modality or '(none)'} is not one of {list(self.modality)}"
        if self.body_part:
            part = series.body_part.upper()
            if not part and not self.allow_missing_body_part:
                return f"no BodyPartExamined, and the bundle needs one of {list(self.body_part)}"
            if part and part not in self.body_part:
                return f"body part {part} is not one of {list(self.body_part)}"
        if self.series_description and not re.search(self.series_description, series.description, re.IGNORECASE):
            return f"series description {series.description!r} does not match /{self.series_description}/"
        if self.exclude_series_description and re.search(self.exclude_series_description, series.description, re.IGNORECASE):
            return f"series description {series.description!r} matches the exclusion /{self.exclude_series_description}/"
        return None


def rules_for_bundle(bundle: str | Path) -> SeriesRules:
    """The series rules of a bundle folder.

    Looks for ``"series_selection"`` in ``configs/inference.json``, then in ``configs/metadata.json``;
    else uses ``network_data_format.inputs.image.modality`` of ``metadata.json`` as the only rule.

    Raises:
        ValueError: the rules are malformed, or the bundle says nothing about what it accepts.
    """
    bundle = Path(bundle)
    configs = bundle / "configs"
    for name in ("inference.json", "metadata.json"):
        path = configs / name
        if path.is_file():
            data = json.loads(path.read_text())
            if _RULES_KEY in data:
                return SeriesRules.from_dict(data[_RULES_KEY], source=str(path))
    meta = configs / "metadata.json"
    modality = None
    if meta.is_file():
        inputs = json.loads(meta.read_text()).get("network_data_format", {}).get("inputs", {})
        modality = next((v.get("modality") for v in inputs.values() if isinstance(v, dict) and v.get("modality")), None)
    if not modality:
        raise ValueError(
            f"Bundle {str(bundle)!r} does not say which series it accepts: add \"series_selection\": "
            f"{{\"modality\": [\"CT\"], ...}} to configs/inference.json, or pass --rules."
        )
    return SeriesRules(modality=(str(modality),), source=f"{meta} (network_data_format modality only)")


@dataclass
class SeriesInfo:
    """One series of a study, from its instances' headers (no pixel data).

    Args:
        series_instance_uid, study_instance_uid, modality, body_part, description, series_number:
            from the first instance.
        headers: every instance's header.
        paths: every instance's file, when read from a folder (else empty).
    """

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    body_part: str
    description: str
    series_number: str
    headers: list[pydicom.Dataset]
    paths: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """A human name for messages: number, modality, description, instance count and UID."""
        number = f"#{self.series_number} " if self.series_number else ""
        uid = self.series_instance_uid if is_uid(self.series_instance_uid) else repr(self.series_instance_uid[:100])
        return f"series {number}{self.modality or '?'} {self.description!r} ({len(self.headers)} instance(s), {uid})"


def group_series(headers: Iterable[pydicom.Dataset], paths: Sequence[str] | None = None) -> dict[str, list[SeriesInfo]]:
    """Group instance headers by study, then series (both in order of first appearance).

    Args:
        headers: instance headers (``pydicom.Dataset`` without pixel data is enough).
        paths: the file of each header, when read from disk.
    """
    headers = list(headers)
    paths = list(paths) if paths is not None else []
    studies: dict[str, dict[str, SeriesInfo]] = {}
    for i, ds in enumerate(headers):
        study, series = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
        if not study or not series:
            continue  # a DICOMDIR or other non-instance file
        info = studies.setdefault(study, {}).get(series)
        if info is None:
            info = SeriesInfo(
                series_instance_uid=series,
                study_instance_uid=study,
                modality=str(ds.get("Modality", "") or ""),
                body_part=str(ds.get("BodyPartExamined", "") or "").strip(),
                description=str(ds.get("SeriesDescription", "") or "").strip(),
                series_number=str(ds.get("SeriesNumber", "") or ""),
                headers=[],
            )
            studies[study][series] = info
        info.headers.append(ds)
        if paths:
            info.paths.append(paths[i])
    return {study: list(series.values()) for study, series in studies.items()}


def volume_problem(series: SeriesInfo, min_slices: int = 3) -> str | None:
    """Why ``series`` is not a volume a 3D bundle can read, or None when it is.

    The stack itself (orientations, sizes, pixel spacing, shared positions, even spacing) is judged
    by :func:`medcam_monai.io.slice_stack.slice_stack`, the check the loader applies, so a series
    selected here is one ``LoadDicomd`` reads.
    """
    classes = {str(ds.get("SOPClassUID", "")) for ds in series.headers}
    if len(classes) != 1:
        return f"its instances mix SOP classes {sorted(classes)}"
    sop_class = classes.pop()
    if sop_class not in VOLUME_SOP_CLASSES:
        try:
            name = _uid.UID(sop_class).name
        except Exception:  # noqa: BLE001 - an unknown UID just has no name
            name = sop_class
        return f"it is {name or 'an unknown SOP class'}, not a CT/MR/PET image volume"
    if len(series.headers) == 1:
        frames = int(series.headers[0].get("NumberOfFrames", 1) or 1)
        if frames < min_slices:
            return f"it is a single image of {frames} frame(s); the bundle needs at least {min_slices} slices"
        return None
    if len(series.headers) < min_slices:
        return f"it has {len(series.headers)} slice(s); the bundle needs at least {min_slices}"
    paths = series.paths if len(series.paths) == len(series.headers) else [f"instance {i + 1}" for i in range(len(series.headers))]
    try:
        planes = [p for path, ds in zip(paths, series.headers) for p in planes_of(ds, path)]
        slice_stack(planes, series.label, allow_irregular_spacing=False)
    except SliceStackError as e:
        return f"its {e.reason}"
    except MissingGeometryError:
        return "some slices have no ImageOrientationPatient/ImagePositionPatient/PixelSpacing (no 3D geometry)"
    except IrregularSpacingError:
        return "its slice spacing is irregular (a slice may be missing)"
    return None


def uid_problem(series: SeriesInfo) -> str | None:
    """Why the series' SeriesInstanceUID cannot be used (it names the step's scratch folder), or None."""
    if is_uid(series.series_instance_uid):
        return None
    shown = series.series_instance_uid[:100]
    return (f"its SeriesInstanceUID {shown!r} is not a DICOM UID (digits and dots, at most 64 characters); "
            f"refused: the step never uses such a value as a name")


def partition_series(series: Sequence[SeriesInfo], rules: SeriesRules) -> tuple[list[SeriesInfo], list[tuple[str, str]]]:
    """Split one study's series into those ``rules`` accept (and that are volumes) and the others,
    each with the reason it was not taken: ``(selected, [(series label, reason), ...])``."""
    selected, rejected = [], []
    for s in series:
        problem = uid_problem(s) or rules.rule_problem(s)
        if problem is None:
            shape = volume_problem(s, rules.min_slices)
            problem = None if shape is None else f"matches the rules but is not a volume: {shape}"
        if problem is None:
            selected.append(s)
        else:
            rejected.append((s.label, problem))
    return selected, rejected


def select_series(series: Sequence[SeriesInfo], rules: SeriesRules) -> list[SeriesInfo]:
    """The series of one study that ``rules`` accept and that are volumes.

    Raises:
        NoMatchingSeriesError: none is accepted; the message lists every series with its reason.
    """
    selected, rejected = partition_series(series, rules)
    if not selected:
        raise no_match_error(rejected, rules)
    return selected


def no_match_error(rejected: Sequence[tuple[str, str]], rules: SeriesRules) -> NoMatchingSeriesError:
    """The error for a study none of whose series is accepted, listing each series and why."""
    where = f" (rules from {rules.source})" if rules.source else ""
    lines = "; ".join(f"{label}: {why}" for label, why in rejected) or "the study has no series"
    return NoMatchingSeriesError(f"No series of the study is accepted by the bundle{where}. {lines}.", list(rejected))
