"""Fused patch embedding (kernels/patch_embed.py): forward and every gradient against the eager reference.

On CPU the kernels run under the Triton interpreter in fp32 (tolerances below, against an fp64 reference); on a GPU
the same tests run, plus the bf16/fp16 error budget and the bitwise determinism checks. (bf16 cannot be checked
under the interpreter: its bf16 tl.dot returns garbage, in triton 3.9 at least.)
"""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from siglip_fast.kernels.patch_embed import patch_embed, patch_embed_reference

pe = importlib.import_module("siglip_fast.kernels.patch_embed")  # the module (its name is also the function's)

CUDA = torch.cuda.is_available()

# fp32 kernel vs the fp64 reference: fp32 products accumulated over K <= 3 * 14 * 14 terms of size O(1).
FP32_TOL = dict(atol=2e-5, rtol=2e-5)

# (B, C, H, W, p, D): crops on the right/bottom (32 -> 28, 27 -> 25), exact fit, non-square, C = 1 and 3,
# D not a multiple of any block (40, 72), batch 1 and 3.
SHAPES = [
    (3, 3, 32, 32, 7, 40),
    (1, 3, 30, 30, 6, 72),
    (3, 1, 20, 27, 5, 40),
]
# How the pixels arrive: normalised fp32, fp32 channels_last (non-contiguous), fp64 (cast on load), raw uint8.
PIXELS = ["float32", "channels_last", "float64", "uint8"]
# So400m's patch 14 (K = 588, 44 px cropped to 42), fewer combinations: the interpreter is slow on its long K loop.
CASES = [(s, px) for s in SHAPES for px in PIXELS] + [((1, 3, 44, 44, 14, 40), px) for px in ("channels_last", "uint8")]
# Patch rows are padded to a power of two inside the forward: p = 16 needs none (the weight is used as a view),
# p = 33 pads to 64 columns, wider than a K block (a patch row spans several K steps).
CASES += [((2, 3, 35, 33, 16, 24), "float32"), ((1, 1, 33, 34, 33, 8), "uint8")]


