"""The MONAI Deploy App SDK example (deploy_app/, medcam_monai_deploy/): pydicom's real 5-slice CT
series in, a DICOM-SEG of its Seg-HiRes-Grad CAM out, checked against the source series.

The SDK lives in its own venv (scripts/setup_deploy_env.sh); where it cannot be built these tests
fail under CI (env var CI set) and are skipped with the reason otherwise.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup_deploy_env.sh"
VENV = Path(os.environ.get("MEDCAM_DEPLOY_VENV", ROOT / ".venv-deploy"))
CT5N = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def deploy_python() -> Path:
    VENV.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MEDCAM_DEPLOY_VENV": str(VENV), "PYTHON": sys.executable}
    with open(VENV.parent / f".{VENV.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers must not build the venv at once
        proc = subprocess.run(["bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=1500)
        fcntl.flock(lock, fcntl.LOCK_UN)
    if proc.returncode != 0:
        reason = f"scripts/setup_deploy_env.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return Path(proc.stdout.strip().splitlines()[-1])


def _run(python: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_app_writes_a_seg_on_the_source_series(deploy_python, tmp_path):
    weights = tmp_path / "model.pt"
    torch.manual_seed(0)
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=3, in_channels=1, out_channels=4, channels=(8, 16, 32, 64), strides=(2, 2, 2),
               num_res_units=1)
    torch.save({"model": net.state_dict()}, weights)
    out = tmp_path / "out"
    proc = _run(deploy_python, "-m", "deploy_app.app", "-i", str(CT5N), "-o", str(out), "-m", str(weights),
                cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    segs = list(out.glob("*.dcm"))
    assert len(segs) == 1, proc.stderr[-3000:]
    seg = pydicom.dcmread(segs[0])
    sources = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in CT5N.iterdir()}
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == next(iter(sources.values())).StudyInstanceUID
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["CAM 20-40%", "CAM 40-60%", "CAM 60-80%", "CAM 80-100%"]
    assert all(s.SegmentedPropertyTypeCodeSequence[0].CodeValue == "130403" for s in seg.SegmentSequence)
    assert (seg.Rows, seg.Columns) == (16, 16)
    referenced = {
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in seg.PerFrameFunctionalGroupsSequence
    }
    assert referenced <= set(sources)
    # each frame sits on a source slice: its position is one of the series' positions
    positions = {tuple(round(float(v), 3) for v in ds.ImagePositionPatient) for ds in sources.values()}
    for f in seg.PerFrameFunctionalGroupsSequence:
        assert tuple(round(float(v), 3) for v in f.PlanePositionSequence[0].ImagePositionPatient) in positions


def test_operator_keeps_the_volume_grid_and_inverts_padding(deploy_python, tmp_path):
    """The operator alone on an SDK Image: labels on the (D, H, W) voxels although the explainer saw
    a padded, transposed volume; heatmap bands and masks are labelled as documented."""
    script = tmp_path / "check.py"
    script.write_text(
        "import numpy as np, torch\n"
        "torch.set_num_threads(1)\n"
        "from monai.deploy.core import Fragment, Image\n"
        "from monai.transforms import Compose, DivisiblePadd\n"
        "from medcam_monai.explanation import Explanation, HEATMAP, MASK\n"
        "from medcam_monai_deploy import ExplainOperator, explanation_to_labels\n"
        "seen = {}\n"
        "def explainer(x):\n"
        "    seen['shape'] = tuple(x.shape)\n"
        "    ramp = torch.linspace(0, 1, x.shape[-1]).expand(x.shape).clone()\n"
        "    return Explanation(map=ramp, kind=HEATMAP, method='t', target=torch.zeros(1, 1, dtype=torch.long))\n"
        "op = ExplainOperator(Fragment(), explainer=explainer, pre_transforms=Compose([DivisiblePadd('image', k=8)]),"
        " levels=4, name='x')\n"
        "img = Image(np.zeros((5, 12, 10), np.float32), {'affine': np.diag([-2.0, -1.0, 3.0, 1.0])})\n"
        "out = op.explain_image(img)\n"
        "assert seen['shape'] == (1, 1, 16, 16, 8), seen\n"
        "labels = out.asnumpy()\n"
        "assert labels.shape == (5, 12, 10) and labels.dtype == np.uint8, labels.shape\n"
        "assert out.metadata()['affine'].tolist() == np.diag([-2.0, -1.0, 3.0, 1.0]).tolist()\n"
        "assert labels[0].max() == 0 and labels[-1].max() >= 1\n"
        "assert explanation_to_labels(torch.tensor([[0.0, 0.24, 0.25, 0.99, 1.0]]), HEATMAP, 4).tolist() == [0, 0, 1, 3, 3]\n"
        "assert explanation_to_labels(torch.tensor([[0.2, 0.7]]), MASK, 4).tolist() == [0, 1]\n"
        "print('ok')\n"
    )
    proc = _run(deploy_python, str(script), cwd=ROOT)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


class _RunsCode:
    """A pickle that runs a shell command when unpickled (what a hostile weights file does)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_app_refuses_weights_that_run_code(deploy_python, tmp_path):
    """Issue 14, finding 4: the app loads weights with weights_only=True, also where torch would not
    (torch < 2.6, or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, which this test sets)."""
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode(f"touch {marker}")}, evil)
    code = ("from pathlib import Path; from types import SimpleNamespace; from deploy_app.app import ExplainSegApp; "
            f"ExplainSegApp.network(SimpleNamespace(weights=Path({str(evil)!r})))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    proc = subprocess.run([str(deploy_python), "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert not marker.exists(), "loading the weights ran the pickle's command"
    assert proc.returncode != 0 and "UnpicklingError" in proc.stderr, proc.stderr[-3000:]
