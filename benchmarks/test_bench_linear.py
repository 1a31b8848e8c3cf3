"""Fused linear (GEMM + bias / GELU-tanh / residual epilogue) against cuBLAS plus the eager elementwise passes.

The question (issue 8): at SigLIP's MLP widths (So400m 4304, B/16 3072) does the fused Triton GEMM beat cuBLAS
F.linear followed by eager GELU / residual add, and cuBLAS followed by a torch.compile'd elementwise epilogue?

Rows per case, all timed in one process on the same inputs (bf16):
  triton        siglip_fast.kernels.linear with gemm="triton" (one GEMM, epilogue fused)
  auto          the same with gemm="auto": whichever of triton / torch's GEMM + in-place passes timed faster on the
                first call (what the model runs)
  cublas+eager  linear_reference: F.linear (bias fused by cuBLAS), then F.gelu / + residual as separate passes
  cublas+compile  F.linear, then a torch.compile'd GELU / residual add (only with --compile-baselines)
  cublas gemm   F.linear alone: what the layer would cost if the epilogue were free (a lower bound)
tflops counts the GEMM only (2*M*N*K); mfu is against the measured bf16 GEMM peak; ratio = cublas+eager ms / ms.

The residual sites (`test_bench_residual_site`): the encoder's `h = h + out_proj(a); x = LN2(h)` (and fc2 with the
next LayerNorm) as the model runs it (cuBLAS GEMM, then the fused add + LayerNorm kernel) against the alternative
plan (the residual in the Triton GEMM's epilogue, then a plain LayerNorm kernel) and eager (GEMM, add, LayerNorm).

Every row's result is checked before it is timed against float64 (the outputs and dX on the first rows; dW, dbias
over every row, a block at a time) within the dtype's budget relative to each tensor's scale
(benchmarks/_common.REL_BUDGET); a row over it fails the test. On CPU (`test_bench_linear_cpu`) a tiny fc1 and
fc2 shape run: eager checked and timed, the Triton GEMM under the interpreter checked (forward and backward), not
timed.
"""

import functools

import pytest
import torch
import torch.nn.functional as F

from benchmarks._common import REL_BUDGET, check_close, gemm_peak_tflops, peak_memory_mib, sync, time_ms
from siglip_fast.kernels.layer_norm import layer_norm, layer_norm_reference
from siglip_fast.kernels.linear import linear, linear_reference

# name: (tokens per image, images full, images small, K, N, epilogue)
CASES = {
    "so400m fc1": (729, 128, 8, 1152, 4304, "gelu"),
    "b16 fc1": (196, 512, 32, 768, 3072, "gelu"),
    "so400m fc2": (729, 128, 8, 4304, 1152, "residual"),
    "b16 fc2": (196, 512, 32, 3072, 768, "residual"),
    "so400m out_proj": (729, 128, 8, 1152, 1152, "residual"),
    "b16 out_proj": (196, 512, 32, 768, 768, "residual"),
}
TRAIN_CASES = ["so400m fc1", "b16 fc1", "so400m fc2"]
GPU_ONLY = "the fused Triton GEMM is timed on CUDA only (interpreter times on CPU say nothing about the kernel)"


def _make(case, bench_size, device, dtype=torch.bfloat16, requires_grad=False):
    tokens, b_full, b_small, k, n, epilogue = CASES[case]
    m = tokens * (b_full if bench_size == "full" else b_small)
    x = torch.randn(m, k, device=device, dtype=dtype)
    w = torch.randn(n, k, device=device, dtype=dtype) / k**0.5
    b = torch.randn(n, device=device, dtype=dtype)
    r = torch.randn(m, n, device=device, dtype=dtype) if epilogue == "residual" else None
    act = "gelu_tanh" if epilogue == "gelu" else None
    for t in (x, w, b, r):
        if t is not None:
            t.requires_grad_(requires_grad)
    return (m, k, n), (x, w, b, r), act


_COMPILED = {}


def _compiled_epilogue(act):
    """cuBLAS F.linear (with bias) followed by a torch.compile'd elementwise epilogue."""
    if act not in _COMPILED:
        if act == "gelu_tanh":
            fn = torch.compile(lambda y: F.gelu(y, approximate="tanh"), dynamic=False)
        else:
            fn = torch.compile(lambda y, r: r + y, dynamic=False)
        _COMPILED[act] = fn
    return _COMPILED[act]


def _impls(inputs, act, compile_baselines):
    x, w, b, r = inputs
    impls = {
        "triton": lambda: linear(x, w, b, activation=act, residual=r, gemm="triton"),
        "auto": lambda: linear(x, w, b, activation=act, residual=r, gemm="auto"),
        "cublas+eager": lambda: linear_reference(x, w, b, activation=act, residual=r),
    }
    if compile_baselines:
        epi = _compiled_epilogue(act)
        if act == "gelu_tanh":
            impls["cublas+compile"] = lambda: epi(F.linear(x, w, b))
        else:
            impls["cublas+compile"] = lambda: epi(F.linear(x, w, b), r)
    impls["cublas gemm"] = lambda: F.linear(x, w, b)
    return impls


