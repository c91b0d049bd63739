"""Retrying transient PACS failures with exponential backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from medcam_monai.pipeline.errors import PacsUnavailableError

__all__ = ["RetryPolicy"]

T = TypeVar("T")
logger = logging.getLogger("medcam_monai.pipeline")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry an operation that failed with a retryable error.

    Waits ``delay``, ``delay * factor``, ... (capped at ``max_delay``) between ``attempts`` tries.
    Only :class:`PacsUnavailableError` (PACS down, busy, timing out) is retried: refused
    credentials or a rejected object fail at once, because trying again cannot help.

    Args:
        attempts: tries in all, at least 1.
        delay: seconds before the second try.
        factor: growth of the wait per try, at least 1.
        max_delay: the longest wait between tries.
        sleep: the sleeping function (tests pass a recorder).
    """

    attempts: int = 5
    delay: float = 2.0
    factor: float = 2.0
    max_delay: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be an integer >= 1, got {self.attempts!r}.")
        if not self.delay >= 0:
            raise ValueError(f"RetryPolicy.delay must be >= 0 seconds, got {self.delay!r}.")
        if not self.factor >= 1:
            raise ValueError(f"RetryPolicy.factor must be >= 1, got {self.factor!r}.")
        if not self.max_delay >= self.delay:
            raise ValueError(f"RetryPolicy.max_delay ({self.max_delay}) must be >= delay ({self.delay}).")

    def waits(self) -> list[float]:
        """The waits between tries, in order (``attempts - 1`` of them)."""
        return [min(self.delay * self.factor**i, self.max_delay) for i in range(self.attempts - 1)]

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn``; on :class:`PacsUnavailableError` wait and try again, up to ``attempts`` tries.

        Args:
            fn: the operation.
            what: what it does, for the log (e.g. ``"store 1.2.3 in http://pacs/dicom-web"``).

        Raises:
            PacsUnavailableError: the last failure, its message saying how many tries over how long.
            Any other exception of ``fn`` at once.
        """
        start = time.monotonic()
        waits = self.waits()
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except PacsUnavailableError as e:
                if attempt == self.attempts:
                    raise PacsUnavailableError(
                        f"{e} (gave up after {attempt} attempt(s) over {time.monotonic() - start:.1f} s)"
                    ) from e
                wait = waits[attempt - 1]
                logger.warning("%s failed (attempt %d/%d): %s; retrying in %.1f s", what, attempt, self.attempts, e, wait)
                self.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises
