"""Atomic file writes: a failed run never leaves a half-written file under its final name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "check_writable_dir"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The temporary file lives in the same folder (so ``os.replace`` is an atomic rename on the same
    file system) and keeps the final name's suffixes (``.nii.gz``, ``.seg.nrrd``, ``.png``) because
    nibabel, pynrrd and Pillow choose the format from the extension.

    Args:
        path: the final file name. Missing parent folders are created.

    Yields:
        The temporary path to write to. On any exception it is deleted and the exception re-raised;
        an existing file at ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".part{suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
