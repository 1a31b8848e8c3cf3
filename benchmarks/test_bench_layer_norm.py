"""Fused residual add + LayerNorm vs eager (`h = x + r; F.layer_norm(h)`) vs torch.compile of the eager.

Shapes are one encoder layer's LN2 input at the real batch: B/16 (512 images x 196 tokens, D 768) and So400m/14
(128 x 729, D 1152), bf16. LayerNorm is memory bound, so the figure of merit is the achieved bandwidth against the
ideal bytes of the fused op (read x, r; write y, h; backward: read dy, dh, h; write dx), the same byte count for
every implementation so the GB/s are comparable. `ratio` = eager ms / this implementation's ms, from the same run.

On CPU (`--bench-size small`) only a small eager case runs: timing the Triton kernel under the interpreter would
measure the interpreter, not the kernel.
"""

import pytest
import torch

from benchmarks._common import peak_memory_mib, sync, time_ms
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


def _make_step(forward, mode, n, D, dtype, device):
    """A zero-argument callable running one forward (and backward) step on fresh random inputs."""
    grad = mode == "fwd+bwd"
    x = torch.randn(n, D, device=device, dtype=dtype, requires_grad=grad)
    r = torch.randn(n, D, device=device, dtype=dtype, requires_grad=grad)
    w = torch.randn(D, device=device, dtype=dtype, requires_grad=grad)
    b = torch.randn(D, device=device, dtype=dtype, requires_grad=grad)
    if not grad:
        return lambda: forward(x, r, w, b)
    gy, gh = torch.randn(n, D, device=device, dtype=dtype), torch.randn(n, D, device=device, dtype=dtype)

    def step():
        y, h = forward(x, r, w, b)
        return torch.autograd.grad((y, h), (x, r, w, b), (gy, gh))

    return step


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["triton", "eager", "compile"])
@pytest.mark.parametrize("model", list(MODELS))
def test_bench_add_layer_norm(benchmark, device, bench_size, report, compile_baselines, model, impl, mode):
    if device.type != "cuda":
        if impl != "eager":
            pytest.skip({"triton": "the Triton kernel is timed on CUDA only: under the CPU interpreter it would time "
                                   "the interpreter, not the kernel",
                         "compile": "the torch.compile baseline is timed on CUDA only, beside the kernel"}[impl])
        if bench_size != "small" or model not in SMALL_IMAGES["cpu"]:
            pytest.skip("on CPU only the small B/16 eager case runs (--bench-size small)")
    if impl == "compile" and not compile_baselines:
        pytest.skip("torch.compile baselines are slow to build: pass --compile-baselines")

    n, D, dtype = _problem(model, device, bench_size)
    forward = {"triton": _fused, "eager": _eager, "compile": None}[impl]
    if impl == "compile":
        forward = torch.compile(_eager, dynamic=False)
    step = _make_step(forward, mode, n, D, dtype, device)
    eager_step = step if impl == "eager" else _make_step(_eager, mode, n, D, dtype, device)

    step()  # compile / first launch out of the timings
    sync(device)
    ms = time_ms(step, device)
    eager_ms = ms if impl == "eager" else time_ms(eager_step, device)
    peak = peak_memory_mib(step, device)

    def timed():
        out = step()
        sync(device)
        return out

    benchmark.pedantic(timed, rounds=20 if device.type == "cuda" else 5, warmup_rounds=1, iterations=1)

    gbps = _ideal_bytes(n, D, dtype, mode) / (ms * 1e-3) / 1e9
    case = f"{model} {n}x{D} {str(dtype).removeprefix('torch.')}"
    report(f"add+layer_norm {mode}", case, impl, ms=ms, gb_per_s=gbps, ratio=eager_ms / ms, peak_mib=peak,
           flops=0.0, bytes=_ideal_bytes(n, D, dtype, mode))
    assert ms > 0 and gbps > 0
