# Sourced by scripts/setup_*_env.sh: a venv layered on the main environment, i.e. on the interpreter
# that runs the script ($PYTHON), so that torch, monai and the rest are reused, not downloaded again.
# Rebuilt only when its inputs change or its smoke import fails.
#
# Why not `$PYTHON -m venv --system-site-packages`: run from a virtual environment (the usual way on
# Debian 12, whose system Python is externally managed) it layers the new venv on the venv's BASE
# interpreter (/usr/bin/python3), whose site-packages has no torch: the Deploy venv could not import
# torch and the MONAI Label venv downloaded torch again (7.9 GB). Instead the side venv is a plain
# venv of the same Python plus one .pth file that adds $PYTHON's site-packages (and runs their .pth
# hooks, e.g. editable installs) AFTER the side venv's own: its own packages (numpy 1.26, monai with
# monai/deploy, ...) shadow the main ones, everything else comes from the main environment. pip in
# the side venv sees the main packages as installed (nothing downloaded) and never uninstalls them
# ("outside environment").
#
#   layered_venv_start LABEL VENV STAMP WANT SMOKE NEEDS
#       exits 0 (printing the venv's python) when STAMP holds WANT and SMOKE imports; fails when the
#       main interpreter ($PYTHON) cannot import NEEDS; else (re)creates the venv and sets PIP.
#   layered_venv_finish LABEL VENV STAMP WANT SMOKE
#       checks that torch comes from the main environment and SMOKE imports, writes the stamp last,
#       prints the venv's python.
#   layered_venv_layer    prints the .pth line for $PYTHON (part of WANT: another main env rebuilds).

LAYER_PTH="zz_medcam_main_env.pth"  # sorted after the venv's own .pth files (editable installs first)

layered_venv_layer() {
  "$PYTHON" - <<'PY'
import os, site
dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs))
PY
}

_layered_venv_site() {
  "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))'
}

layered_venv_start() {
  local label=$1 venv=$2 stamp=$3 want=$4 smoke=$5 needs=$6
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && PYTHONPATH="$ROOT" "$venv/bin/python" -c "$smoke" >/dev/null 2>&1; then
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
  local layer
  layer="$(layered_venv_layer)"
  if [ -f "$venv/pyvenv.cfg" ]; then
    # a venv layered another way (--system-site-packages, another main environment) is made again
    if grep -qi '^include-system-site-packages *= *true' "$venv/pyvenv.cfg" \
        || [ "$(cat "$(_layered_venv_site "$venv")/$LAYER_PTH" 2>/dev/null)" != "$layer" ]; then
      echo "$label venv at $venv is not layered on $PYTHON: making it again" >&2
      rm -rf "$venv"
    fi
  fi
  if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
    # ensurepip's setuptools (older) would shadow the main environment's (torch wants a recent one)
    "$venv/bin/python" -m pip uninstall -y -q setuptools >/dev/null 2>&1 || true
    printf '%s\n' "$layer" > "$(_layered_venv_site "$venv")/$LAYER_PTH"
  fi
  PIP=("$venv/bin/python" -m pip -q --disable-pip-version-check)
}

layered_venv_finish() {
  local label=$1 venv=$2 stamp=$3 want=$4 smoke=$5
  # torch must be the main environment's: a copy inside the side venv means the layering failed
  local torch_file
  torch_file="$("$venv/bin/python" -c 'import torch; print(torch.__file__)')"
  case "$torch_file" in
    "$(cd "$venv" && pwd -P)"/*|"$venv"/*)
      echo "error: the $label venv installed its own torch ($torch_file) instead of using $PYTHON's" >&2
      exit 1 ;;
  esac
  PYTHONPATH="$ROOT" "$venv/bin/python" -c "$smoke"
  echo "$want" > "$stamp"
  echo "$label venv built in $((SECONDS - LAYERED_VENV_START)) s ($(du -sh "$venv" | cut -f1)): $venv" >&2
  echo "$venv/bin/python"
}
