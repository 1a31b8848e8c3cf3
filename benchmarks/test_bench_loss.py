"""Sigmoid loss forward+backward: the blockwise kernel against the plain formulation, time and peak memory in one run.

Plain = the open_clip / transformers formulation (N×N logits, labels 2I − 1, −Σ logsigmoid / N). FLOPs counted
as the three useful GEMM-equivalents (forward logits, dx, dy): 6·N²·D for either implementation, so TFLOP/s
compare like with like (the kernel's training forward computes the gradients in the same pass: 6·N²·D executed).

GPU (`--bench-size full`): N = 4096 … 65536, D = 1152, fp32 and bf16 inputs (fp32 also under TF32, as
`torch.set_float32_matmul_precision("high")` selects for both). CPU (`small`): N = 1024, D = 64, the eager blockwise
path against plain, and the interpreted kernel at a tiny size.

Every row's loss and four gradients (image, text, scale, bias) are checked before they are timed against a float64
evaluation of the plain formula on the same inputs (blockwise, so no N×N float64 matrix is held), within the dtype's
budget relative to each tensor's scale (benchmarks/_common.REL_BUDGET; TF32 rows: its "tf32" entry).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from benchmarks._common import REL_BUDGET, check_close, peak_memory_mib, sync, time_ms
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
    """One training step of the loss: returns (loss, dx, dy, dt, db)."""
    def run():
        loss = loss_fn(x, y, t.to(x.dtype) if loss_fn is sigmoid_loss_reference else t,
                       b.to(x.dtype) if loss_fn is sigmoid_loss_reference else b, **kw)
        return (loss.detach(), *torch.autograd.grad(loss, (x, y, t, b)))
    return run


def _reference(x, y, t, b, block: int = 2048):
    """The plain formula in float64, a block of image rows at a time: (loss, dx, dy, dt, db)."""
    x64, y64 = x.detach().double(), y.detach().double()
    scale, bias = t.detach().double().exp(), b.detach().double()
    n = x.shape[0]
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    dx, dy = torch.zeros_like(x64), torch.zeros_like(y64)
    dt, db = torch.zeros_like(scale), torch.zeros_like(bias)
    for i in range(0, n, block):
        cos = x64[i:i + block] @ y64.T  # (rows, N)
        logits = scale * cos + bias
        labels = -torch.ones_like(logits)
        labels[:, i:i + block].diagonal().fill_(1.0)
        loss -= F.logsigmoid(labels * logits).sum() / n
        g = -labels * torch.sigmoid(-labels * logits) / n  # d loss / d logits
        dx[i:i + block] = scale * (g @ y64)
        dy += scale * (g.T @ x64[i:i + block])
        dt += scale * (g * cos).sum()
        db += g.sum()
    return [loss, dx, dy, dt, db]


LABELS = ["loss", "dx", "dy", "dt", "db"]


def _check(name, fn, ref, budget) -> float:
    out = fn()
    return check_close(name, list(out), ref, budget, LABELS)


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


def _measure(fn, device, check=None, **kw):
    """(ms, peak MiB, error): `check(fn)` first (the result against float64), then the timing."""
    err = check(fn) if check is not None else None
    return time_ms(fn, device, **kw), peak_memory_mib(fn, device), err


@pytest.mark.parametrize("n,d,dtype", GPU_CASES, ids=[f"N{n}-D{d}-{str(dt)[6:]}" for n, d, dt in GPU_CASES])
def test_bench_loss_gpu(benchmark, device, bench_size, report, compile_baselines, n, d, dtype):
    if device.type != "cuda":
        pytest.skip("GPU sizes (N up to 65536, D = 1152) need CUDA; the CPU run measures the small case")
    if bench_size == "small" and n > 4096:
        pytest.skip("--bench-size small: only N = 4096 on the GPU")
    case = f"N={n} D={d} {str(dtype)[6:]}"
    flops = 6 * n * n * d
    x, y, t, b = _inputs(n, d, dtype, device)
    ref = _reference(x, y, t, b)
    precisions = ["highest", "high"] if dtype == torch.float32 else ["highest"]
    for prec in precisions:
        tag = "" if prec == "highest" else " (tf32)"
        budget = REL_BUDGET["tf32" if prec == "high" else dtype]
        with _matmul_precision(prec):
            def check(impl, budget=budget):
                return lambda fn: _check(f"{SUITE} {case} {impl}", fn, ref, budget)

            fused = _fwd_bwd(sigmoid_loss, x, y, t, b, backend="triton")
            rows = [("fused" + tag, *_measure(fused, device, check("fused" + tag)))]
            if _plain_fits(n, dtype, device):
                plain = _fwd_bwd(sigmoid_loss_reference, x, y, t, b)
                rows.append(("plain" + tag, *_measure(plain, device, check("plain" + tag))))
                if compile_baselines:
                    compiled = _fwd_bwd(torch.compile(sigmoid_loss_reference), x, y, t, b)
                    rows.append(("plain+compile" + tag, *_measure(compiled, device, check("plain+compile" + tag))))
            else:
                report(SUITE, case, "plain" + tag, note="not run: its N×N tensors would not fit in GPU memory")
            base = rows[1][1] if len(rows) > 1 else None
            for impl, ms, mem, err in rows:
                report(SUITE, case, impl, ms=ms, tflops=flops / ms / 1e9, peak_mib=mem,
                       ratio=None if base is None else base / ms, max_err=err, flops=flops,
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
    ref = _reference(x, y, t, b)
    budget = REL_BUDGET[torch.float32]
    blockwise = _fwd_bwd(sigmoid_loss, x, y, t, b, backend="eager")
    plain = _fwd_bwd(sigmoid_loss_reference, x, y, t, b)
    ms_b, mem_b, err_b = _measure(blockwise, device, lambda fn: _check(f"{SUITE} {case} eager blockwise", fn, ref,
                                                                       budget))
    ms_p, mem_p, err_p = _measure(plain, device, lambda fn: _check(f"{SUITE} {case} plain", fn, ref, budget))
    flops = 6 * n * n * d
    report(SUITE, case, "eager blockwise", ms=ms_b, tflops=flops / ms_b / 1e9, peak_mib=mem_b, ratio=ms_p / ms_b,
           max_err=err_b)
    report(SUITE, case, "plain", ms=ms_p, tflops=flops / ms_p / 1e9, peak_mib=mem_p, ratio=1.0, max_err=err_p)
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
    err = _check(f"{SUITE} {case} triton (interpreted)", fused, _reference(x, y, t, b), REL_BUDGET[torch.float32])
    ms = time_ms(fused, device, warmup=1, rep=2)
    report(SUITE, case, "triton (interpreted)", ms=ms, max_err=err)
    benchmark.extra_info.update(case=case, impl="triton (interpreted)")
    benchmark.pedantic(fused, rounds=2, iterations=1, warmup_rounds=0)
