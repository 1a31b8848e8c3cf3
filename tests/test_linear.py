"""Fused linear (act(x @ W^T + b) + residual): forward and every gradient against the eager reference in fp64.

Runs under the Triton interpreter on CPU (fp32) and on a GPU (fp32 plus the bf16/fp16 error budget and determinism).
Every buffer the launchers allocate is poisoned with NaN, so an element the kernel fails to write is caught.
"""

import functools
import importlib

import pytest
import torch

from siglip_fast.kernels.linear import linear, linear_fwd, linear_reference, linear_torch_fwd

linear_mod = importlib.import_module("siglip_fast.kernels.linear")  # the module (the package exports the function)
kernel = functools.partial(linear, gemm="triton")  # the Triton GEMM whatever gemm="auto" would pick on this card

# (M, K, N): odd tails on every dim; 1 row; K and N below, at and above one 32-wide interpreter tile.
SHAPES = [(1, 8, 16), (7, 40, 72), (37, 72, 129), (65, 129, 40)]
# What SigLIP uses: q/k/v and heads (bias), fc1 (bias + gelu), fc2 / out_proj (bias + residual); plus no bias and
# everything at once, to cover each epilogue branch on its own and together.
VARIANTS = {
    "plain": dict(bias=False, activation=None, residual=False),
    "bias": dict(bias=True, activation=None, residual=False),
    "bias_gelu": dict(bias=True, activation="gelu_tanh", residual=False),
    "bias_residual": dict(bias=True, activation=None, residual=True),
    "gelu_residual": dict(bias=False, activation="gelu_tanh", residual=True),
}
# fp32 kernel vs the fp64 reference (ieee fp32 products, fp32 accumulation over K <= 129).
FP32_TOL = dict(atol=2e-5, rtol=2e-5)

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16/fp16 error budget and determinism need CUDA")


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """Launchers allocate through linear_mod._empty: hand them NaN-filled buffers instead of uninitialised ones."""
    monkeypatch.setattr(linear_mod, "_empty",
                        lambda shape, device, dtype: torch.full(shape, float("nan"), device=device, dtype=dtype))


def _inputs(lead, k, n, device, dtype, *, bias, residual, requires_grad=True):
    x = torch.randn(*lead, k, device=device, dtype=dtype)
    w = torch.randn(n, k, device=device, dtype=dtype) / k**0.5
    b = torch.randn(n, device=device, dtype=dtype) if bias else None
    r = torch.randn(*lead, n, device=device, dtype=dtype) if residual else None
    ts = [t.requires_grad_(requires_grad) if t is not None else None for t in (x, w, b, r)]
    return ts


def _check_all(inputs, activation, tol, *, grad_out=None):
    """Forward and every gradient of the kernel (on inputs' dtype) against the reference in fp64."""
    x, w, b, r = inputs
    out = kernel(x, w, b, activation=activation, residual=r)
    assert out.dtype == x.dtype and out.is_contiguous()
    assert out.shape == (*x.shape[:-1], w.shape[0])
    assert not out.isnan().any(), "an output element was never written"

    ref_in = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    ref = linear_reference(ref_in[0], ref_in[1], ref_in[2], activation=activation, residual=ref_in[3])
    torch.testing.assert_close(out.double(), ref, **tol)

    g = torch.randn_like(out) if grad_out is None else grad_out
    out.backward(g)
    ref.backward(g.double())
    for name, t, t_ref in zip(("x", "weight", "bias", "residual"), inputs, ref_in, strict=True):
        if t is None:
            continue
        assert t.grad is not None, f"no gradient for {name}"
        assert not t.grad.isnan().any(), f"NaN in the gradient of {name}"
        torch.testing.assert_close(t.grad.double(), t_ref.grad, **tol, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mkn", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward_fp32(mkn, variant, device):
    m, k, n = mkn
    v = VARIANTS[variant]
    inputs = _inputs((m,), k, n, device, torch.float32, bias=v["bias"], residual=v["residual"])
    _check_all(inputs, v["activation"], FP32_TOL)


@pytest.mark.parametrize("variant", ["bias_gelu", "bias_residual"])
def test_leading_dims(variant, device):
    v = VARIANTS[variant]
    # K = 64: a whole number of interpreter K tiles (the EVEN_K path, no tail step).
    inputs = _inputs((2, 5), 64, 72, device, torch.float32, bias=v["bias"], residual=v["residual"])
    _check_all(inputs, v["activation"], FP32_TOL)


def test_vector_input(device):
    # x of shape (K,) -> (N,), as nn.Linear accepts.
    inputs = _inputs((), 40, 24, device, torch.float32, bias=True, residual=True)
    _check_all(inputs, "gelu_tanh", FP32_TOL)


def test_non_contiguous_inputs(device):
    """x read through its strides (column stride 2, transposed leading dims), transposed weight and residual."""
    k, n = 40, 72
    # x (5, 2, K) with non-mergeable leading dims and every other column: no copy needed by the kernel.
    x = torch.randn(2, 5, 2 * k, device=device).transpose(0, 1).requires_grad_()  # (5, 2, 2K) leaf
    w_leaf = (torch.randn(k, n, device=device) / k**0.5).requires_grad_()
    b = torch.randn(n, device=device).requires_grad_()
    r_leaf = torch.randn(2, 5, n, device=device).requires_grad_()

    xs, ws, rs = x[..., ::2], w_leaf.t(), r_leaf.transpose(0, 1)  # (5, 2, K), (N, K), (5, 2, N)
    assert xs.stride(-1) == 2 and not ws.is_contiguous() and not rs.is_contiguous()
    out = kernel(xs, ws, b, activation="gelu_tanh", residual=rs)
    assert not out.isnan().any() and out.is_contiguous()

    x64, w64, b64, r64 = (t.detach().double().requires_grad_() for t in (x, w_leaf, b, r_leaf))
    ref = linear_reference(x64[..., ::2], w64.t(), b64, activation="gelu_tanh", residual=r64.transpose(0, 1))
    torch.testing.assert_close(out.double(), ref, **FP32_TOL)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g.double())
    for t, t64 in ((x, x64), (w_leaf, w64), (b, b64), (r_leaf, r64)):
        torch.testing.assert_close(t.grad.double(), t64.grad, **FP32_TOL)


