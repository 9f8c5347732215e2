#!/usr/bin/env bash
# Every GPU check in one command, for a GPU machine lent for a few minutes with no network:
# partbench installed from this tree (its own packages from wheels in .whl/ where the machine
# lacks them), the disk's write speed, timm's benchmark.py as the peer of partbench's forward
# on the card (when TIMM_SOURCE names a folder holding it: it is in timm's source repository,
# not in this one nor in timm's wheel, so it travels with the call), the study-scale check at
# full size with each step's --dry-run forecast beside it, then the CUDA tests. Logs and
# figures go to $OUT (default ./gpu-check); arguments go to study_scale.py (--skip-cub,
# --skip-ade, --skip-ade-full, --images N, --ade-study-limit N for part-seg at the study's
# 512 px windows on N images a split).
#
#     TIMM_SOURCE=.timm bash benchmarks/gpu_check.sh --ade-study-limit 500
#
# A lent card's call stops at 10 minutes, so the steps can be split over calls, most wanted first:
#
#     TIMM_SOURCE=.timm bash benchmarks/gpu_check.sh --skip-ade            # the peer, CUB cold and warm
#     bash benchmarks/gpu_check.sh --skip-cub                              # ADE20K-Part at full size
#     bash benchmarks/gpu_check.sh --skip-cub --skip-ade-full --ade-study-limit 500   # 512 px windows
#
# The study-scale figures are printed step by step as they come, so a run stopped by a time
# limit still returns the steps it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

if ! python3 -c "import sqlalchemy, alembic" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "sqlalchemy and alembic are missing and .whl/ holds no wheels for them" >&2
        exit 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# Entry points register the built-in plugins, so partbench is installed, not just imported.
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
    || { cat "$out/install.log"; exit 1; }

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
    nproc
    free -g
} | tee "$out/machine.txt"

# The disk the feature cache is written to, and the memory-backed /dev/shm beside it: the one
# earlier H100 measurement suspected the disk of holding the extraction back.
scratch=${SCRATCH:-/tmp/partbench-study-scale}
mkdir -p "$scratch"
{
    df -h "$scratch" /dev/shm
    echo "vm.dirty_ratio $(cat /proc/sys/vm/dirty_ratio) vm.dirty_background_ratio $(cat /proc/sys/vm/dirty_background_ratio)"
    echo "4 GiB to $scratch, into the page cache:"
    dd if=/dev/zero of="$scratch/dd.bin" bs=64M count=64 2>&1 | tail -1
    echo "4 GiB to $scratch, synced to the disk:"
    dd if=/dev/zero of="$scratch/dd.bin" bs=64M count=64 conv=fdatasync 2>&1 | tail -1
    rm -f "$scratch/dd.bin"
} | tee "$out/disk.txt"

# First, as it is short: ViT-B/16 in bf16 at batch 256, three rounds of benchmark.py and
# partbench's forward, each in a fresh process, and one real pass end to end.
if [ -n "${TIMM_SOURCE:-}" ]; then
    timeout 300 python3 benchmarks/timm_peer.py --timm-source "$TIMM_SOURCE" --device cuda --precision bf16 \
        --batch-size 256 --warm 10 --iters 50 --rounds 3 --images 400 --model vit_base_patch16_224 \
        --out "$out/timm_peer.json" 2>&1 | tee "$out/timm_peer.txt"
else
    echo "TIMM_SOURCE is not set: timm's benchmark.py as the peer is skipped" | tee "$out/timm_peer.txt"
fi

# With room in /dev/shm, the cold CUB step runs a second time with its cache there: the same
# pass with the disk taken out.
again=()
if [ "$(df --output=avail -BG /dev/shm | tail -1 | tr -dc 0-9)" -ge 24 ]; then
    again=(--cold-again-with-cache /dev/shm)
fi
python3 benchmarks/study_scale.py --work-dir "$scratch" --out "$out/study_scale.json" "${again[@]}" "$@" \
    2>&1 | tee "$out/study_scale.txt"

timeout 120 python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_metrics.py benchmarks/test_retrieval.py \
    2>&1 | tee "$out/cuda_tests.txt"
