"""The sigmoid loss's training path: one fused forward (loss, dz', dx/dy GEMMs), a backward that only rescales.

Every case checks the loss and all four gradients (image, text, logit_scale, logit_bias) against
`sigmoid_loss_reference` run with float64 autograd on the same (rounded) inputs. Tolerances, as in tests/test_loss.py
(a gradient's error is measured against its largest entry — a scale-aware atol — plus an rtol): fp64 eager 1e-10,
fp32 2e-5, fp16 2e-3 (the interpreted kernel stores exp(t)·dz' in fp16 for the GEMMs). On a GPU, bf16/fp16 use an
error budget instead: the kernel's error against fp64 ≤ 2× the plain formula's error in the same precision.

Kernel outputs are poisoned with NaN before the launch; block sizes that split unevenly (and 2-D blocks, forced by
shrinking the slab budget) are covered; the no_grad path, the grad path under torch.compile, and the absence of any
recompute in the training path (kernel launches counted) are checked.
"""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from siglip_fast.kernels.sigmoid_loss import sigmoid_loss, sigmoid_loss_reference

sl = importlib.import_module("siglip_fast.kernels.sigmoid_loss")  # the module (the package exports the function)
CUDA = torch.cuda.is_available()
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3}
LOG10, LOG1000 = math.log(10.0), math.log(1000.0)


def _embeds(n, d, device, dtype):
    """L2-normalised random embeddings, as the model feeds them."""
    x = F.normalize(torch.randn(n, d, device=device, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(n, d, device=device, dtype=torch.float64), dim=-1)
    return x.to(dtype), y.to(dtype)


def _loss_and_grads(fn, x, y, t, b, *, grad_out=1.0, **kw):
    leaves = [v.detach().clone().requires_grad_() for v in (x, y, t, b)]
    loss = fn(*leaves, **kw)
    (loss * grad_out).backward()
    return loss.detach(), [v.grad for v in leaves]


def _reference(x, y, t, b, grad_out=1.0):
    return _loss_and_grads(sigmoid_loss_reference, x.double(), y.double(), t.double(), b.double(),
                           grad_out=grad_out)


def _assert_close(got, ref, tol, name):
    got = got.double()
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    scale = ref.abs().max().item()
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * max(scale, 1e-30), msg=lambda m: f"{name}: {m}")


def _check(backend, n, d, dtype, t, b, device, *, chunk_rows=None, scalar_shape=(1,), grad_out=1.0):
    x, y = _embeds(n, d, device, dtype)
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    t_ = torch.full(scalar_shape, t, device=device, dtype=sdt)
    b_ = torch.full(scalar_shape, b, device=device, dtype=sdt)
    loss, grads = _loss_and_grads(sigmoid_loss, x, y, t_, b_, grad_out=grad_out, backend=backend,
                                  chunk_rows=chunk_rows)
    ref_loss, ref_grads = _reference(x, y, t_, b_, grad_out)
    tol = TOL[dtype]
    assert loss.shape == () and loss.dtype == torch.promote_types(dtype, sdt)
    _assert_close(loss, ref_loss, tol, "loss")
    for name, g, r, v in zip(("d_image", "d_text", "d_logit_scale", "d_logit_bias"), grads, ref_grads,
                             (x, y, t_, b_), strict=True):
        assert g.dtype == v.dtype and g.shape == v.shape, f"{name}: {g.dtype} {g.shape} vs input {v.dtype} {v.shape}"
        _assert_close(g, r, tol, name)


