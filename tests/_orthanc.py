"""A real Orthanc PACS (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the pipeline tests.

Orthanc 1.10 binds every interface and cannot be told to bind 127.0.0.1 only, so it is only ever
started inside a private network namespace that has nothing but loopback:
``tests/test_pipeline_orthanc.py`` runs ``tests/pipeline_orthanc_scenarios.py`` under
``unshare --net --pid --fork --kill-child`` (see its docstring). :func:`in_private_network`
guards every start.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

__all__ = ["Orthanc", "orthanc_missing", "in_private_network", "ORTHANC_BIN", "DICOMWEB_PLUGIN", "NETNS_ENV"]

ORTHANC_BIN = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # from `dpkg -L orthanc-dicomweb`
NETNS_ENV = "MEDCAM_TEST_PRIVATE_NETNS"
USER, PASSWORD = "medcam", "test-password"


def orthanc_missing() -> str | None:
    """Why the Orthanc tests cannot run here, or None."""
    missing = [name for name, ok in (
        ("Orthanc (Debian package `orthanc`)", shutil.which(ORTHANC_BIN)),
        (f"{DICOMWEB_PLUGIN} (Debian package `orthanc-dicomweb`)", DICOMWEB_PLUGIN.is_file()),
        ("unshare (util-linux)", shutil.which("unshare")),
        ("ip (iproute2)", shutil.which("ip")),
    ) if not ok]
    if missing:
        return "missing " + ", ".join(missing)
    probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--", "ip", "link", "set", "lo", "up"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot create a private network namespace (needs root or CAP_SYS_ADMIN): {probe.stderr.strip()[:200]}"
    return None


def in_private_network() -> bool:
    """True when this process has only a loopback interface (so nothing it starts is reachable from outside)."""
    names = [n for _, n in socket.if_nameindex()]
    return names == ["lo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc server, storage in ``root``; HTTP with authentication, DICOMweb plugin, DICOM port.

    Args:
        root: folder for the configuration, the database and the log.
        http_port, dicom_port: loopback ports (the namespace is private: any free port).
        aet: Orthanc's AE title.
        extra: more configuration entries.
    """

    def __init__(self, root: Path, http_port: int | None = None, dicom_port: int | None = None, aet: str = "ORTHANC",
                 extra: dict | None = None) -> None:
        if not in_private_network():
            raise RuntimeError("Refusing to start Orthanc outside a private network namespace (it binds every interface); "
                               "run it through tests/test_pipeline_orthanc.py.")
        self.root, self.aet = Path(root), aet
        self.http_port, self.dicom_port = http_port or free_port(), dicom_port or free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = {
            "Name": "medcam-test",
            "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,  # loopback clients only, in addition to the namespace
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "UnknownSopClassAccepted": False,  # Orthanc's default: refuses SOP classes DCMTK does not know
            "HttpTimeout": 30,
            "ConcurrentJobs": 1,
            **(extra or {}),
        }
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def dimse_url(self) -> str:
        return f"dimse://{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self, timeout: float = 60.0) -> Orthanc:
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(self.config, indent=1))
        log = open(self.root / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"http://127.0.0.1:{self.http_port}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self, kill: bool = False) -> None:
        """Stop Orthanc (SIGKILL with ``kill``: a crash) and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, n: int = 30) -> str:
        path = self.root / "orthanc.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.is_file() else "(no log)"

    def rest(self, method: str, path: str, **kwargs) -> requests.Response:
        r = requests.request(method, f"http://127.0.0.1:{self.http_port}{path}", auth=(USER, PASSWORD), timeout=30, **kwargs)
        r.raise_for_status()
        return r

    def upload(self, files: list[Path]) -> None:
        """Store files through Orthanc's REST API (the way a modality's images would arrive)."""
        for f in files:
            self.rest("POST", "/instances", data=Path(f).read_bytes())

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
