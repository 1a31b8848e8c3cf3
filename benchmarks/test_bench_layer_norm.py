"""Fused residual add + LayerNorm vs eager (`h = x + r; F.layer_norm(h)`) vs torch.compile of the eager.

Shapes are one encoder layer's LN2 input at the real batch: B/16 (512 images x 196 tokens, D 768) and So400m/14
(128 x 729, D 1152), bf16. LayerNorm is memory bound, so the figure of merit is the achieved bandwidth against the
ideal bytes of the fused op (read x, r; write y, h; backward: read dy, dh, h; write dx), the same byte count for
every implementation so the GB/s are comparable. `ratio` = eager ms / this implementation's ms, from the same run.

Each row's result is checked before it is timed, against float64 (the forward's y and h and the backward's dx and
d residual on the first rows, dweight and dbias over every row), within the dtype's budget relative to each tensor's
scale (benchmarks/_common.REL_BUDGET). On CPU (`--bench-size small`) a small case runs: eager is checked and timed,
the Triton kernel under the interpreter is checked, not timed (its time would measure the interpreter).
"""

import pytest
import torch

from benchmarks._common import REL_BUDGET, check_close, peak_memory_mib, sync, time_ms
from siglip_fast.kernels.layer_norm import layer_norm, layer_norm_reference

EPS = 1e-6
# model -> (images, tokens per image, width) at full size; small size scales the batch down.
MODELS = {"B/16": (512, 196, 768), "So400m/14": (128, 729, 1152)}
SMALL_IMAGES = {"cuda": {"B/16": 16, "So400m/14": 4}, "cpu": {"B/16": 2}}


def _problem(model, device, bench_size):
    images, tokens, D = MODELS[model]
    if bench_size == "small":
        images = SMALL_IMAGES[device.type].get(model)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return images * tokens, D, dtype


def _ideal_bytes(n, D, dtype, mode):
    s = torch.finfo(dtype).bits // 8
    fwd = 4 * n * D * s + 8 * n  # x, r in; y, h out; fp32 mean/rstd out
    bwd = 4 * n * D * s + 8 * n  # dy, dh, h in; dx (= d residual) out; mean/rstd in
    return fwd + (bwd if mode == "fwd+bwd" else 0)


def _eager(x, r, w, b):
    return layer_norm_reference(x, w, b, EPS, residual=r)


def _fused(x, r, w, b):
    return layer_norm(x, w, b, EPS, residual=r)


CHECK_ROWS = 4096  # rows of y, h, dx, d residual checked against float64 (dweight, dbias: every row)


def _make_step(forward, mode, n, D, dtype, device):
    """(step, inputs): a zero-argument callable running one forward (and backward) step on fresh random inputs, and
    those inputs (x, r, w, b, gy, gh; the last two None for the forward)."""
    grad = mode == "fwd+bwd"
    x = torch.randn(n, D, device=device, dtype=dtype, requires_grad=grad)
    r = torch.randn(n, D, device=device, dtype=dtype, requires_grad=grad)
    w = torch.randn(D, device=device, dtype=dtype, requires_grad=grad)
    b = torch.randn(D, device=device, dtype=dtype, requires_grad=grad)
    if not grad:
        return (lambda: forward(x, r, w, b)), (x, r, w, b, None, None)
    gy, gh = torch.randn(n, D, device=device, dtype=dtype), torch.randn(n, D, device=device, dtype=dtype)

    def step():
        y, h = forward(x, r, w, b)
        return torch.autograd.grad((y, h), (x, r, w, b), (gy, gh))

    return step, (x, r, w, b, gy, gh)


def _check(name, result, inputs, mode, dtype) -> float:
    """The step's result against float64: forward (y, h) or backward (dx, dr, dw, db)."""
    x, r, w, b, gy, gh = inputs
    m = min(CHECK_ROWS, x.shape[0])
    rows = [t[:m].detach().double().requires_grad_() for t in (x, r)]
    params = [t.detach().double().requires_grad_() for t in (w, b)]
    y, h = layer_norm_reference(rows[0], params[0], params[1], EPS, residual=rows[1])
    if mode == "fwd":
        return check_close(name, [result[0][:m], result[1][:m]], [y, h], REL_BUDGET[dtype], ["y", "h"])
    dx, dr = torch.autograd.grad((y, h), rows, (gy[:m].double(), gh[:m].double()))
    dw = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    db = torch.zeros_like(dw)
    for i in range(0, x.shape[0], CHECK_ROWS):  # dweight, dbias over every row, in float64, a block at a time
        hh = x[i:i + CHECK_ROWS].double() + r[i:i + CHECK_ROWS].double()
        xhat = (hh - hh.mean(-1, keepdim=True)) / (hh.var(-1, unbiased=False, keepdim=True) + EPS).sqrt()
        g = gy[i:i + CHECK_ROWS].double()
        dw += (g * xhat).sum(0)
        db += g.sum(0)
    gx, gr, gw, gb = result
    return check_close(name, [gx[:m], gr[:m], gw, gb], [dx, dr, dw, db], REL_BUDGET[dtype], ["dx", "dr", "dw", "db"])


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["triton", "eager", "compile"])
@pytest.mark.parametrize("model", list(MODELS))
def test_bench_add_layer_norm(benchmark, device, bench_size, report, compile_baselines, model, impl, mode):
    if device.type != "cuda":
        if impl == "compile":
            pytest.skip("the torch.compile baseline is timed on CUDA only, beside the kernel")
        if bench_size != "small" or model not in SMALL_IMAGES["cpu"]:
            pytest.skip("on CPU only the small B/16 case runs (--bench-size small)")
    if impl == "compile" and not compile_baselines:
        pytest.skip("torch.compile baselines are slow to build: pass --compile-baselines")

    n, D, dtype = _problem(model, device, bench_size)
    forward = {"triton": _fused, "eager": _eager, "compile": None}[impl]
    if impl == "compile":
        forward = torch.compile(_eager, dynamic=False)
    step, inputs = _make_step(forward, mode, n, D, dtype, device)
    case = f"{model} {n}x{D} {str(dtype).removeprefix('torch.')}"
    suite = f"add+layer_norm {mode}"

    result = step()  # compile / first launch out of the timings, and the result checked
    sync(device)
    err = _check(f"{suite} {case} {impl}", result, inputs, mode, dtype)
    if impl == "triton" and device.type != "cuda":
        report(suite, case, impl, max_err=err, note="checked, not timed: the Triton interpreter on CPU")
        return
    eager_step = step if impl == "eager" else _make_step(_eager, mode, n, D, dtype, device)[0]
    ms = time_ms(step, device)
    eager_ms = ms if impl == "eager" else time_ms(eager_step, device)
    peak = peak_memory_mib(step, device)

    def timed():
        out = step()
        sync(device)
        return out

    benchmark.extra_info.update(impl=impl, case=case)
    benchmark.pedantic(timed, rounds=20 if device.type == "cuda" else 5, warmup_rounds=1, iterations=1)

    gbps = _ideal_bytes(n, D, dtype, mode) / (ms * 1e-3) / 1e9
    report(suite, case, impl, ms=ms, gb_per_s=gbps, ratio=eager_ms / ms, peak_mib=peak, max_err=err,
           flops=0.0, bytes=_ideal_bytes(n, D, dtype, mode))