class _Launches:
    """Counts the sigmoid-loss launchers' calls and the Triton kernels' launches (by name, in order)."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in ("_sigmoid_loss_fwd", "_sigmoid_loss_bwd", "_sigmoid_loss_fused"):
            monkeypatch.setattr(sl, name, self._wrap(getattr(sl, name), name))
        for name in ("_sigmoid_loss_fwd_kernel", "_sigmoid_loss_grad_kernel"):
            monkeypatch.setattr(sl, name, self._Kernel(getattr(sl, name), name, self.calls))

    def _wrap(self, fn, name):
        def counted(*a, **kw):
            self.calls.append(name)
            return fn(*a, **kw)
        return counted

    class _Kernel:
        def __init__(self, kernel, name, calls):
            self.kernel, self.name, self.calls = kernel, name, calls

        def __getitem__(self, grid):
            launch = self.kernel[grid]

            def run(*a, **kw):
                self.calls.append(f"{self.name}(FUSED={kw.get('FUSED')})")
                return launch(*a, **kw)
            return run

    def take(self) -> list[str]:
        out, self.calls[:] = list(self.calls), []
        return out


# (t, b): the paper's init, a neutral point, saturated sigmoids in both directions
SCALARS = [(LOG10, -10.0), (0.0, 0.0), (LOG1000, 50.0), (LOG1000, -50.0)]


@pytest.mark.parametrize("n,d,t,b", [
    (1, 8, LOG10, -10.0),
    (7, 40, 0.0, 0.0),
    (130, 72, LOG1000, 50.0),
    (257, 40, LOG1000, -50.0),
    (257, 72, LOG10, -10.0),
])
def test_train_path_matches_reference(n, d, t, b, device):
    _check("triton", n, d, torch.float32, t, b, device, scalar_shape=())


@pytest.mark.parametrize("n,chunk_rows", [(20, 1), (130, 7), (130, 64), (130, 100), (130, 129), (130, 130)])
def test_train_path_chunk_rows(n, chunk_rows, device):
    """Full-width slabs of chunk_rows rows (uneven ones cut a 64-row tile), incoming gradient ≠ 1."""
    _check("triton", n, 40, torch.float32, LOG10, -3.0, device, chunk_rows=chunk_rows, grad_out=-2.5)


@pytest.mark.parametrize("n,slab,blocks", [(257, 128 * 128 * 4, (128, 128)), (130, 128 * 256 * 4, (256, 128)),
                                           (300, 128 * 256 * 4, (256, 128))])
def test_train_path_default_2d_blocks(n, slab, blocks, device, monkeypatch):
    """The default Triton blocking with a shrunken slab budget: several row AND column blocks, uneven tails, both
    fp32 accumulators written by the first block and added into by the others."""
    monkeypatch.setattr(sl, "_SLAB_BYTES", slab)
    assert sl._blocks("triton", n, n, torch.float32, None, None) == blocks
    _check("triton", n, 40, torch.float32, LOG10, -10.0, device)


@pytest.mark.parametrize("n,d", [(1, 8), (37, 72), (130, 40)])
@pytest.mark.parametrize("t,b", SCALARS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eager_train_path_matches_reference(n, d, t, b, dtype):
    """The eager backend takes the same fused training path (eager slabs)."""
    _check("eager", n, d, dtype, t, b, "cpu")


@pytest.mark.parametrize("chunk_rows", [1, 8, 69, 70])
def test_eager_train_path_chunk_rows(chunk_rows):
    _check("eager", 70, 33, torch.float64, LOG10, -10.0, "cpu", chunk_rows=chunk_rows, grad_out=0.3)


def test_train_path_fp16(device):
    """Half inputs: fp32 logits in the kernel, exp(t)·dz' stored in fp16 for the GEMMs, fp32 saved gradients."""
    _check("triton", 130, 72, torch.float16, LOG10, -3.0, device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's bf16 path (on a GPU bf16 runs compiled)")
def test_interpreted_bf16_is_computed_correctly():
    """The interpreter's bf16 tl.dot is wrong: interpreted bf16 tile passes run on fp32 copies (the dz' blocks
    rounded back to bf16), so the loss and every gradient are right to bf16 precision instead of garbage."""
    x, y = _embeds(130, 72, "cpu", torch.bfloat16)
    t, b = torch.tensor([LOG10]), torch.tensor([-3.0])
    loss, grads = _loss_and_grads(sigmoid_loss, x, y, t, b, backend="triton", chunk_rows=64)
    ref_loss, ref_grads = _reference(x, y, t, b)
    _assert_close(loss, ref_loss, 2e-2, "loss")
    for name, g, r in zip(("d_image", "d_text", "d_logit_scale", "d_logit_bias"), grads, ref_grads, strict=True):
        _assert_close(g, r, 2e-2, name)
    with torch.no_grad():
        _assert_close(sigmoid_loss(x, y, t, b, backend="triton"), ref_loss, 2e-2, "no_grad loss")


def test_double_backward_is_a_clear_error(device):
    """The gradients are computed in the forward and saved: create_graph=True cannot differentiate them again."""
    x, y = (v.requires_grad_() for v in _embeds(20, 8, device, torch.float32))
    t, b = torch.tensor([LOG10], device=device), torch.tensor([-3.0], device=device)
    loss = sigmoid_loss(x, y, t, b, backend="triton")
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, (x, y), create_graph=True)


