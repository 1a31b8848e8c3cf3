"""Timing, memory and reporting helpers shared by the benchmark suites.

On CUDA, times are medians of `triton.testing.do_bench` (CUDA events, warm-up excluded); on CPU, medians of
repeated wall-clock runs. Peak memory is `torch.cuda.max_memory_allocated` above what was allocated before the call.
"""

from __future__ import annotations

import json
import os
import statistics
import time
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


def triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def time_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, rep: int = 10) -> float:
    """Median milliseconds of fn() (warm-up, autotuning and compilation excluded)."""
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
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def gemm_peak_tflops(device: torch.device) -> float | None:
    """The measured bf16 GEMM rate (8192^3) used as the MFU denominator; measured once per session."""
    if device.type != "cuda":
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
    if device.type != "cuda":
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