CHECK_ROWS = 4096  # output rows (and dX rows) checked against float64; dW and dbias over every row


def _reference(x, w, b, act, r, *, epilogue=True, grad=None):
    """float64 reference: the output's first CHECK_ROWS rows, or with `grad` (the output's gradient) the gradients
    [dx rows, dw, db(, dr rows)], dw and db accumulated over every row a block at a time."""
    m = min(CHECK_ROWS, x.shape[0])
    wd, bd = w.detach().double(), b.detach().double()
    if grad is None:
        xd = x[:m].detach().double()
        if not epilogue:
            return F.linear(xd, wd, bd)
        return linear_reference(xd, wd, bd, activation=act, residual=None if r is None else r[:m].detach().double())
    wd.requires_grad_()
    bd.requires_grad_()
    dx = None
    for i in range(0, x.shape[0], CHECK_ROWS):
        xd = x[i:i + CHECK_ROWS].detach().double().requires_grad_(i == 0)
        y = linear_reference(xd, wd, bd, activation=act)  # the residual adds nothing to dW, db; dr = grad
        y.backward(grad[i:i + CHECK_ROWS].double())
        dx = xd.grad if i == 0 else dx
    out = [dx, wd.grad, bd.grad]
    return out + ([grad[:m].double()] if r is not None else [])


def _pedantic(benchmark, fn, device):
    def call():
        fn()
        sync(device)

    benchmark.pedantic(call, rounds=20, iterations=1, warmup_rounds=3)


@pytest.mark.parametrize("case", list(CASES))
def test_bench_linear_fwd(case, benchmark, device, bench_size, report, compile_baselines):
    if device.type != "cuda":
        pytest.skip(GPU_ONLY)
    (m, k, n), inputs, act = _make(case, bench_size, device)
    impls = _impls(inputs, act, compile_baselines)
    x, w, b, r = inputs
    shape = f"{case} M={m} K={k} N={n}"
    errs = {}
    with torch.no_grad():
        ref, ref_gemm = _reference(x, w, b, act, r), _reference(x, w, b, act, r, epilogue=False)
        for name, fn in impls.items():  # warm-up (autotune and compile out of the timings) and the result checked
            out = fn()
            sync(device)
            errs[name] = check_close(f"linear fwd {shape} {name}", [out[:CHECK_ROWS]],
                                     [ref_gemm if name == "cublas gemm" else ref], REL_BUDGET[x.dtype])
        _pedantic(benchmark, impls["triton"], device)
        ms = {name: time_ms(fn, device) for name, fn in impls.items()}
        peak = gemm_peak_tflops(device)
        flops = 2 * m * n * k
        for name, fn in impls.items():
            tflops = flops / ms[name] / 1e9
            report("linear fwd bf16", shape, name, ms=ms[name], tflops=tflops, mfu=tflops / peak if peak else None,
                   ratio=ms["cublas+eager"] / ms[name], peak_mib=peak_memory_mib(fn, device), max_err=errs[name],
                   flops=flops,
                   bytes=sum(t.numel() * t.element_size() for t in inputs if t is not None) + m * n * 2)


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_bench_linear_fwd_bwd(case, benchmark, device, bench_size, report):
    if device.type != "cuda":
        pytest.skip(GPU_ONLY)
    (m, k, n), inputs, act = _make(case, bench_size, device, requires_grad=True)
    x, w, b, r = inputs
    leaves = [t for t in inputs if t is not None]
    g = torch.randn(m, n, device=device, dtype=x.dtype)

    def step(fn):
        return lambda: torch.autograd.grad(fn(x, w, b, activation=act, residual=r), leaves, g)

    impls = {"triton": step(functools.partial(linear, gemm="triton")), "auto": step(linear),
             "cublas+eager": step(linear_reference)}
    shape = f"{case} M={m} K={k} N={n}"
    refs = _reference(x, w, b, act, r, grad=g)
    labels = ["dx", "dw", "db"] + (["dr"] if r is not None else [])
    errs = {}
    for name, fn in impls.items():  # warm-up and the gradients checked
        grads = fn()
        sync(device)
        outs = [grads[0][:CHECK_ROWS], grads[1], grads[2]] + ([grads[3][:CHECK_ROWS]] if r is not None else [])
        errs[name] = check_close(f"linear fwd+bwd {shape} {name}", outs, refs, REL_BUDGET[x.dtype], labels)
    _pedantic(benchmark, impls["triton"], device)
    ms = {name: time_ms(fn, device) for name, fn in impls.items()}
    peak = gemm_peak_tflops(device)
    flops = 3 * 2 * m * n * k  # forward GEMM + dX + dW
    for name, fn in impls.items():
        tflops = flops / ms[name] / 1e9
        report("linear fwd+bwd bf16", shape, name, ms=ms[name], tflops=tflops, mfu=tflops / peak if peak else None,
               ratio=ms["cublas+eager"] / ms[name], peak_mib=peak_memory_mib(fn, device), max_err=errs[name],
               flops=flops,
               bytes=2 * sum(t.numel() * t.element_size() for t in leaves) + 3 * m * n * 2)  # in+grads, out, g


