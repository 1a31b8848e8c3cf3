#!/usr/bin/env bash
# One run on a GPU machine, within a fixed window (GPU_CHECK_TOTAL_S, default 450 s = 7.5 minutes: every stage's
# limit is cut to what is left of it). The most important evidence runs first:
#   0. a GPU is there (else exit 2 at once, with the reason), install, versions;
#   1. every GPU test: the test files in parallel shards (one pytest process each, failures listed, no stop at the
#      first), while the benchmark selections of stages 2-4 run once each in --bench-warm mode beside them (each row's
#      first call and correctness check: compiles and autotunes every kernel variant and fills triton's and
#      inductor's on-disk caches, times nothing), so the timed stages do not pay a cold compile (the warm passes'
#      status is shown but not counted: the timed stages repeat every check they make);
#   2. the model benchmarks of the two target shapes of shared/reference/anchors.md (So400m/14-384 b128 and B/16-224
#      b512): inference with torch.compile(transformers) in the same run, then the training step;
#   3. the profiler breakdown of the So400m vision tower (per kernel category);
#   4. the op benchmarks at full size (attention, patch embedding, LayerNorm, linear, residual sites, loss).
# Every benchmark checks each row's result against float64 before timing it; every timed row carries its roofline.
# Each stage runs under `timeout -s INT`: a stage cut by its limit is interrupted (pytest still prints its summary,
# the rows measured so far are kept in $OUT/rows-*.jsonl) and counts as failed. The exit status is 0 only when every
# counted stage ran to its end and passed (2: no GPU, or TRITON_INTERPRET=1 set; 1: any other failure); the last
# lines list each stage's status and every failure.
# Logs and JSON go to $OUT (or ./gpu-check-out); the tables come last: ops, model, then the profile.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere (CI): the same stages, each pytest selection collected
#                                           # (--collect-only: it must collect without error and select tests),
#                                           # the test shards checked to cover every GPU test file, nothing run
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
case "${1:-}" in
    --dry-run) dry=1 ;;
    "") ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
