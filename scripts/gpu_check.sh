#!/usr/bin/env bash
# The checks that need a CUDA device, sized for under 5 minutes on one H200 (docs/running.md, "Checks on a GPU"):
#   1. the tests marked gpu_check on CUDA (DYTOX_TEST_DEVICE=cuda): the model's fast and plain paths with SDPA,
#      forward and gradients, float16 and bfloat16 autocast, the float16 loss scaler;
#   2. a 2-task demo run with --device cuda --amp;
#   3. a --deterministic run stopped by SIGTERM and resumed on CUDA, equal to an uninterrupted one
#      (scripts/lib/gpu_resume_check.py);
#   4. scripts/check_compile.py --device cuda: the compiled model's outputs and gradients against eager mode;
#   5. scripts/bench_model.py --device cuda --count-ops: the operations and host synchronisations of a training
#      step on CUDA (10 tokens, batch 128; float32 and float16 with loss scaling, fused AdamW for the latter);
#   6. scripts/bench_model.py --device cuda: the published CIFAR model at 10 tokens, batch 128 and 256, float16
#      and bfloat16, eager and compiled (--compile), images/s and GPU memory; plain and fast at 1 and 50 tokens.
# All figures go into one JSON: GPU_CHECK_JSON (default gpu_check.json in the current folder). Without CUDA it
# prints why and exits 0. Other outputs go to a temporary folder, deleted at the end; set GPU_CHECK_OUT=DIR to
# keep them in DIR. The first failing step stops the script with a non-zero exit. Not yet timed on a GPU: the
# compiled configurations (five inductor compilations) are the largest unknown of the 5-minute budget.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=python
if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; fi

# First, before anything else: is there a GPU? Empty without CUDA; a python without torch fails here, not a skip.
gpus=$("$PYTHON" -c "import torch; torch.cuda.is_available() and print(f'{torch.cuda.device_count()} CUDA \
device(s), {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}')")
if [[ -z "$gpus" ]]; then
    echo "gpu_check: skipped: CUDA is not available (torch.cuda.is_available() is False for $PYTHON)"
    exit 0
fi

if [[ -n "${GPU_CHECK_OUT:-}" ]]; then
    work=$GPU_CHECK_OUT
    mkdir -p "$work"
    kept="outputs kept in $work"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    kept="outputs deleted; GPU_CHECK_OUT=DIR keeps them"
fi
export PYTHONDONTWRITEBYTECODE=1  # nothing written into the repository

step() {  # step NAME COMMAND...: run it, print its time; stop the script if it fails
    local name=$1 start=$SECONDS
    shift
    echo "== $name"
    if ! "$@"; then
        echo "gpu_check: FAILED: $name ($kept)" >&2
        exit 1
    fi
    echo "-- $name: $((SECONDS - start)) s"
}

echo "gpu_check: $gpus; outputs in $work"
step "tests on CUDA (pytest -m gpu_check)" \
    env DYTOX_TEST_DEVICE=cuda "$PYTHON" -m pytest -m gpu_check --basetemp "$work/pytest"
step "demo run, 2 tasks, --device cuda --amp" \
    "$PYTHON" main.py --options options/data/digits_demo.yaml options/model/demo_tiny.yaml --name gpu_demo \
    --device cuda --amp --max-task 2 --base-epochs 2 --epochs 2 --finetuning-epochs 1 --num-workers 0 \
    --no-progress --output-basedir "$work/demo/outputs" --log-dir "$work/demo/logs"
step "--deterministic resume on CUDA (--amp)" \
    "$PYTHON" scripts/lib/gpu_resume_check.py --device cuda --amp --work-dir "$work/resume"
step "check_compile.py --device cuda: --compile (inductor) against eager, training mode, stochastic depth" \
    "$PYTHON" scripts/check_compile.py --device cuda
step "bench_model.py --device cuda --count-ops: 10 tokens, batch 128" \
    "$PYTHON" scripts/bench_model.py --device cuda --count-ops --tokens 10 --modes fast --kinds train eval \
    --batch 128 --json "$work/count_ops_float32.json"
step "bench_model.py --device cuda --count-ops: float16 with loss scaling, fused AdamW" \
    "$PYTHON" scripts/bench_model.py --device cuda --count-ops --tokens 10 --modes fast-amp --kinds train \
    --batch 128 --opt-impl fused --json "$work/count_ops_float16_fused.json"
for dtype in float16 bfloat16; do
    for batch in 128 256; do
        step "bench_model.py --device cuda: 10 tokens, batch $batch, $dtype, eager and compiled" \
            "$PYTHON" scripts/bench_model.py --device cuda --tokens 10 --modes fast-amp fast-amp-compiled \
            --amp-dtype "$dtype" --kinds train --batch "$batch" --runs 3 --warmup 2 \
            --json "$work/bench_${dtype}_${batch}.json"
    done
done
step "bench_model.py --device cuda: 1, 50 tokens; plain, fast; float32" \
    "$PYTHON" scripts/bench_model.py --device cuda --tokens 1 50 --modes plain fast --kinds train eval \
    --runs 3 --warmup 1 --json "$work/bench_tokens.json"
summary=${GPU_CHECK_JSON:-gpu_check.json}
"$PYTHON" - "$work" "$summary" "$gpus" "$SECONDS" <<'PY'
import json, pathlib, sys
work, summary, gpus, seconds = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
figures = {path.stem: json.loads(path.read_text()) for path in sorted(work.glob("*.json"))}
summary.write_text(json.dumps({"device": gpus, "seconds": seconds, **figures}, indent=1))
print(f"gpu_check: figures of {len(figures)} benchmarks in {summary}")
PY
echo "gpu_check: all passed in $SECONDS s (budget: 300 s on one H200)"
