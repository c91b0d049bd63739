#!/usr/bin/env bash
# Build (or check) the virtual environment for the MONAI Deploy App SDK operator and example app
# (medcam_monai_deploy/, deploy_app/). Measured here: ~80 s and ~470 MB (holoscan-cu13, cupy-cuda13x,
# tritonclient); holoscan runs on a CPU-only machine.
#
#   MEDCAM_DEPLOY_VENV  where the venv goes (default: <repo>/.venv-deploy)
#   PYTHON              the main environment's interpreter (default: python3)
#
# The venv is made with --system-site-packages on top of the main environment (torch, monai,
# highdicom, pydicom 3 are reused). Two fixes make the SDK work in such a layered venv:
# - monai is installed again (same version, no dependencies, ~3 MB) inside the venv: the SDK puts
#   its code in monai/deploy/, and a `monai` package outside the venv would hide it;
# - filelock is installed inside the venv: holoscan's wheel-axle .pth hook imports it at start-up,
#   before the system site-packages are on sys.path.
# Idempotent (a stamp of this script's hash); prints the venv's python on its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${MEDCAM_DEPLOY_VENV:-$ROOT/.venv-deploy}"
PYTHON="${PYTHON:-python3}"
SDK="monai-deploy-app-sdk==4.0.0"
STAMP="$VENV/.medcam-deploy-stamp"
SMOKE='import holoscan, medcam_monai.cam; from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator'

want="$(sha256sum "$0" | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "$SMOKE" >/dev/null 2>&1; then
  echo "Deploy venv is up to date: $VENV" >&2
  echo "$VENV/bin/python"
  exit 0
fi
if ! "$PYTHON" -c "import torch, monai, highdicom" >/dev/null 2>&1; then
  echo "error: $PYTHON lacks torch/monai/highdicom; install the main environment first (pip install -e .)" >&2
  exit 1
fi
start=$SECONDS
rm -f "$STAMP"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
MONAI_VERSION="$("$PYTHON" -c 'import monai; print(monai.__version__)')"
"${PIP[@]}" install "$SDK"
"${PIP[@]}" install --no-deps --ignore-installed "monai==$MONAI_VERSION" filelock
"$VENV/bin/python" -c "$SMOKE"
echo "$want" > "$STAMP"
echo "Deploy venv built in $((SECONDS - start)) s: $VENV" >&2
echo "$VENV/bin/python"
