"""Running a bundle and its explainer on one DICOM series: the step's only contact with the model.

The bundle's own ``configs/inference.json`` runs through the bundle service
(:func:`medcam_monai.bundle.explain_with_bundle`), as ``medcam-monai explain`` runs it: a one-case
datalist, ``LoadDicomd`` as the first preprocessing transform, and the DICOM writers of the
:class:`~medcam_monai.handlers.ExplanationHandler` in its ``explanation`` entry; the records come
back in memory.

The outputs' identity (:mod:`~medcam_monai.pipeline.identity`) is given to the DICOM writers
(``series_instance_uid``, ``sop_instance_uid``, ``series_number``), so no file is written twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcam_monai.io.formats import SEG_TYPES
from medcam_monai.pipeline.errors import PipelineError
from medcam_monai.pipeline.identity import OutputIdentity, output_identity

__all__ = ["BundleRunner", "BundleRunError", "SEG_TYPES", "parse_override", "file_sha256"]

def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class BundleRunError(PipelineError):
    """The bundle failed on a series; the message is the underlying error (e.g. IrregularSpacingError).

    Args:
        message: the explanation.
        cause: the underlying error (under MONAI's config wrappers), when there is one.
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def _logs_off_stdout() -> None:
    """Point every logging handler that writes to stdout at stderr instead.

    MONAI's loggers (and bundles' ``logging.conf``) log to stdout, where the step prints its JSON
    lines; handlers created at import hold the stdout object itself, so redirecting ``sys.stdout``
    alone does not move them.
    """
    outs = {id(sys.stdout), id(sys.__stdout__)}
    loggers = [logging.getLogger()] + [x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)]
    for log in loggers:
        for handler in log.handlers:
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in outs:
                handler.setStream(sys.stderr)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` (value JSON, else a plain string) -> ``(key, value)``; ``#`` nests config ids."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"A bundle override is key=value (value in JSON, e.g. explain_class=1 or pixels=image), got {text!r}.")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


@dataclass
class BundleRunner:
    """One bundle, ready to explain series.

    Args:
        bundle: bundle name (see ``medcam-monai list``) or folder.
        bundle_root: folder holding ``models/model.pt`` (default: the bundle folder).
        weights: a state dict file of the bundle's network (default ``<bundle_root>/models/model.pt``).
        seg_type: DICOM-SEG type, one of :data:`SEG_TYPES` (BINARY is stored by every PACS).
        overrides: extra bundle config overrides (config id -> value), e.g. ``{"explain_class": 1}``.
        uid_root: UID prefix of the outputs' derived UIDs.
    """

    bundle: str | os.PathLike
    bundle_root: str | os.PathLike | None = None
    weights: str | os.PathLike | None = None
    seg_type: str = "BINARY"
    overrides: dict[str, Any] = field(default_factory=dict)
    uid_root: str | None = None

    def __post_init__(self) -> None:
        from medcam_monai.bundle import find_bundle
        from medcam_monai.bundle.weights import WeightsError, check_weights_file

        self.folder = find_bundle(self.bundle)
        self.seg_type = str(self.seg_type).upper()
        if self.seg_type not in SEG_TYPES:
            raise ValueError(f"seg_type must be one of {SEG_TYPES}, got {self.seg_type!r}.")
        meta_path = self.folder / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self.name = self.folder.name
        self.version = str(meta.get("version") or "")
        if not self.version:
            raise ValueError(f"{meta_path} has no \"version\": the outputs' identity (and de-duplication) depends on it.")
        self.root = Path(self.bundle_root) if self.bundle_root else self.folder
        self.ckpt = Path(self.weights) if self.weights else self.root / "models" / "model.pt"
        try:
            check_weights_file(self.ckpt)  # before the first study, not after a night of failures
        except WeightsError as e:
            raise WeightsError(f"{e} For the pipeline: pass --weights FILE or --bundle-root FOLDER (holding models/model.pt).") from None
        self.settings = self.output_settings()
        self.settings_digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()

    def output_settings(self) -> dict[str, Any]:
        """Everything besides the source series, the bundle's name and version and the output kind
        that changes the outputs: it is part of their identity, and of each study's JSON line.

        The inference config's bytes stand for the explainer settings it holds (explainer, its
        arguments, the class and pixel set), the weights file's SHA-256 for the weights, and the
        overrides, SEG type and medcam-monai version for the rest.
        """
        import medcam_monai

        config = self.folder / "configs" / "inference.json"
        return {
            "inference_config_sha256": file_sha256(config) if config.is_file() else None,
            "weights_sha256": file_sha256(self.ckpt),
            "overrides": json.loads(json.dumps(dict(sorted(self.overrides.items())), default=repr)),
            "seg_type": self.seg_type,
            "medcam_monai": medcam_monai.__version__,
        }

    @property
    def kinds(self) -> dict[str, int]:
        """Output kind -> Series Number: the SEG (its type is part of its identity) and the Parametric Map."""
        return {f"dicom_seg/{self.seg_type}": 901, "parametric_map": 902}

    def identities(self, source_series_uid: str) -> list[OutputIdentity]:
        """The outputs explaining ``source_series_uid`` will have."""
        extra = {"uid_root": self.uid_root} if self.uid_root else {}
        return [output_identity(source_series_uid, self.name, self.version, kind, number, settings=self.settings_digest, **extra)
                for kind, number in self.kinds.items()]

    def _writers(self, identities: list[OutputIdentity] | None = None) -> list[dict[str, Any]]:
        desc = f"{self.name} {self.version}"
        writers = [
            {"name": "dicom_seg", "segmentation_type": self.seg_type, "series_number": 901,
             "series_description": f"{desc} explanation SEG"[:64]},
            {"name": "parametric_map", "series_number": 902, "series_description": f"{desc} explanation map"[:64]},
        ]
        if identities:
            by_kind = {i.kind.split("/")[0]: i for i in identities}
            for w in writers:
                i = by_kind.get(w["name"])
                if i is not None:
                    w.update(series_instance_uid=i.series_instance_uid, sop_instance_uid=i.sop_instance_uid, series_number=i.series_number)
        return writers

    def run(self, series_folder: str | os.PathLike, series_uid: str, out_dir: str | os.PathLike,
            identities: list[OutputIdentity] | None = None) -> dict[str, Path]:
        """Explain the series ``series_uid`` found in ``series_folder``; return output kind -> file.

        Args:
            identities: the outputs' UIDs, given to the DICOM writers.

        The bundle's console logging goes to stderr, keeping stdout for the step's JSON lines.
        """
        from medcam_monai.bundle import explain_with_bundle, root_cause

        _logs_off_stdout()
        try:
            with contextlib.redirect_stdout(sys.stderr):
                records = explain_with_bundle(
                    self.folder, out_dir, root=self.root, weights=self.ckpt, datalist=[{"image": str(series_folder)}],
                    kind="dicom", series_uid=series_uid, writers=self._writers(identities), progress=False, overrides=self.overrides,
                )
        except Exception as e:
            cause = root_cause(e)
            raise BundleRunError(f"{type(cause).__name__}: {cause}", cause) from e
        if len(records) != 1:
            raise RuntimeError(f"The bundle explained {len(records)} cases for one series; expected 1 (see {out_dir}).")
        outputs = records[0].get("outputs") or {}
        files = {}
        for kind in self.kinds:
            path = outputs.get(kind.split("/")[0])
            if not path or not Path(path).is_file():
                raise RuntimeError(f"The bundle wrote no {kind} output for series {series_uid} (outputs: {outputs}).")
            files[kind] = Path(path)
        return files
