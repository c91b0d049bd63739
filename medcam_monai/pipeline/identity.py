"""Deterministic identity of the step's outputs, so a re-run can tell what the PACS already holds.

The step gives every output object UIDs derived from (source series, bundle name, bundle version,
output kind, settings): running the same bundle the same way on the same series again yields the
same Series and SOP Instance UIDs, which the step looks up in the PACS before storing. The
*settings* are a digest of everything else that changes the output (the bundle's inference config,
the weights file's content, the ``--override`` values, the SEG type, the medcam-monai version; see
:meth:`~medcam_monai.pipeline.bundle_run.BundleRunner.output_settings`), so explaining another
class, with retrained weights or other explainer settings gives a new series, never "already
stored", and results made differently never overwrite each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pydicom
from pydicom.uid import generate_uid


__all__ = ["OutputIdentity", "output_identity", "has_identity", "DEFAULT_UID_ROOT"]

# pydicom's UID root (its generate_uid default); a site with its own root passes --uid-root
DEFAULT_UID_ROOT = "1.2.826.0.1.3680043.8.498."
# changing it re-stores every result under new UIDs (v2: the settings digest joined the key)
_SCHEME = "medcam-monai pipeline output v2"


@dataclass(frozen=True)
class OutputIdentity:
    """The UIDs one output object of one source series gets.

    Args:
        kind: output kind, e.g. ``"dicom_seg/BINARY"`` or ``"parametric_map"``.
        series_instance_uid: of the output series (one object per series).
        sop_instance_uid: of the output object.
        series_number: DICOM Series Number of the output.
    """

    kind: str
    series_instance_uid: str
    sop_instance_uid: str
    series_number: int


def output_identity(
    source_series_uid: str, bundle_name: str, bundle_version: str, kind: str, series_number: int,
    uid_root: str = DEFAULT_UID_ROOT, settings: str = "",
) -> OutputIdentity:
    """UIDs derived (SHA-512, by ``pydicom.uid.generate_uid``) from what makes the output what it is.

    Args:
        source_series_uid: SeriesInstanceUID of the explained series.
        bundle_name, bundle_version: the bundle (folder name) and its ``metadata.json`` version.
        kind: the output kind (includes the SEG type: BINARY and LABELMAP are different objects).
        series_number: Series Number to give the output.
        uid_root: UID prefix, ending with ``.`` (at most 54 characters).
        settings: a digest of every other input that changes the output (config, weights,
            overrides); the pipeline passes :attr:`BundleRunner.settings_digest`.
    """
    for name, value in (("source_series_uid", source_series_uid), ("bundle_name", bundle_name),
                        ("bundle_version", bundle_version), ("kind", kind)):
        if not value:
            raise ValueError(f"output_identity needs a non-empty {name}.")
    if not uid_root.endswith(".") or len(uid_root) > 54 or not all(p.isdigit() for p in uid_root[:-1].split(".")):
        raise ValueError(f"uid_root must be digits and dots ending with '.', at most 54 characters, got {uid_root!r}.")
    key = [_SCHEME, source_series_uid, bundle_name, bundle_version, kind, settings]
    return OutputIdentity(
        kind=kind,
        series_instance_uid=generate_uid(uid_root, entropy_srcs=[*key, "series"]),
        sop_instance_uid=generate_uid(uid_root, entropy_srcs=[*key, "instance"]),
        series_number=int(series_number),
    )


def has_identity(path: str | os.PathLike, identity: OutputIdentity) -> bool:
    """Whether the DICOM object at ``path`` already carries the UIDs and Series Number of ``identity``."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta = getattr(ds, "file_meta", None)
    return (str(ds.get("SeriesInstanceUID", "")) == identity.series_instance_uid
            and str(ds.get("SOPInstanceUID", "")) == identity.sop_instance_uid
            and str(getattr(meta, "MediaStorageSOPInstanceUID", identity.sop_instance_uid)) == identity.sop_instance_uid
            and ds.get("SeriesNumber") is not None and int(ds.SeriesNumber) == identity.series_number)
