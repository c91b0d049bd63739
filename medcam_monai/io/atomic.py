"""Atomic file writes: a failed run never leaves a half-written file under its final name."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "check_writable_dir"]


def _create_temp(folder: Path, name: str, suffix: str) -> Path:
    """Create an empty, new file beside the final one, with the permissions of any new file.

    ``tempfile.mkstemp`` creates mode 0600 whatever the umask, so a viewer or PACS forwarder running
    as another user could not read the outputs; ``os.open`` with 0666 lets the umask decide, as for
    every other file the process writes (records, reports).
    """
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}.part{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"Could not create a temporary file beside {folder / name}.")


def _missing_parents(folder: Path) -> list[Path]:
    """The folders that ``folder.mkdir(parents=True)`` would create, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The temporary file lives in the same folder (so ``os.replace`` is an atomic rename on the same
    file system) and keeps the final name's suffixes (``.nii.gz``, ``.seg.nrrd``, ``.png``) because
    nibabel, pynrrd and Pillow choose the format from the extension. Its name is hidden and holds
    ``.part`` so that input scans skip it if a killed run leaves it behind. The file gets the
    permissions the umask gives any new file (0644 under the usual umask 022).

    Args:
        path: the final file name. Missing parent folders are created (and removed again when the
            block fails, so a failed write leaves no empty folder either).

    Yields:
        The temporary path to write to. On any exception it is deleted and the exception re-raised;
        an existing file at ``path`` is left untouched.
    """
    final = Path(path)
    created = _missing_parents(final.parent)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = _create_temp(final.parent, final.name, "".join(final.suffixes) or ".tmp")
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        for folder in created:  # deepest first; rmdir refuses folders someone else filled meanwhile
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def check_writable_dir(folder: str | os.PathLike, fix: str = "choose another folder") -> Path:
    """Create ``folder`` if needed and check that a file can be written in it, before any work.

    Raises:
        InputError: naming the folder, the reason and ``fix`` (how the caller's user picks another).
    """
    from medcam_monai.errors import InputError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".medcam_write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise InputError(f"Cannot write to output folder {str(folder)!r} ({e.strerror or e}): {fix}.") from None
    return folder
