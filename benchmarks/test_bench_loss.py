"""Sigmoid loss forward+backward: the blockwise kernel against the plain formulation, time and peak memory in one run.

Plain = the open_clip / transformers formulation (N×N logits, labels 2I − 1, −Σ logsigmoid / N). FLOPs counted
as the three useful GEMM-equivalents (forward logits, dx, dy): 6·N²·D for either implementation, so TFLOP/s
compare like with like (the kernel's training forward computes the gradients in the same pass: 6·N²·D executed).

GPU (`--bench-size full`): N = 4096 … 65536, D = 1152, fp32 and bf16 inputs (fp32 also under TF32, as
`torch.set_float32_matmul_precision("high")` selects for both). CPU (`small`): N = 1024, D = 64, the eager blockwise
path against plain, and the interpreted kernel at a tiny size.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from benchmarks._common import peak_memory_mib, sync, time_ms
from siglip_fast.kernels.sigmoid_loss import sigmoid_loss, sigmoid_loss_reference

SUITE = "sigmoid loss fwd+bwd"
GPU_CASES = [(n, 1152, dt) for n in (4096, 16384, 32768, 65536) for dt in (torch.bfloat16, torch.float32)]


def _inputs(n, d, dtype, device):
    x = F.normalize(torch.randn(n, d, device=device, dtype=torch.float32), dim=-1).to(dtype).requires_grad_()
    y = F.normalize(torch.randn(n, d, device=device, dtype=torch.float32), dim=-1).to(dtype).requires_grad_()
    t = torch.tensor([2.3], device=device, requires_grad=True)  # fp32, as a training loop keeps them
    b = torch.tensor([-10.0], device=device, requires_grad=True)
    return x, y, t, b


def _fwd_bwd(loss_fn, x, y, t, b, **kw):
    def run():
        loss = loss_fn(x, y, t.to(x.dtype) if loss_fn is sigmoid_loss_reference else t,
                       b.to(x.dtype) if loss_fn is sigmoid_loss_reference else b, **kw)
        return torch.autograd.grad(loss, (x, y, t, b))
    return run


def _plain_fits(n, dtype, device) -> bool:
    """The plain path holds ~4 N×N tensors at once (logits, labels, their product, logsigmoid and its grad)."""
    need = 4.2 * n * n * dtype.itemsize
    free, _ = torch.cuda.mem_get_info(device)
    return need < 0.9 * free


@contextlib.contextmanager
def _matmul_precision(p):
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(p)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _measure(fn, device, **kw):
    return time_ms(fn, device, **kw), peak_memory_mib(fn, device)


@pytest.mark.parametrize("n,d,dtype", GPU_CASES, ids=[f"N{n}-D{d}-{str(dt)[6:]}" for n, d, dt in GPU_CASES])
def test_bench_loss_gpu(benchmark, device, bench_size, report, compile_baselines, n, d, dtype):
    if device.type != "cuda":
        pytest.skip("GPU sizes (N up to 65536, D = 1152) need CUDA; the CPU run measures the small case")
    if bench_size == "small" and n > 4096:
        pytest.skip("--bench-size small: only N = 4096 on the GPU")
    case = f"N={n} D={d} {str(dtype)[6:]}"
    flops = 6 * n * n * d
    x, y, t, b = _inputs(n, d, dtype, device)
    precisions = ["highest", "high"] if dtype == torch.float32 else ["highest"]
    for prec in precisions:
        tag = "" if prec == "highest" else " (tf32)"
        with _matmul_precision(prec):
            fused = _fwd_bwd(sigmoid_loss, x, y, t, b, backend="triton")
            ms_f, mem_f = _measure(fused, device)
            rows = [("fused" + tag, ms_f, mem_f)]
            if _plain_fits(n, dtype, device):
                plain = _fwd_bwd(sigmoid_loss_reference, x, y, t, b)
                rows.append(("plain" + tag, *_measure(plain, device)))
                if compile_baselines:
                    compiled = _fwd_bwd(torch.compile(sigmoid_loss_reference), x, y, t, b)
                    rows.append(("plain+compile" + tag, *_measure(compiled, device)))
            else:
                report(SUITE, case, "plain" + tag, note="skipped: its N×N tensors would not fit in GPU memory")
            base = rows[1][1] if len(rows) > 1 else None
            for impl, ms, mem in rows:
                report(SUITE, case, impl, ms=ms, tflops=flops / ms / 1e9, peak_mib=mem,
                       ratio=None if base is None else base / ms, flops=flops,
                       bytes=4 * n * d * x.element_size())  # ideal: x, y read once; dx, dy written once
    benchmark.extra_info.update(case=case, impl="fused")
    fused = _fwd_bwd(sigmoid_loss, x, y, t, b, backend="triton")
    benchmark(lambda: (fused(), sync(device)))


def test_bench_loss_cpu_small(benchmark, device, bench_size, report):
    """CPU: the eager blockwise path against plain, N = 1024, D = 64, fp32."""
    if device.type == "cuda" and bench_size == "full":
        pytest.skip("the CPU-size case; the GPU cases cover the kernel")
    n, d = 1024, 64
    case = f"N={n} D={d} float32"
    x, y, t, b = _inputs(n, d, torch.float32, device)
    blockwise = _fwd_bwd(sigmoid_loss, x, y, t, b, backend="eager")
    plain = _fwd_bwd(sigmoid_loss_reference, x, y, t, b)
    ms_b, mem_b = _measure(blockwise, device)
    ms_p, mem_p = _measure(plain, device)
    flops = 6 * n * n * d
    report(SUITE, case, "eager blockwise", ms=ms_b, tflops=flops / ms_b / 1e9, peak_mib=mem_b, ratio=ms_p / ms_b)
    report(SUITE, case, "plain", ms=ms_p, tflops=flops / ms_p / 1e9, peak_mib=mem_p, ratio=1.0)
    benchmark.extra_info.update(case=case, impl="eager blockwise")
    benchmark(lambda: (blockwise(), sync(device)))


def test_bench_loss_interpreted_tiny(benchmark, device, report):
    """The kernel itself on CPU, under the Triton interpreter: a smoke figure, not a performance number."""
    if device.type == "cuda":
        pytest.skip("on a GPU the kernel is measured at real sizes above")
    n, d = 128, 64
    case = f"N={n} D={d} float32 (interpreter)"
    x, y, t, b = _inputs(n, d, torch.float32, device)
    fused = _fwd_bwd(sigmoid_loss, x, y, t, b, backend="triton")
    ms = time_ms(fused, device, warmup=1, rep=2)
    report(SUITE, case, "triton (interpreted)", ms=ms)
    benchmark.extra_info.update(case=case, impl="triton (interpreted)")
    benchmark.pedantic(fused, rounds=2, iterations=1, warmup_rounds=0)
