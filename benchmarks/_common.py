"""Timing, memory and reporting helpers shared by the benchmark suites.

On CUDA, times are medians of `triton.testing.do_bench` (CUDA events, warm-up excluded); on CPU, medians of
repeated wall-clock runs. Peak memory is `torch.cuda.max_memory_allocated` above what was allocated before the call.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from typing import Callable

import torch

# The CPU-sized model of the model-level suites (--bench-size small) and the profiler's --variant tiny.
TINY = dict(
    text_config=dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=16),
    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8),
)

ROWS: list[dict] = []
GEMM_PEAK: dict = {}
# --bench-warm (benchmarks/conftest.py): every row runs its first call and its correctness check (compilation,
# autotuning, torch.compile's caches) and is not timed; gpu_check.sh warms triton's and inductor's on-disk caches
# this way, in parallel processes, before the timed stages.
WARM = {"on": False}

# The correctness budgets every benchmark checks its rows against before timing them: the error of a row's result
# relative to the reference's scale, max|out - ref| / max|ref| per tensor (each output and each gradient on its
# own, so a small gradient is held as tightly as a large one), the reference computed in float64 from the same
# inputs. fp32 (the CPU shapes: eager, sdpa and the interpreted kernels): 1e-4, so a 1 % error in any kernel's
# output fails. bf16 / fp16 (the GPU shapes): a few units in the last place at the scale of the tensor (bf16 has 8
# significant bits, fp16 11), a sanity bound for every row (a wrong tile, an unwritten block, NaN); the kernels'
# tight low-precision budgets (<= 2x the eager error against fp64) are tests/' GPU tests. TF32 rows (fp32 under
# torch.set_float32_matmul_precision("high"), 10-bit mantissa) get fp16's.
REL_BUDGET = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 4e-3, "tf32": 4e-3}


def triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max|out - ref| / max|ref| (in float64; inf when out is not finite where ref is, or when the shapes differ)."""
    out, ref = out.detach(), ref.detach().to(out.device)
    if out.shape != ref.shape:
        return math.inf
    out, ref = out.double(), ref.double()
    if not bool(torch.isfinite(out).all()):
        return math.inf
    scale = ref.abs().max().item() if ref.numel() else 0.0
    diff = (out - ref).abs().max().item() if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


def check_close(name: str, outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], budget: float,
                labels: Sequence[str] | None = None) -> float:
    """The worst rel_err over matching tensors; AssertionError naming the row, each tensor's error and the budget
    when one is over it. Returns the worst error (the row's `max_err`)."""
    if len(outs) != len(refs):
        raise AssertionError(f"{name}: {len(outs)} results against {len(refs)} references")
    labels = list(labels) if labels is not None else [str(i) for i in range(len(outs))]
    errs = {label: rel_err(o, r) for label, o, r in zip(labels, outs, refs, strict=True)}
    worst = max(errs.values(), default=0.0)
    if not worst <= budget:
        detail = ", ".join(f"{k} {v:.2e}" for k, v in errs.items())
        raise AssertionError(f"{name}: error max|out - ref| / max|ref| = {worst:.2e} over the budget {budget:.0e} "
                             f"(against float64; per tensor: {detail})")
    return worst


def model_budget(dtype: torch.dtype, errs: dict, baseline: str = "eager") -> float:
    """The model benchmarks' budget: fp32, REL_BUDGET's; bf16 / fp16, design.md's error budget for the model: 2x the
    error of the eager backend (what transformers computes) in the same dtype on the same inputs, and at least
    REL_BUDGET's sanity bound."""
    if dtype == torch.float32 or baseline not in errs:
        return REL_BUDGET[dtype]
    return max(REL_BUDGET[dtype], 2 * errs[baseline])


