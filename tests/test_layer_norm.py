"""Fused LayerNorm (+ residual add) kernel against its eager reference.

On CPU the kernels run under the Triton interpreter in fp32 and are compared with the fp64 reference. On a GPU the
same tests run there, plus a bf16 error budget (kernel error vs fp64 <= 2x the eager bf16 error) and determinism.
"""

import re

import pytest
import torch
import torch.nn.functional as F

from siglip_fast.kernels.layer_norm import _layer_norm_bwd, _layer_norm_fwd, layer_norm, layer_norm_reference

# fp32 kernel vs fp64 reference: values and gradients are O(1..10) here, fp32 rounding leaves ~1e-6.
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5)}
EPS = 1e-6
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 error budget and determinism need a GPU "
                               "(the interpreter truncates instead of rounding when it casts to bf16)")


def _inputs(lead, D, device):
    """Fresh fp64 master copies of x, residual, weight, bias (non-zero mean, non-unit scale)."""
    x = torch.randn(*lead, D, dtype=torch.float64) * 2 + 0.5
    r = torch.randn(*lead, D, dtype=torch.float64)
    w = torch.randn(D, dtype=torch.float64)
    b = torch.randn(D, dtype=torch.float64)
    return [t.to(device) for t in (x, r, w, b)]


def _leaves(tensors, dtype, wdtype=None):
    """Leaf copies in `dtype` (weight/bias in `wdtype`) that require grad."""
    x, r, w, b = tensors
    wdtype = wdtype or dtype
    return [x.to(dtype).requires_grad_(), r.to(dtype).requires_grad_(), w.to(wdtype).requires_grad_(),
            b.to(wdtype).requires_grad_()]


def _run(fn, leaves, residual, grads):
    """Forward through fn, backward with the given output gradients; returns (outputs, input grads)."""
    x, r, w, b = leaves
    if residual:
        outs = fn(x, w, b, EPS, residual=r)
        wrt = (x, r, w, b)
    else:
        outs = (fn(x, w, b, EPS),)
        wrt = (x, w, b)
    used = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None]
    # an input no used output depends on (weight when only h is used) gets a zero gradient, in both implementations
    dgrads = torch.autograd.grad([o for o, _ in used], wrt, [g.to(o.dtype) for o, g in used], materialize_grads=True)
    return outs, dgrads


