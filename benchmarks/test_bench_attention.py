"""Fused attention vs PyTorch SDPA (every backend that runs) and the eager reference, side by side in one run.

Shapes are SigLIP's, as (B, H, Nq, Nk, d), bf16 on CUDA. TFLOP/s use the true head dim: forward 4*B*H*Nq*Nk*d,
forward+backward 3.5x that (backward counted 2.5x the forward). `ratio` = best SDPA time / this time (> 1: faster
than the best SDPA backend of the same run). SDPA is called the way transformers' sdpa path calls it: on
(B, H, N, d) transposed views of the (B, N, H, d) projections, the output transposed back (a view).

On CPU (`--bench-size small`) only a tiny case of the reference and SDPA runs: the Triton kernel under the
interpreter is a correctness tool, not something to time.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks._common import gemm_peak_tflops, peak_memory_mib, sync, time_ms
from siglip_fast.kernels.attention import attention, attention_reference

# name, B, H, Nq, Nk, d
FULL_CASES = [
    ("B/16-224 vision", 512, 12, 196, 196, 64),
    ("So400m/14-384 vision", 128, 16, 729, 729, 72),
    ("So400m/14-336 vision", 128, 16, 576, 576, 64),
    ("B/16 text", 1024, 12, 64, 64, 64),
    ("So400m MAP head", 512, 16, 1, 729, 72),
]
SMALL_CASES = [("tiny", 2, 2, 37, 37, 72)]


def _sdpa_backends():
    from torch.nn.attention import SDPBackend

    names = [("sdpa-flash", "FLASH_ATTENTION"), ("sdpa-efficient", "EFFICIENT_ATTENTION"),
             ("sdpa-cudnn", "CUDNN_ATTENTION"), ("sdpa-math", "MATH")]
    return [(name, getattr(SDPBackend, attr)) for name, attr in names if hasattr(SDPBackend, attr)]


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def fn(q, k, v):
        with sdpa_kernel([backend]):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)  # (B, Nq, H, d) view

    return fn


def _impls(device, compile_baselines):
    """name -> f(q, k, v) in the (B, N, H, d) layout; the Triton kernel only on CUDA."""
    impls = {}
    if device.type == "cuda":
        impls["triton"] = attention
    impls["eager"] = attention_reference
    if compile_baselines:
        impls["eager+compile"] = torch.compile(attention_reference)
    for name, backend in _sdpa_backends():
        impls[name] = _sdpa(backend)
    return impls


def _cases(bench_size):
    if bench_size == "small":
        skip = pytest.mark.skip(reason="full SigLIP sizes need a CUDA GPU and --bench-size full")
        return [pytest.param(c, id=c[0]) for c in SMALL_CASES] + [
            pytest.param(c, id=c[0], marks=skip) for c in FULL_CASES]
    return [pytest.param(c, id=c[0]) for c in FULL_CASES]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        size = metafunc.config.getoption("--bench-size") or ("full" if torch.cuda.is_available() else "small")
        metafunc.parametrize("case", _cases(size))


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_attention(case, mode, device, bench_size, compile_baselines, report, benchmark):
    name, B, H, Nq, Nk, d = case
    if bench_size == "full" and device.type != "cuda":
        pytest.skip("full-size attention benchmarks need a CUDA GPU")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    backward = mode == "fwd+bwd"
    q = torch.randn(B, Nq, H, d, device=device, dtype=dtype, requires_grad=backward)
    k = torch.randn(B, Nk, H, d, device=device, dtype=dtype, requires_grad=backward)
    v = torch.randn(B, Nk, H, d, device=device, dtype=dtype, requires_grad=backward)
    grad_out = torch.randn(B, Nq, H, d, device=device, dtype=dtype)

    def step(f):
        if not backward:
            return lambda: f(q, k, v)
        return lambda: torch.autograd.grad(f(q, k, v), (q, k, v), grad_out)

    flops = 4 * B * H * Nq * Nk * d * (3.5 if backward else 1.0)
    # ideal traffic: q, k, v read and out written once; the backward also reads out and dO, writes dq, dk, dv
    elt = torch.finfo(dtype).bits // 8
    nbytes = elt * H * d * B * (2 * Nq + 2 * Nk + ((3 * Nq + 2 * Nk) + (Nq + 2 * Nk) if backward else 0))
    suite = f"attention {mode}"
    label = f"{name} B={B} H={H} Nq={Nq} Nk={Nk} d={d} {str(dtype).removeprefix('torch.')}"
    times, peaks, skipped = {}, {}, {}
    for impl, f in _impls(device, compile_baselines).items():
        fn = step(f)
        try:
            fn()  # warm-up: autotuning, compilation, backend selection
            sync(device)
        except RuntimeError as e:  # an SDPA backend that does not support this shape/dtype/device
            skipped[impl] = str(e).splitlines()[0][:80]
            continue
        times[impl] = time_ms(fn, device)
        peaks[impl] = peak_memory_mib(fn, device)

    sdpa_times = [t for impl, t in times.items() if impl.startswith("sdpa")]
    best_sdpa = min(sdpa_times) if sdpa_times else None
    peak = gemm_peak_tflops(device)
    for impl, ms in times.items():
        tflops = flops / ms / 1e9
        report(suite, label, impl, ms=ms, tflops=tflops, mfu=tflops / peak if peak else None,
               ratio=best_sdpa / ms if best_sdpa else None, peak_mib=peaks[impl], flops=flops, bytes=nbytes)
    for impl, why in skipped.items():
        report(suite, label, impl, note=f"skipped: {why}")
    if device.type != "cuda":
        report(suite, label, "triton", note="skipped: the Triton interpreter on CPU is too slow to time")

    main = "triton" if "triton" in times else "eager"
    timed = step(_impls(device, False)[main])
    benchmark.extra_info.update(impl=main, case=label, tflops=flops / times[main] / 1e9)
    benchmark.pedantic(lambda: (timed(), sync(device)), rounds=20 if device.type == "cuda" else 5,
                       warmup_rounds=2)
