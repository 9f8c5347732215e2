#!/usr/bin/env bash
# Every GPU check in one command, for a GPU machine lent for a few minutes with no network:
# partbench installed from this tree (its own packages from wheels in .whl/ where the machine
# lacks them), the CUDA tests, then the study-scale check at full size. Logs and figures go
# to $OUT (default ./gpu-check); arguments go to study_scale.py (--skip-ade, --images N).
#
#     bash benchmarks/gpu_check.sh
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
} | tee "$out/machine.txt"

python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_metrics.py benchmarks/test_retrieval.py \
    2>&1 | tee "$out/cuda_tests.txt"
python3 benchmarks/study_scale.py --out "$out/study_scale.json" "$@" 2>&1 | tee "$out/study_scale.txt"