def test_many_non_mergeable_leading_dims(device):
    # Three leading dims whose strides cannot be merged into two row dims: the launcher falls back to a copy.
    x = torch.randn(3, 2, 4, 24, device=device).permute(2, 0, 1, 3)  # (4, 3, 2, 24)
    x = x.transpose(1, 2)  # (4, 2, 3, 24)
    inputs = [x.detach().requires_grad_(), (torch.randn(40, 24, device=device) / 5).requires_grad_(),
              torch.randn(40, device=device).requires_grad_(), None]
    _check_all(inputs, "gelu_tanh", FP32_TOL)


def test_saved_pre_activation_written(device):
    x = torch.randn(37, 72, device=device)
    w = torch.randn(129, 72, device=device) / 72**0.5
    b = torch.randn(129, device=device)
    out, pre = linear_fwd(x, w, b, "gelu_tanh", None, True)
    assert not pre.isnan().any() and not out.isnan().any()
    torch.testing.assert_close(pre.double(), torch.nn.functional.linear(x.double(), w.double(), b.double()),
                               **FP32_TOL)
    _, pre_none = linear_fwd(x, w, b, "gelu_tanh", None, False)
    assert pre_none.numel() == 0  # inference skips the extra write


def test_no_grad_skips_pre_but_matches(device):
    inputs = _inputs((7,), 40, 72, device, torch.float32, bias=True, residual=False, requires_grad=True)
    with torch.no_grad():
        out = kernel(inputs[0], inputs[1], inputs[2], activation="gelu_tanh")
    ref = linear_reference(*(t.detach().double() for t in inputs[:3]), activation="gelu_tanh")
    assert not out.requires_grad
    torch.testing.assert_close(out.double(), ref, **FP32_TOL)


def test_torch_compile_traces_without_graph_breaks(device):
    x, w, b, r = _inputs((7,), 40, 72, device, torch.float32, bias=True, residual=True)

    def mlp_block(x, w, b, r):
        return kernel(x, w, b, activation="gelu_tanh", residual=r).sum()

    compiled = torch.compile(mlp_block, backend="aot_eager", fullgraph=True)
    loss = compiled(x, w, b, r)
    loss.backward()
    ref_in = [t.detach().double().requires_grad_() for t in (x, w, b, r)]
    ref = linear_reference(ref_in[0], ref_in[1], ref_in[2], activation="gelu_tanh", residual=ref_in[3]).sum()
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, **FP32_TOL)
    for t, t64 in zip((x, w, b, r), ref_in, strict=True):
        torch.testing.assert_close(t.grad.double(), t64.grad, **FP32_TOL)


