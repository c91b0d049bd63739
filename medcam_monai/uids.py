"""DICOM UIDs: the one syntax check for UIDs read from files and PACS, and for UIDs we write.

A UID is digits and dots, at most 64 characters (DICOM PS3.5 9.1); such a value cannot name a
parent folder or an absolute path, so the pipeline may use it as a file name. Components without
leading zeros (``strict``) is the full rule, which the UIDs we write must follow; UIDs read from the
world are held only to the first part, since some archives hold UIDs with leading zeros.
"""

from __future__ import annotations

import re

__all__ = ["is_uid", "check_uid"]

_LENIENT = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_STRICT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_uid(value: object, strict: bool = False) -> bool:
    """Whether ``value`` is a UID: digits and dots, at most 64 characters (``strict``: and no component
    with a leading zero)."""
    pattern = _STRICT if strict else _LENIENT
    return isinstance(value, str) and len(value) <= 64 and bool(pattern.match(value))


def check_uid(value: object, what: str = "UID", *, strict: bool = False, fix: str = "") -> str:
    """``value`` if it is a UID (see :func:`is_uid`), else a ValueError naming ``what``, the rule and ``fix``."""
    if not is_uid(value, strict):
        shown = value if not isinstance(value, str) or len(value) <= 100 else value[:100] + "..."
        rule = "digits and dots, components without leading zeros" if strict else "digits and dots"
        raise ValueError(f"{what} {shown!r} is not a DICOM UID ({rule}, at most 64 characters).{' ' + fix if fix else ''}")
    return value  # type: ignore[return-value]
