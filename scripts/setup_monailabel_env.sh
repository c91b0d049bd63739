#!/usr/bin/env bash
# Build (or check) the virtual environment that runs the MONAI Label explain app (monailabel_app/).
#
# MONAI Label 0.8.5 needs numpy<2, the main environment numpy 2, so the app gets its own venv. It is
# layered on the main environment (scripts/_layered_venv.sh): torch, monai, nibabel and itk are
# reused (torch is never downloaded again; the build fails if it would be) and the venv's own
# packages (monailabel and its locked dependencies, numpy 1.26 among them) shadow the main ones.
# Size and build time: see the README's set-up section (measured there).
#
#   MEDCAM_MONAILABEL_VENV  where the venv goes (default: <repo>/.venv-monailabel)
#   PYTHON                  the main environment's interpreter (default: python3, i.e. the active venv's)
#
# Idempotent: a stamp holding the hash of the requirement files, these scripts and the layering is
# written last; when it matches and the smoke import passes, nothing is done. Prints the venv's
# python path on its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${MEDCAM_MONAILABEL_VENV:-$ROOT/.venv-monailabel}"
PYTHON="${PYTHON:-python3}"
REQ="$ROOT/monailabel_app/requirements.txt"
CON="$ROOT/monailabel_app/constraints.txt"
STAMP="$VENV/.medcam-monailabel-stamp"
SMOKE='import monailabel, numpy, torch, monai, medcam_monai.cam, medcam_monai.medcam; assert numpy.__version__.startswith("1."), numpy.__version__'

source "$(dirname "$0")/_layered_venv.sh"
want="$( (cat "$REQ" "$CON" "$0" "$(dirname "$0")/_layered_venv.sh"; layered_venv_layer) | sha256sum | cut -d' ' -f1)"
layered_venv_start "MONAI Label" "$VENV" "$STAMP" "$want" "$SMOKE" "torch, monai"

# sam2 (a monailabel dependency) ships only as an sdist whose build requires torch: built in pip's
# isolated build environment it downloads a full CUDA torch (several GB, ~3.5 min) just to read its
# metadata. Built against the torch already here, without its CUDA extension, it takes seconds.
"${PIP[@]}" install -c "$CON" "setuptools>=70.1" wheel
SAM2_BUILD_CUDA=0 "${PIP[@]}" install --no-build-isolation --no-deps -c "$CON" sam2

"${PIP[@]}" install -r "$REQ" -c "$CON"
# The project itself, without its dependencies (highdicom, pydicom 3 pins): the app imports only the
# explainers, which need torch, monai and tqdm.
"${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"

layered_venv_finish "MONAI Label" "$VENV" "$STAMP" "$want" "$SMOKE"
