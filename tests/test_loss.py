"""The blockwise sigmoid loss: kernel (interpreter on CPU) and eager blockwise path against the plain formula.

Every case checks the loss and all four gradients (image, text, logit_scale, logit_bias) against the plain
formula in float64 on the same (rounded) inputs. Tolerances: a gradient's error is measured against its largest
entry (a scale-aware atol) plus an rtol; fp64 eager: 1e-10; fp32: 2e-5; fp16 (kernel slab in fp16): 2e-3.
"""

import importlib
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from siglip_fast.kernels.sigmoid_loss import sigmoid_loss_reference
from siglip_fast.loss import SigmoidLoss, sigmoid_loss

sl = importlib.import_module("siglip_fast.kernels.sigmoid_loss")  # the module, even if shadowed by the function
CUDA = torch.cuda.is_available()
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LOG10, LOG1000 = math.log(10.0), math.log(1000.0)


def _embeds(n, d, device, dtype=torch.float64):
    """L2-normalised random embeddings, as the model feeds them."""
    x = F.normalize(torch.randn(n, d, device=device, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(n, d, device=device, dtype=torch.float64), dim=-1)
    return x.to(dtype), y.to(dtype)


def _scalar(v, shape, device):
    return torch.full(shape, v, device=device, dtype=torch.float32)


def _loss_and_grads(fn, x, y, t, b, **kw):
    leaves = [v.detach().clone().requires_grad_() for v in (x, y, t, b)]
    loss = fn(*leaves, **kw)
    loss.backward()
    return loss.detach(), [v.grad for v in leaves]


def _reference(x, y, t, b):
    """fp64 loss and gradients of the plain formula on exactly the given (possibly rounded) values."""
    return _loss_and_grads(sigmoid_loss_reference, x.double(), y.double(), t.double(), b.double())


def _assert_close(got, ref, tol, name):
    got = got.double()
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    scale = ref.abs().max().item()
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * max(scale, 1e-30), msg=lambda m: f"{name}: {m}")


def _check(backend, n, d, dtype, t, b, device, chunk_rows=None, scalar_shape=(1,)):
    x, y = _embeds(n, d, device, dtype)
    t_, b_ = _scalar(t, scalar_shape, device), _scalar(b, scalar_shape, device)
    if dtype == torch.float64:
        t_, b_ = t_.double(), b_.double()
    loss, grads = _loss_and_grads(sigmoid_loss, x, y, t_, b_, backend=backend, chunk_rows=chunk_rows)
    ref_loss, ref_grads = _reference(x, y, t_, b_)
    tol = TOL[dtype]
    assert loss.shape == ()
    _assert_close(loss, ref_loss, tol, "loss")
    for name, g, r, v in zip(("d_image", "d_text", "d_logit_scale", "d_logit_bias"), grads, ref_grads,
                             (x, y, t_, b_), strict=True):
        assert g.dtype == v.dtype and g.shape == v.shape, f"{name}: {g.dtype} {g.shape} vs input {v.dtype} {v.shape}"
        _assert_close(g, r, tol, name)


# (t, b): the paper's init, a neutral point, saturated sigmoids in both directions
SCALARS = [(LOG10, -10.0), (0.0, 0.0), (LOG1000, 50.0), (LOG1000, -50.0)]


