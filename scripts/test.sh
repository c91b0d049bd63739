#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then run them.
# Used by the README and by .ci/run; safe to run again (installs are skipped when present).
#
# The tests run from a virtual environment: the active one; else $MEDCAM_TEST_VENV, or ./.venv,
# made here when missing (Debian 12's system Python refuses `pip install` outside one, PEP 668).
# The MONAI Label and Deploy side venvs are layered on that environment's interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${MEDCAM_TEST_VENV:-}"
if [ -z "$venv" ] && ! python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
  venv=.venv  # python3 is a system interpreter: make a venv here
fi

# Debian packages the tests drive for real:
# - dicom3tools: dciodvfy, the independent DICOM validator run on every SEG and Parametric Map;
# - orthanc + orthanc-dicomweb: a real PACS for the pipeline step (run in a loopback-only namespace).
need=()
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
dpkg -s orthanc-dicomweb >/dev/null 2>&1 || need+=(orthanc-dicomweb)
command -v ip >/dev/null 2>&1 || need+=(iproute2)  # brings up lo inside the test namespace
if [ -n "$venv" ] && [ ! -x "$venv/bin/python" ] && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  need+=(python3-venv)  # Debian splits `python3 -m venv` into its own package
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # Debian would start the orthanc service (listening on every interface) on install: forbid
  # service starts during the install; the tests start their own Orthanc in a loopback-only namespace.
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ "$policy_added" -eq 0 ] || $SUDO rm -f /usr/sbin/policy-rc.d
  $SUDO service orthanc stop >/dev/null 2>&1 || true
fi

if [ -n "$venv" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
fi
echo "testing with $(command -v python3) ($(python3 -c 'import sys; print(sys.prefix)'))" >&2

python3 -m pip install -q -e ".[test]"

# MONAI Label 0.8.5 needs pydicom 2 and the Deploy SDK its own monai layout: each gets a venv layered
# on this environment (built once here, outside the parallel test workers; reruns are no-ops).
export PYTHON="$(command -v python3)"
bash scripts/setup_monailabel_env.sh >/dev/null
bash scripts/setup_deploy_env.sh >/dev/null

python3 -m pytest -q -n 2 --timeout 900 "$@"
