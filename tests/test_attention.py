"""Fused attention kernel vs its eager reference.

On CPU the kernels run under the Triton interpreter (fp32, one 32x32 block config, so the shapes below hit full
blocks, partial tail blocks and single-block sequences). Every check compares the kernel with attention_reference in
float64; outputs and gradients are NaN-poisoned before the kernels write them. GPU-only tests (bf16/fp16 error
budget, determinism) skip on CPU.
"""

import math

import pytest
import torch

from siglip_fast.kernels.attention import _align, _attention_bwd, _attention_fwd, attention, attention_reference

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="bf16/fp16 error budgets and determinism need a CUDA GPU")

# (atol, rtol) of the kernel against the float64 reference, per input dtype. fp32: both paths compute in fp32 with
# fp32 accumulation (IEEE products), errors observed ~1e-6 on these shapes.
TOL = {torch.float32: (2e-5, 2e-5)}

# (B, Nq, Nk, H, d): what each shape covers, under the interpreter's 32x32 blocks
SHAPES = [
    (1, 1, 1, 1, 64),      # one query, one key
    (2, 7, 7, 3, 72),      # d = 64 + 8 (remainder block padded to 16); tails only
    (1, 37, 37, 2, 40),    # d = 32 + 8; one full block + a 5-row tail in both loops
    (1, 129, 129, 1, 80),  # d = 64 + 16 (exact split); 4 full blocks + a 1-row tail
    (3, 1, 37, 2, 64),     # MAP head: one query (probe) over the tokens
    (2, 32, 64, 1, 96),    # cross-attention, d = 64 + 32; Nq, Nk multiples of the block (no row masks)
    (2, 19, 50, 2, 12),    # d = 12 (not a multiple of 8: one padded 16 block, scalar loads), 18-key tail
    (1, 9, 23, 1, 36),     # d = 36 (32 + 4, the remainder padded to 16)
    (1, 5, 11, 2, 8),      # d = 8 < 16: one block padded to 16
    (1, 9, 40, 1, 104),    # d = 104: no split saves anything, one block padded to 128
]


def _qkv(B, Nq, Nk, H, d, device, dtype=torch.float32):
    q = torch.randn(B, Nq, H, d, device=device, dtype=dtype)
    k = torch.randn(B, Nk, H, d, device=device, dtype=dtype)
    v = torch.randn(B, Nk, H, d, device=device, dtype=dtype)
    return q, k, v


def _reference(q, k, v, grad_out, attention_mask=None, scale=None, dtype=torch.float64):
    """Reference output and (dq, dk, dv), computed in `dtype` from the same inputs."""
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    out = attention_reference(q, k, v, attention_mask=attention_mask, scale=scale)
    grads = torch.autograd.grad(out, (q, k, v), grad_out.to(dtype))
    return out.detach(), grads