@pytest.mark.parametrize("n,d", [(1, 33), (37, 72), (70, 33), (129, 72)])
@pytest.mark.parametrize("t,b", SCALARS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eager_blockwise_matches_plain(n, d, t, b, dtype):
    _check("eager", n, d, dtype, t, b, "cpu")


@pytest.mark.parametrize("chunk_rows", [1, 8, 32, 64, 69, 70])
def test_eager_blockwise_chunk_sizes(chunk_rows):
    """open_clip's chunked-loss check: batch 70 with even and uneven chunks, every gradient."""
    _check("eager", 70, 33, torch.float64, LOG10, -10.0, "cpu", chunk_rows=chunk_rows)


@pytest.mark.parametrize("n,d,t,b,chunk_rows", [
    (1, 33, LOG10, -10.0, None),
    (37, 72, 0.0, 0.0, None),
    (70, 33, LOG1000, 50.0, 16),  # several slabs, each cutting a row tile
    (70, 72, LOG1000, -50.0, None),
    (129, 72, LOG10, -10.0, 37),  # uneven slabs across the diagonal
])
def test_kernel_matches_plain(n, d, t, b, chunk_rows, device):
    _check("triton", n, d, torch.float32, t, b, device, chunk_rows=chunk_rows, scalar_shape=())


def test_kernel_fp16(device):
    """Half inputs: fp32 logits in the kernel, the dz' slab stored in fp16, grads returned in fp16."""
    _check("triton", 70, 72, torch.float16, LOG10, -3.0, device)


@pytest.mark.parametrize("diag_offset", [0, 5, -3, 40])
def test_kernel_outputs_fully_written(diag_offset, device):
    """Launch into NaN-poisoned buffers: every partial and every dz' element must be written, and match the
    eager slab, including a shifted diagonal (the distributed ring's off-diagonal blocks use offset = n)."""
    m, n, d = 45, 40, 72
    x, y = _embeds(m, d, device, torch.float32)[0], _embeds(n, d, device, torch.float32)[1]
    ls, bias = torch.tensor([LOG10], device=device), torch.tensor([-4.0], device=device)
    bm, bn = sl._tiles(m, n)
    tiles = -(-m // bm) * -(-n // bn)
    part = torch.full((tiles,), float("nan"), device=device)
    sl._sigmoid_loss_fwd(x, y, ls, bias, diag_offset, out=part)
    assert torch.isfinite(part).all()
    dz = torch.full((m, n), float("nan"), device=device)
    tpart, bpart = torch.full_like(part, float("nan")), torch.full_like(part, float("nan"))
    sl._sigmoid_loss_bwd(x, y, ls, bias, diag_offset, out=(dz, tpart, bpart))
    assert torch.isfinite(dz).all() and torch.isfinite(tpart).all() and torch.isfinite(bpart).all()

    s = x.double() @ y.double().T
    z = s * math.exp(LOG10) - 4.0
    label = -torch.ones_like(z)
    i = torch.arange(m, device=device)
    keep = (i + diag_offset >= 0) & (i + diag_offset < n)
    label[i[keep], i[keep] + diag_offset] = 1.0
    ref_dz = -label * torch.sigmoid(-label * z)
    torch.testing.assert_close(part.double().sum(), -F.logsigmoid(label * z).sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dz.double(), ref_dz, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tpart.double().sum(), (ref_dz * s).sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bpart.double().sum(), ref_dz.sum(), rtol=1e-5, atol=1e-5)


def test_auto_backend_on_cpu_is_eager():
    x, y = _embeds(9, 33, "cpu", torch.float32)
    t, b = torch.tensor([LOG10]), torch.tensor([-10.0])
    assert torch.equal(sigmoid_loss(x, y, t, b), sigmoid_loss(x, y, t, b, backend="eager"))


def test_saves_only_inputs_and_nothing_under_no_grad(device):
    x, y = _embeds(37, 33, device, torch.float32)
    t, b = torch.tensor([LOG10], device=device), torch.tensor([-10.0], device=device)
    leaves = [v.clone().requires_grad_() for v in (x, y, t, b)]
    loss = sigmoid_loss(*leaves, backend="triton")
    saved = loss.grad_fn.saved_tensors
    assert [tuple(s.shape) for s in saved] == [(37, 33), (37, 33), (1,), (1,)]  # x, y, t, b: nothing N×N
    with torch.no_grad():
        assert sigmoid_loss(*leaves, backend="triton").grad_fn is None


def test_bf16_embeddings_with_fp32_scalars_eager():
    """The normal training case: bf16 embeddings, fp32 logit_scale/bias; grads come back in each input's dtype."""
    _check("eager", 37, 72, torch.bfloat16, LOG10, -10.0, "cpu")


def test_sigmoid_loss_module():
    mod = SigmoidLoss()
    assert mod.logit_scale.shape == (1,) and mod.logit_bias.shape == (1,)
    assert mod.logit_scale.item() == pytest.approx(math.log(10.0)) and mod.logit_bias.item() == -10.0
    x, y = _embeds(37, 33, "cpu", torch.float32)
    loss = mod(x, y)
    loss.backward()
    ref_loss, (_, _, gt, gb) = _reference(x, y, mod.logit_scale.detach(), mod.logit_bias.detach())
    _assert_close(loss.detach(), ref_loss, TOL[torch.float32], "loss")
    _assert_close(mod.logit_scale.grad, gt, TOL[torch.float32], "d_logit_scale")
    _assert_close(mod.logit_bias.grad, gb, TOL[torch.float32], "d_logit_bias")
    assert mod.logit_scale.grad.abs().item() > 0

    clamped = SigmoidLoss(init_logit_scale=math.log(50.0), max_logit_scale=math.log(20.0))
    loss = clamped(x, y)
    loss.backward()
    ref = sigmoid_loss_reference(x.double(), y.double(), torch.tensor(math.log(20.0), dtype=torch.float64),
                                 clamped.logit_bias.detach().double())
    _assert_close(loss.detach(), ref, TOL[torch.float32], "clamped loss")
    assert clamped.logit_scale.grad.item() == 0.0  # above the clamp: no gradient reaches t
    assert clamped.logit_bias.grad.abs().item() > 0


def test_compile_one_graph_for_every_batch_size():
    """The custom op traces without graph breaks (fullgraph) and one dynamic compilation serves two batch sizes.
    aot_eager keeps CI fast; the GPU test below compiles with inductor."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda x, y, t, b: sigmoid_loss(x, y, t, b, backend="eager"), backend=counter,
                       fullgraph=True)
    t, b = torch.tensor([LOG10]), torch.tensor([-10.0])
    for n in (5, 9):
        x, y = _embeds(n, 33, "cpu", torch.float32)
        leaves = [v.clone().requires_grad_() for v in (x, y, t, b)]
        torch._dynamo.mark_dynamic(leaves[0], 0)
        torch._dynamo.mark_dynamic(leaves[1], 0)
        loss = fn(*leaves)
        loss.backward()
        grads = [v.grad for v in leaves]
        ref_loss, ref_grads = _reference(x, y, t, b)
        _assert_close(loss, ref_loss, TOL[torch.float32], "compiled loss")
        for g, r in zip(grads, ref_grads, strict=True):
            _assert_close(g, r, TOL[torch.float32], "compiled grad")
    assert counter.frame_count == 1


_MEMORY_PROBE = """
import resource, torch
from siglip_fast.kernels.sigmoid_loss import sigmoid_loss
mib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # high-water mark, KiB on Linux
n, d = 16384, 64
x = torch.nn.functional.normalize(torch.randn(n, d), dim=-1).requires_grad_()
y = torch.nn.functional.normalize(torch.randn(n, d), dim=-1).requires_grad_()
t, b = torch.tensor([2.3], requires_grad=True), torch.tensor([-10.0], requires_grad=True)
sigmoid_loss(x[:64], y[:64], t, b, backend="eager").backward()  # warm-up: lazy init is not the loss's memory
base = mib()
loss = sigmoid_loss(x, y, t, b, backend="eager")
loss.backward()
assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
peak = mib() - base
# probe check: a 128 MiB tensor must lift the high-water mark to at least the current RSS + 128 MiB
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
now = rss()
big = torch.ones(128 * 2**20 // 4)
print(peak, mib() - now)
"""


def test_eager_memory_bound_n16384():
    """Peak extra RSS of eager forward+backward at N = 16384, D = 64 stays under 256 MiB (one N×N fp32 matrix is
    1 GiB). Measured as the ru_maxrss high-water mark in a fresh process; the probe checks itself on 128 MiB."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    peak, probe = map(float, out.stdout.split())
    assert peak < 256, f"peak extra memory {peak:.0f} MiB"
    assert probe > 100, f"the RSS probe missed a 128 MiB allocation ({probe:.0f} MiB)"


# --- bad input ------------------------------------------------------------------------------------------------

def _ok():
    x, y = _embeds(6, 8, "cpu", torch.float32)
    return x, y, torch.tensor([LOG10]), torch.tensor([-10.0])


@pytest.mark.parametrize("change,err,match", [
    (lambda x, y, t, b: (x, y[:5], t, b), ValueError, r"same shape.*\(6, 8\).*\(5, 8\)"),
    (lambda x, y, t, b: (x, y[:, :7], t, b), ValueError, r"same shape.*\(6, 8\).*\(6, 7\)"),
    (lambda x, y, t, b: (x[None], y[None], t, b), ValueError, r"image_embeds must be 2-D.*\(1, 6, 8\)"),
    (lambda x, y, t, b: (x, y, torch.ones(2), b), ValueError, r"logit_scale must be a scalar.*\(2,\)"),
    (lambda x, y, t, b: (x, y, t, torch.ones(1, 1)), ValueError, r"logit_bias must be a scalar.*\(1, 1\)"),
    (lambda x, y, t, b: (x, y.half(), t, b), TypeError, r"share a dtype.*float32.*float16"),
    (lambda x, y, t, b: (x.long(), y.long(), t, b), TypeError, r"image_embeds must be a floating-point.*int64"),
    (lambda x, y, t, b: (x, y, 2.3, b), TypeError, r"logit_scale must be a torch.Tensor, got float"),
    (lambda x, y, t, b: (x, y, t.to("meta"), b), ValueError, r"one device.*logit_scale on meta"),
    (lambda x, y, t, b: (x[:0], y[:0], t, b), ValueError, r"empty embeddings"),
    (lambda x, y, t, b: (x[:, :0], y[:, :0], t, b), ValueError, r"empty embeddings.*\(6, 0\)"),
    (lambda x, y, t, b: (x.to_sparse(), y.to_sparse(), t, b), TypeError, r"image_embeds must be a dense.*sparse_coo"),
    (lambda x, y, t, b: (x.cfloat(), y.cfloat(), t, b), TypeError, r"image_embeds must be a floating-point.*complex"),
    (lambda x, y, t, b: (x, y, torch.tensor(2), b), TypeError, r"logit_scale must be a floating-point.*int64"),
    (lambda x, y, t, b: (x.numpy(), y, t, b), TypeError, r"image_embeds must be a torch.Tensor, got ndarray"),
    (lambda x, y, t, b: (x, y, t.double(), b.bfloat16()[None]), ValueError, r"logit_bias must be a scalar.*\(1, 1\)"),
])
def test_bad_input(change, err, match):
    with pytest.raises(err, match=match):
        sigmoid_loss(*change(*_ok()))


def test_bad_backend_and_chunk():
    x, y, t, b = _ok()
    with pytest.raises(ValueError, match="backend must be one of"):
        sigmoid_loss(x, y, t, b, backend="cuda")
    with pytest.raises(ValueError, match="chunk_rows must be a positive int.*got 0"):
        sigmoid_loss(x, y, t, b, chunk_rows=0)
    with pytest.raises(TypeError, match="backend='triton' supports"):
        sigmoid_loss(x.double(), y.double(), t, b, backend="triton")
    with pytest.raises(ValueError, match="chunk_rows must be a positive int or None, got True"):
        sigmoid_loss(x, y, t, b, chunk_rows=True)  # a bool is not a row count
    for bad in (None, ["eager"]):
        with pytest.raises(TypeError, match=r"backend must be a str.*got (NoneType None|list \['eager'\])"):
            sigmoid_loss(x, y, t, b, backend=bad)


@pytest.mark.parametrize("backend", ["eager", "triton"])
@pytest.mark.parametrize("t,b,match", [
    (89.0, -10.0, r"logit_scale = 89.0: exp\(logit_scale\) is not finite in float32 .* ≤ 88.72"),
    (float("inf"), -10.0, r"logit_scale = inf: exp\(logit_scale\) is not finite in float32"),
    (float("nan"), -10.0, r"logit_scale = nan: exp\(logit_scale\) is not finite"),
    (LOG10, float("inf"), r"logit_bias = inf is not finite"),
    (LOG10, float("nan"), r"logit_bias = nan is not finite"),
    (LOG10, 1e300, r"logit_bias = 1e\+300 is not finite"),  # fp64 b, infinite in the fp32 compute dtype
])
def test_scale_overflow_and_non_finite_scalars_are_an_error(backend, t, b, match):
    """Issue 13: exp(t) overflowing fp32 gave NaN on eager and inf on Triton, no error. Now a ValueError naming the
    value, on every backend, for grad and no-grad calls alike."""
    x, y = _embeds(7, 33, "cpu", torch.float32)
    t_, b_ = torch.tensor([t], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        sigmoid_loss(x, y, t_, b_, backend=backend)
    with pytest.raises(ValueError, match=match):
        sigmoid_loss(x.requires_grad_(), y, t_.requires_grad_(), b_, backend=backend)


def test_scale_limit_follows_the_compute_dtype():
    """fp64 embeddings compute in fp64: t = 89 is a finite, correct loss there; t = 710 overflows fp64. t = −inf is
    a zero scale (z = b), finite."""
    x, y = _embeds(7, 33, "cpu", torch.float64)
    for t in (89.0, -math.inf):
        t_, b_ = torch.tensor([t], dtype=torch.float64), torch.tensor([-10.0], dtype=torch.float64)
        loss = sigmoid_loss(x, y, t_, b_, backend="eager")
        assert torch.isfinite(loss)
        torch.testing.assert_close(loss, sigmoid_loss_reference(x, y, t_, b_), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match=r"logit_scale = 710.0: .*not finite in float64 .* ≤ 709.78"):
        sigmoid_loss(x, y, torch.tensor(710.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))


def test_scale_overflow_error_under_compile():
    """The check is a custom op: fullgraph compilation keeps one graph, and the compiled call raises the same error."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda x, y, t, b: sigmoid_loss(x, y, t, b, backend="eager"), backend=counter,
                       fullgraph=True)
    x, y = _embeds(7, 33, "cpu", torch.float32)
    t, b = torch.tensor([LOG10], requires_grad=True), torch.tensor([-10.0], requires_grad=True)
    loss = fn(x, y, t, b)
    loss.backward()
    ref_loss, (_, _, gt, gb) = _reference(x, y, t.detach(), b.detach())
    _assert_close(loss.detach(), ref_loss, TOL[torch.float32], "compiled loss")
    _assert_close(t.grad, gt, TOL[torch.float32], "compiled d_logit_scale")
    _assert_close(b.grad, gb, TOL[torch.float32], "compiled d_logit_bias")
    with torch.no_grad():
        t.fill_(89.0)
    with pytest.raises(ValueError, match=r"logit_scale = 89.0: exp\(logit_scale\) is not finite"):
        fn(x, y, t, b)
    assert counter.frame_count == 1


def test_max_logit_scale_keeps_a_diverged_scale_usable():
    x, y = _embeds(7, 33, "cpu", torch.float32)
    with pytest.raises(ValueError, match=r"logit_scale = 100.0: .*max_logit_scale"):
        SigmoidLoss(init_logit_scale=100.0)(x, y)
    mod = SigmoidLoss(init_logit_scale=100.0, max_logit_scale=math.log(100.0))
    loss = mod(x, y)
    loss.backward()
    ref = sigmoid_loss_reference(x.double(), y.double(), torch.tensor(math.log(100.0), dtype=torch.float64),
                                 mod.logit_bias.detach().double())
    _assert_close(loss.detach(), ref, TOL[torch.float32], "clamped loss")
    assert mod.logit_scale.grad.item() == 0.0


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(max_logit_scale="x"), TypeError, r"max_logit_scale must be a real number, got str 'x'"),
    (dict(max_logit_scale=float("nan")), ValueError, r"max_logit_scale must be a number \(not NaN\), got nan"),
    (dict(max_logit_scale=True), TypeError, r"max_logit_scale must be a real number, got bool"),
    (dict(backend="bogus"), ValueError, r"backend must be one of \('auto', 'triton', 'eager'\), got 'bogus'"),
    (dict(backend=None), TypeError, r"backend must be a str.*NoneType"),
    (dict(init_logit_scale="1"), TypeError, r"init_logit_scale must be a real number, got str"),
    (dict(init_logit_scale=float("inf")), ValueError, r"init_logit_scale must be finite, got inf"),
    (dict(init_logit_bias=None), TypeError, r"init_logit_bias must be a real number, got NoneType"),
    (dict(init_logit_bias=float("nan")), ValueError, r"init_logit_bias must be finite, got nan"),
    (dict(group=3), TypeError, r"group must be a torch.distributed.ProcessGroup, got int"),
    (dict(group="world"), TypeError, r"group must be a torch.distributed.ProcessGroup, got str"),
])
def test_sigmoid_loss_module_checks_arguments_at_construction(kwargs, err, match):
    """Issue 13: SigmoidLoss(max_logit_scale="x") and SigmoidLoss(backend="bogus") were accepted until the first
    forward (and then failed deep in torch.clamp)."""
    with pytest.raises(err, match=match):
        SigmoidLoss(**kwargs)


def test_sigmoid_loss_module_accepts_numbers():
    import numpy as np

    mod = SigmoidLoss(init_logit_scale=2, init_logit_bias=np.float32(-5.0), max_logit_scale=math.inf,
                      backend="eager")
    assert mod.logit_scale.item() == 2.0 and mod.logit_bias.item() == -5.0 and mod.max_logit_scale == math.inf
    x, y = _embeds(5, 8, "cpu", torch.float32)
    assert torch.isfinite(mod(x, y))


@pytest.mark.parametrize("needs_grad", ["", "x", "y", "t", "b", "xy", "tb", "xytb"])
def test_requires_grad_combinations(needs_grad):
    """Any subset of the inputs may require grad; the others get none; the loss and the gradients that exist are
    the reference's."""
    x, y = _embeds(9, 33, "cpu", torch.float32)
    t, b = torch.tensor([LOG10]), torch.tensor([-10.0])
    leaves = [v.clone().requires_grad_(k in needs_grad) for k, v in zip("xytb", (x, y, t, b), strict=True)]
    loss = sigmoid_loss(*leaves)
    ref_loss, ref_grads = _reference(x, y, t, b)
    _assert_close(loss.detach(), ref_loss, TOL[torch.float32], "loss")
    assert (loss.grad_fn is None) == (needs_grad == "")
    if needs_grad:
        loss.backward()
    for k, v, r in zip("xytb", leaves, ref_grads, strict=True):
        if k in needs_grad:
            _assert_close(v.grad, r, TOL[torch.float32], f"d_{k}")
        else:
            assert v.grad is None


def test_triton_backend_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setattr(sl, "_CPU_OK", False)
    x, y, t, b = _ok()
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors.*TRITON_INTERPRET=1.*cpu"):
        sigmoid_loss(x, y, t, b, backend="triton")


# --- GPU only ---------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (bf16 tl.dot is wrong under the Triton "
                                                  "interpreter; budgets and determinism are GPU properties)")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,d", [(129, 72), (1000, 1152)])
@pytest.mark.parametrize("t,b", [(LOG10, -10.0), (LOG1000, -50.0)])
def test_gpu_low_precision_error_budget(dtype, n, d, t, b):
    """Kernel error vs the fp64 reference ≤ 2× the error of the plain formula run in the same low precision."""
    x, y = _embeds(n, d, "cuda", dtype)
    t_, b_ = _scalar(t, (1,), "cuda"), _scalar(b, (1,), "cuda")
    ref_loss, ref_grads = _reference(x, y, t_, b_)
    # several slabs at n = 1000: the fp32 text-gradient accumulator is added into, not only written
    loss, grads = _loss_and_grads(sigmoid_loss, x, y, t_, b_, backend="triton", chunk_rows=384 if n > 384 else None)
    eager_loss, eager_grads = _loss_and_grads(sigmoid_loss_reference, x, y, t_.to(dtype), b_.to(dtype))
    for name, got, low, ref in zip(("loss", "d_image", "d_text", "d_logit_scale", "d_logit_bias"),
                                   [loss, *grads], [eager_loss, *eager_grads], [ref_loss, *ref_grads], strict=True):
        err = (got.double() - ref).abs().max().item()
        budget = (low.double() - ref).abs().max().item()
        assert err <= 2 * budget + 1e-6 * ref.abs().max().item(), f"{name}: {err:.3g} > 2 × {budget:.3g}"


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_deterministic(dtype):
    x, y = _embeds(3000, 1152, "cuda", dtype)
    t, b = _scalar(LOG10, (1,), "cuda"), _scalar(-10.0, (1,), "cuda")
    first = _loss_and_grads(sigmoid_loss, x, y, t, b, backend="triton")
    second = _loss_and_grads(sigmoid_loss, x, y, t, b, backend="triton")
    assert torch.equal(first[0], second[0])
    for g1, g2 in zip(first[1], second[1], strict=True):
        assert torch.equal(g1, g2)


@needs_cuda
def test_gpu_compile_inductor_dynamic():
    torch._dynamo.reset()
    fn = torch.compile(lambda x, y, t, b: sigmoid_loss(x, y, t, b), fullgraph=True, dynamic=True)
    t, b = _scalar(LOG10, (1,), "cuda"), _scalar(-10.0, (1,), "cuda")
    for n in (300, 517):
        x, y = _embeds(n, 1152, "cuda", torch.bfloat16)
        loss, grads = _loss_and_grads(fn, x, y, t, b)
        eager_loss, eager_grads = _loss_and_grads(sigmoid_loss, x, y, t, b)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=0)
        for g, r in zip(grads, eager_grads, strict=True):
            torch.testing.assert_close(g, r, rtol=0, atol=0)


def _edge_problem(n, d, dtype=torch.float32):
    """Unit embeddings at logit_scale ≈ 88.7 whose loss fits fp32 although the sum of its terms does not: x is n
    orthonormal rows of a random rotation, y = x except y_0 and y_1, random positive mixes of x_0..x_7 and
    x_8..x_15, so that ~15 negative pairs score ~0.35·exp(t) each: N·loss ≈ 5·exp(t) overflows fp32 for t ≥ 87.5,
    loss ≈ 5·exp(t) / N does not; every other term is small."""
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    x = q[:n].clone()
    y = x.clone()
    for c in (0, 1):
        y[c] = (torch.rand(8, 1, dtype=torch.float64).add_(0.5) * x[8 * c:8 * c + 8]).sum(0)
        y[c] /= y[c].norm()
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("t", [87.5, 88.7])
@pytest.mark.parametrize("path", ["reference", "eager", "eager-chunked", "triton", "triton-chunked"])
def test_loss_near_the_scale_limit_is_finite_when_it_fits(path, t):
    """Issue 23: t from 87 to 88.72 returned inf (the sum of the terms overflowed before the division by N) although
    the loss fits fp32. Each term is now divided by N before any sum: the loss matches fp64 on every path, with and
    without a backward to follow (the training forward sums the loss in the same tile pass)."""
    x, y = _edge_problem(37, 48)
    t_, b_ = torch.tensor([t]), torch.tensor([-10.0])
    exact = sigmoid_loss_reference(x.double(), y.double(), t_.double(), b_.double())
    assert 1e37 < exact < torch.finfo(torch.float32).max < 37 * exact  # the case: only the sum would overflow
    backend, _, chunked = path.partition("-")
    for needs_grad in (False, True):
        xg = x.clone().requires_grad_(needs_grad)
        if backend == "reference":
            loss = sigmoid_loss_reference(xg, y, t_, b_)
        else:
            loss = sigmoid_loss(xg, y, t_, b_, backend=backend, chunk_rows=5 if chunked else None)
        assert torch.isfinite(loss), (path, needs_grad)
        torch.testing.assert_close(loss.double(), exact, rtol=1e-5, atol=0)  # exp(t) in fp32: ~t·2^-24 relative