def run_rows(impls: dict, result_of: Callable, reference: Sequence[torch.Tensor], budget_of: Callable,
             device: torch.device, *, untimed: Sequence[str] = ()) -> tuple[dict, dict, tuple | None]:
    """The model benchmarks' rows: each `impls[name]()` builds a step (inside the row: a failing build is that row's
    failure), whose first call (warm-up: compilation, autotuning, graph capture) gives the result checked:
    rel_err of each tensor of `result_of(out)` against `reference` (float64). `budget_of(errs)` then gives the
    budget, and each row within it is timed (those in `untimed`, e.g. the interpreted kernels, are not).
    Returns (results: name -> {err, ms, peak_mib}, failures: name -> reason, (name, step) of the first timed row);
    a row's exception or error over budget is a failure, never dropped."""
    results, failures, steps = {}, {}, {}
    for name, factory in impls.items():
        try:
            fn = factory()
            outs = result_of(fn())
            sync(device)
            results[name] = {"err": max(rel_err(o, r) for o, r in zip(outs, reference, strict=True))}
            steps[name] = fn
        except Exception as e:  # noqa: BLE001  (every row's exception is a failure of the test, reported below)
            failures[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    budget = budget_of({name: r["err"] for name, r in results.items()})
    main = None
    for name, r in results.items():
        r["budget"] = budget
        if not r["err"] <= budget:
            failures[name] = f"error max|out - ref| / max|ref| = {r['err']:.2e} over the budget {budget:.1e}"
            continue
        if name in untimed:
            continue
        try:
            r["ms"] = time_ms(steps[name], device)
            r["peak_mib"] = peak_memory_mib(steps[name], device)
            main = main or (name, steps[name])
        except Exception as e:  # noqa: BLE001
            failures[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    return results, failures, main


def time_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, rep: int = 10) -> float:
    """Median milliseconds of fn() (warm-up, autotuning and compilation excluded). Under --bench-warm: one call,
    NaN."""
    if WARM["on"]:
        fn()
        return math.nan
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak device memory fn() allocates above what was allocated before it, in MiB (None off CUDA)."""
    if device.type != "cuda" or WARM["on"]:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def gemm_peak_tflops(device: torch.device) -> float | None:
    """The measured bf16 GEMM rate (8192^3) used as the MFU denominator; measured once per session."""
    if device.type != "cuda" or WARM["on"]:
        return None
    if "tflops" not in GEMM_PEAK:
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        ms = time_ms(lambda: a @ b, device)
        GEMM_PEAK["tflops"] = 2 * n**3 / ms / 1e9
    return GEMM_PEAK["tflops"]


def copy_peak_tbps(device: torch.device) -> float | None:
    """The measured device copy rate (1 GiB copied: read + write bytes counted), the roofline's bandwidth ceiling;
    measured once per session."""
    if device.type != "cuda" or WARM["on"]:
        return None
    if "tbps" not in GEMM_PEAK:
        a = torch.empty(2**29, device=device, dtype=torch.bfloat16)  # 1 GiB
        b = torch.empty_like(a)
        ms = time_ms(lambda: b.copy_(a), device)
        GEMM_PEAK["tbps"] = 2 * 2**30 / ms / 1e9
        del a, b
    return GEMM_PEAK["tbps"]


def roofline(flops: float, nbytes: float, ms: float | None) -> dict:
    """The roofline figures of one timed row: its work (GFLOP) and ideal traffic (MB: every input read once,
    every output written once), the time the card's measured ceilings allow (max of FLOPs / GEMM rate and bytes /
    copy rate, both measured in this run), which of the two bounds it, and the efficiency (roofline time / time).
    Off CUDA only the work and traffic are given."""
    out = {"gflop": flops / 1e9, "mbytes": nbytes / 1e6}
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    peak_f, peak_b = gemm_peak_tflops(device), copy_peak_tbps(device)
    if peak_f is None or peak_b is None or not ms:
        return out
    compute_ms, memory_ms = flops / peak_f / 1e9, nbytes / peak_b / 1e9
    roof = max(compute_ms, memory_ms)
    return {**out, "roof_ms": roof, "bound": "compute" if compute_ms >= memory_ms else "memory", "roof_eff": roof / ms}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def report(suite: str, case: str, impl: str, **figures) -> dict:
    """Record one row: suite (e.g. 'attention fwd'), case (the shape), impl (e.g. 'triton'), and its figures
    (ms, tflops, img_per_s, mfu, peak_mib, ratio, max_err ... any subset). `flops` and `bytes` (the row's work and
    ideal traffic) become the roofline columns (see `roofline`). With SIGLIP_FAST_BENCH_ROWS set, the row is also
    appended to that file as one JSON line at once, so a run cut short by a time limit keeps what it measured."""
    if "flops" in figures or "bytes" in figures:
        figures.update(roofline(figures.pop("flops", 0.0), figures.pop("bytes", 0.0), figures.get("ms")))
    row = {"suite": suite, "case": case, "impl": impl, **figures}
    ROWS.append(row)
    path = os.environ.get("SIGLIP_FAST_BENCH_ROWS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0 or 0.01 <= abs(v) < 1e5:
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return f"{v:.2e}"
    return str(v)


def format_table(rows: list[dict]) -> list[str]:
    keys = ["suite", "case", "impl"]
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    cells = [[_fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return lines


def time_main_row(benchmark, main: tuple[str, Callable] | None, device: torch.device) -> None:
    """pytest-benchmark's record of a model case: the first implementation `run_rows` timed (triton on a GPU),
    named in its extra_info."""
    if main is None:
        return
    name, fn = main

    def call():
        fn()
        sync(device)

    benchmark.extra_info.update(impl=name)
    benchmark.pedantic(call, rounds=10 if device.type == "cuda" else 3, iterations=1, warmup_rounds=1)


def report_model_rows(report: Callable, suite: str, case: str, results: dict, failures: dict, untimed: Sequence[str],
                      twin, device: torch.device, *, call_flops: float, items: int, unit: str, **extra) -> None:
    """One report row per implementation of a model case (time, items/s under the name `unit`, TFLOP/s from
    `call_flops` — one call's FLOPs —, MFU, peak memory, ratio to eager, max_err; `extra` figures on the timed rows),
    the failed rows with their reason, and a note when transformers is missing; then fail the case when any row
    failed."""
    peak = gemm_peak_tflops(device)
    eager = results.get("eager", {})
    for name, r in results.items():
        if "ms" not in r:
            note = "checked, not timed: the Triton interpreter on CPU" if name in untimed else None
            report(suite, case, name, max_err=r["err"], note=note, error=failures.get(name))
            continue
        tflops = call_flops / r["ms"] / 1e9
        report(suite, case, name, ms=r["ms"], **{unit: items * 1e3 / r["ms"]}, tflops=tflops,
               mfu=tflops / peak if peak else None, peak_mib=r["peak_mib"],
               ratio=eager["ms"] / r["ms"] if "ms" in eager else None, max_err=r["err"], **extra)
    for name, why in failures.items():
        if name not in results:
            report(suite, case, name, error=why[:120])
    if twin is None:
        report(suite, case, "transformers-sdpa", note="not run: transformers is not installed")
    assert not failures, f"{case}: rows failed:\n" + "\n".join(f"{n}: {w}" for n, w in failures.items())