@pytest.mark.parametrize("gemm", ["triton", "torch"])
def test_opcheck(gemm, device):
    x = torch.randn(7, 40, device=device, requires_grad=True)
    w = (torch.randn(24, 40, device=device) / 40**0.5).requires_grad_()
    b = torch.randn(24, device=device, requires_grad=True)
    r = torch.randn(7, 24, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.siglip_fast.linear.default, (x, w, b, "gelu_tanh", r, True, gemm),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# ---------------------------------------------------------------------------------------------------------------
# gemm="auto": the unfused torch candidate and the timed choice between the two
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_torch_candidate_forward_and_gradients(variant, device):
    """gemm="torch" through the same custom op (and its Triton GELU backward) against the fp64 reference."""
    v = VARIANTS[variant]
    inputs = _inputs((3, 11), 40, 72, device, torch.float32, bias=v["bias"], residual=v["residual"])
    x, w, b, r = inputs
    out = linear(x, w, b, activation=v["activation"], residual=r, gemm="torch")
    assert out.is_contiguous() and out.shape == (3, 11, 72)
    ref_in = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    ref = linear_reference(ref_in[0], ref_in[1], ref_in[2], activation=v["activation"], residual=ref_in[3])
    torch.testing.assert_close(out.double(), ref, **FP32_TOL)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g.double())
    for t, t64 in zip(inputs, ref_in, strict=True):
        if t is not None:
            torch.testing.assert_close(t.grad.double(), t64.grad, **FP32_TOL)


def test_torch_candidate_keeps_pre_only_when_asked(device):
    x, w, b = torch.randn(5, 24, device=device), torch.randn(16, 24, device=device), torch.randn(16, device=device)
    r = torch.randn(5, 16, device=device)
    out, pre = linear_torch_fwd(x, w, b, "gelu_tanh", r, True)
    torch.testing.assert_close(pre, torch.nn.functional.linear(x, w, b))
    torch.testing.assert_close(out, linear_reference(x, w, b, activation="gelu_tanh", residual=r))
    assert out.data_ptr() != pre.data_ptr()
    out2, pre2 = linear_torch_fwd(x, w, b, "gelu_tanh", r, False)
    assert pre2.numel() == 0 and torch.equal(out2, out)


def test_auto_choice_is_timed_once_per_key(monkeypatch):
    monkeypatch.setattr(linear_mod, "_CHOICES", {})
    calls = []

    def timer(ms):
        def fn():
            calls.append(ms)
            return ms
        return fn

    assert linear_mod._choose(("k1",), timer({"triton": 1.0, "torch": 1.2})) == "triton"
    assert linear_mod._choose(("k1",), timer({"triton": 9.0, "torch": 1.0})) == "triton"  # cached, not re-timed
    assert linear_mod._choose(("k2",), timer({"triton": 1.3, "torch": 1.2})) == "torch"
    assert len(calls) == 2 and linear_mod.gemm_choices() == {("k1",): "triton", ("k2",): "torch"}


def test_auto_keys_separate_shapes_and_epilogues(device):
    x, w = torch.randn(300, 24, device=device), torch.randn(16, 24, device=device)
    key = linear_mod._gemm_key(x, w, None, "gelu_tanh", None, False)
    assert key[2] == 512  # M bucket: 300 rounded up
    assert linear_mod._gemm_key(x[:257], w, None, "gelu_tanh", None, False) == key  # same bucket, same choice
    assert linear_mod._gemm_key(x[:256], w, None, "gelu_tanh", None, False) != key
    assert linear_mod._gemm_key(x, w, None, None, torch.randn(300, 16, device=device), False) != key
    assert linear_mod._gemm_key(x, w, None, "gelu_tanh", None, True) != key


def test_gemm_argument_is_checked(device):
    x, w, b = _good(device)
    with pytest.raises(ValueError, match=r"gemm must be one of \('auto', 'triton', 'torch'\), got 'cublas'"):
        linear(x, w, b, activation="gelu_tanh", gemm="cublas")


