"""The on-disk outbox: results wait here until the PACS has them, across runs and crashes.

Layout under the step's work folder::

    outbox/<StudyInstanceUID>/<SOPInstanceUID>.dcm     waiting to be stored
    sent/<StudyInstanceUID>/<SOPInstanceUID>.dcm       stored (only with keep_sent)
    rejected/<StudyInstanceUID>/<SOPInstanceUID>.dcm   refused by the PACS, with a .txt saying why

A file enters the outbox by an atomic rename of a complete file, and leaves it only after the PACS
confirmed it (or already had it), so a crash at any point loses nothing and stores nothing twice.
Rejected objects are moved aside instead of being retried every night: the PACS would refuse them
again; a person decides (the reason file says what to change). So are files the step cannot read
back (corrupt, truncated, or not what their place says): one bad file must not stop every night.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from medcam_monai.pipeline.paths import check_uid, is_uid, remove_file

__all__ = ["Outbox", "check_uid"]


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
            try:
                shutil.copyfile(file, tmp)
                os.replace(tmp, dest)
            finally:
                remove_file(tmp, self.root)  # gone after the rename; left only by a failed copy
            Path(file).unlink()
        return dest

    def studies(self) -> list[str]:
        """Studies with objects waiting, oldest first."""
        folders = [p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink() and is_uid(p.name) and self.pending(p.name)]
        return [p.name for p in sorted(folders, key=lambda p: p.stat().st_mtime)]

    def pending(self, study_uid: str) -> list[Path]:
        """The objects of ``study_uid`` waiting (temporary ``.part`` files of an interrupted write are ignored)."""
        folder = self.root / check_uid(study_uid, "StudyInstanceUID")
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("*.dcm") if not p.name.startswith(".") and not p.is_symlink())

    def read(self, path: str | os.PathLike):
        """The object waiting at ``path``, checked to be what its place in the outbox says.

        Raises:
            ValueError: it is not a readable DICOM file, or its Study/SOP Instance UID differs from
                its folder/file name, or it lacks a valid SOP Class or Series Instance UID; the
                message says which (the step then sets it aside with :meth:`mark_rejected`).
        """
        import pydicom

        from pydicom.pixels.utils import get_expected_length

        path = Path(path)
        try:
            ds = pydicom.dcmread(path)
        except Exception as e:  # noqa: BLE001 - whatever a broken file raises, the answer is the same
            raise ValueError(f"it is not a readable DICOM file ({type(e).__name__}: {str(e)[:300]})") from None
        # pydicom reads a file cut short without a word; for uncompressed pixels the length says it
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in ds and syntax is not None and not syntax.is_compressed:
                try:
                    expected = get_expected_length(ds)
                except Exception as e:  # noqa: BLE001 - missing Rows/Columns/BitsAllocated
                    raise ValueError(f"it is not a readable DICOM image ({type(e).__name__}: {str(e)[:200]})") from None
                if len(ds[keyword].value or b"") < expected:
                    raise ValueError(f"it is not a readable DICOM file (cut short: {len(ds[keyword].value or b'')} of "
                                     f"{expected} bytes of {keyword})")
        study, sop = str(ds.get("StudyInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
        if study != path.parent.name:
            raise ValueError(f"its StudyInstanceUID {study[:70]!r} is not the study folder it waits in ({path.parent.name})")
        if sop != path.stem:
            raise ValueError(f"its SOPInstanceUID {sop[:70]!r} is not its file name ({path.name})")
        for keyword in ("SOPClassUID", "SeriesInstanceUID"):
            if not is_uid(str(ds.get(keyword, ""))):
                raise ValueError(f"its {keyword} {str(ds.get(keyword, ''))[:70]!r} is missing or not a DICOM UID")
        return ds

    def remove_partial_files(self) -> list[Path]:
        """Delete the ``.*.part`` files a killed copy left in the outbox; return them.

        Call it only while holding the work folder's lock: a running copy's ``.part`` is not a leftover.
        """
        removed = []
        for folder in [p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink()] if self.root.is_dir() else []:
            for part in folder.glob(".*.part"):
                remove_file(part, self.root)
                removed.append(part)
            self._tidy(folder)
        return removed

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
            remove_file(path, self.root)
        self._tidy(path.parent)
        return kept

    def mark_rejected(self, path: str | os.PathLike, reason: str) -> Path:
        """The PACS refused ``path``: move it to ``rejected/`` with ``<name>.txt`` holding ``reason``."""
        path = Path(path)
        dest = self._move(path, self.rejected_root)
        dest.with_suffix(".txt").write_text(reason + "\n")
        self._tidy(path.parent)
        return dest
