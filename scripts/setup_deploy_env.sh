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

want="$(cat "$0" "$(dirname "$0")/_layered_venv.sh" | sha256sum | cut -d' ' -f1)"
source "$(dirname "$0")/_layered_venv.sh"
layered_venv_start Deploy "$VENV" "$STAMP" "$want" "$SMOKE" "torch, monai, highdicom"
MONAI_VERSION="$("$PYTHON" -c 'import monai; print(monai.__version__)')"
"${PIP[@]}" install "$SDK"
"${PIP[@]}" install --no-deps --ignore-installed "monai==$MONAI_VERSION" filelock
layered_venv_finish Deploy "$VENV" "$STAMP" "$want" "$SMOKE"
