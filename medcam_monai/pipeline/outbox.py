"""The on-disk outbox: results wait here until the PACS has them, across runs and crashes.

Layout under the step's work folder::

    outbox/<StudyInstanceUID>/<SOPInstanceUID>.dcm     waiting to be stored
    sent/<StudyInstanceUID>/<SOPInstanceUID>.dcm       stored (only with keep_sent)
    rejected/<StudyInstanceUID>/<SOPInstanceUID>.dcm   refused by the PACS, with a .txt saying why

A file enters the outbox by an atomic rename of a complete file, and leaves it only after the PACS
confirmed it (or already had it), so a crash at any point loses nothing and stores nothing twice.
Rejected objects are moved aside instead of being retried every night: the PACS would refuse them
again; a person decides (the reason file says what to change).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

__all__ = ["Outbox", "check_uid"]

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(uid: str, what: str = "UID") -> str:
    """``uid`` if it is a DICOM UID (digits and dots, at most 64 characters), else ValueError.

    UIDs become folder and file names here, so anything else (``..``, ``/``) is refused.
    """
    if not isinstance(uid, str) or len(uid) > 64 or not _UID.match(uid):
        raise ValueError(f"{what} {uid!r} is not a DICOM UID (digits and dots, at most 64 characters).")
    return uid


class Outbox:
    """Pending, sent and rejected results in a work folder.

    Args:
        work_dir: the step's work folder (created when missing).
        keep_sent: move stored files to ``sent/`` instead of deleting them.
    """

    def __init__(self, work_dir: str | os.PathLike, keep_sent: bool = False) -> None:
        self.work_dir = Path(work_dir)
        self.root = self.work_dir / "outbox"
        self.sent_root = self.work_dir / "sent"
        self.rejected_root = self.work_dir / "rejected"
        self.keep_sent = bool(keep_sent)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, sop_uid: str) -> Path:
        """Where the object ``sop_uid`` of ``study_uid`` waits."""
        return self.root / check_uid(study_uid, "StudyInstanceUID") / f"{check_uid(sop_uid, 'SOPInstanceUID')}.dcm"

    def add(self, study_uid: str, sop_uid: str, file: str | os.PathLike) -> Path:
        """Move the complete file ``file`` into the outbox (same file system: an atomic rename)."""
        dest = self.path_for(study_uid, sop_uid)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(file, dest)
        except OSError:  # another file system: copy beside, then rename
            tmp = dest.with_name(f".{dest.name}.part")
            shutil.copyfile(file, tmp)
            os.replace(tmp, dest)
            Path(file).unlink()
        return dest

    def studies(self) -> list[str]:
        """Studies with objects waiting, oldest first."""
        folders = [p for p in self.root.iterdir() if p.is_dir() and _UID.match(p.name) and self.pending(p.name)]
        return [p.name for p in sorted(folders, key=lambda p: p.stat().st_mtime)]

    def pending(self, study_uid: str) -> list[Path]:
        """The objects of ``study_uid`` waiting (temporary ``.part`` files of an interrupted write are ignored)."""
        folder = self.root / check_uid(study_uid, "StudyInstanceUID")
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("*.dcm") if not p.name.startswith("."))

    def _move(self, path: Path, root: Path) -> Path:
        dest = root / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        return dest

    def _tidy(self, folder: Path) -> None:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass

    def mark_stored(self, path: str | os.PathLike) -> Path | None:
        """The PACS has ``path``: delete it (or move it to ``sent/``); returns the kept copy, if any."""
        path = Path(path)
        kept = self._move(path, self.sent_root) if self.keep_sent else None
        if kept is None:
            path.unlink(missing_ok=True)
        self._tidy(path.parent)
        return kept

    def mark_rejected(self, path: str | os.PathLike, reason: str) -> Path:
        """The PACS refused ``path``: move it to ``rejected/`` with ``<name>.txt`` holding ``reason``."""
        path = Path(path)
        dest = self._move(path, self.rejected_root)
        dest.with_suffix(".txt").write_text(reason + "\n")
        self._tidy(path.parent)
        return dest