def _ref_block(x, y, t, b, diag_offset):
    """fp64 (s, label, dz') of x (M, D) against y (N, D) with label +1 at col == row + diag_offset."""
    s = x.double() @ y.double().T
    z = s * math.exp(t) + b
    label = -torch.ones_like(z)
    i = torch.arange(x.shape[0], device=x.device)
    keep = (i + diag_offset >= 0) & (i + diag_offset < y.shape[0])
    label[i[keep], i[keep] + diag_offset] = 1.0
    return s, label, -label * torch.sigmoid(-label * z)


@pytest.mark.parametrize("m,n,diag_offset", [(45, 40, 0), (45, 40, 5), (45, 40, -3), (45, 40, 40), (1, 70, 3),
                                             (130, 7, -100)])
def test_fused_kernel_outputs_fully_written(m, n, diag_offset, device):
    """NaN-poisoned buffers: every element of exp(t)·dz' and every partial is written and matches fp64."""
    t, b = LOG10, -4.0
    x, y = _embeds(m, 72, device, torch.float32)[0], _embeds(n, 72, device, torch.float32)[1]
    ls, bias = torch.tensor([t], device=device), torch.tensor([b], device=device)
    bm, bn = sl._tiles(m, n)
    tiles = -(-m // bm) * -(-n // bn)
    dz = torch.full((m, n), float("nan"), device=device)
    parts = torch.full((3, tiles), float("nan"), device=device)
    sl._sigmoid_loss_fused(x, y, ls, bias, diag_offset, out=(dz, parts))
    assert torch.isfinite(dz).all() and torch.isfinite(parts).all()
    s, label, ref_dz = _ref_block(x, y, t, b, diag_offset)
    z = s * math.exp(t) + b
    torch.testing.assert_close(dz.double(), math.exp(t) * ref_dz, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts[0].double().sum(), -F.logsigmoid(label * z).sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts[1].double().sum(), math.exp(t) * (ref_dz * s).sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(parts[2].double().sum(), ref_dz.sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "eager"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("blocks", [(37, 50), (7, 130), (130, 7), (64, 64), (200, 200)])
def test_block_grads_uneven_blocks(backend, fused, blocks, device):
    """_block_grads on arbitrary (rows, cols) blocks, accumulators poisoned with NaN and written fresh; a shifted
    diagonal as the distributed ring uses."""
    if backend == "eager" and device.type != "cpu":
        pytest.skip("the eager slabs are checked on CPU")
    m, n, d, t, b, offset, alpha = 130, 120, 40, LOG10, -6.0, 3, 0.75
    x, y = _embeds(m, d, device, torch.float32)[0], _embeds(n, d, device, torch.float32)[1]
    ls, bias = torch.tensor([t], device=device), torch.tensor([b], device=device)
    dx = torch.full((m, d), float("nan"), device=device)
    dy = torch.full((n, d), float("nan"), device=device)
    sums = sl._block_grads(x, y, ls, bias, offset, backend, blocks, dx, dy, alpha, fused=fused, dx_fresh=True,
                           dy_fresh=True)
    s, label, ref_dz = _ref_block(x, y, t, b, offset)
    k = math.exp(t) if fused else 1.0
    tol = dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(dx.double(), alpha * k * ref_dz @ y.double(), **tol)
    torch.testing.assert_close(dy.double(), alpha * k * ref_dz.T @ x.double(), **tol)
    ref_loss = -F.logsigmoid(label * (s * math.exp(t) + b)).sum() if fused else torch.zeros((), dtype=torch.float64)
    torch.testing.assert_close(sums.double(), torch.stack([ref_loss, k * (ref_dz * s).sum(), ref_dz.sum()]),
                               rtol=2e-5, atol=1e-3)


def test_training_path_launches_no_recompute(device, monkeypatch):
    """Forward: one fused tile pass per dz' block and nothing else; backward: no kernel launch at all."""
    monkeypatch.setattr(sl, "_SLAB_BYTES", 128 * 128 * 4)  # 2 × 2 blocks at n = 200 (fp32)
    launches = _Launches(monkeypatch)
    x, y = _embeds(200, 40, device, torch.float32)
    t, b = torch.tensor([LOG10], device=device), torch.tensor([-10.0], device=device)
    leaves = [v.clone().requires_grad_() for v in (x, y, t, b)]
    loss = sigmoid_loss(*leaves, backend="triton")
    assert launches.take() == ["_sigmoid_loss_fused", "_sigmoid_loss_grad_kernel(FUSED=True)"] * 4
    loss.backward()
    assert launches.take() == []  # no recompute: the backward only rescales the saved gradients
    ref_loss, ref_grads = _reference(x, y, t, b)
    _assert_close(loss.detach(), ref_loss, TOL[torch.float32], "loss")
    for name, v, r in zip(("d_image", "d_text", "d_logit_scale", "d_logit_bias"), leaves, ref_grads, strict=True):
        _assert_close(v.grad, r, TOL[torch.float32], name)


def test_no_grad_path_is_forward_only(device, monkeypatch):
    """Under no_grad, or with no input requiring grad, only the forward-only kernel runs and nothing is saved."""
    launches = _Launches(monkeypatch)
    x, y = _embeds(70, 40, device, torch.float32)
    t, b = torch.tensor([LOG10], device=device), torch.tensor([-10.0], device=device)
    ref_loss = sigmoid_loss_reference(x.double(), y.double(), t.double(), b.double())
    with torch.no_grad():
        loss = sigmoid_loss(x.requires_grad_(), y, t, b, backend="triton")
    assert loss.grad_fn is None and not loss.requires_grad
    assert launches.take() == ["_sigmoid_loss_fwd", "_sigmoid_loss_fwd_kernel(FUSED=None)"]
    _assert_close(loss, ref_loss, TOL[torch.float32], "no_grad loss")
    loss = sigmoid_loss(x.detach(), y, t, b, backend="triton")  # grad mode on, nothing requires grad
    assert loss.grad_fn is None
    assert launches.take() == ["_sigmoid_loss_fwd", "_sigmoid_loss_fwd_kernel(FUSED=None)"]
    _assert_close(loss, ref_loss, TOL[torch.float32], "loss without requires_grad")


def test_saved_tensors_and_retain_graph(device):
    """The training path saves two (N, D) fp32 gradients and two (1,) sums (nothing N×N), and its backward does not
    consume them: a second backward (retain_graph) adds the same gradients again."""
    x, y = _embeds(37, 33, device, torch.float32)
    t, b = torch.tensor(LOG10, device=device), torch.tensor(-10.0, device=device)  # 0-d scalars
    leaves = [v.clone().requires_grad_() for v in (x, y, t, b)]
    loss = sigmoid_loss(*leaves, backend="triton")
    saved = loss.grad_fn.saved_tensors
    assert [(tuple(s.shape), s.dtype) for s in saved] == [((37, 33), torch.float32)] * 2 + [((1,), torch.float32)] * 2
    loss.backward(retain_graph=True)
    first = [v.grad.clone() for v in leaves]
    loss.backward()
    for v, g in zip(leaves, first, strict=True):
        assert v.grad.shape == g.shape
        torch.testing.assert_close(v.grad, 2 * g, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["triton", "eager"])
def test_train_path_under_torch_compile(backend, device, monkeypatch):
    """fullgraph torch.compile of the training path: one graph for two batch sizes, the fused op in the forward and
    no kernel launch in the backward; no_grad calls of the same function take the forward-only op."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    launches = _Launches(monkeypatch)
    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda x, y, t, b: sigmoid_loss(x, y, t, b, backend=backend), backend=counter,
                       fullgraph=True)
    t, b = torch.tensor([LOG10], device=device), torch.tensor([-10.0], device=device)
    for n in (70, 131):
        x, y = _embeds(n, 40, device, torch.float32)
        leaves = [v.clone().requires_grad_() for v in (x, y, t, b)]
        torch._dynamo.mark_dynamic(leaves[0], 0)
        torch._dynamo.mark_dynamic(leaves[1], 0)
        loss = fn(*leaves)
        fwd = launches.take()
        loss.backward()
        assert launches.take() == []
        if backend == "triton":
            assert fwd and set(fwd) == {"_sigmoid_loss_fused", "_sigmoid_loss_grad_kernel(FUSED=True)"}
        ref_loss, ref_grads = _reference(x, y, t, b)
        _assert_close(loss.detach(), ref_loss, TOL[torch.float32], "compiled loss")
        for name, v, r in zip(("d_image", "d_text", "d_logit_scale", "d_logit_bias"), leaves, ref_grads,
                              strict=True):
            _assert_close(v.grad, r, TOL[torch.float32], f"compiled {name}")
    assert counter.frame_count == 1
    with torch.no_grad():
        loss = fn(x, y, t, b)
    if backend == "triton":
        assert set(launches.take()) == {"_sigmoid_loss_fwd", "_sigmoid_loss_fwd_kernel(FUSED=None)"}
    _assert_close(loss, ref_loss, TOL[torch.float32], "compiled no_grad loss")


def test_blocks_default_shapes():
    """The default Triton blocking at the target shape: 8192 × 8192 bf16 blocks (128 MiB), 5760 × 5760 in fp32;
    full-width slabs when N is narrower; chunk_rows alone keeps full-width slabs."""
    assert sl._SLAB_BYTES == 128 * 2**20
    assert sl._blocks("triton", 32768, 32768, torch.bfloat16, None, None) == (8192, 8192)
    assert sl._blocks("triton", 32768, 32768, torch.float32, None, None) == (5760, 5760)
    assert sl._blocks("triton", 4096, 4096, torch.bfloat16, None, None) == (16384, 4096)
    assert sl._blocks("triton", 32768, 32768, torch.bfloat16, 1000, None) == (1000, 32768)
    assert sl._blocks("eager", 1024, 1024, torch.float32, None, None) == (2048, 1024)


# --- GPU only ---------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (bf16 tl.dot is wrong under the Triton "
                                                  "interpreter; budgets, determinism and memory are GPU properties)")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,d,slab", [(129, 72, None), (1000, 1152, 256 * 256 * 2), (1000, 1152, None)])
@pytest.mark.parametrize("t,b", [(LOG10, -10.0), (LOG1000, -50.0)])
def test_gpu_train_path_error_budget(dtype, n, d, slab, t, b, monkeypatch):
    """Training path (fused forward, several 2-D blocks when the slab budget is shrunk) vs fp64: error ≤ 2× the
    plain formula's error in the same low precision, for the loss and every gradient; incoming gradient ≠ 1."""
    if slab is not None:
        monkeypatch.setattr(sl, "_SLAB_BYTES", slab)
    x, y = _embeds(n, d, "cuda", dtype)
    t_, b_ = torch.full((1,), t, device="cuda"), torch.full((1,), b, device="cuda")
    ref_loss, ref_grads = _reference(x, y, t_, b_, grad_out=1.7)
    loss, grads = _loss_and_grads(sigmoid_loss, x, y, t_, b_, grad_out=1.7, backend="triton")
    low_loss, low_grads = _loss_and_grads(sigmoid_loss_reference, x, y, t_.to(dtype), b_.to(dtype), grad_out=1.7)
    for name, got, low, ref in zip(("loss", "d_image", "d_text", "d_logit_scale", "d_logit_bias"),
                                   [loss, *grads], [low_loss, *low_grads], [ref_loss, *ref_grads], strict=True):
        assert torch.isfinite(got).all(), name
        err = (got.double() - ref).abs().max().item()
        budget = (low.double() - ref).abs().max().item()
        assert err <= 2 * budget + 1e-6 * ref.abs().max().item(), f"{name}: {err:.3g} > 2 × {budget:.3g}"


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_train_path_deterministic(dtype, monkeypatch):
    monkeypatch.setattr(sl, "_SLAB_BYTES", 1024 * 1024 * dtype.itemsize)  # 3 × 3 blocks at n = 3000
    x, y = _embeds(3000, 1152, "cuda", dtype)
    t, b = torch.full((1,), LOG10, device="cuda"), torch.full((1,), -10.0, device="cuda")
    first = _loss_and_grads(sigmoid_loss, x, y, t, b, backend="triton")
    second = _loss_and_grads(sigmoid_loss, x, y, t, b, backend="triton")
    assert torch.equal(first[0], second[0])
    for g1, g2 in zip(first[1], second[1], strict=True):
        assert torch.equal(g1, g2)


@needs_cuda
def test_gpu_train_path_peak_memory():
    """N = 16384, D = 1152, bf16: forward+backward peak above the inputs ≤ the saved fp32 gradients (2·N·D·4) + one
    dz' block (_SLAB_BYTES) + the returned bf16 gradients (2·N·D·2) + 16 MiB of small buffers."""
    n, d = 16384, 1152
    x, y = _embeds(n, d, "cuda", torch.bfloat16)
    x.requires_grad_(), y.requires_grad_()
    t = torch.full((1,), LOG10, device="cuda", requires_grad=True)
    b = torch.full((1,), -10.0, device="cuda", requires_grad=True)
    torch.autograd.grad(sigmoid_loss(x[:256], y[:256], t, b), (x, y, t, b))  # warm-up: autotune, cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    grads = torch.autograd.grad(sigmoid_loss(x, y, t, b), (x, y, t, b))
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    allowed = 2 * n * d * 4 + sl._SLAB_BYTES + 2 * n * d * 2 + 16 * 2**20
    assert peak <= allowed, f"peak {peak / 2**20:.0f} MiB > {allowed / 2**20:.0f} MiB"
    assert all(torch.isfinite(g).all() for g in grads)
