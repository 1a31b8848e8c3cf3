"""Fused attention vs PyTorch SDPA (every backend that runs) and the eager reference, side by side in one run.

Shapes are SigLIP's, as (B, H, Nq, Nk, d), bf16 on CUDA. TFLOP/s use the true head dim: forward 4*B*H*Nq*Nk*d,
forward+backward 3.5x that (backward counted 2.5x the forward). `ratio` = best SDPA time / this time (> 1: faster
than the best SDPA backend of the same run). SDPA is called the way transformers' sdpa path calls it: on
(B, H, N, d) transposed views of the (B, N, H, d) projections, the output transposed back (a view).

Every row's result (the output; for fwd+bwd dq, dk and dv) is first checked against a float64 eager reference of the
first batch rows, within the dtype's budget relative to each tensor's scale (benchmarks/_common.REL_BUDGET); a row
over it, or one that raises, fails the test (the other rows are still reported). An SDPA backend with no kernel for
the shape/dtype/device is reported as not run. On CPU (`--bench-size small`) a tiny case runs: the reference and
SDPA are checked and timed, the Triton kernel under the interpreter is checked, not timed (the interpreter's time
says nothing about the kernel).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks._common import REL_BUDGET, check_close, gemm_peak_tflops, peak_memory_mib, sync, time_ms
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
    """name -> f(q, k, v) in the (B, N, H, d) layout. On CPU the Triton kernel runs interpreted: checked, not timed."""
    impls = {"triton": attention, "eager": attention_reference}
    if compile_baselines:
        impls["eager+compile"] = torch.compile(attention_reference)
    for name, backend in _sdpa_backends():
        impls[name] = _sdpa(backend)
    return impls


def _unsupported(impl: str, e: Exception) -> bool:
    """An SDPA backend that has no kernel for this shape, dtype or device (torch says 'No available kernel', or from
    2.12 'No viable backend'): a row that cannot run here, reported as such. Any other exception is a failure."""
    return impl.startswith("sdpa") and isinstance(e, RuntimeError) and (
        "No available kernel" in str(e) or "No viable backend" in str(e))


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

    # The reference: float64 eager attention of the first images' rows (attention is independent per batch row, so
    # the first rows of every result, output or gradient, are checked at the timed shape without an fp64 pass over
    # the whole batch).
    nb = min(B, 4)
    ref_in = [t[:nb].detach().double().requires_grad_(backward) for t in (q, k, v)]
    ref_out = attention_reference(*ref_in)
    refs = list(torch.autograd.grad(ref_out, ref_in, grad_out[:nb].double())) if backward else [ref_out]
    labels = ["dq", "dk", "dv"] if backward else ["out"]

    flops = 4 * B * H * Nq * Nk * d * (3.5 if backward else 1.0)
    # ideal traffic: q, k, v read and out written once; the backward also reads out and dO, writes dq, dk, dv
    elt = torch.finfo(dtype).bits // 8
    nbytes = elt * H * d * B * (2 * Nq + 2 * Nk + ((3 * Nq + 2 * Nk) + (Nq + 2 * Nk) if backward else 0))
    suite = f"attention {mode}"
    label = f"{name} B={B} H={H} Nq={Nq} Nk={Nk} d={d} {str(dtype).removeprefix('torch.')}"
    times, peaks, errs, notes, failed = {}, {}, {}, {}, {}
    for impl, f in _impls(device, compile_baselines).items():
        fn = step(f)
        try:
            out = fn()  # warm-up (autotuning, compilation, backend selection) and the result checked
            sync(device)
            outs = [t[:nb] for t in (out if backward else [out])]
            errs[impl] = check_close(f"{suite} {label} {impl}", outs, refs, REL_BUDGET[dtype], labels)
        except Exception as e:  # noqa: BLE001  (reported in its row; the test fails below unless unsupported)
            if _unsupported(impl, e):
                notes[impl] = f"not run: {str(e).splitlines()[0][:80]}"
            else:
                failed[impl] = f"{type(e).__name__}: {e}"
            continue
        if impl == "triton" and device.type != "cuda":
            notes[impl] = "checked, not timed: the Triton interpreter on CPU"
            continue
        times[impl] = time_ms(fn, device)
        peaks[impl] = peak_memory_mib(fn, device)

    sdpa_times = [t for impl, t in times.items() if impl.startswith("sdpa")]
    best_sdpa = min(sdpa_times) if sdpa_times else None
    peak = gemm_peak_tflops(device)
    for impl, ms in times.items():
        tflops = flops / ms / 1e9
        report(suite, label, impl, ms=ms, tflops=tflops, mfu=tflops / peak if peak else None,
               ratio=best_sdpa / ms if best_sdpa else None, peak_mib=peaks[impl], max_err=errs[impl], flops=flops,
               bytes=nbytes)
    for impl, note in notes.items():
        report(suite, label, impl, max_err=errs.get(impl), note=note)
    for impl, why in failed.items():
        report(suite, label, impl, error=why.splitlines()[0][:120])
    assert not failed, "rows failed:\n" + "\n".join(f"{impl}: {why}" for impl, why in failed.items())

    main = "triton" if "triton" in times else "eager"
    timed = step(_impls(device, False)[main])
    benchmark.extra_info.update(impl=main, case=label, tflops=flops / times[main] / 1e9)
    benchmark.pedantic(lambda: (timed(), sync(device)), rounds=20 if device.type == "cuda" else 5,
                       warmup_rounds=2)
