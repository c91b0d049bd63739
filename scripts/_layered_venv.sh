# Sourced by scripts/setup_*_env.sh: a venv layered on the main environment (--system-site-packages,
# so torch and monai are reused), rebuilt only when its inputs change or its smoke import fails.
#
#   layered_venv_start LABEL VENV STAMP WANT SMOKE NEEDS
#       exits 0 (printing the venv's python) when STAMP holds WANT and SMOKE imports; fails when the
#       main interpreter ($PYTHON) cannot import NEEDS; else creates the venv and sets PIP.
#   layered_venv_finish LABEL VENV STAMP WANT SMOKE
#       checks SMOKE, writes the stamp last, prints the venv's python.

layered_venv_start() {
  local label=$1 venv=$2 stamp=$3 want=$4 smoke=$5 needs=$6
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "$smoke" >/dev/null 2>&1; then
    echo "$label venv is up to date: $venv" >&2
    echo "$venv/bin/python"
    exit 0
  fi
  if ! "$PYTHON" -c "import $needs" >/dev/null 2>&1; then
    echo "error: $PYTHON cannot import $needs; install the main environment first (pip install -e .)" >&2
    exit 1
  fi
  LAYERED_VENV_START=$SECONDS
  rm -f "$stamp"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$venv"
  PIP=("$venv/bin/python" -m pip -q --disable-pip-version-check)
}

layered_venv_finish() {
  local label=$1 venv=$2 stamp=$3 want=$4 smoke=$5
  "$venv/bin/python" -c "$smoke"
  echo "$want" > "$stamp"
  echo "$label venv built in $((SECONDS - LAYERED_VENV_START)) s: $venv" >&2
  echo "$venv/bin/python"
}
