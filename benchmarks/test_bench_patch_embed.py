"""Patch embedding + position embedding, inference forward: fused kernel vs the eager module (conv2d -> flatten ->
transpose -> + pos, i.e. `patch_embed_reference`) and torch.compile of it (--compile-baselines), side by side.

Full size (GPU): B/16-224 at batch 512 and So400m/14-384 at batch 128 (384 px crops to 378), bf16 weights, pixels as
fp32 (the image processor's output, cast to bf16 on the way in) or raw uint8 (normalised on the way in; the eager
baseline normalises in its own ops). Figures: median ms, TFLOP/s, achieved GB/s against the ideal traffic (pixels
the conv sees read once, weight, bias and position table read once, output written once), ratio vs eager in the same
run, peak memory. A training step (forward + backward for weight, bias and position table; 4 * B * N * D * K
FLOPs) is timed the same way. Small size (CPU): a tiny case; eager checked and timed, the kernel under the Triton
interpreter checked, not timed.

Every row's result is checked before it is timed against float64 (the output on the first images; the weight, bias
and position-table gradients over the whole batch), from the pixels as the implementations read them (float pixels
rounded to the weights' dtype), within the dtype's budget relative to each tensor's scale
(benchmarks/_common.REL_BUDGET).
"""

import pytest
import torch

from benchmarks._common import REL_BUDGET, check_close, peak_memory_mib, sync, time_ms
from siglip_fast.kernels.patch_embed import patch_embed, patch_embed_reference

# name -> (B, C, image, p, D)
CASES = {
    "B16-224-b512": (512, 3, 224, 16, 768),
    "So400m14-384-b128": (128, 3, 384, 14, 1152),
    "tiny-b8": (8, 3, 32, 7, 64),
}
SIZE_OF = {"B16-224-b512": "full", "So400m14-384-b128": "full", "tiny-b8": "small"}
_EAGER_MS: dict = {}