def _assert_close(actual, expected, dtype, what):
    torch.testing.assert_close(actual.double(), expected.double(), **TOL[dtype], msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("residual", [False, True], ids=["ln", "add_ln"])
@pytest.mark.parametrize("lead", [(1, 5), (2, 3, 7)], ids=str)
@pytest.mark.parametrize("D", [1, 7, 40, 72, 129])
def test_forward_backward(device, D, lead, residual):
    dtype = torch.float32
    master = _inputs(lead, D, device)
    grads = [torch.randn(*lead, D, dtype=torch.float64, device=device) for _ in range(1 + residual)]
    outs, dgrads = _run(layer_norm, _leaves(master, dtype), residual, grads)
    ref_outs, ref_dgrads = _run(layer_norm_reference, _leaves(master, torch.float64), residual, grads)

    for name, o, ro in zip(("y", "h")[:len(outs)], outs, ref_outs, strict=True):
        assert o.dtype == dtype and o.shape == ro.shape, name
        _assert_close(o, ro, dtype, name)
    names = ("dx", "dresidual", "dweight", "dbias") if residual else ("dx", "dweight", "dbias")
    for name, g, rg in zip(names, dgrads, ref_dgrads, strict=True):
        _assert_close(g, rg, dtype, name)


@pytest.mark.parametrize("which", ["y_only", "h_only"])
def test_residual_single_output_grad(device, which):
    """Only one of the two outputs feeds the loss: the other gradient is absent and must count as zero."""
    dtype, lead, D = torch.float32, (2, 3, 7), 72
    master = _inputs(lead, D, device)
    g = torch.randn(*lead, D, dtype=torch.float64, device=device)
    grads = [g, None] if which == "y_only" else [None, g]
    _, dgrads = _run(layer_norm, _leaves(master, dtype), True, grads)
    ref_leaves = _leaves(master, torch.float64)
    _, ref_dgrads = _run(layer_norm_reference, ref_leaves, True, grads)
    for name, d, rd in zip(("dx", "dresidual", "dweight", "dbias"), dgrads, ref_dgrads, strict=True):
        _assert_close(d, rd, dtype, name)


@pytest.mark.parametrize("layout", ["row_strided", "transposed"])
def test_non_contiguous(device, layout):
    """Row-strided views are read in place (the row stride goes to the kernel); other layouts are copied first."""
    dtype, D = torch.float32, 40
    if layout == "row_strided":
        x = (torch.randn(2, 3, 7, D + 9, dtype=dtype, device=device) * 2 + 0.5)[..., 3:D + 3]
        r = torch.randn(2, 3, 7, D + 5, dtype=dtype, device=device)[..., :D]
    else:
        x = (torch.randn(3, 2, 7, D, dtype=dtype, device=device) * 2 + 0.5).transpose(0, 1)
        r = torch.randn(7, 2, 3, D, dtype=dtype, device=device).permute(1, 2, 0, 3)
    x, r = x.detach().requires_grad_(), r.detach().requires_grad_()  # leaves that keep the strided layout
    assert not x.is_contiguous() and not r.is_contiguous()
    xs, rs = x.detach().double(), r.detach().double()
    w = torch.randn(D, dtype=torch.float64, device=device)
    b = torch.randn(D, dtype=torch.float64, device=device)
    grads = [torch.randn(2, 3, 7, D, dtype=torch.float64, device=device) for _ in range(2)]

    outs, dgrads = _run(layer_norm, [x, r, w.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()], True, grads)
    ref_outs, ref_dgrads = _run(layer_norm_reference, _leaves([xs, rs, w, b], torch.float64), True, grads)
    names = ("y", "h", "dx", "dresidual", "dweight", "dbias")
    for name, o, ro in zip(names, (*outs, *dgrads), (*ref_outs, *ref_dgrads), strict=True):
        _assert_close(o, ro, dtype, name)


@pytest.mark.parametrize("residual", [False, True], ids=["ln", "add_ln"])
def test_poisoned_outputs_forward(device, residual):
    """Every output element is written: buffers start as NaN and none may survive."""
    dtype, n, D = torch.float32, 42, 129
    x, r, w, b = (t.to(dtype) for t in _inputs((n,), D, device))
    nan = dict(dtype=dtype, device=device)
    y, h = torch.full((n, D), float("nan"), **nan), torch.full((n, D), float("nan"), **nan)
    mean = torch.full((n,), float("nan"), dtype=torch.float32, device=device)
    rstd = torch.full((n,), float("nan"), dtype=torch.float32, device=device)
    out = _layer_norm_fwd(x, w, b, r if residual else None, EPS, y=y, h=h if residual else None, mean=mean, rstd=rstd)
    assert out[0] is y and out[2] is mean and out[3] is rstd
    for name, t in (("y", y), ("mean", mean), ("rstd", rstd)) + ((("h", h),) if residual else ()):
        assert not t.isnan().any(), f"{name} has unwritten (NaN) elements"
    hx = (x + r) if residual else x
    ref = layer_norm_reference(hx.double(), w.double(), b.double(), EPS)
    _assert_close(y, ref, dtype, "y")
    _assert_close(mean, hx.double().mean(-1), dtype, "mean")
    _assert_close(rstd, torch.rsqrt(hx.double().var(-1, unbiased=False) + EPS), dtype, "rstd")


@pytest.mark.parametrize("num_programs", [1, 2, 3])
def test_poisoned_outputs_backward(device, num_programs):
    """dx and every per-program partial row are written, whatever the split of rows between programs (2 programs
    over 42 rows of 16-row blocks: each loops, and the last block of the last program is past the end)."""
    dtype, n, D = torch.float32, 42, 7
    h, _, w, b = (t.to(dtype) for t in _inputs((n,), D, device))
    dy, dh = (torch.randn(n, D, dtype=dtype, device=device) for _ in range(2))
    _, _, mean, rstd = _layer_norm_fwd(h, w, b, None, EPS)
    dx = torch.full((n, D), float("nan"), dtype=dtype, device=device)
    dw_p = torch.full((num_programs, D), float("nan"), dtype=torch.float32, device=device)
    db_p = torch.full((num_programs, D), float("nan"), dtype=torch.float32, device=device)
    dx_out, dw, db = _layer_norm_bwd(dy, dh, h, w, mean, rstd, num_programs=num_programs, dx=dx,
                                     dw_partial=dw_p, db_partial=db_p)
    assert dx_out is dx
    for name, t in (("dx", dx), ("dw_partial", dw_p), ("db_partial", db_p)):
        assert not t.isnan().any(), f"{name} has unwritten (NaN) elements"

    hd, wd, bd = h.double().requires_grad_(), w.double().requires_grad_(), b.double().requires_grad_()
    rdx, rdw, rdb = torch.autograd.grad(layer_norm_reference(hd, wd, bd, EPS), (hd, wd, bd), dy.double())
    _assert_close(dx, rdx + dh.double(), dtype, "dx")
    _assert_close(dw, rdw, dtype, "dweight")
    _assert_close(db, rdb, dtype, "dbias")


def test_empty_rows(device):
    x = torch.randn(0, 3, 40, device=device, requires_grad=True)
    w, b = torch.randn(40, device=device, requires_grad=True), torch.randn(40, device=device, requires_grad=True)
    y, h = layer_norm(x, w, b, residual=torch.randn_like(x))
    assert y.shape == h.shape == x.shape
    dx, dw, db = torch.autograd.grad((y, h), (x, w, b), (torch.ones_like(y), torch.ones_like(h)))
    assert dx.shape == x.shape and torch.equal(dw, torch.zeros_like(w)) and torch.equal(db, torch.zeros_like(b))


def test_matches_functional_layer_norm_signature(device):
    """Without a residual the result is a single tensor, as F.layer_norm's."""
    x, w, b = torch.randn(3, 5, 40, device=device), torch.randn(40, device=device), torch.randn(40, device=device)
    y = layer_norm(x, w, b)
    assert isinstance(y, torch.Tensor)
    torch.testing.assert_close(y, F.layer_norm(x, (40,), w, b, EPS), **TOL[torch.float32])


def test_reference_is_the_eager_module():
    """The reference computes exactly what transformers' SigLIP layer does: `h = x + r`, then nn.LayerNorm."""
    D = 72
    x, r = torch.randn(2, 9, D), torch.randn(2, 9, D)
    mod = torch.nn.LayerNorm(D, eps=EPS)
    with torch.no_grad():
        mod.weight.normal_()
        mod.bias.normal_()
        y, h = layer_norm_reference(x, mod.weight, mod.bias, EPS, residual=r)
        assert torch.equal(h, x + r)
        assert torch.equal(y, mod(x + r))
        assert torch.equal(layer_norm_reference(x, mod.weight, mod.bias, EPS), mod(x))


def test_custom_ops_and_compile(device):
    """The custom ops pass torch's opcheck and torch.compile traces the functional without graph breaks."""
    D = 40
    x, r = torch.randn(5, D, device=device, requires_grad=True), torch.randn(5, D, device=device, requires_grad=True)
    w, b = torch.randn(D, device=device, requires_grad=True), torch.randn(D, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.siglip_fast.layer_norm.default, (x, w, b, EPS))
    torch.library.opcheck(torch.ops.siglip_fast.layer_norm_residual.default, (x, r, w, b, EPS))

    def block(fn, x, r, w, b):
        y, h = fn(x, w, b, EPS, residual=r)
        return (fn(h * y, w, b, EPS) * y).sum() + h.square().sum()

    compiled = torch.compile(lambda *a: block(layer_norm, *a), backend="aot_eager", fullgraph=True)
    loss = compiled(x, r, w, b)
    grads = torch.autograd.grad(loss, (x, r, w, b))
    ref_loss = block(layer_norm_reference, x, r, w, b)
    ref_grads = torch.autograd.grad(ref_loss, (x, r, w, b))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-4)


