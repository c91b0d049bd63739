"""The nightly step: studies in, explanations stored in the PACS, one JSON line per study.

For each study: select the series the bundle accepts; for each, derive the identity of its outputs
(:mod:`~medcam_monai.pipeline.identity`); skip the model when the PACS (or the outbox) already has
them; else run the bundle and its explainer and put the DICOM-SEG and Parametric Map in the
outbox; then store everything waiting for the study, checking the PACS before each object.

Failures stay inside their study: a PACS that is down is retried with backoff and the results wait
in the outbox for the next run (which stores them first, even for studies not given again); a
refused object, or one the step cannot read back, is moved to ``rejected/`` with the reason; bad
input is reported. The JSON line (``status``: ``stored``, ``already_stored``,
``no_matching_series``, ``pending``, ``failed``) goes to stdout and is appended to
``<work_dir>/pipeline.jsonl``.

Nothing read from a file or a PACS becomes a path unchecked (:mod:`~medcam_monai.pipeline.paths`),
and nothing outside ``<work_dir>`` is ever deleted. A run holds ``<work_dir>/.lock``; it starts by
removing what a killed run left (``scratch/``, ``.part`` files), so a crash at any point leaves
nothing behind after the next run, and stores nothing twice.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import pydicom

from medcam_monai.pipeline.bundle_run import BundleRunner
from medcam_monai.pipeline.errors import (
    PacsAuthError,
    PacsError,
    PacsRejectedError,
    PacsUnavailableError,
    PipelineError,
)
from medcam_monai.pipeline.identity import has_identity
from medcam_monai.pipeline.outbox import Outbox
from medcam_monai.pipeline.paths import check_uid, remove_tree
from medcam_monai.pipeline.pacs import Pacs
from medcam_monai.pipeline.retry import RetryPolicy
from medcam_monai.pipeline.selection import SeriesInfo, SeriesRules, no_match_error, partition_series
from medcam_monai.pipeline.sources import StudyInput, studies_from_folder, study_from_dicomweb

__all__ = ["PipelineStep", "STATUSES", "OK_STATUSES", "work_dir_lock"]

STATUSES = ("stored", "already_stored", "no_matching_series", "pending", "failed")
OK_STATUSES = ("stored", "already_stored", "no_matching_series")
logger = logging.getLogger("medcam_monai.pipeline")


@contextmanager
def work_dir_lock(work_dir: Path) -> Iterator[None]:
    """Hold ``<work_dir>/.lock`` for the run: two runs on one outbox could store an object twice.

    Raises:
        PipelineError: another run holds it.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise PipelineError(
                f"Another pipeline run (pid {f.read().strip() or '?'}) is using {str(work_dir)!r}; wait for it or use another --work-dir."
            ) from None
        try:  # the pid is for the message above (unbuffered: a full disk must not stop the run here or at close)
            os.ftruncate(f.fileno(), 0)
            os.pwrite(f.fileno(), str(os.getpid()).encode(), 0)
        except OSError:
            pass
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class PipelineStep:
    """Explain studies with a bundle and store the results in a PACS without duplicates.

    Args:
        runner: the bundle (:class:`BundleRunner`).
        rules: which series it accepts.
        pacs: where results go (:class:`~medcam_monai.pipeline.pacs.DicomWebPacs` or ``DimsePacs``).
        work_dir: outbox, scratch space, JSON log and lock.
        retry: backoff for PACS calls.
        source: DICOMweb server to read studies given by Study Instance UID.
        keep_sent: keep stored objects under ``<work_dir>/sent`` (default: delete them).
        out: where the JSON lines are printed (stdout by default; the log file gets them too).
    """

    def __init__(self, runner: BundleRunner, rules: SeriesRules, pacs: Pacs, work_dir: str | os.PathLike,
                 retry: RetryPolicy | None = None, source=None, keep_sent: bool = False, out: TextIO | None = None) -> None:
        if not isinstance(rules, SeriesRules):
            raise TypeError(f"rules must be a SeriesRules, got {type(rules).__name__}.")
        self.runner, self.rules, self.pacs, self.source = runner, rules, pacs, source
        self.work_dir = Path(work_dir)
        self.retry = retry or RetryPolicy()
        self.outbox = Outbox(self.work_dir, keep_sent=keep_sent)
        self.scratch = self.work_dir / "scratch"
        self.log_path = self.work_dir / "pipeline.jsonl"
        self.out = out
        self._pacs_down = False

    # -- inputs -----------------------------------------------------------------------------------
    def _call(self, fn, what: str):
        """A source read, retried with backoff."""
        return self.retry.call(fn, what)

    def _pacs_call(self, fn, what: str):
        """A call to the target PACS, retried with backoff, except once it has been found down in this
        run: then one try each, so a night of studies does not wait out the backoff study after study."""
        policy = RetryPolicy(1, 0.0, sleep=self.retry.sleep) if self._pacs_down else self.retry
        try:
            result = policy.call(fn, what)
        except PacsUnavailableError:
            self._pacs_down = True
            raise
        self._pacs_down = False
        return result

    def resolve(self, item: str) -> list[StudyInput]:
        """The studies named by one input: an existing folder, else a Study Instance UID on the source server."""
        if Path(item).exists():
            return studies_from_folder(item)
        try:
            check_uid(item, "Input")
        except ValueError:
            raise PipelineError(f"Input {item!r} is neither an existing folder nor a Study Instance UID.") from None
        if self.source is None:
            raise PipelineError(
                f"{item} looks like a Study Instance UID, but there is no DICOMweb server to read it from: pass --source-url "
                f"(or a DICOMweb --pacs)."
            )
        return [study_from_dicomweb(self.source, item, self._call)]

    # -- the run ----------------------------------------------------------------------------------------
    def run(self, inputs: Sequence[str]) -> list[dict[str, Any]]:
        """Process ``inputs`` (folders or Study Instance UIDs), storing leftovers of earlier runs first.

        Returns:
            One record per study (also printed as JSON lines and appended to ``pipeline.jsonl``).
        """
        with work_dir_lock(self.work_dir):
            self._remove_leftovers()
            studies, records = [], []
            for item in inputs:
                start = time.monotonic()
                try:
                    studies.extend(self.resolve(item))
                except Exception as e:  # noqa: BLE001 - one unreadable input is reported, the others go on
                    records.append(self._emit(self._record(None, item, start, error=e)))
            given = {s.study_instance_uid for s in studies}
            for study_uid in self.outbox.studies():
                if study_uid not in given:  # results of an earlier run whose PACS was down
                    records.append(self._emit(self._flush_only(study_uid)))
            for study in studies:
                records.append(self._emit(self.process(study)))
            return records

    def _remove_leftovers(self) -> None:
        """What a killed run left: its scratch folder (copies of patient data) and ``.part`` files.

        Only called under the work folder's lock, when no other run can be using them.
        """
        if self.scratch.exists() or self.scratch.is_symlink():
            logger.info("removing %s left by an interrupted run", self.scratch)
            remove_tree(self.scratch, self.work_dir)
        for part in self.outbox.remove_partial_files():
            logger.info("removed %s left by an interrupted run", part)

    def _record(self, study_uid: str | None, source: str, start: float, error: BaseException | None = None) -> dict[str, Any]:
        record = {
            "time": _now(),
            "study_instance_uid": study_uid,
            "source": source,
            "bundle": self.runner.name,
            "bundle_version": self.runner.version,
            "output_settings": getattr(self.runner, "settings", None),
            "pacs": self.pacs.description,
            "status": "failed" if error is not None else None,
            "series": [],
            "skipped_series": [],
            "error": None,
        }
        if error is not None:
            record["error"], record["error_type"] = str(error), type(error).__name__
        record["seconds"] = round(time.monotonic() - start, 2)
        return record

    def _emit(self, record: dict[str, Any]) -> dict[str, Any]:
        line = json.dumps(record)
        try:
            self._append_log(line)
        except OSError as e:  # a full disk must not hide the result: stdout still gets the line
            logger.error("could not append to %s (%s); the JSON line is on stdout only", self.log_path, _describe_os_error(e, self.work_dir))
        print(line, file=self.out, flush=True)
        if record["status"] not in OK_STATUSES or record["error"]:
            logger.warning("study %s: %s%s", record["study_instance_uid"] or record["source"], record["status"],
                           f": {record['error']}" if record["error"] else "")
        return record

    def _append_log(self, line: str) -> None:
        """Append one line to ``pipeline.jsonl`` in one ``write`` (a killed run cannot leave half a
        line); a short write (disk full) is undone, so the log stays one JSON object per line."""
        data = (line + "\n").encode()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)
            except OSError:
                os.ftruncate(fd, size)
                raise
            if written != len(data):
                os.ftruncate(fd, size)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.log_path))
        finally:
            os.close(fd)

    def _flush_only(self, study_uid: str) -> dict[str, Any]:
        start = time.monotonic()
        record = self._record(study_uid, "outbox", start)
        outputs = self.flush(study_uid)
        record["series"] = [{"series_instance_uid": None, "inference": "skipped: results waiting in outbox", "outputs": outputs}]
        record["status"] = self._status(record)
        record["seconds"] = round(time.monotonic() - start, 2)
        return record

    def process(self, study: StudyInput) -> dict[str, Any]:
        """Select, explain and store one study; never raises (the record says what went wrong)."""
        start = time.monotonic()
        if study.problem:
            error = PipelineError(f"Study in {study.source}: {study.problem}.")
            record = self._record(study.study_instance_uid[:100], study.source, start, error=error)
            return record
        record = self._record(study.study_instance_uid, study.source, start)
        selected, skipped = partition_series(study.series, self.rules)
        record["skipped_series"] = [{"series": label, "reason": why} for label, why in skipped]
        if not selected:
            e = no_match_error(skipped, self.rules)
            record.update(status="no_matching_series", error=str(e), error_type=type(e).__name__)
        for series in selected:
            entry = {"series_instance_uid": series.series_instance_uid, "label": series.label}
            record["series"].append(entry)
            entry["_outputs"] = [
                {"kind": i.kind, "series_instance_uid": i.series_instance_uid, "sop_instance_uid": i.sop_instance_uid,
                 "status": "pending", "error": None}
                for i in self.runner.identities(series.series_instance_uid)
            ]
            try:
                entry["inference"] = self._explain_series(study, series, entry["_outputs"])
            except Exception as e:  # noqa: BLE001 - one series' failure is reported, the others go on
                entry.update(inference="failed", error=self._series_error(e))
                for o in entry["_outputs"]:
                    o["status"] = "not_made" if o["status"] == "pending" else o["status"]
                logger.warning("%s of study %s failed: %s: %s", series.label, study.study_instance_uid, type(e).__name__, e)
        outputs = self.flush(study.study_instance_uid)
        by_sop = {o["sop_instance_uid"]: o for o in outputs}
        for entry in record["series"]:
            # each series lists its outputs; those flushed now carry this run's storage result
            entry["outputs"] = [by_sop.pop(o["sop_instance_uid"], o) for o in entry.pop("_outputs", [])]
        if by_sop:  # leftovers of an earlier run of this study (e.g. another bundle version)
            record["series"].append({"series_instance_uid": None, "inference": "skipped: results waiting in outbox",
                                     "outputs": list(by_sop.values())})
        if record["status"] is None:
            record["status"] = self._status(record)
        record["seconds"] = round(time.monotonic() - start, 2)
        return record

    def _series_error(self, e: BaseException) -> str:
        """The JSON line's error for a failed series; a full disk says where and what to do (the
        bundle's own message would point at its ``output_dir``, which the step chooses)."""
        if _disk_full(e):
            return (f"{type(e).__name__}: {os.strerror(errno.ENOSPC)}: the work folder is full ({self.work_dir}). Free space "
                    f"there (or pass another --work-dir); nothing of this series was kept, the next run explains it again")
        return f"{type(e).__name__}: {e}"

    @staticmethod
    def _status(record: dict[str, Any]) -> str:
        outputs = [o for s in record["series"] for o in s.get("outputs", [])]
        if any(s.get("inference") == "failed" for s in record["series"]) or any(o["status"] == "rejected" for o in outputs):
            errors = [s["error"] for s in record["series"] if s.get("error")] + [o["error"] for o in outputs if o.get("error") and o["status"] == "rejected"]
            record["error"] = record["error"] or "; ".join(errors)
            return "failed"
        if any(o["status"] == "pending" for o in outputs):
            record["error"] = record["error"] or next(o["error"] for o in outputs if o["status"] == "pending")
            return "pending"
        if any(o["status"] == "stored" for o in outputs):
            return "stored"
        return "already_stored"

    # -- one series -------------------------------------------------------------------------------------
    def _explain_series(self, study: StudyInput, series: SeriesInfo, outputs: list[dict[str, Any]]) -> str:
        """Make sure the series' outputs are in the PACS or the outbox; say whether the model ran.

        ``outputs`` (one dict per output) get ``status="already_stored"`` for those the PACS holds.
        """
        study_uid = study.study_instance_uid
        identities = self.runner.identities(series.series_instance_uid)
        missing = [i for i in identities if not self.outbox.path_for(study_uid, i.sop_instance_uid).is_file()]
        try:
            in_pacs = [i for i in missing if self._pacs_call(
                lambda i=i: self.pacs.has_instance(study_uid, i.series_instance_uid, i.sop_instance_uid),
                f"look up {i.kind} of {series.label} in {self.pacs.description}")]
        except PacsUnavailableError as e:
            # the PACS is down: explain anyway, the outbox keeps the results and storing checks again
            logger.warning("cannot check %s for existing results (%s); explaining anyway", self.pacs.description, e)
            in_pacs = []
        for o in outputs:
            if any(o["sop_instance_uid"] == i.sop_instance_uid for i in in_pacs):
                o["status"] = "already_stored"
        todo = [i for i in missing if i not in in_pacs]
        if not todo:
            if not missing:
                return "skipped: results waiting in outbox"
            return "skipped: results already in PACS" if len(missing) == len(identities) else "skipped: results in PACS and outbox"
        # both UIDs were checked (sources, selection) and the folder is checked again before deleting
        scratch = self.scratch / check_uid(study_uid, "StudyInstanceUID") / check_uid(series.series_instance_uid, "SeriesInstanceUID")
        remove_tree(scratch, self.scratch)
        try:
            folder = study.fetch(series, scratch / "source")
            logger.info("running bundle %s %s on %s", self.runner.name, self.runner.version, series.label)
            files = self.runner.run(folder, series.series_instance_uid, scratch / "bundle", identities=todo)
            for identity in todo:
                self.outbox.add(study_uid, identity.sop_instance_uid, self._checked_identity(files[identity.kind], identity))
        finally:
            remove_tree(scratch, self.scratch)  # source copies may hold patient data: keep none
            self._tidy_scratch(scratch.parent)
        return "ran"

    def _tidy_scratch(self, folder: Path) -> None:
        for f in (folder, self.scratch):
            try:
                f.rmdir()  # only when empty
            except OSError:
                pass

    @staticmethod
    def _checked_identity(path: Path, identity) -> Path:
        """``path`` (a written output), checked to carry the UIDs the writer was given: the outbox and the
        PACS look objects up by them, so an object with other UIDs would be stored again every night."""
        if not has_identity(path, identity):
            raise PipelineError(
                f"The {identity.kind} writer was given SOP Instance {identity.sop_instance_uid} but wrote other UIDs to "
                f"{path}; refusing to queue it (it could never be found again in the PACS)."
            )
        return path

    # -- storing --------------------------------------------------------------------------------------------
    def flush(self, study_uid: str) -> list[dict[str, Any]]:
        """Store every object of ``study_uid`` waiting in the outbox, checking the PACS first.

        Returns:
            One dict per object: kind (SEG/PM), UIDs, ``status`` (``stored``, ``already_stored``,
            ``pending`` or ``rejected``) and ``error``.
        """
        results = []
        blocked: PacsError | None = None  # once the PACS is down or refuses us, don't hammer it
        for path in self.outbox.pending(study_uid):
            try:
                ds = self.outbox.read(path)
            except ValueError as e:  # corrupt or not what it claims: set aside, the others go on
                results.append(self._quarantine(study_uid, path, str(e)))
                continue
            result = {"kind": _kind(ds), "series_instance_uid": str(ds.SeriesInstanceUID),
                      "sop_instance_uid": str(ds.SOPInstanceUID), "status": "pending", "error": None}
            results.append(result)
            if blocked is not None:
                result["error"] = str(blocked)
                continue
            what = f"{result['kind']} {result['sop_instance_uid']} of study {study_uid}"
            try:
                if self._pacs_call(lambda: self.pacs.has_instance(study_uid, result["series_instance_uid"], result["sop_instance_uid"]),
                              f"look up {what} in {self.pacs.description}"):
                    result["status"] = "already_stored"
                else:
                    self._pacs_call(lambda: self.pacs.store(ds), f"store {what} in {self.pacs.description}")
                    result["status"] = "stored"
                kept = self.outbox.mark_stored(path)
                if kept is not None:
                    result["file"] = str(kept)
            except PacsRejectedError as e:
                result.update(status="rejected", error=str(e), file=str(self.outbox.mark_rejected(path, str(e))))
            except (PacsUnavailableError, PacsAuthError) as e:
                result["error"] = str(e)
                blocked = e
        return results

    def _quarantine(self, study_uid: str, path: Path, problem: str) -> dict[str, Any]:
        """Move an outbox file the step cannot use to ``rejected/`` with the reason; its result line."""
        reason = (f"{path.name} was set aside from the outbox of study {study_uid} without being stored: {problem}. "
                  f"Delete it when it is not needed; running the study again remakes its results.")
        result = {"kind": None, "series_instance_uid": None, "sop_instance_uid": path.stem, "status": "rejected", "error": reason}
        try:
            result["file"] = str(self.outbox.mark_rejected(path, reason))
            logger.warning("%s", reason)
        except OSError as e:
            result.update(status="pending", error=f"{reason} Moving it to rejected/ failed too: {e}")
            logger.error("%s", result["error"])
        return result


def _disk_full(e: BaseException) -> bool:
    """Whether ``e`` or an error under it is a full disk (ENOSPC, EDQUOT), also when a wrapper kept only its text."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if os.strerror(errno.ENOSPC) in str(x) or os.strerror(errno.EDQUOT) in str(x):
            return True
        stack += [x.__cause__, x.__context__, getattr(x, "cause", None)]
    return False


def _describe_os_error(e: OSError, work_dir: Path) -> str:
    where = f" ({e.filename})" if getattr(e, "filename", None) else f" (in {work_dir})"
    return f"{e.strerror or e}{where}"


def _kind(ds: pydicom.Dataset) -> str:
    if ds.SOPClassUID == pydicom.uid.ParametricMapStorage:
        return "parametric_map"
    return f"dicom_seg/{ds.get('SegmentationType', '')}"
