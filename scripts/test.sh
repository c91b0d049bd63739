#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then run them.
# Used by the README and by .ci/run; safe to run again (installs are skipped when present).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real:
# - dicom3tools: dciodvfy, the independent DICOM validator run on every SEG and Parametric Map;
# - orthanc + orthanc-dicomweb: a real PACS for the pipeline step (run in a loopback-only namespace).
need=()
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
dpkg -s orthanc-dicomweb >/dev/null 2>&1 || need+=(orthanc-dicomweb)
command -v ip >/dev/null 2>&1 || need+=(iproute2)  # brings up lo inside the test namespace
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

python3 -m pip install -q -e ".[test]"

# MONAI Label 0.8.5 needs pydicom 2 and the Deploy SDK its own monai layout: each gets a venv on top
# of this environment (built once here, outside the parallel test workers; reruns are no-ops).
bash scripts/setup_monailabel_env.sh >/dev/null
bash scripts/setup_deploy_env.sh >/dev/null

python3 -m pytest -q -n 2 --timeout 900 "$@"
