"""PACS clients: DICOMweb (QIDO/WADO/STOW-RS with dicomweb-client) and DIMSE (C-FIND/C-STORE with pynetdicom).

Both offer the two operations the step needs to store without duplicates: ``has_instance`` (is
this SOP Instance already there?) and ``store`` (send one object). Failures become the step's
errors, so the caller knows what to retry: :class:`PacsUnavailableError` (down, busy, timing out:
retried), :class:`PacsAuthError` (credentials or association refused) and
:class:`PacsRejectedError` (the PACS refuses the object, e.g. its SOP class).

A PACS is named by a URL: ``http(s)://host:port/dicom-web`` (DICOMweb root) or
``dimse://AET@host:port`` (DIMSE). Credentials never go in the URL (URLs end up in logs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import pydicom

from medcam_monai.pipeline.errors import PacsAuthError, PacsRejectedError, PacsUnavailableError

__all__ = ["Pacs", "PacsAddress", "DicomWebPacs", "DimsePacs", "parse_pacs_url", "open_pacs", "LABELMAP_SEG_SOP_CLASS"]

LABELMAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"  # Label Map Segmentation Storage (2024)
logger = logging.getLogger("medcam_monai.pipeline")


def _sop_class_name(uid: str) -> str:
    if uid == LABELMAP_SEG_SOP_CLASS:
        return "Label Map Segmentation Storage"
    try:
        return pydicom.uid.UID(uid).name or uid
    except Exception:  # noqa: BLE001 - unknown UIDs have no name
        return uid


def _labelmap_hint(sop_class: str) -> str:
    if sop_class != LABELMAP_SEG_SOP_CLASS:
        return ""
    return (" LABELMAP segmentations use the Label Map Segmentation SOP class (added to DICOM in 2024), which many "
            "PACS do not know yet; Orthanc refuses it over C-STORE unless configured with \"UnknownSopClassAccepted\": true. "
            "Store a BINARY segmentation instead (--seg-type BINARY).")


@dataclass(frozen=True)
class PacsAddress:
    """A parsed PACS URL.

    Args:
        protocol: ``"dicomweb"`` or ``"dimse"``.
        url: the DICOMweb root (``http(s)://...``), or the DIMSE URL as given.
        host, port: network address.
        ae_title: the PACS's AE title (DIMSE only).
    """

    protocol: str
    url: str
    host: str
    port: int
    ae_title: str = ""


def parse_pacs_url(url: str) -> PacsAddress:
    """Parse ``http(s)://host[:port]/path`` (DICOMweb) or ``dimse://AET@host:port`` (DIMSE).

    Raises:
        ValueError: another scheme, a missing host/port/AE title, or credentials in the URL.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("The PACS URL is empty: give http(s)://host:port/dicom-web or dimse://AET@host:port.")
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"PACS URL {url!r} has an invalid port.") from None
    if scheme in ("http", "https"):
        if parts.username or parts.password:
            raise ValueError(
                f"PACS URL {parts.hostname!r}: do not put credentials in the URL (it is logged); use --pacs-user and "
                f"the MEDCAM_PACS_PASSWORD environment variable or --pacs-password-file."
            )
        if not parts.hostname:
            raise ValueError(f"PACS URL {url!r} has no host, e.g. http://127.0.0.1:8042/dicom-web.")
        return PacsAddress("dicomweb", url.strip().rstrip("/"), parts.hostname, port or (443 if scheme == "https" else 80))
    if scheme == "dimse":
        aet = parts.username or ""
        if not aet or len(aet) > 16 or "\\" in aet:
            raise ValueError(f"PACS URL {url!r} needs the PACS AE title (1-16 characters) before '@': dimse://ORTHANC@host:4242.")
        if not parts.hostname or port is None:
            raise ValueError(f"PACS URL {url!r} needs a host and port: dimse://{aet}@host:4242.")
        return PacsAddress("dimse", url.strip(), parts.hostname, port, aet)
    raise ValueError(f"PACS URL {url!r}: the scheme must be http(s):// (DICOMweb) or dimse:// (C-STORE), got {parts.scheme or 'none'!r}.")


class Pacs(Protocol):
    """What the step needs of a PACS."""

    description: str

    def has_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        """Whether the PACS holds the instance."""

    def store(self, ds: pydicom.Dataset) -> None:
        """Store one object (raises the step's PACS errors)."""