def _inputs(case, pixels, device):
    B, C, S, p, D = CASES[case]
    N = (S // p) ** 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPU: fp32, the tight check
    if pixels == "uint8":
        x = torch.randint(0, 256, (B, C, S, S), dtype=torch.uint8, device=device)
    else:
        x = torch.randn(B, C, S, S, device=device)
    w = torch.randn(D, C, p, p, device=device, dtype=dtype) * (C * p * p) ** -0.5
    b = torch.randn(D, device=device, dtype=dtype)
    pos = torch.randn(N, D, device=device, dtype=dtype)
    return x, w, b, pos, p


CHECK_IMAGES = 4


def _ref_pixels(x, w):
    """The pixels as every implementation reads them, in float64 (uint8 stays uint8: normalised in float64)."""
    return x if x.dtype == torch.uint8 else x.to(w.dtype).double()


def _reference(args):
    x, w, b, pos, p = args
    return patch_embed_reference(_ref_pixels(x[:CHECK_IMAGES], w), w.double(), b.double(), pos.double(), p)


def _reference_grads(args, grad):
    x, w, b, pos, p = args
    params = [t.detach().double().requires_grad_() for t in (w, b, pos)]
    out = patch_embed_reference(_ref_pixels(x, w), *params, p)
    return list(torch.autograd.grad(out, params, grad.double()))


def _ideal_bytes(x, w, b, pos, p) -> int:
    B, C, H, W = x.shape
    seen = B * C * (H // p * p) * (W // p * p)  # the cropped remainder is never read
    N, D = pos.shape
    return seen * x.element_size() + (w.numel() + b.numel() + pos.numel() + B * N * D) * w.element_size()


def _impl_fn(impl, args):
    if impl == "eager":
        return lambda: patch_embed_reference(*args)
    if impl == "compile":
        compiled = torch.compile(patch_embed_reference)
        return lambda: compiled(*args)
    return lambda: patch_embed(*args)


def _skip_unless_runnable(case, impl, device, bench_size, compile_baselines) -> None:
    """Skip, with the reason, a case of the other size or an unrequested compile baseline."""
    if SIZE_OF[case] != bench_size:
        pytest.skip(f"{case} is a --bench-size {SIZE_OF[case]} case (this run: {bench_size})")
    if impl == "compile" and not compile_baselines:
        pytest.skip("torch.compile baseline runs only with --compile-baselines")


def _interpreted(impl, device) -> bool:
    """The kernel on CPU runs under the Triton interpreter: checked, not timed (the time says nothing about it)."""
    return impl == "triton" and device.type != "cuda"


@pytest.mark.parametrize("pixels", ["float32", "uint8"])
@pytest.mark.parametrize("impl", ["eager", "compile", "triton"])
@pytest.mark.parametrize("case", list(CASES))
def test_bench_patch_embed(case, impl, pixels, benchmark, device, bench_size, compile_baselines, report):
    _skip_unless_runnable(case, impl, device, bench_size, compile_baselines)
    args = _inputs(case, pixels, device)
    label = f"{case} {pixels}"
    with torch.no_grad():
        fn = _impl_fn(impl, args)
        out = fn()  # warm-up (autotuning / compilation stays out of the timings) and the result checked
        sync(device)
        err = check_close(f"patch_embed fwd {label} {impl}", [out[:CHECK_IMAGES]], [_reference(args)],
                          REL_BUDGET[args[1].dtype])
        if _interpreted(impl, device):
            report("patch_embed fwd", label, impl, max_err=err, note="checked, not timed: the Triton interpreter")
            return
        benchmark.extra_info.update(impl=impl, case=label)
        benchmark(lambda: (fn(), sync(device)))
        ms = time_ms(fn, device)
        key = (case, pixels, device.type)
        if impl == "eager":
            _EAGER_MS[key] = ms
        elif key not in _EAGER_MS:  # this run's own eager figure, so the ratio compares like with like
            _EAGER_MS[key] = time_ms(_impl_fn("eager", args), device)
        peak = peak_memory_mib(fn, device)

    x, w, b, pos, p = args
    B, N, D, K = x.shape[0], pos.shape[0], w.shape[0], w[0].numel()
    report("patch_embed fwd", label, impl, ms=ms,
           tflops=2 * B * N * D * K / ms / 1e9, gb_per_s=_ideal_bytes(*args) / ms / 1e6,
           ratio=_EAGER_MS[key] / ms, img_per_s=B / ms * 1e3, peak_mib=peak, max_err=err, flops=2 * B * N * D * K,
           bytes=_ideal_bytes(*args))


def _train_step(impl, args, grad):
    """Forward + backward as in training: pixels need no grad; weight, bias and position table do. The step returns
    their gradients."""
    x, w, b, pos, p = args
    params = [t.detach().requires_grad_() for t in (w, b, pos)]
    fwd = _impl_fn(impl, (x, *params, p))

    def step():
        for t in params:
            t.grad = None
        fwd().backward(grad)
        return [t.grad for t in params]

    return step


@pytest.mark.parametrize("impl", ["eager", "compile", "triton"])
@pytest.mark.parametrize("case", list(CASES))
def test_bench_patch_embed_train(case, impl, benchmark, device, bench_size, compile_baselines, report):
    _skip_unless_runnable(case, impl, device, bench_size, compile_baselines)
    args = _inputs(case, "float32", device)
    x, w, b, pos, p = args
    grad = torch.randn(x.shape[0], pos.shape[0], w.shape[0], device=x.device, dtype=w.dtype)
    fn = _train_step(impl, args, grad)
    grads = fn()  # warm-up and the gradients checked
    sync(device)
    label = f"{case} float32"
    err = check_close(f"patch_embed fwd+bwd {label} {impl}", grads, _reference_grads(args, grad),
                      REL_BUDGET[w.dtype], ["dweight", "dbias", "dposition"])
    if _interpreted(impl, device):
        report("patch_embed fwd+bwd", label, impl, max_err=err, note="checked, not timed: the Triton interpreter")
        return
    benchmark.extra_info.update(impl=impl, case=label)
    benchmark(lambda: (fn(), sync(device)))
    ms = time_ms(fn, device)
    eager_ms = ms if impl == "eager" else time_ms(_train_step("eager", args, grad), device)
    B, N, D, K = x.shape[0], pos.shape[0], w.shape[0], w[0].numel()
    report("patch_embed fwd+bwd", label, impl, ms=ms, tflops=4 * B * N * D * K / ms / 1e9,
           ratio=eager_ms / ms, img_per_s=B / ms * 1e3, peak_mib=peak_memory_mib(fn, device), max_err=err)