def _kernel_poisoned(q, k, v, grad_out, attention_mask=None, scale=None):
    """Run the forward and backward launchers into NaN-filled buffers: an unwritten element stays NaN."""
    nan = float("nan")
    B, Nq, H, d = q.shape
    out = torch.full(q.shape, nan, dtype=q.dtype, device=q.device)
    lse = torch.full((B, H, Nq), nan, dtype=torch.float32, device=q.device)
    _attention_fwd(q, k, v, attention_mask, scale, out=out, lse=lse)
    dq, dk, dv = (torch.full(t.shape, nan, dtype=t.dtype, device=t.device) for t in (q, k, v))
    _attention_bwd(grad_out, q, k, v, out, lse, attention_mask, scale, dq=dq, dk=dk, dv=dv)
    for name, t in (("out", out), ("lse", lse), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert not t.isnan().any(), f"{name}: {int(t.isnan().sum())} elements left unwritten (NaN)"
    return out, lse, (dq, dk, dv)


def _assert_close(name, actual, expected, dtype=torch.float32):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def _assert_outputs_close(out, grads, ref, ref_grads, dtype=torch.float32):
    _assert_close("out", out, ref, dtype)
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        _assert_close(name, g, r, dtype)


@pytest.mark.parametrize("B,Nq,Nk,H,d", SHAPES)
def test_matches_reference(B, Nq, Nk, H, d, device):
    dtype = torch.float32
    q, k, v = _qkv(B, Nq, Nk, H, d, device, dtype)
    grad_out = torch.randn(B, Nq, H, d, device=device, dtype=dtype)
    out, lse, grads = _kernel_poisoned(q, k, v, grad_out)
    ref, ref_grads = _reference(q, k, v, grad_out)
    _assert_outputs_close(out, grads, ref, ref_grads, dtype)
    # the saved statistic: log2-domain log-sum-exp of the scaled scores, (B, H, Nq)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * d**-0.5
    torch.testing.assert_close(lse.double() * math.log(2), scores.logsumexp(-1), atol=1e-5, rtol=1e-5)


def test_custom_scale_and_strided_head_dim(device):
    """A non-default scale, and q/k/v whose head dim is not the innermost memory dim (stride_d != 1)."""
    B, N, H, d = 2, 37, 2, 72
    q, k, v = (torch.randn(B, H, d, N, device=device).permute(0, 3, 1, 2) for _ in range(3))  # (B, N, H, d) views
    assert q.stride(-1) != 1
    grad_out = torch.randn(B, N, H, d, device=device)
    out, _, grads = _kernel_poisoned(q, k, v, grad_out, scale=0.3)
    ref, ref_grads = _reference(q, k, v, grad_out, scale=0.3)
    _assert_outputs_close(out, grads, ref, ref_grads)


def _padding_mask(B, Nk, dtype, device):
    """Batch row 0 attends to everything, row 1 to a random ~60% (plus key 0), row 2 only to the last key (which
    sits in the tail block), row 3 to nothing (fully masked: transformers averages all keys uniformly)."""
    keep = torch.rand(B, Nk, device=device) < 0.6
    keep[0] = True
    keep[1, 0] = True
    keep[2] = False
    keep[2, -1] = True
    keep[3] = False
    return keep.to(dtype)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_attention_mask(mask_dtype, device):
    B, Nq, Nk, H, d = 4, 7, 37, 2, 72
    q, k, v = _qkv(B, Nq, Nk, H, d, device)
    mask = _padding_mask(B, Nk, mask_dtype, device)
    grad_out = torch.randn(B, Nq, H, d, device=device)
    out, _, grads = _kernel_poisoned(q, k, v, grad_out, attention_mask=mask)
    ref, ref_grads = _reference(q, k, v, grad_out, attention_mask=mask)
    _assert_outputs_close(out, grads, ref, ref_grads)
    # masked keys get no gradient where the row attends to something; the fully masked row averages v uniformly
    assert (grads[1][1:3][~mask[1:3].bool()] == 0).all() and (grads[2][1:3][~mask[1:3].bool()] == 0).all()
    uniform = v[3].double().mean(0, keepdim=True).expand(Nq, H, d)
    torch.testing.assert_close(out[3].double(), uniform, atol=2e-5, rtol=2e-5)
    assert grads[0][3].abs().max() > 0, "the fully masked row still passes gradient to q, as the eager path does"


def test_fused_qkv_views_through_autograd(device):
    """The public functional on q/k/v views of one (B, N, 3, H, d) projection output, with a mask, gradients
    accumulated by autograd into the fused tensor."""
    B, N, H, d = 2, 37, 2, 72
    qkv = torch.randn(B, N, 3, H, d, device=device, requires_grad=True)
    mask = _padding_mask(4, N, torch.bool, device)[2:]  # one row attending to one key, one fully masked
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    out = attention(q, k, v, attention_mask=mask)
    assert out.shape == (B, N, H, d) and out.is_contiguous() and out.dtype == torch.float32
    grad_out = torch.randn_like(out)
    out.backward(grad_out)

    qkv64 = qkv.detach().double().requires_grad_()
    ref = attention_reference(*qkv64.unbind(2), attention_mask=mask)
    ref.backward(grad_out.double())
    _assert_close("out", out, ref)
    _assert_close("d(qkv)", qkv.grad, qkv64.grad)


def test_custom_op_registration(device):
    """Schema, fake (meta) implementation and autograd registration of siglip_fast::attention."""
    q, k, v = (t.requires_grad_() for t in _qkv(1, 3, 5, 1, 16, device))
    mask = torch.tensor([[True, False, True, True, False]], device=device)
    for args in ((q, k, v, None, 0.25), (q, k, v, mask, 0.25)):
        torch.library.opcheck(torch.ops.siglip_fast.attention.default, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_torch_compile_fullgraph(device):
    """torch.compile traces through the custom op and its autograd without graph breaks (inductor on a GPU;
    aot_eager on CPU, which still runs the fake implementations and the backward op)."""
    B, N, H, d = 2, 7, 2, 72
    x = torch.randn(B, N, 3 * H * d, device=device, requires_grad=True)

    def block(x):
        q, k, v = x.view(B, N, 3, H, d).unbind(2)
        return attention(q, k, v).reshape(B, N, H * d).sum(-1)

    backend = "inductor" if device.type == "cuda" else "aot_eager"
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    y = compiled(x)
    y.sum().backward()
    x64 = x.detach().double().requires_grad_()
    q, k, v = x64.view(B, N, 3, H, d).unbind(2)
    y_ref = attention_reference(q, k, v).reshape(B, N, H * d).sum(-1)
    y_ref.sum().backward()
    _assert_close("y", y, y_ref)
    _assert_close("dx", x.grad, x64.grad)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------
def _bad_inputs():
    def qkv(B=2, Nq=5, Nk=7, H=2, d=64, dtype=torch.float32):
        return list(_qkv(B, Nq, Nk, H, d, "cpu", dtype))

    cases = []
    q, k, v = qkv()
    cases.append(("q 3-d", (q[0], k, v), {}, ValueError, r"q must have shape \(B, N, H, d\)"))
    cases.append(("q not a tensor", (q.tolist(), k, v), {}, TypeError, "q must be a torch.Tensor"))
    cases.append(("integer q", (q.long(), k.long(), v.long()), {}, TypeError, "q must be float32, bfloat16"))
    cases.append(("float64 q", (q.double(), k.double(), v.double()), {}, TypeError, "torch.float64"))
    cases.append(("k dtype differs", (q, k.half(), v), {}, TypeError, "k must have q's dtype"))
    cases.append(("batch differs", (q, k[:1], v[:1]), {}, ValueError, r"k must have shape \(B=2"))
    cases.append(("heads differ", (q, k[:, :, :1], v[:, :, :1]), {}, ValueError, r"H=2"))
    cases.append(("v length differs", (q, k, v[:, :3]), {}, ValueError, "v must have k's shape"))
    q136, k136, v136 = qkv(d=136)
    cases.append(("d above 128", (q136, k136, v136), {}, ValueError, "d=136"))
    q0, k0, v0 = qkv(Nk=0)
    cases.append(("no keys", (q0, k0, v0), {}, ValueError, r"Nk >= 1"))
    cases.append(("mask shape", (q, k, v), {"attention_mask": torch.ones(2, 5, dtype=torch.bool)}, ValueError,
                  r"attention_mask must have shape \(B, Nk\) = \(2, 7\)"))
    cases.append(("mask 3-d", (q, k, v), {"attention_mask": torch.ones(2, 1, 7, dtype=torch.bool)}, ValueError,
                  "attention_mask must have shape"))
    cases.append(("mask complex", (q, k, v), {"attention_mask": torch.ones(2, 7, dtype=torch.complex64)}, TypeError,
                  "attention_mask must be bool, integer or float"))
    additive = torch.zeros(2, 7).masked_fill(torch.rand(2, 7) < 0.5, float("-inf"))
    additive[0, 0] = float("-inf")
    cases.append(("additive float mask", (q, k, v), {"attention_mask": additive}, ValueError, "additive mask"))
    cases.append(("mask on another device", (q, k, v), {"attention_mask": torch.ones(2, 7, device="meta")},
                  ValueError, "attention_mask must be on q's device"))
    cases.append(("mask not a tensor", (q, k, v), {"attention_mask": [[1] * 7] * 2}, TypeError,
                  "attention_mask must be a torch.Tensor"))
    cases.append(("scale a string", (q, k, v), {"scale": "0.1"}, TypeError, "scale must be a float or None"))
    cases.append(("scale nan", (q, k, v), {"scale": float("nan")}, ValueError, "scale must be a finite positive"))
    cases.append(("scale zero", (q, k, v), {"scale": 0.0}, ValueError, "scale must be a finite positive"))
    cases.append(("scale negative", (q, k, v), {"scale": -0.1}, ValueError, "scale must be a finite positive"))
    return cases


@pytest.mark.parametrize("args,kwargs,exc,match", [c[1:] for c in _bad_inputs()], ids=[c[0] for c in _bad_inputs()])
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        attention(*args, **kwargs)


def test_reference_refuses_head_dim_zero():
    # issue 23: d = 0 raised ZeroDivisionError (0 ** -0.5) deep in the reference
    q = torch.randn(2, 3, 2, 0)
    with pytest.raises(ValueError, match=r"attention_reference: head dim d must be >= 1, got d=0"):
        attention_reference(q, q, q)
    with pytest.raises(ValueError, match=r"attention_reference: k must be a \(B, N, H, d\) tensor"):
        attention_reference(torch.randn(2, 3, 2, 4), torch.randn(2, 3, 8), torch.randn(2, 3, 2, 4))


def test_alignment_claim():
    """ALIGN (16-byte vectors) is claimed for views of a fused QKV output at d = 72 (head stride 72 is a multiple of
    8 elements, not of 16), never for a base pointer off a 16-byte boundary or a head dim with a non-unit stride."""
    qkv = torch.randn(2, 9, 3, 4, 72, dtype=torch.bfloat16)  # (B, N, 3, H, d)
    assert _align(*qkv.unbind(2)) == 8
    assert _align(*qkv.float().unbind(2)) == 4
    flat = torch.randn(2 * 9 * 4 * 72 + 1, dtype=torch.bfloat16)
    shifted = flat[1:].view(2, 9, 4, 72)  # 2 bytes past a 16-byte boundary
    assert _align(shifted) == 1
    assert _align(qkv.unbind(2)[0].transpose(1, 3)) == 1  # stride_d != 1
    assert _align(torch.randn(2, 9, 4, 12, dtype=torch.bfloat16)) == 1  # head stride 12: not a multiple of 8


def test_unaligned_views_match_reference(device):
    """Inputs 2 bytes / 4 bytes off a 16-byte boundary take the unaligned path (ALIGN = 1) and stay exact."""
    B, N, H, d = 2, 21, 2, 72
    flat = torch.randn(3 * B * N * H * d + 1, device=device)
    q, k, v = (flat[1 + i * B * N * H * d:1 + (i + 1) * B * N * H * d].view(B, N, H, d) for i in range(3))
    assert _align(q, k, v) == 1
    grad_out = torch.randn(B, N, H, d, device=device)
    out, _, grads = _kernel_poisoned(q, k, v, grad_out)
    ref, ref_grads = _reference(q, k, v, grad_out)
    _assert_outputs_close(out, grads, ref, ref_grads)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's bf16 path (on a GPU bf16 runs compiled)")
def test_interpreted_bf16_is_computed_correctly():
    """The interpreter's bf16 tl.dot is wrong: interpreted bf16 calls run in fp32 and round back, so the result is
    the fp32 kernel's rounded to bf16 (within one bf16 ulp of the float64 reference), not garbage."""
    B, Nq, Nk, H, d = 2, 13, 29, 2, 72
    q, k, v = _qkv(B, Nq, Nk, H, d, "cpu", torch.bfloat16)
    grad_out = torch.randn(B, Nq, H, d, dtype=torch.bfloat16)
    out, _, grads = _kernel_poisoned(q, k, v, grad_out)
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads)
    ref, ref_grads = _reference(q, k, v, grad_out)
    for name, x, r in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), strict=True):
        torch.testing.assert_close(x.double(), r, atol=1e-2, rtol=1e-2, msg=lambda m, n=name: f"{n}: {m}")