class DicomWebPacs:
    """A DICOMweb server (QIDO-RS, WADO-RS, STOW-RS) through dicomweb-client.

    Args:
        url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        user, password: HTTP basic credentials (both or neither).
        timeout: seconds to wait for the server to connect and to answer each request.
    """

    def __init__(self, url: str, user: str | None = None, password: str | None = None, timeout: float = 30.0) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        address = parse_pacs_url(url)
        if address.protocol != "dicomweb":
            raise ValueError(f"DicomWebPacs needs an http(s):// URL, got {url!r}; use DimsePacs for dimse://.")
        if (user is None) != (password is None):
            raise ValueError("Give both a PACS user and a password, or neither (the password comes from MEDCAM_PACS_PASSWORD or --pacs-password-file).")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}.")
        self.url, self.user, self.timeout = address.url, user, float(timeout)
        self.description = f"DICOMweb server {self.url}"
        session = requests.Session()
        if user is not None:
            session.auth = (user, password)
        self._client = DICOMwebClient(url=self.url, session=session, timeout=self.timeout)
        # dicomweb-client retries every failed request by default (5 tries, ~30 s of hidden waiting
        # on a refused connection); the step's RetryPolicy decides instead, and logs each retry
        self._client.set_http_retry_params(retry=False)

    def _call(self, fn, what: str):
        """Run a dicomweb-client call, turning transport and HTTP errors into the step's errors."""
        import requests

        try:
            return fn()
        except requests.exceptions.Timeout:
            raise PacsUnavailableError(f"{self.description} did not answer within {self.timeout:.0f} s ({what})") from None
        except requests.exceptions.ConnectionError as e:
            reason = str(e.args[0] if e.args else e)
            reason = "connection refused" if "refused" in reason.lower() else reason[-160:]
            raise PacsUnavailableError(f"{self.description} does not answer ({reason}) ({what})") from None
        except requests.exceptions.HTTPError as e:
            status = e.response.status_code if e.response is not None else 0
            body = (e.response.text or "").strip().replace("\n", " ")[:200] if e.response is not None else ""
            if status in (401, 403):
                who = f"user {self.user!r}" if self.user else "anonymous access (no --pacs-user given)"
                raise PacsAuthError(
                    f"{self.description} refused the credentials of {who} (HTTP {status}) while trying to {what}. Check "
                    f"--pacs-user and the password in MEDCAM_PACS_PASSWORD or --pacs-password-file."
                ) from None
            if status in (408, 429) or status >= 500:
                raise PacsUnavailableError(f"{self.description} is unavailable (HTTP {status}{': ' + body if body else ''}) ({what})") from None
            raise PacsRejectedError(f"{self.description} refused to {what} (HTTP {status}{': ' + body if body else ''})") from None

    # -- reading a study -------------------------------------------------------------------------
    def study_headers(self, study_uid: str) -> list[pydicom.Dataset]:
        """Every instance header of a study (WADO-RS metadata; no pixel data is transferred).

        Raises:
            PacsRejectedError: the server does not know the study (HTTP 404).
        """
        try:
            metadata = self._call(lambda: self._client.retrieve_study_metadata(study_uid), f"read study {study_uid}")
        except PacsRejectedError as e:
            if "HTTP 404" in str(e):
                raise PacsRejectedError(f"{self.description} has no study {study_uid} (HTTP 404): check the Study Instance UID.") from None
            raise
        # bulk data (pixels, large blobs) are links in the metadata; headers are all selection needs
        return [pydicom.Dataset.from_json(m, bulk_data_uri_handler=lambda *a: None) for m in metadata]

    def retrieve_series(self, study_uid: str, series_uid: str, folder: str | Path) -> list[Path]:
        """Download a series (WADO-RS) into ``folder``, one ``00000.dcm``, ``00001.dcm``, ... per instance.

        Files are named by position, never by a UID the server sent (it could hold ``../``).

        Raises:
            PacsRejectedError: the server sent an instance of another study or series.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        datasets = self._call(lambda: self._client.retrieve_series(study_uid, series_uid), f"retrieve series {series_uid}")
        paths = []
        for i, ds in enumerate(datasets):
            got = (str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")))
            if got != (study_uid, series_uid):
                raise PacsRejectedError(
                    f"{self.description} answered the request for series {series_uid} of study {study_uid} with an "
                    f"instance of series {got[1][:70]!r} of study {got[0][:70]!r}; nothing of it is used."
                )
            path = folder / f"{i:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths

    # -- storing -----------------------------------------------------------------------------------
    def has_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        """QIDO-RS: is ``sop_uid`` in the series?"""
        found = self._call(
            lambda: self._client.search_for_instances(
                study_instance_uid=study_uid, series_instance_uid=series_uid, search_filters={"SOPInstanceUID": sop_uid}
            ),
            f"look up instance {sop_uid}",
        )
        return any(pydicom.Dataset.from_json(f).get("SOPInstanceUID") == sop_uid for f in found or [])

    def store(self, ds: pydicom.Dataset) -> None:
        """STOW-RS one object; a Failed SOP Sequence in the answer raises with its reason."""
        sop_class = str(ds.SOPClassUID)
        what = f"store {_sop_class_name(sop_class)} {ds.SOPInstanceUID}"
        answer = self._call(lambda: self._client.store_instances([ds], study_instance_uid=str(ds.StudyInstanceUID)), what)
        failed = list(getattr(answer, "FailedSOPSequence", []) or []) if answer is not None else []
        if failed:
            reason = int(failed[0].get("FailureReason", 0) or 0)
            if reason & 0xFF00 == 0xA700:  # out of resources: try later
                raise PacsUnavailableError(f"{self.description} is out of resources (failure 0x{reason:04X}) ({what})")
            raise PacsRejectedError(
                f"{self.description} refused to {what} (STOW-RS failure reason 0x{reason:04X}"
                f"{': SOP class not supported' if reason == 0x0122 else ''}).{_labelmap_hint(sop_class)}"
            )


class DimsePacs:
    """A DIMSE-only PACS: C-FIND to look an instance up, C-STORE to store (pynetdicom).

    Args:
        host, port: the PACS's DICOM network address.
        ae_title: the PACS's (called) AE title.
        calling_ae_title: ours; the PACS must know it (most accept only registered AE titles).
        timeout: seconds for connecting, association and each DIMSE message.
    """

    def __init__(self, host: str, port: int, ae_title: str, calling_ae_title: str = "MEDCAM", timeout: float = 30.0) -> None:
        for name, aet in (("ae_title", ae_title), ("calling_ae_title", calling_ae_title)):
            if not aet or len(aet) > 16 or "\\" in aet:
                raise ValueError(f"{name} must be 1-16 characters without '\\', got {aet!r}.")
        if not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"port must be 1-65535, got {port!r}.")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}.")
        self.host, self.port, self.ae_title, self.calling_ae_title, self.timeout = host, port, ae_title, calling_ae_title, float(timeout)
        self.description = f"DICOM node {ae_title}@{host}:{port}"

    def _associate(self, contexts: list[tuple[str, list[str]]], what: str):
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.calling_ae_title)
        ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, syntaxes)
        # Verification is accepted by every SCP: with it the association is established even when
        # the PACS rejects the storage context, so we can say *which* SOP class it refused
        # (pynetdicom aborts an association with no accepted context, which looks like a PACS that is down)
        ae.add_requested_context(Verification)
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise PacsAuthError(
                f"{self.description} rejected the association from AE title {self.calling_ae_title!r} while trying to "
                f"{what}: check the PACS's AE title and that it knows ours (--calling-aet)."
            )
        raise PacsUnavailableError(f"{self.description} does not answer (no association) ({what})")

    def has_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        """C-FIND at IMAGE level (Study Root): is ``sop_uid`` in the series?"""
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        what = f"look up instance {sop_uid}"
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID, query.SeriesInstanceUID, query.SOPInstanceUID = study_uid, series_uid, sop_uid
        assoc = self._associate([(FIND, [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian])], what)
        found, final = False, None
        try:
            for status, identifier in assoc.send_c_find(query, FIND):
                final = None if status is None or "Status" not in status else int(status.Status)
                if final in (0xFF00, 0xFF01) and identifier is not None and identifier.get("SOPInstanceUID") == sop_uid:
                    found = True
        finally:
            assoc.release()
        if final is None or final & 0xFF00 == 0xA700:
            raise PacsUnavailableError(f"{self.description} gave no C-FIND answer ({what})")
        if final != 0x0000 and final not in (0xFF00, 0xFF01):
            raise PacsRejectedError(f"{self.description} refused C-FIND (status 0x{final:04X}) ({what})")
        return found

    def store(self, ds: pydicom.Dataset) -> None:
        """C-STORE one object in its own transfer syntax."""
        sop_class = str(ds.SOPClassUID)
        what = f"store {_sop_class_name(sop_class)} {ds.SOPInstanceUID}"
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or pydicom.uid.ExplicitVRLittleEndian)
        assoc = self._associate([(sop_class, [syntax])], what)
        try:
            if not any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts):
                raise PacsRejectedError(
                    f"{self.description} does not accept {_sop_class_name(sop_class)} ({sop_class}) over C-STORE "
                    f"(presentation context rejected).{_labelmap_hint(sop_class)}"
                )
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        code = None if status is None or "Status" not in status else int(status.Status)
        if code is None or code & 0xFF00 == 0xA700:
            raise PacsUnavailableError(f"{self.description} gave no C-STORE answer or is out of resources ({what})")
        if code in (0x0000, 0x0001, 0x0107, 0x0116) or code & 0xF000 == 0xB000:  # success and warnings: stored
            return
        raise PacsRejectedError(
            f"{self.description} refused to {what} (C-STORE status 0x{code:04X}"
            f"{': SOP class not supported' if code == 0x0122 else ''}).{_labelmap_hint(sop_class)}"
        )


def open_pacs(url: str, user: str | None = None, password: str | None = None, calling_ae_title: str = "MEDCAM",
              timeout: float = 30.0) -> DicomWebPacs | DimsePacs:
    """The client for a PACS URL (see :func:`parse_pacs_url`).

    Raises:
        ValueError: a malformed URL, or credentials given for DIMSE (which has none here).
    """
    address = parse_pacs_url(url)
    if address.protocol == "dicomweb":
        return DicomWebPacs(address.url, user, password, timeout)
    if user is not None:
        raise ValueError("--pacs-user applies to DICOMweb; a DIMSE PACS identifies us by our AE title (--calling-aet).")
    return DimsePacs(address.host, address.port, address.ae_title, calling_ae_title, timeout)
