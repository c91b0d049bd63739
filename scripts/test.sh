#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then run them.
# Used by the README and by .ci/run; safe to run again (installs are skipped when present).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dciodvfy >/dev/null 2>&1; then
  # dicom3tools gives dciodvfy, the independent DICOM validator the I/O tests run on every SEG.
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dicom3tools >/dev/null
fi

python3 -m pip install -q -e ".[test]"

python3 -m pytest -q -n 2 --timeout 900 "$@"
