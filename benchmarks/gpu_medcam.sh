#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md for issue 12, as one run on a lent GPU machine (a device
# lease is short: every command has its own time limit and the rows are written as they come).
#
#   bash benchmarks/gpu_medcam.sh            # rows and log under $OUT (default outputs/gpu_medcam)
#   ONLY="vit r18_224_bf16" bash benchmarks/gpu_medcam.sh    # some of the commands
#
# Where MONAI is not installed (the device image has torch and timm, not MONAI), its wheel is
# taken from .whl/ (python3 -m pip download --no-deps --only-binary=:all: -d .whl monai).
set -uo pipefail
OUT=${OUT:-outputs/gpu_medcam}
mkdir -p "$OUT"
if ! python3 -c "import monai" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
CACHE=${CACHE:-/tmp/bench_medcam_cache}

rows() {  # rows NAME SECONDS ARGS...: one bench command; its rows in the log as they come and in NAME.json
    local name=$1 limit=$2
    shift 2
    [[ -z "${ONLY:-}" || " $ONLY " == *" $name "* ]] || return 0
    echo "== $name ($limit s at most): $*"
    local start=$SECONDS
    timeout "$limit" python3 benchmarks/bench_medcam.py --device cuda --threads 8 --cache "$CACHE" \
        --json "$OUT/$name.json" "$@"
    echo "== $name: exit $? after $((SECONDS - start)) s"
}

{
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    python3 -c "import torch, timm, monai; print('torch', torch.__version__, 'timm', timm.__version__, 'monai', monai.__version__)"
    # the speed setting: ResNet-18 at 224 px, 32 cases as one batch (vectorised U-Nets)
    rows r18_224 140 --families resnet18 --size 224 --epochs 3 --rows amortised --cases 32 --batch 32 --train 1200
    rows densenet3d 110 --families densenet3d --rows --cases 16 --batch 16 --train 2000
    rows vit 200 --families vit_s16 --rows amortised --cases 16 --batch 16 --train 2000
    # the amortised rows with the U-Nets one after the other (the loop of CPU runs)
    rows r18_224_loop 50 --families resnet18 --size 224 --epochs 3 --rows amortised --amortised-only --cases 32 --batch 32 --train 1200 --medcam vectorise=false
    # bfloat16 autocast for the classifier and the U-Nets
    rows r18_224_bf16 80 --families resnet18 --size 224 --epochs 3 --rows amortised --amortised-only --cases 32 --batch 32 --train 1200 --medcam amp=bf16
    # ViT with the previous ranking (by the soft mask alone)
    rows vit_soft_rank 50 --families vit_s16 --rows --cases 16 --batch 16 --train 2000 --medcam rank=soft
    rows convnext 110 --families convnext_atto --rows amortised --cases 16 --batch 16 --train 6000 --epochs 40
} 2>&1 | tee "$OUT/log.txt"