def _make(shape, pixels, device, dtype=torch.float32, requires_grad=True):
    B, C, H, W, p, D = shape
    N = (H // p) * (W // p)
    if pixels == "uint8":
        x = torch.randint(0, 256, (B, C, H, W), dtype=torch.uint8, device=device)
    else:
        x = torch.randn(B, C, H, W, device=device, dtype=torch.float64 if pixels == "float64" else torch.float32)
        if pixels == "channels_last":
            x = x.to(memory_format=torch.channels_last)
        x.requires_grad_(requires_grad)
    scale = 1 / math.sqrt(C * p * p)  # the Conv2d init scale keeps outputs O(1)
    w = (torch.randn(D, C, p, p, device=device) * scale).to(dtype).requires_grad_(requires_grad)
    b = torch.randn(D, device=device).to(dtype).requires_grad_(requires_grad)
    pos = torch.randn(N, D, device=device).to(dtype).requires_grad_(requires_grad)
    return x, w, b, pos, p


def _fp64_copies(x, w, b, pos):
    """Leaf fp64 copies for the reference (uint8 pixels stay uint8: the reference normalises them in fp64)."""
    x64 = x.detach() if x.dtype == torch.uint8 else x.detach().double().requires_grad_()
    return x64, *(t.detach().double().requires_grad_() for t in (w, b, pos))


def _grads(out, grad, inputs):
    out.backward(grad)
    return [t.grad for t in inputs]


@pytest.fixture
def poisoned_alloc(monkeypatch):
    """Every float buffer the launchers allocate (outputs, pixel grads, dW partial sums) starts as NaN, so an
    element a kernel fails to write survives as NaN."""
    empty, empty_like = torch.empty, torch.empty_like

    def _poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(pe.torch, "empty", lambda *a, **k: _poison(empty(*a, **k)))
    monkeypatch.setattr(pe.torch, "empty_like", lambda *a, **k: _poison(empty_like(*a, **k)))


@pytest.mark.parametrize("shape,pixels", CASES, ids=["B{}_C{}_{}x{}_p{}_D{}-".format(*s) + px for s, px in CASES])
def test_forward_and_grads_match_reference(shape, pixels, device, poisoned_alloc):
    x, w, b, pos, p = _make(shape, pixels, device)
    out = patch_embed(x, w, b, pos, p)
    B, C, H, W, _, D = shape
    N = (H // p) * (W // p)
    assert out.shape == (B, N, D) and out.dtype == w.dtype
    assert not out.isnan().any(), "an output element was never written"

    refs = _fp64_copies(x, w, b, pos)
    ref = patch_embed_reference(*refs, p)
    torch.testing.assert_close(out.double(), ref, **FP32_TOL)

    grad = torch.randn_like(out)
    got = _grads(out, grad, (x, w, b, pos))
    want = _grads(ref, grad.double(), refs)
    names = ("pixel_values", "weight", "bias", "position_embedding")
    for name, g, r in zip(names, got, want, strict=True):
        if name == "pixel_values" and pixels == "uint8":
            assert g is None and r is None
            continue
        assert g is not None, f"no gradient for {name}"
        assert not g.isnan().any(), f"an element of d{name} was never written"
        torch.testing.assert_close(g.double(), r, **FP32_TOL, msg=lambda m, n=name: f"d{n}: {m}")
    if pixels != "uint8":
        assert got[0].dtype == x.dtype and got[0].stride() == x.stride()  # pixels' dtype and layout
        crop_h, crop_w = (H // p) * p, (W // p) * p
        assert (got[0][:, :, crop_h:, :] == 0).all() and (got[0][:, :, :, crop_w:] == 0).all()


def test_matches_fp32_eager_module(device):
    """The exact transformers computation in fp32 (Conv2d -> flatten -> transpose -> + pos) as the peer."""
    x, w, b, pos, p = _make((2, 3, 32, 32, 7, 40), "float32", device, requires_grad=False)
    conv = torch.nn.Conv2d(3, 40, kernel_size=p, stride=p, padding="valid").to(device)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # true fp32 on a GPU too
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        want = conv(x).flatten(2).transpose(1, 2) + pos
        ref = patch_embed_reference(x, w, b, pos, p)
    torch.testing.assert_close(patch_embed(x, w, b, pos, p), want, **FP32_TOL)
    torch.testing.assert_close(ref, want, **FP32_TOL)


def test_uint8_matches_normalised_float(device):
    """uint8 pixels give what SigLIP's processor output (rescale 1/255, mean = std = 0.5) gives as float input."""
    x, w, b, pos, p = _make((2, 3, 30, 30, 6, 40), "uint8", device, requires_grad=False)
    x_float = (x.double() / 255 - 0.5) / 0.5
    torch.testing.assert_close(patch_embed(x, w, b, pos, p).double(),
                               patch_embed_reference(x_float, w.double(), b.double(), pos.double(), p), **FP32_TOL)


def test_empty_batch(device):
    x, w, b, pos, p = _make((0, 3, 14, 14, 7, 40), "float32", device)
    out = patch_embed(x, w, b, pos, p)
    assert out.shape == (0, 4, 40)
    out.sum().backward()
    assert x.grad.shape == x.shape and (w.grad == 0).all() and (pos.grad == 0).all()


def test_torch_compile_fullgraph(device):
    """The custom op traces without graph breaks, forward and backward (aot_eager: no C++ compiler needed)."""
    x, w, b, pos, p = _make((2, 1, 20, 27, 5, 40), "float32", device)
    fn = torch.compile(patch_embed, fullgraph=True, backend="aot_eager")
    out = fn(x, w, b, pos, p)
    grad = torch.randn_like(out)
    got = _grads(out, grad, (x, w, b, pos))
    refs = [t.detach().clone().requires_grad_() for t in (x, w, b, pos)]
    ref = patch_embed_reference(*refs, p)
    want = _grads(ref, grad, refs)
    torch.testing.assert_close(out, ref, **FP32_TOL)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, **FP32_TOL)


def test_custom_op_registration(device):
    x, w, b, pos, p = _make((1, 1, 10, 15, 5, 40), "float32", device)
    torch.library.opcheck(torch.ops.siglip_fast.patch_embed.default, (x, w, b, pos, p),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def _bad_input_cases():
    def case(**over):
        def build(device):
            x, w, b, pos, p = _make((1, 3, 14, 14, 7, 32), "float32", device, requires_grad=False)
            args = dict(pixel_values=x, weight=w, bias=b, position_embedding=pos, patch_size=p)
            for k, v in over.items():
                args[k] = v(args) if callable(v) else v
            return args
        return build

    P = pytest.param
    return [
        P(case(pixel_values=lambda a: a["pixel_values"][0]), ValueError, r"pixel_values must be \(B, C, H, W\)",
          id="pixels-3d"),
        P(case(pixel_values=lambda a: a["pixel_values"].int()), TypeError, "float or uint8", id="pixels-int32"),
        P(case(pixel_values=lambda a: a["pixel_values"][:, :1]), ValueError, "1 channels but weight expects 3",
          id="channels"),
        P(case(patch_size=6), ValueError, r"\(D, C, 6, 6\) for patch_size=6", id="patch-size"),
        P(case(patch_size=7.0), TypeError, "patch_size must be an int", id="patch-size-float"),
        P(case(weight=lambda a: a["weight"][:, :, :, :5]), ValueError, r"weight must be \(D, C, p, p\)",
          id="weight-not-square"),
        P(case(pixel_values=lambda a: a["pixel_values"][:, :, :6]), ValueError, "at least 7x7", id="too-small"),
        P(case(position_embedding=lambda a: torch.cat([a["position_embedding"]] * 2)), ValueError,
          r"has 8 positions but a 14x14 image with patch_size=7 gives 2x2 = 4 patches", id="pos-n"),
        P(case(position_embedding=lambda a: a["position_embedding"][:, :16]), ValueError,
          r"position_embedding must be \(4, 32\)", id="pos-d"),
        P(case(position_embedding=lambda a: a["position_embedding"][0]), ValueError,
          r"position_embedding must be \(N, D\)", id="pos-1d"),
        P(case(bias=lambda a: a["bias"][:31]), ValueError, r"bias must have shape \(32,\)", id="bias-shape"),
        P(case(bias=lambda a: a["bias"].double()), TypeError, "bias must have weight's dtype", id="bias-dtype"),
        P(case(position_embedding=lambda a: a["position_embedding"].half()), TypeError,
          "position_embedding must have weight's dtype", id="pos-dtype"),
        P(case(weight=lambda a: a["weight"].to("meta")), ValueError, "weight is on meta", id="device"),
        P(case(bias=[0.0] * 32), TypeError, "bias must be a torch.Tensor", id="not-tensor"),
    ]


@pytest.mark.parametrize("fn", [patch_embed, patch_embed_reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("build,exc,match", _bad_input_cases())
def test_bad_input(fn, build, exc, match, device):
    with pytest.raises(exc, match=match):
        fn(**build(device))


def test_kernel_rejects_fp64_weights(device):
    x, w, b, pos, p = _make((1, 3, 14, 14, 7, 32), "float32", device, dtype=torch.float64, requires_grad=False)
    with pytest.raises(TypeError, match="weight dtypes"):
        patch_embed(x, w, b, pos, p)
    assert patch_embed_reference(x, w, b, pos, p).dtype == torch.float64  # the reference takes any float


# ---------------------------------------------------------------------------------------------------------------------
# GPU only: low-precision error budget and determinism at the real checkpoint shapes
# ---------------------------------------------------------------------------------------------------------------------

GPU_SHAPES = [(4, 3, 224, 224, 16, 768), (2, 3, 384, 384, 14, 1152), (3, 3, 30, 27, 5, 72)]


@pytest.mark.skipif(CUDA, reason="the interpreter's bf16 path (on a GPU bf16 runs compiled)")
@pytest.mark.parametrize("pixels", ["uint8", "float32"])
def test_interpreted_bf16_is_computed_correctly(pixels):
    """The interpreter's bf16 tl.dot is wrong: interpreted bf16 calls run in fp32 and round back (within bf16
    rounding of the float64 reference), output and every gradient, instead of returning garbage."""
    x, w, b, pos, p = _make((2, 3, 30, 23, 7, 24), pixels, "cpu", dtype=torch.bfloat16)
    if x.is_floating_point():
        x = x.detach().to(torch.bfloat16).requires_grad_()
    leaves = [t for t in (x, w, b, pos) if t.requires_grad]
    out = patch_embed(x, w, b, pos, p)
    assert out.dtype == torch.bfloat16
    x64, w64, b64, pos64 = _fp64_copies(x, w, b, pos)
    ref = patch_embed_reference(x64, w64, b64, pos64, p)
    torch.testing.assert_close(out.double(), ref, atol=5e-2, rtol=2e-2)
    grad = torch.randn_like(out)
    ref_leaves = [t for t in (x64, w64, b64, pos64) if t.requires_grad]
    for name, g, r in zip(("x", "w", "b", "pos")[-len(leaves):], _grads(out, grad, leaves),
                          _grads(ref, grad.double(), ref_leaves), strict=True):
        torch.testing.assert_close(g.double(), r, atol=5e-2, rtol=2e-2, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.skipif(not CUDA, reason="bf16/fp16 error budget needs a GPU (the interpreter's bf16 tl.dot is wrong)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pixels", ["float32", "uint8"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "B{}_C{}_{}x{}_p{}_D{}".format(*s))
def test_low_precision_error_budget(shape, pixels, dtype, device):
    """Kernel error vs an fp64 reference <= 2x the eager low-precision path's error, output and every gradient."""
    x, w, b, pos, p = _make(shape, pixels, device, dtype=dtype)
    refs = _fp64_copies(x, w, b, pos)
    ref = patch_embed_reference(*refs, p)
    grad = torch.randn(ref.shape, device=device, dtype=torch.float64)
    want = [ref.detach()] + _grads(ref, grad, refs)

    eager_in = [x if x.dtype == torch.uint8 else x.detach().clone().requires_grad_()] + \
               [t.detach().clone().requires_grad_() for t in (w, b, pos)]
    eager = patch_embed_reference(*eager_in, p)
    eager_all = [eager.detach()] + _grads(eager, grad.to(dtype), eager_in)

    out = patch_embed(x, w, b, pos, p)
    kernel_all = [out.detach()] + _grads(out, grad.to(dtype), (x, w, b, pos))
    for name, k, e, r in zip(("out", "dpixels", "dweight", "dbias", "dpos"), kernel_all, eager_all, want,
                                 strict=True):
        if r is None:
            continue
        k_err = (k.double() - r).abs().max().item()
        e_err = (e.double() - r).abs().max().item()
        assert k_err <= 2 * e_err, f"{name}: kernel error {k_err:.3g} > 2x eager {dtype} error {e_err:.3g}"


@pytest.mark.skipif(not CUDA, reason="determinism of compiled GPU kernels; the interpreter is trivially deterministic")
@pytest.mark.parametrize("pixels", ["float32", "uint8"])
def test_deterministic(pixels, device):
    x, w, b, pos, p = _make((8, 3, 384, 384, 14, 1152), pixels, device, dtype=torch.bfloat16)
    grad = torch.randn(8, 729, 1152, device=device, dtype=torch.bfloat16)

    def run():
        for t in (x, w, b, pos):
            t.grad = None
        out = patch_embed(x, w, b, pos, p)
        return [out.detach()] + [g for g in _grads(out, grad, (x, w, b, pos)) if g is not None]

    first, second = run(), run()
    assert len(first) == (4 if pixels == "uint8" else 5)
    for a, b_ in zip(first, second, strict=True):
        assert torch.equal(a, b_)


def test_f_conv2d_is_the_reference_definition(device):
    """patch_embed_reference is literally F.conv2d + flatten + transpose + add (bitwise), uint8 normalised first."""
    x, w, b, pos, p = _make((2, 1, 20, 27, 5, 40), "uint8", device, requires_grad=False)
    xn = (x.float() - 127.5) / 127.5
    want = F.conv2d(xn, w, b, stride=p).flatten(2).transpose(1, 2) + pos
    assert torch.equal(patch_embed_reference(x, w, b, pos, p), want)
