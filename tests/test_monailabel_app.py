"""The MONAI Label explain app (monailabel_app/) served for real: its own venv, a server on loopback,
``/info`` and ``/infer/<task>`` over HTTP on a NIfTI volume, and the returned label map's geometry.

The venv (scripts/setup_monailabel_env.sh, cached between runs) is built once per test session; where
it cannot be built these tests fail under CI (env var CI set) and are skipped with the reason otherwise.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "monailabel_app"
SETUP = ROOT / "scripts" / "setup_monailabel_env.sh"
VENV = Path(os.environ.get("MEDCAM_MONAILABEL_VENV", ROOT / ".venv-monailabel"))
SHAPE = (40, 36, 24)

pytestmark = pytest.mark.slow


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI must build the MONAI Label venv: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def monailabel_python() -> Path:
    """The venv's interpreter, built (or found up to date) by the setup script under a file lock, so
    that pytest-xdist workers do not build the same venv at once."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    lock_path = VENV.parent / f".{VENV.name}.lock"
    env = {**os.environ, "MEDCAM_MONAILABEL_VENV": str(VENV), "PYTHON": sys.executable}
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            proc = subprocess.run(["bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=1500)
        except subprocess.TimeoutExpired:
            _unavailable("scripts/setup_monailabel_env.sh ran past 25 minutes")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if proc.returncode != 0:
        _unavailable(f"scripts/setup_monailabel_env.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def oblique_ct(path: Path) -> np.ndarray:
    """A CT-like volume whose affine is rotated, axis-swapped, flipped, anisotropic and offset."""
    rng = np.random.default_rng(0)
    theta = np.deg2rad(10)
    rotation = np.array([[0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)], [-1, 0, 0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.2, 0.9, 2.0])
    affine[:3, 3] = [-30.0, 20.0, 15.0]
    volume = rng.normal(40, 40, SHAPE).astype(np.float32)
    volume[10:25, 12:24, 8:16] += 120  # a bright block, so the image is not pure noise
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    return affine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post_infer(base: str, task: str, image: str, params: dict, timeout: float = 300):
    """POST /infer/<task>?image=<id>&output=all (multipart form with ``params``, as the Slicer module
    sends it); returns the parsed multipart reply: ``{"params": dict, "image": (filename, bytes)}``."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{json.dumps(params)}\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    url = f"{base}/infer/{task}?" + urllib.parse.urlencode({"image": image, "output": "all"})
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        content_type = response.headers["Content-Type"]
        payload = response.read()
    import email.parser
    import email.policy

    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + payload
    )
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name == "params":
            parts["params"] = json.loads(part.get_content())
        else:
            parts[name] = (part.get_filename(), part.get_payload(decode=True))
    return parts


@pytest.fixture(scope="module")
def server(monailabel_python, tmp_path_factory):
    """``monailabel start_server`` on a free loopback port with a copy of the app (weights written
    into its model/ folder) and a studies folder holding one oblique NIfTI volume."""
    work = tmp_path_factory.mktemp("monailabel")
    app = work / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("tests", "model", "logs", "__pycache__"))
    subprocess.run([str(monailabel_python), str(app / "make_demo_weights.py"), "--model-dir", str(app / "model")],
                   check=True, capture_output=True, timeout=300)
    studies = work / "studies"
    studies.mkdir()
    affine = oblique_ct(studies / "ct.nii.gz")
    port = free_port()
    log = open(work / "server.log", "w")
    bin_dir = str(monailabel_python.parent)
    # the `monailabel` launcher runs `python -m monailabel.main`: the venv's python must come first
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "VIRTUAL_ENV": str(monailabel_python.parent.parent),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           # the datastore must not start background jobs on the shared CI cores
           "MONAI_LABEL_AUTO_UPDATE_SCORING": "false", "MONAI_LABEL_SESSIONS": "false",
           "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false", "MONAI_LABEL_TASKS_TRAIN": "false"}
    cmd = [os.path.join(bin_dir, "monailabel"), "start_server", "--app", str(app), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port), "--conf", "threads", "1", "--conf", "medcam_steps", "300"]
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        info = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"monailabel exited with {proc.returncode}:\n{(work / 'server.log').read_text()[-4000:]}")
            try:
                info = get_json(f"{base}/info/", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        if info is None:
            raise AssertionError(f"no /info in 240 s:\n{(work / 'server.log').read_text()[-4000:]}")
        yield {"base": base, "info": info, "affine": affine, "studies": studies, "log": work / "server.log"}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


def test_info_lists_the_explain_tasks(server):
    models = server["info"]["models"]
    assert set(models) == {"seg_hires_grad_cam", "medcam"}
    assert models["seg_hires_grad_cam"]["labels"] == {"CAM 20-40%": 1, "CAM 40-60%": 2, "CAM 60-80%": 3,
                                                      "CAM 80-100%": 4}
    assert models["seg_hires_grad_cam"]["config"]["class"] == "tumor"
    assert models["medcam"]["labels"] == {"evidence": 1}
    assert models["medcam"]["config"]["steps"] == 300
    assert server["info"]["datastore"]["total"] == 1


def _returned_label(parts) -> nib.Nifti1Image:
    filename, data = parts["image"]
    assert filename.endswith(".nii.gz")
    return nib.Nifti1Image.from_bytes(__import__("gzip").decompress(data))


def test_seg_hires_grad_cam_over_http_on_the_source_grid(server):
    parts = post_infer(server["base"], "seg_hires_grad_cam", "ct", {"pixels": "image", "save_label": True})
    label = _returned_label(parts)
    assert label.shape == SHAPE
    np.testing.assert_allclose(label.affine, server["affine"], atol=1e-4)
    values = np.unique(np.asarray(label.dataobj))
    assert set(values.tolist()) <= {0, 1, 2, 3, 4} and len(values) > 1
    record = parts["params"]["explanation"]
    assert record["method"] == "seg_hires_grad_cam" and record["class_name"] == "tumor"
    assert parts["params"]["label_names"]["CAM 80-100%"] == 4
    # an explanation is never stored as the image's label, even when the client asks to save it
    labels = server["studies"] / "labels"
    assert not labels.exists() or not [p for p in labels.rglob("*") if p.is_file()]


def test_medcam_over_http_on_the_source_grid(server):
    parts = post_infer(server["base"], "medcam", "ct", {"steps": 3})
    label = _returned_label(parts)
    assert label.shape == SHAPE
    np.testing.assert_allclose(label.affine, server["affine"], atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1}
    record = parts["params"]["explanation"]
    assert record["method"] == "medcam" and record["kind"] == "mask"
    assert 0 < record["steps"] <= 3
    assert {"prob_x", "prob_e", "decision_kept", "area_fraction"} <= set(record["scores"])


def test_bad_parameter_is_an_http_error(server):
    with pytest.raises(urllib.error.HTTPError) as err:
        post_infer(server["base"], "seg_hires_grad_cam", "ct", {"class": "liver"})
    assert err.value.code >= 400


def test_app_unit_tests_in_its_venv(monailabel_python):
    """The app's own unit tests (monailabel_app/tests) need monailabel, so they run in its venv."""
    proc = subprocess.run(
        [str(monailabel_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", str(APP / "tests")],
        cwd=APP, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