def _bad_inputs(device):
    D = 8
    x, r, w, b = torch.randn(3, D, device=device), torch.randn(3, D, device=device), torch.randn(D, device=device), \
        torch.randn(D, device=device)
    return {
        "x_not_tensor": ((x.tolist(), w, b), {}, TypeError, "`x` must be a torch.Tensor"),
        "x_int": ((x.long(), w, b), {}, TypeError, "`x` must be float16, bfloat16 or float32"),
        "x_float64": ((x.double(), w.double(), b.double()), {}, TypeError, "torch.float64"),
        "x_scalar": ((x[0, 0], w, b), {}, ValueError, "shape (..., D)"),
        "D_too_large": ((torch.randn(1, 16385, device=device), torch.randn(16385, device=device),
                         torch.randn(16385, device=device)), {}, ValueError, "D=16385"),
        "weight_shape": ((x, w[:-1], b), {}, ValueError, "`weight` must have shape (8,)"),
        "bias_shape": ((x, w, b.view(1, D)), {}, ValueError, "`bias` must have shape (8,)"),
        "weight_dtype": ((x, w.half(), b.half()), {}, TypeError, "`weight` must be torch.float32"),
        "weight_bias_dtype": ((x.half(), w.half(), b), {}, TypeError, "share a dtype"),
        "weight_device": ((x, w.to("meta"), b), {}, ValueError, "`weight` must be on x's device"),
        "residual_shape": ((x, w, b), {"residual": r[:1]}, ValueError, "`residual` must have x's shape (3, 8)"),
        "residual_dtype": ((x, w, b), {"residual": r.half()}, TypeError, "`residual` must have x's dtype"),
        "residual_device": ((x, w, b), {"residual": r.to("meta")}, ValueError, "`residual` must be on x's device"),
        "eps_zero": ((x, w, b, 0.0), {}, ValueError, "`eps` must be > 0"),
        "eps_negative": ((x, w, b, -1e-5), {}, ValueError, "`eps` must be > 0"),
        "eps_tensor": ((x, w, b, torch.tensor(1e-6)), {}, TypeError, "`eps` must be a float"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs(torch.device("cpu"))))