@pytest.mark.parametrize("case", [c for c, spec in CASES.items() if spec[-1] == "residual"])
def test_bench_residual_site(case, benchmark, device, bench_size, report):
    if device.type != "cuda":
        pytest.skip(GPU_ONLY)
    (m, k, n), (x, w, b, r), _ = _make(case, bench_size, device)
    ln_w = 1 + 0.1 * torch.randn(n, device=device, dtype=x.dtype)
    ln_b = 0.1 * torch.randn(n, device=device, dtype=x.dtype)
    eps = 1e-6
    impls = {
        "cublas+add_ln (model)": lambda: layer_norm(F.linear(x, w, b), ln_w, ln_b, eps, residual=r),
        "triton epilogue+ln": lambda: (lambda h: (layer_norm(h, ln_w, ln_b, eps), h))(
            linear(x, w, b, residual=r, gemm="triton")),
        "eager": lambda: layer_norm_reference(F.linear(x, w, b), ln_w, ln_b, eps, residual=r),
    }
    with torch.no_grad():
        outs = {name: fn() for name, fn in impls.items()}  # warm-up (autotuning) and the outputs compared
        sync(device)
        _pedantic(benchmark, impls["cublas+add_ln (model)"], device)
        ms = {name: time_ms(fn, device) for name, fn in impls.items()}
    # float64: h = x W^T + b + r, y = LN(h), on the first rows
    rows = min(CHECK_ROWS, m)
    h64 = F.linear(x[:rows].double(), w.double(), b.double()) + r[:rows].double()
    y64 = layer_norm_reference(h64, ln_w.double(), ln_b.double(), eps)
    shape = f"{case} M={m} K={k} N={n}"
    for name in impls:
        y, h = outs[name]
        err = check_close(f"residual site {shape} {name}", [y[:rows], h[:rows]], [y64, h64], REL_BUDGET[x.dtype],
                          ["y", "h"])
        report("residual site fwd bf16", shape, name, ms=ms[name], ratio=ms["eager"] / ms[name], max_err=err)


@pytest.mark.parametrize("epilogue", ["gelu", "residual"])
def test_bench_linear_cpu(epilogue, benchmark, device, report):
    """On CPU: a tiny fc1 (GELU) and fc2 (residual) shape with a tail (M = 70): the eager reference checked and
    timed; the Triton GEMM under the interpreter checked, forward and backward, not timed."""
    if device.type == "cuda":
        pytest.skip("CPU case; the CUDA cases above cover the real shapes")
    m, k, n = (70, 96, 160) if epilogue == "gelu" else (70, 160, 96)
    act = "gelu_tanh" if epilogue == "gelu" else None
    x = torch.randn(m, k, requires_grad=True)
    w = (torch.randn(n, k) / k**0.5).requires_grad_()
    b = torch.randn(n, requires_grad=True)
    r = torch.randn(m, n, requires_grad=True) if epilogue == "residual" else None
    g = torch.randn(m, n)
    leaves = [t for t in (x, w, b, r) if t is not None]
    ref = _reference(x, w, b, act, r)
    ref_grads = _reference(x, w, b, act, r, grad=g)
    labels = ["dx", "dw", "db"] + (["dr"] if r is not None else [])
    shape = f"{epilogue} M={m} K={k} N={n}"
    fns = {"eager": linear_reference, "triton": functools.partial(linear, gemm="triton")}
    errs = {}
    for name, f in fns.items():
        out = f(x, w, b, activation=act, residual=r)
        grads = torch.autograd.grad(out, leaves, g)
        errs[name] = max(check_close(f"linear cpu {shape} {name}", [out], [ref], REL_BUDGET[torch.float32]),
                         check_close(f"linear cpu {shape} {name} backward", grads, ref_grads,
                                     REL_BUDGET[torch.float32], labels))
    report("linear fwd+bwd fp32 (cpu)", shape, "triton", max_err=errs["triton"],
           note="checked, not timed: the Triton interpreter on CPU")
    with torch.no_grad():
        fn = lambda: linear_reference(x, w, b, activation=act, residual=r)
        benchmark.extra_info.update(impl="eager", case=shape)
        benchmark(fn)
        ms = time_ms(fn, device)
    report("linear fwd fp32 (cpu)", shape, "eager", ms=ms, tflops=2 * m * n * k / ms / 1e9, max_err=errs["eager"])
