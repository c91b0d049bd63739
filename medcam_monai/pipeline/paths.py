"""Names from outside never leave the work folder: UIDs checked before they become paths, and every
deletion checked to stay inside the folder it is meant for.

A DICOM file or a PACS answer decides the Study, Series and SOP Instance UIDs the step sees. A UID
is digits and dots (at most 64 characters, DICOM PS3.5 9.1), so one that passes
:func:`~medcam_monai.uids.check_uid`
cannot name a parent folder or an absolute path; :func:`remove_tree` and :func:`remove_file` check
containment again after resolving links, as defence in depth (a link planted in the work folder, a
future caller that forgets the check).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from medcam_monai.uids import check_uid, is_uid

__all__ = ["check_uid", "is_uid", "contained", "remove_tree", "remove_file"]

def contained(path: str | os.PathLike, root: str | os.PathLike, *, follow: bool = True) -> Path:
    """``path`` resolved, if it lies strictly inside ``root`` (also resolved).

    Args:
        follow: resolve ``path`` itself when it is a link (False: only its folder is resolved, for
            removing the link itself).

    Raises:
        PermissionError: it does not; the message names both, so a log shows what was refused.
    """
    path = Path(path)
    resolved = path.resolve() if follow else path.parent.resolve() / path.name
    base = Path(root).resolve()
    if resolved == base or base not in resolved.parents:
        raise PermissionError(f"Refusing to delete {str(path)!r} (resolves to {str(resolved)!r}): it is not inside {str(base)!r}.")
    return resolved


def remove_tree(path: str | os.PathLike, root: str | os.PathLike) -> None:
    """``shutil.rmtree(path)`` when ``path`` lies inside ``root``; nothing when it does not exist.

    A link is removed as a link (its target is never entered); a path that resolves outside ``root``
    raises :class:`PermissionError` before anything is deleted.
    """
    path = Path(path)
    if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
        remove_file(path, root)
    elif path.exists():
        shutil.rmtree(contained(path, root))


def remove_file(path: str | os.PathLike, root: str | os.PathLike) -> None:
    """Unlink ``path`` (a link: the link itself) when it lies inside ``root``; nothing when missing."""
    path = Path(path)
    if os.path.lexists(path):
        contained(path, root, follow=False).unlink()
