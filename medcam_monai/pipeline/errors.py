"""The pipeline step's errors: each names the problem and what to do about it."""

from __future__ import annotations

__all__ = [
    "PipelineError",
    "NoMatchingSeriesError",
    "StudyInputError",
    "PacsError",
    "PacsUnavailableError",
    "PacsAuthError",
    "PacsRejectedError",
]


class PipelineError(Exception):
    """Base of the step's errors; ``retryable`` says whether trying again later may succeed."""

    retryable = False


class StudyInputError(PipelineError):
    """The study given cannot be read: missing folder, no DICOM files, unknown study UID."""


class NoMatchingSeriesError(PipelineError):
    """No series of the study is one the bundle accepts; the message lists every series and why.

    Args:
        message: the explanation.
        rejected: ``(series description, reason)`` per series of the study.
    """

    def __init__(self, message: str, rejected: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.rejected = list(rejected or [])


class PacsError(PipelineError):
    """Talking to the PACS failed."""


class PacsUnavailableError(PacsError):
    """The PACS does not answer, times out, or says it is busy (HTTP 5xx/429, DIMSE abort,
    out of resources). Transient: the step retries with backoff and keeps results on disk."""

    retryable = True


class PacsAuthError(PacsError):
    """The PACS refused the credentials (HTTP 401/403, DIMSE association rejected). Not retried:
    the same credentials will be refused again."""


class PacsRejectedError(PacsError):
    """The PACS refused an object (unsupported SOP class, invalid object, HTTP 4xx). Not retried."""
