"""The pipeline step against a real Orthanc PACS, run inside a private network namespace.

Orthanc 1.10 binds every interface and cannot be restricted to 127.0.0.1, so the scenarios in
``tests/pipeline_orthanc_scenarios.py`` (which start Orthanc and the step) run in a child pytest
under::

    unshare --net --pid --fork --kill-child --mount-proc -- bash -c 'ip link set lo up && python -m pytest ...'

- ``--net``: a network namespace with only ``lo``; Orthanc and the step talk over its 127.0.0.1
  and nothing outside can reach Orthanc (nor can the test reach anything outside).
- ``--pid --fork --kill-child``: the child pytest's shell is PID 1 of a new PID namespace and dies
  with ``unshare``; when it dies the kernel kills every process in the namespace, so no Orthanc
  survives a crash, a timeout (``subprocess.run(timeout=...)`` kills ``unshare``) or Ctrl-C.
- ``--mount-proc``: ``/proc`` shows the namespace's processes only; it implies a private mount
  namespace, where the full-disk scenario mounts its small tmpfs (gone with the namespace).

Needs root (or CAP_SYS_ADMIN) and the Debian packages ``orthanc`` and ``orthanc-dicomweb``. Where
they are missing the test is skipped with the reason, except under CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _orthanc import NETNS_ENV, orthanc_missing  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = "tests/pipeline_orthanc_scenarios.py"
TIMEOUT = 600  # each half, on 2 busy cores


@pytest.mark.parametrize("selection", ["not fault_injection", "fault_injection"], ids=["scenarios", "fault_injection"])
def test_pipeline_against_real_orthanc_in_private_network(tmp_path, selection):
    """The scenarios in two namespaces (each with its own Orthanc), so pytest-xdist runs them side by side."""
    reason = orthanc_missing()
    if reason:
        message = (f"Orthanc tests cannot run: {reason}. Install with `apt-get install orthanc orthanc-dicomweb` "
                   f"(as root; the test runs Orthanc in `unshare --net`).")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    inner = (f"ip link set lo up && {sys.executable} -m pytest -q -p no:cacheprovider -p no:xdist -p no:randomly "
             f"--basetemp {tmp_path / 'inner'} -o addopts=-ra --durations=8 -k '{selection}' {SCENARIOS}")
    env = {**os.environ, NETNS_ENV: "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    try:
        proc = subprocess.run(["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--", "bash", "-c", inner],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-6000:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-6000:]
        pytest.fail(f"the Orthanc scenarios ran past {TIMEOUT} s (every process of the namespace was killed):\n{out}")
    tail = proc.stdout[-8000:] + "\n--- stderr ---\n" + proc.stderr[-4000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.split("\n")[-2], tail
