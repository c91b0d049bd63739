"""Misbehaving PACS for the pipeline tests, on 127.0.0.1 only (unlike Orthanc, these bind loopback).

- :class:`FakeDicomWeb`: a minimal DICOMweb server (WADO-RS metadata and series retrieval, QIDO-RS
  instance search, STOW-RS) serving the datasets it is given as they are: hostile UIDs included.
  ``store_status`` makes every STOW-RS answer an HTTP error (e.g. 503).
- :class:`SilentServer`: accepts TCP connections and never answers (a hung PACS).
- :class:`FailingStoreProxy`: forwards to a real server but answers STOW-RS with HTTP 5xx while told to.

Written here rather than taken from a library because the point is to misbehave in ways a real
server (Orthanc, dcm4chee) never would; each piece is the few lines of HTTP its test needs.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from urllib.parse import unquote, urlsplit

import pydicom

__all__ = ["FakeDicomWeb", "SilentServer", "FailingStoreProxy"]


def _bytes_of(ds: pydicom.Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class _LocalHttpServer:
    """A ``ThreadingHTTPServer`` on a free loopback port, served from a daemon thread while the
    ``with`` block runs (the one start/stop of the fake servers below)."""

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeDicomWeb(_LocalHttpServer):
    """A DICOMweb root at ``http://127.0.0.1:<port>/dicom-web`` holding ``datasets``.

    Args:
        datasets: the instances it holds (served as given: their UIDs are never checked).
        store_status: HTTP status for every STOW-RS request (``None``: answer 200).
        whole_study_for_series: answer a series request with every instance of the study (a confused server).
    """

    def __init__(self, datasets: list[pydicom.Dataset], store_status: int | None = None, whole_study_for_series: bool = False) -> None:
        self.datasets = list(datasets)
        self.store_status = store_status
        self.whole_study_for_series = whole_study_for_series
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes = b"", ctype: str = "application/dicom+json", extra: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake.requests.append(f"GET {self.path}")
                url = urlsplit(self.path)
                parts = [unquote(p) for p in url.path.split("/studies/", 1)[-1].split("/")]
                study = parts[0]
                mine = [ds for ds in fake.datasets if str(ds.StudyInstanceUID) == study]
                if url.path.endswith("/metadata"):
                    body = [ds.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda e: "") for ds in mine]
                    return self._send(200 if body else 404, json.dumps(body).encode())
                if url.path.endswith("/instances"):  # QIDO-RS: it holds none of the step's outputs
                    return self._send(204)
                if "series" in parts:  # WADO-RS series: multipart/related of application/dicom
                    series = "/".join(parts[parts.index("series") + 1:])
                    boundary = "medcam-fake-boundary"
                    body = b""
                    for ds in mine:
                        if str(ds.SeriesInstanceUID) == series or fake.whole_study_for_series:
                            body += (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode() + _bytes_of(ds) + b"\r\n"
                    body += f"--{boundary}--\r\n".encode()
                    return self._send(200, body, f'multipart/related; type="application/dicom"; boundary={boundary}')
                return self._send(404)

            def do_POST(self) -> None:  # noqa: N802
                fake.requests.append(f"POST {self.path}")
                self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                if fake.store_status is not None:
                    return self._send(fake.store_status, b"Service Unavailable (test)", "text/plain")
                return self._send(200, b"{}")  # stored objects are not kept: no test here stores for real

        self._serve(Handler)

    @property
    def url(self) -> str:
        return f"{self.origin}/dicom-web"


class SilentServer:
    """Listens on 127.0.0.1, accepts every connection and never sends a byte (a hung PACS)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)  # held open, never read from or written to

    def __enter__(self) -> SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


HOP_BY_HOP = ("content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive",
              "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade")


class FailingStoreProxy(_LocalHttpServer):
    """An HTTP proxy in front of a DICOMweb server that answers every STOW-RS (POST) with
    ``store_status`` (e.g. 503) while ``failing`` is true, and forwards everything else (and, once
    ``failing`` is false, the POSTs too): a PACS whose storage is briefly down, reads still working.

    Args:
        target: the real server's origin, e.g. ``http://127.0.0.1:8042``.
        store_status: the HTTP status of a refused store.
    """

    def __init__(self, target: str, store_status: int = 503) -> None:
        import requests

        self.target, self.store_status, self.failing = target.rstrip("/"), store_status, True
        self.refused_posts = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)) if method == "POST" else None
                if method == "POST" and proxy.failing:
                    proxy.refused_posts += 1
                    payload = b"storage temporarily unavailable (test)"
                    self.send_response(proxy.store_status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                r = requests.request(method, proxy.target + self.path, headers=headers, data=body, timeout=60)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                # this HTTP/1.0 server closes every connection; a forwarded "Keep-Alive" would make the
                # client reuse a closed socket, and on a busy machine a store then fails with a reset
                # before it reaches the proxy (an attempt the proxy never counts)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(r.content)

            def do_GET(self) -> None:  # noqa: N802
                self._forward("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._forward("POST")

        self._serve(Handler)

    def url(self, path: str = "/dicom-web") -> str:
        return f"{self.origin}{path}"


def object_with_identity(src, identity, dest):
    """A copy of the DICOM file ``src`` carrying ``identity``'s UIDs and Series Number, as the DICOM writers
    write them (a stand-in for a SEG or Parametric Map waiting in the outbox)."""
    import pydicom

    ds = pydicom.dcmread(src)
    ds.SeriesInstanceUID = identity.series_instance_uid
    ds.SOPInstanceUID = identity.sop_instance_uid
    ds.SeriesNumber = identity.series_number
    ds.file_meta.MediaStorageSOPInstanceUID = identity.sop_instance_uid
    ds.save_as(dest, enforce_file_format=True)
    return dest