def test_bad_inputs(device, case):
    args, kwargs, exc, msg = _bad_inputs(device)[case]
    with pytest.raises(exc, match=re.escape(msg)):
        layer_norm(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# GPU only
# ----------------------------------------------------------------------------------------------------------------------
def _max_err(a, ref):
    return (a.double() - ref.double()).abs().max().item()


@cuda_only
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float32], ids=["w_bf16", "w_fp32"])
@pytest.mark.parametrize("residual", [False, True], ids=["ln", "add_ln"])
@pytest.mark.parametrize("lead, D", [((4, 197), 768), ((2, 729), 1152), ((3, 7), 129)], ids=str)
def test_bf16_error_budget(device, lead, D, residual, wdtype):
    """bf16: the kernel's max error vs the fp64 reference is <= 2x eager bf16 F.layer_norm's, for every bf16 output
    and gradient (fp32 weight gradients match eager's to the fp32 tolerance); h = x + residual is bitwise the eager
    bf16 add."""
    dtype = torch.bfloat16
    master = [t.to(dtype).double() for t in _inputs(lead, D, device)]  # representable in bf16
    grads = [torch.randn(*lead, D, dtype=dtype, device=device).double() for _ in range(1 + residual)]
    outs, dgrads = _run(layer_norm, _leaves(master, dtype, wdtype), residual, grads)
    eag_outs, eag_dgrads = _run(layer_norm_reference, _leaves(master, dtype, wdtype), residual, grads)
    ref_outs, ref_dgrads = _run(layer_norm_reference, _leaves(master, torch.float64), residual, grads)

    assert outs[0].dtype == dtype
    if residual:
        assert torch.equal(outs[1], eag_outs[1]), "h must equal the eager bf16 x + residual bitwise"
    names = ("dx", "dresidual", "dweight", "dbias") if residual else ("dx", "dweight", "dbias")
    for name, o, e, ref in zip(("y", *names), (outs[0], *dgrads), (eag_outs[0], *eag_dgrads),
                               (ref_outs[0], *ref_dgrads), strict=True):
        if o.dtype == torch.float32:  # dweight/dbias of fp32 weights: same bf16 inputs, fp32 math -> eager's, to fp32
            _assert_close(o, e, torch.float32, name)
            continue
        err, eager_err = _max_err(o, ref), _max_err(e, ref)
        assert err <= 2 * eager_err, f"{name}: kernel error {err:.3g} > 2 x eager bf16 error {eager_err:.3g}"


@cuda_only
@pytest.mark.parametrize("residual", [False, True], ids=["ln", "add_ln"])
def test_deterministic(device, residual):
    """Reruns are bitwise equal: forward, dx, d residual and the (atomic-free) dweight/dbias reduction."""
    dtype, lead, D = torch.bfloat16, (16, 729), 1152
    master = _inputs(lead, D, device)
    grads = [torch.randn(*lead, D, dtype=torch.float64, device=device) for _ in range(1 + residual)]
    first = _run(layer_norm, _leaves(master, dtype), residual, grads)
    for _ in range(3):
        again = _run(layer_norm, _leaves(master, dtype), residual, grads)
        for a, b in zip((*first[0], *first[1]), (*again[0], *again[1]), strict=True):
            assert torch.equal(a, b)
