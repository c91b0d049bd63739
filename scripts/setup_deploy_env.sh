#!/usr/bin/env bash
# Build (or check) the virtual environment for the MONAI Deploy App SDK operator and example app
# (medcam_monai_deploy/, deploy_app/): holoscan-cu13, cupy-cuda13x, tritonclient; holoscan runs on a
# CPU-only machine. Size and build time: see the README's set-up section (measured there).
#
#   MEDCAM_DEPLOY_VENV  where the venv goes (default: <repo>/.venv-deploy)
#   PYTHON              the main environment's interpreter (default: python3, i.e. the active venv's)
#
# The venv is layered on the main environment (scripts/_layered_venv.sh: torch, monai, highdicom,
# pydicom 3 are reused). Two fixes make the SDK work in such a layered venv:
# - monai is installed again (same version, no dependencies, ~3 MB) inside the venv: the SDK puts
#   its code in monai/deploy/, and the main environment's `monai` package would hide it;
# - filelock is installed inside the venv: holoscan's wheel-axle .pth hook imports it at start-up,
#   before the main environment's site-packages are on sys.path.
# Idempotent (a stamp of this script, the helper and the layering); prints the venv's python last.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${MEDCAM_DEPLOY_VENV:-$ROOT/.venv-deploy}"
PYTHON="${PYTHON:-python3}"
SDK="monai-deploy-app-sdk==4.0.0"
STAMP="$VENV/.medcam-deploy-stamp"
SMOKE='import holoscan, medcam_monai.cam; from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator'

source "$(dirname "$0")/_layered_venv.sh"
want="$( (cat "$0" "$(dirname "$0")/_layered_venv.sh"; layered_venv_layer) | sha256sum | cut -d' ' -f1)"
layered_venv_start Deploy "$VENV" "$STAMP" "$want" "$SMOKE" "torch, monai, highdicom"
MONAI_VERSION="$("$PYTHON" -c 'import monai; print(monai.__version__)')"
"${PIP[@]}" install --ignore-installed filelock  # first, in the venv itself: holoscan's hook needs it before the main env is on sys.path
"${PIP[@]}" install "$SDK"
"${PIP[@]}" install --no-deps --ignore-installed "monai==$MONAI_VERSION"
layered_venv_finish Deploy "$VENV" "$STAMP" "$want" "$SMOKE"