def test_bad_output_buffer():
    q, k, v = _qkv(1, 5, 7, 2, 64, "cpu")
    with pytest.raises(ValueError, match=r"out must have shape \(1, 5, 2, 64\)"):
        _attention_fwd(q, k, v, out=torch.empty(1, 5, 2, 63))


# ---------------------------------------------------------------------------------------------------------------
# GPU only: bf16/fp16 error budget against float64, determinism
# ---------------------------------------------------------------------------------------------------------------
# (B, Nq, Nk, H, d, masked): SigLIP B/16 vision, So400m vision, So400m MAP head, text tower with padding
GPU_SHAPES = [(8, 196, 196, 12, 64, False), (4, 729, 729, 16, 72, False), (16, 1, 729, 16, 72, False),
              (16, 64, 64, 12, 64, True)]


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,Nq,Nk,H,d,masked", GPU_SHAPES)
def test_low_precision_error_budget(B, Nq, Nk, H, d, masked, dtype, device):
    """Kernel error vs float64 <= 2x the eager low-precision path's error, for the output and every gradient."""
    q, k, v = _qkv(B, Nq, Nk, H, d, device, dtype)
    mask = _padding_mask(B, Nk, torch.bool, device) if masked else None
    grad_out = torch.randn(B, Nq, H, d, device=device, dtype=dtype)
    out, _, grads = _kernel_poisoned(q, k, v, grad_out, attention_mask=mask)
    ref, ref_grads = _reference(q, k, v, grad_out, attention_mask=mask)
    eager, eager_grads = _reference(q, k, v, grad_out, attention_mask=mask, dtype=dtype)
    names = ("out", "dq", "dk", "dv")
    for name, x, r, e in zip(names, (out, *grads), (ref, *ref_grads), (eager, *eager_grads), strict=True):
        err = (x.double() - r).abs().max().item()
        budget = 2 * (e.double() - r).abs().max().item()
        assert err <= budget, f"{name}: kernel error {err:.3g} > 2x eager {dtype} error ({budget:.3g})"


@needs_cuda
@pytest.mark.parametrize("masked", [False, True])
def test_deterministic(masked, device):
    """Forward and backward are bitwise reproducible (no atomics anywhere)."""
    B, N, H, d = 4, 729, 16, 72
    q, k, v = (t.requires_grad_() for t in _qkv(B, N, N, H, d, device, torch.bfloat16))
    mask = _padding_mask(B, N, torch.bool, device) if masked else None
    grad_out = torch.randn(B, N, H, d, device=device, dtype=torch.bfloat16)
    runs = []
    for _ in range(2):
        out = attention(q, k, v, attention_mask=mask)
        runs.append((out, *torch.autograd.grad(out, (q, k, v), grad_out)))
    for name, a, b in zip(("out", "dq", "dk", "dv"), *runs, strict=True):
        assert torch.equal(a, b), f"{name} differs between two identical runs"