@cuda_only
def test_auto_picks_a_candidate_and_matches_both(device):
    x = torch.randn(729, 1152, device=device, dtype=torch.bfloat16)
    w = torch.randn(4304, 1152, device=device, dtype=torch.bfloat16) / 1152**0.5
    b = torch.randn(4304, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        auto = linear(x, w, b, activation="gelu_tanh")
        key = linear_mod._gemm_key(x, w, b, "gelu_tanh", None, False)
        choice = linear_mod.gemm_choices()[key]
        forced = linear(x, w, b, activation="gelu_tanh", gemm=choice)
    assert choice in ("triton", "torch") and torch.equal(auto, forced)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def _good(device):
    return torch.randn(3, 5, 40, device=device), torch.randn(24, 40, device=device), torch.randn(24, device=device)


@pytest.mark.parametrize("fn", [linear, linear_reference], ids=["kernel", "reference"])
def test_bad_inputs(fn, device):
    x, w, b = _good(device)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., K\) with K = weight.shape\[1\] = 40"):
        fn(x[..., :39], w, b)
    with pytest.raises(ValueError, match=r"weight must have shape \(N, K\), got \(960,\)"):
        fn(x, w.flatten(), b)
    with pytest.raises(ValueError, match=r"bias must have shape \(N,\) = \(24,\), got \(1, 24\)"):
        fn(x, w, b[None])
    with pytest.raises(ValueError, match=r"residual must have the output's shape .* \(3, 5, 24\), got \(24,\)"):
        fn(x, w, b, residual=torch.randn(24, device=device))  # broadcastable, still refused
    with pytest.raises(ValueError, match=r"activation must be one of .* got 'gelu'"):
        fn(x, w, b, activation="gelu")
    with pytest.raises(TypeError, match=r"weight must have x's dtype torch.float32, got torch.float16"):
        fn(x, w.half(), b)
    with pytest.raises(TypeError, match=r"residual must have x's dtype"):
        fn(x, w, b, residual=torch.randn(3, 5, 24, device=device, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor, got dtype torch.int64"):
        fn(x.long(), w.long(), None)
    with pytest.raises(TypeError, match=r"weight must be a torch.Tensor, got list"):
        fn(x, [[1.0] * 40] * 24, b)
    with pytest.raises(ValueError, match=r"bias must be on x's device .*, got meta"):
        fn(x, w, torch.empty(24, device="meta"))


def test_kernel_rejects_fp64(device):
    x, w, b = (t.double() for t in _good(device))
    with pytest.raises(TypeError, match=r"Triton kernel supports dtypes .* got x of dtype torch.float64"):
        kernel(x, w, b)
    linear_reference(x, w, b)  # the eager reference takes any float dtype


# ---------------------------------------------------------------------------------------------------------------
# GPU only: low-precision error budget and determinism
# ---------------------------------------------------------------------------------------------------------------


def _max_errors(inputs, activation, g):
    """Max abs error vs fp64 of the output and each gradient, for the kernel and for the eager reference."""
    def run(fn, ts):
        ts = [t.detach().clone().requires_grad_() if t is not None else None for t in ts]
        out = fn(ts[0], ts[1], ts[2], activation=activation, residual=ts[3])
        out.backward(g.to(out.dtype))
        return [out.detach()] + [t.grad for t in ts if t is not None]

    exact = run(linear_reference, [t.double() if t is not None else None for t in inputs])
    fused = run(kernel, inputs)
    eager = run(linear_reference, inputs)
    err = lambda a: [(u.double() - e).abs().max().item() for u, e in zip(a, exact, strict=True)]
    names = ["out"] + [name for name, t in zip(("x", "weight", "bias", "residual"), inputs, strict=True)
                       if t is not None]
    return names, err(fused), err(eager)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["bias_gelu", "bias_residual"])
@pytest.mark.parametrize("mkn", [(729, 1152, 4304), (197, 4304, 1152), (196, 768, 3072)],
                         ids=lambda s: "x".join(map(str, s)))
def test_low_precision_error_budget(mkn, variant, dtype, device):
    m, k, n = mkn
    v = VARIANTS[variant]
    inputs = _inputs((m,), k, n, device, dtype, bias=v["bias"], residual=v["residual"], requires_grad=False)
    g = torch.randn(m, n, device=device, dtype=torch.float64)
    names, kernel_err, eager_err = _max_errors(inputs, v["activation"], g)
    for name, ke, ee in zip(names, kernel_err, eager_err, strict=True):
        assert ke <= 2 * ee, f"{name}: kernel error {ke:.3g} > 2x eager {dtype} error {ee:.3g}"


@cuda_only
def test_fp32_is_ieee_unless_tf32_allowed(device):
    # With allow_tf32 off (torch's default) fp32 products are exact fp32: tight agreement at a real width.
    assert not torch.backends.cuda.matmul.allow_tf32
    inputs = _inputs((257,), 1152, 4304, device, torch.float32, bias=True, residual=False)
    out = kernel(inputs[0], inputs[1], inputs[2], activation="gelu_tanh")
    ref = linear_reference(*(t.detach().double() for t in inputs[:3]), activation="gelu_tanh")
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's bf16 path (on a GPU bf16 runs compiled)")
@pytest.mark.parametrize("variant", ["bias_gelu", "gelu_residual"])
def test_interpreted_bf16_is_computed_correctly(variant):
    """The interpreter's bf16 tl.dot is wrong: interpreted bf16 calls run in fp32 and round back (bf16 rounding of
    O(1) values: within 3e-2 of the float64 reference), instead of returning garbage."""
    spec = VARIANTS[variant]
    inputs = _inputs((3, 5), 40, 24, "cpu", torch.bfloat16, bias=spec["bias"], residual=spec["residual"])
    _check_all(inputs, spec["activation"], dict(atol=3e-2, rtol=3e-2))


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_deterministic(dtype, device):
    inputs = _inputs((731,), 1152, 4304, device, dtype, bias=True, residual=True)
    g = torch.randn(731, 4304, device=device, dtype=dtype)

    def run():
        for t in inputs:
            t.grad = None
        out = kernel(inputs[0], inputs[1], inputs[2], activation="gelu_tanh", residual=inputs[3])
        out.backward(g)
        return [out.detach().clone()] + [t.grad.clone() for t in inputs]

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