out=${OUT:-gpu-check-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# the interpreter: $PYTHON, else python3 (the GPU machine's, the one with torch), else python
py=${PYTHON:-$(command -v python3 || command -v python)}
total=${GPU_CHECK_TOTAL_S:-450}
reserve=15  # seconds kept for the tables at the end
t0=$SECONDS
statuses=()  # one line per stage: "name: ok|FAILED ...|CUT ..."
failed=0

# The test files that never touch CUDA, left out here because they are identical on any machine and run in CI:
# preprocessing parity, the sm_90 code-generation gate (it compiles for a GPU on CPU), the gloo-distributed loss.
# The dry run checks that none of them holds a GPU test (a CUDA skip condition).
CPU_ONLY_TESTS=(tests/test_tokenizer.py tests/test_image_processor.py tests/test_processor.py tests/test_codegen.py
                tests/test_loss_distributed.py)
# The benchmark selections (each: its paths and pytest arguments); warmed in stage 1, timed in stages 2 and 4.
SEL_SO400M=(benchmarks/test_bench_model.py -k "So400m and vision and not train" --compile-baselines)
SEL_B16=(benchmarks/test_bench_model.py -k "B/16-224 and vision and not train" --compile-baselines)
SEL_TRAIN=(benchmarks/test_bench_model.py -k "(B/16-224 or So400m) and vision-train")
# The ops: every benchmark file but the model-level ones above, the CPU-only ones (preprocessing, the CPU speed
# gates) and the unit tests of the benchmark helpers; SigLIP 2 NaFlex and the embedding pipeline come with them.
SEL_OPS=(benchmarks --ignore benchmarks/test_bench_model.py --ignore benchmarks/test_bench_preprocessing.py
         --ignore benchmarks/test_profile_model.py --ignore benchmarks/test_bench_cpu_default.py
         --ignore benchmarks/test_bench_cpu.py --ignore benchmarks/test_common.py)
PROFILE_ARGS=(--variant so400m-patch14-384 --batch 128 --steps 3 --impl triton --impl triton-graph
              --impl transformers-sdpa)
# Stage budgets in seconds, against a cold triton cache (the warm stage compiles what the timed stages launch).
B_INSTALL=90 B_TESTS=180 B_SO400M=55 B_B16=40 B_TRAIN=40 B_PROFILE=35 B_OPS=60

limit_for() {  # limit_for BUDGET: the budget, cut to what is left of the window
    local left=$(( total - (SECONDS - t0) - reserve ))
    echo $(( $1 < left ? $1 : left ))
}

record() {  # record NAME RC LIMIT LOG: one stage's status line (124/137: cut by its limit)
    local name=$1 rc=$2 limit=$3 log=$4 last
    # pytest's summary line: "3 passed, 1 failed in 9.1s", "12 tests collected in 2s", "no tests ran in 1s"
    last=$(grep -E "^=* *(([0-9]+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)|[0-9/]+ tests? \
collected|no tests ran)[ ,])" "$log" 2>/dev/null | tail -1 | sed -E 's/^=+ *| *=+$//g')
    if [ "$limit" = 0 ]; then
        statuses+=("$name: NOT RUN: no time left in the ${total}s window")
        failed=1
    elif [ "$rc" = 0 ]; then
        statuses+=("$name: ok (${last:-exit 0})")
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        statuses+=("$name: CUT by its ${limit}s limit (${last:-no summary}; log $log)")
        failed=1
    else
        statuses+=("$name: FAILED, exit $rc (${last:-no summary}; log $log)")
        failed=1
    fi
}

launch() {  # launch NAME BUDGET LOG CMD...: run CMD in the background under its limit; sets $job_pid
    local name=$1 budget=$2 log=$3 limit
    shift 3
    limit=$(limit_for "$budget")
    if (( limit < 5 )); then
        echo "not run: no time left in the ${total}s window" > "$log"
        limit=0
        ( exit 124 ) & job_pid=$!
    else
        ( timeout -s INT -k 20 "$limit" "$@" > "$log" 2>&1 ) & job_pid=$!
    fi
    echo "$limit" > "$log.limit"
}

finish() {  # finish NAME PID LOG: wait for a launched stage and record it
    local rc
    wait "$2"; rc=$?
    record "$1" "$rc" "$(cat "$3.limit")" "$3"
}

pytest_args=(-q -rfE -p no:cacheprovider)
if (( dry )); then
    pytest_args+=(--collect-only)
    echo "== dry run: every pytest selection is collected, nothing runs"
fi

# --- 0. a GPU, the install, the versions ---------------------------------------------------------------------------
if (( ! dry )); then
    if [ "${TRITON_INTERPRET:-0}" = 1 ]; then
        echo "gpu_check: TRITON_INTERPRET=1 is set: the kernels would run under the interpreter, not on the GPU" >&2
        exit 2
    fi
    if ! why=$(timeout 60 "$py" - 2>&1 <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit(f"no CUDA GPU is visible (torch {torch.__version__}, built for CUDA {torch.version.cuda}): "
                     "this script is the GPU run; `bash benchmarks/gpu_check.sh --dry-run` checks it on CPU")
PY
    ); then
        echo "gpu_check: ${why:-torch could not be imported}" >&2
        exit 2
    fi
    launch install "$B_INSTALL" "$out/install.log" "$py" -m pip install -q --no-deps --no-build-isolation -e .
    finish install "$job_pid" "$out/install.log"
    if [ "${statuses[-1]%%:*}" = install ] && [[ "${statuses[-1]}" != "install: ok"* ]]; then
        printf '%s\n' "${statuses[@]}"; tail -5 "$out/install.log"; exit 1
    fi
    "$py" - <<'PY' | tee "$out/versions.txt"
import datetime, torch, triton
print(datetime.date.today(), torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
PY
fi

# --- 1. every GPU test, in parallel shards, beside the warm-up of the benchmarks -------------------------------------
cores=$(nproc 2>/dev/null || echo 2)
shards=${GPU_CHECK_SHARDS:-$(( cores / 2 < 2 ? 2 : (cores / 2 > 8 ? 8 : cores / 2) ))}
# The shard plan: every tests/test_*.py but the CPU-only ones, dealt largest first to the lightest shard (file size
# stands for the test count); one line per shard.
plan=$("$py" - "$shards" "${CPU_ONLY_TESTS[@]}" <<'PY'
import pathlib, sys
n, cpu_only = int(sys.argv[1]), set(sys.argv[2:])
files = sorted((p for p in pathlib.Path("tests").glob("test_*.py") if str(p) not in cpu_only),
               key=lambda p: -p.stat().st_size)
bins = [[0, []] for _ in range(n)]
for f in files:
    b = min(bins, key=lambda b: b[0])
    b[0] += f.stat().st_size
    b[1].append(str(f))
for _, names in bins:
    if names:
        print(" ".join(names))
PY
)
if (( dry )); then
    # the plan covers every test file exactly once with the CPU-only ones; those hold no CUDA skip condition
    GPU_CHECK_PLAN=$plan "$py" - "${CPU_ONLY_TESTS[@]}" <<'PY' > "$out/plan-check.log" 2>&1
import os, pathlib, re, sys
cpu_only, shards = sys.argv[1:], os.environ["GPU_CHECK_PLAN"].splitlines()
planned = [f for shard in shards for f in shard.split()]
every = sorted(str(p) for p in pathlib.Path("tests").glob("test_*.py"))
assert sorted(planned + cpu_only) == every, f"shards {planned} + CPU-only {cpu_only} != {every}"
assert len(set(planned)) == len(planned), "a test file is in two shards"
for f in cpu_only:
    hits = re.findall(r".*cuda\.is_available\(\).*", pathlib.Path(f).read_text())
    assert not hits, f"{f} is left out of the GPU run as CPU-only but has a CUDA condition: {hits}"
print(f"plan ok: {len(planned)} test files in {len(shards)} shards, {len(cpu_only)} CPU-only files left out")
PY
    record test-plan $? - "$out/plan-check.log"
fi

test_pids=() test_logs=()
i=0
while read -r files; do
    [ -n "$files" ] || continue
    log="$out/tests-$i.log"
    # shellcheck disable=SC2086  # the shard's file names are split on purpose
    launch "tests[$i]" "$B_TESTS" "$log" "$py" -m pytest "${pytest_args[@]}" $files
    test_pids+=("$job_pid"); test_logs+=("$log")
    i=$(( i + 1 ))
done <<< "$plan"

warm_args=(--bench-size full --bench-warm --benchmark-disable)
warm_pids=() warm_logs=()
warm() {  # warm NAME SELECTION...
    local name=$1 log="$out/warm-$1.log"
    shift
    launch "warm $name" "$B_TESTS" "$log" "$py" -m pytest "${pytest_args[@]}" "${warm_args[@]}" \
        --bench-json "$out/warm-$name.json" "$@"
    warm_pids+=("$job_pid"); warm_logs+=("$log")
}
warm model-so400m "${SEL_SO400M[@]}"
warm model-b16 "${SEL_B16[@]}"
warm model-train "${SEL_TRAIN[@]}"
warm ops "${SEL_OPS[@]}"

for j in "${!test_pids[@]}"; do
    finish "tests[$j]" "${test_pids[$j]}" "${test_logs[$j]}"
done
echo "== tests: failures and each shard's summary"
grep -hE "^(FAILED|ERROR) " "${test_logs[@]}" | head -60
for log in "${test_logs[@]}"; do echo "$(basename "$log"): $(tail -1 "$log")"; done
for j in "${!warm_pids[@]}"; do
    # The warm passes run beside each other and the tests (memory and timing are shared), and every check they make
    # is made again by the timed stage, which counts: their status is shown, not counted.
    # (The dry run counts them: there they only collect, with their own options.)
    name=$(basename "${warm_logs[$j]}" .log)
    if (( dry )); then
        finish "$name" "${warm_pids[$j]}" "${warm_logs[$j]}"
        continue
    fi
    wait "${warm_pids[$j]}"; rc=$?
    if [ "$rc" = 0 ]; then
        statuses+=("$name: ok (not counted: preparation)")
    else
        statuses+=("$name: exit $rc (not counted: the timed stage repeats its checks; log ${warm_logs[$j]})")
        grep -hE "^(FAILED|ERROR) " "${warm_logs[$j]}" | head -10
    fi
done

# --- 2.-4. the timed stages, one at a time ---------------------------------------------------------------------------
bench() {  # bench NAME BUDGET SELECTION...: few pytest-benchmark rounds (our medians come from do_bench)
    local name=$1 budget=$2 log="$out/bench-$1.log"
    shift 2
    launch "bench $name" "$budget" "$log" env SIGLIP_FAST_BENCH_ROWS="$out/rows-$name.jsonl" "$py" -m pytest \
        "${pytest_args[@]}" --bench-size full --bench-json "$out/bench-$name.json" --benchmark-min-rounds=3 \
        --benchmark-max-time=0.1 --benchmark-warmup=off "$@"
    finish "bench $name" "$job_pid" "$log"
    echo "${statuses[-1]}"
}
bench model-so400m "$B_SO400M" "${SEL_SO400M[@]}"
bench model-b16 "$B_B16" "${SEL_B16[@]}"
bench model-train "$B_TRAIN" "${SEL_TRAIN[@]}"

if (( dry )); then  # the profile's arguments name a known shape and implementations; its code path runs tiny, on CPU
    # (a file, not a here-document: a background job's standard input is /dev/null)
    cat > "$out/profile_check.py" <<'PY'
import sys
from benchmarks import profile_model
from siglip_fast.variants import config_for
args = sys.argv[1:]
config_for(args[args.index("--variant") + 1])
impls = [args[i + 1] for i, a in enumerate(args) if a == "--impl"]
assert impls and set(impls) <= set(profile_model.IMPLS), impls
assert profile_model.main(["--variant", "tiny", "--batch", "2", "--steps", "1", "--impl", "sdpa"]) == 0
print(f"profile arguments ok: {' '.join(args)}")
PY
    launch profile 120 "$out/profile.txt" env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$py" \
        "$out/profile_check.py" "${PROFILE_ARGS[@]}"
else
    launch profile "$B_PROFILE" "$out/profile.txt" "$py" -m benchmarks.profile_model "${PROFILE_ARGS[@]}"
fi
finish profile "$job_pid" "$out/profile.txt"

bench ops "$B_OPS" "${SEL_OPS[@]}"

# --- the tables, then each stage's status ----------------------------------------------------------------------------
if (( ! dry )); then
    "$py" - "$out" <<'PY'
import json, pathlib, sys
from benchmarks._common import format_table
out = pathlib.Path(sys.argv[1])
for name in ("ops", "model-b16", "model-so400m", "model-train"):
    path = out / f"rows-{name}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    print(f"== {name}: {len(rows)} rows")
    for line in format_table(rows) if rows else []:
        print(line[:320])
PY
    echo "== profile"
    grep -v USDT "$out/profile.txt"
fi
echo "== stages ($(( SECONDS - t0 ))s of the ${total}s window)"
printf '%s\n' "${statuses[@]}"
if (( failed )); then
    echo "gpu_check: FAILED (a stage failed or was cut; logs in $out)"
    exit 1
fi
echo "gpu_check: every stage passed"
