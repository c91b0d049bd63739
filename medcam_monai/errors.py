"""The one error type for problems the user can fix from where they are.

Raised with a message that names the problem and the fix; the command line prints it without a
traceback and exits with code 2 (:mod:`medcam_monai.cli`).
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """A problem with the user's input (a path, a bundle, an option); the message says how to fix it."""
