#!/usr/bin/env bash
# One run on a GPU machine, sized for about 5 minutes on an H100: install, the GPU tests (compiled kernels, the
# bf16/fp16 error budgets, determinism, model parity through the kernels), then the benchmark suites at full size.
# Logs and the JSON of every figure go to $OUT (or ./gpu-check-out); the summary table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python - <<'PY' | tee "$out/versions.txt"
import datetime, torch, triton
print(datetime.date.today(), torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
PY

# The tests: distributed gloo tests and the preprocessing parity run on CPU and are covered by CI.
timeout 150 python -m pytest tests -q -x -p no:cacheprovider \
    --deselect tests/test_loss_distributed.py --ignore tests/test_tokenizer.py \
    --ignore tests/test_image_processor.py --ignore tests/test_processor.py 2>&1 | tee "$out/tests.log" | tail -15
tests_rc=${PIPESTATUS[0]}

# The benchmarks: few pytest-benchmark rounds (our own medians come from triton.testing.do_bench).
timeout 300 python -m pytest benchmarks -q -p no:cacheprovider --bench-size full --bench-json "$out/bench.json" \
    --benchmark-min-rounds=3 --benchmark-max-time=0.1 --benchmark-warmup=off \
    2>&1 | tee "$out/bench.log" | sed -n '/siglip_fast benchmark summary/,$p'
echo "tests exit code: $tests_rc"
