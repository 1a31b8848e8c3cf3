"""Mixed precision (issue 23): fp32 models under `torch.autocast`, on every backend, against transformers under the
same autocast: outputs (dtypes and values), the loss, every parameter's gradient (fp32, reaching the fp32 weights),
and `torch.amp.GradScaler` with fp16.

Tolerances, per dtype. Two computations of the same function in bf16/fp16 differ by their roundings, so each output
is checked two ways against the fp32 model without autocast (the truth), `scale` being that output's max |value|:
  - budget: |ours - fp32| <= 2 * |transformers - fp32| + 4 * eps * scale (the design's low-precision error budget,
    with a floor of four unit roundoffs at the output's scale, eps = 2^-8 for bf16, 2^-11 for fp16: a GEMM output,
    its bias, activation and residual add are rounded at different places on the two paths, so where transformers'
    error is small by chance ours may still carry those few roundings);
  - direct: |ours - transformers| <= TOL[dtype] * scale, TOL = 5e-2 (bf16) and 1e-2 (fp16): the project's
    low-precision budgets (the `bench` command's), relative to the output's scale.
Gradients get the same two checks (relative to each gradient's scale), except k_proj's bias, whose gradient is
zero in exact arithmetic (see `_check_grads`). Under the Triton interpreter a bf16 kernel
runs in fp32 and rounds its results (README, "Status and limitations"): there the Triton backend is closer to the
fp32 truth than transformers is, which the budget allows and the direct check bounds; what these tests check on CPU
for that backend is the casting at the op boundaries and the dtypes, not the compiled kernels' bf16 numerics (the
GPU's error-budget tests do). fp16 kernels are interpreted in fp16.
"""

from __future__ import annotations

import pytest
import torch

import siglip_fast as sf
from tests._tiny import hf_config, inputs, randomize_

transformers = pytest.importorskip("transformers")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = ["auto", "sdpa", "eager", "triton"]
# the attention transformers runs that computes what ours does (flash-like kernels compute what SDPA computes)
HF_ATTN = {"auto": "sdpa", "sdpa": "sdpa", "eager": "eager", "triton": "sdpa"}
TOL = {torch.bfloat16: 5e-2, torch.float16: 1e-2}
EPS = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _err(a, b) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def _check(name, ours, theirs, truth, dtype):
    assert ours.dtype == theirs.dtype, (name, ours.dtype, theirs.dtype)
    assert torch.isfinite(ours).all(), name
    scale = max(truth.detach().abs().max().item(), 1e-30)
    budget = 2 * _err(theirs, truth) + 4 * EPS[dtype] * scale
    assert _err(ours, truth) <= budget, (name, _err(ours, truth), budget)
    assert _err(ours, theirs) <= TOL[dtype] * scale, (name, _err(ours, theirs), TOL[dtype] * scale)


def _check_grads(ours, theirs, truth, dtype):
    """Every gradient is there, fp32 (it reached the fp32 weight), within the budgets. k_proj's bias has a zero
    gradient in exact arithmetic (q·b_k adds the same to every score of a row, which the softmax ignores): all
    that is left is roundoff, bounded at the scale of the same layer's k_proj.weight gradient."""
    assert sorted(ours) == sorted(theirs)
    for name, g in ours.items():
        assert g is not None, name
        assert g.dtype == torch.float32, (name, g.dtype)
        if name.endswith("k_proj.bias"):
            scale = truth[name.removesuffix("bias") + "weight"].abs().max().item()
            assert truth[name].abs().max().item() <= 1e-5 * scale, name  # the claim itself, in fp32
            assert g.abs().max().item() <= TOL[dtype] * scale, (name, g.abs().max().item(), scale)
        else:
            _check(f"grad {name}", g, theirs[name], truth[name], dtype)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(23)
    model = randomize_(transformers.SiglipModel(hf_config("base"))).eval()
    path = tmp_path_factory.mktemp("hf_autocast")
    model.save_pretrained(path)
    return path


def _theirs(path, device, attn):
    return transformers.SiglipModel.from_pretrained(path, attn_implementation=attn).to(device).eval()


def _outputs(out):
    yield "loss", out.loss
    for key in ("logits_per_image", "text_embeds", "image_embeds"):
        yield key, out[key]
    for tower in ("text_model_output", "vision_model_output"):
        for key in ("last_hidden_state", "pooler_output"):
            yield f"{tower}.{key}", out[tower][key]
        for i, h in enumerate(out[tower].hidden_states):
            yield f"{tower}.hidden_states[{i}]", h


def _run(model, kw, device, dtype):
    model.zero_grad(set_to_none=True)
    if dtype is None:
        out = model(**kw, return_loss=True, output_hidden_states=True)
    else:
        with torch.autocast(device, dtype=dtype):
            out = model(**kw, return_loss=True, output_hidden_states=True)
    out.loss.backward()  # outside the autocast region, as torch's AMP recipe does
    return out, {n: p.grad for n, p in model.named_parameters()}


def _three_models(checkpoint, backend, device):
    """(ours on `backend`, transformers with the matching attention, transformers eager as the fp32 truth, ids,
    pixels)."""
    if backend == "triton" and device == "cpu":
        pytest.importorskip("triton")
    theirs = _theirs(checkpoint, device, HF_ATTN[backend])
    ids, pixels = inputs(theirs.config)
    ours = sf.SiglipModel.from_pretrained(checkpoint, backend=backend, device=device)
    return ours, theirs, _theirs(checkpoint, device, "eager"), ids, pixels


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_backward_match_transformers_under_autocast(checkpoint, backend, dtype, device):
    ours, theirs, truth_model, ids, pixels = _three_models(checkpoint, backend, device)
    kw = dict(input_ids=ids.to(device), pixel_values=pixels.to(device))
    o, o_grads = _run(ours, kw, device, dtype)
    t, t_grads = _run(theirs, kw, device, dtype)
    f, f_grads = _run(truth_model, kw, device, None)
    for (name, a), (_, b), (_, c) in zip(_outputs(o), _outputs(t), _outputs(f), strict=True):
        _check(name, a, b, c, dtype)
    assert o.vision_model_output.pooler_output.dtype == dtype  # the MAP head's MLP ran in the autocast dtype
    _check_grads(o_grads, t_grads, f_grads, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_matches_transformers_under_autocast(checkpoint, backend, dtype, device):
    """Inference (no autograd: on CPU "auto" may take its oneDNN path, siglip_fast.cpu) under autocast: every output,
    its dtype and values, as transformers' under the same autocast."""
    ours, theirs, truth_model, ids, pixels = _three_models(checkpoint, backend, device)
    kw = dict(input_ids=ids.to(device), pixel_values=pixels.to(device), return_loss=True, output_hidden_states=True)
    with torch.inference_mode():
        f = truth_model(**kw)
        with torch.autocast(device, dtype=dtype):
            o, t = ours(**kw), theirs(**kw)
    for (name, a), (_, b), (_, c) in zip(_outputs(o), _outputs(t), _outputs(f), strict=True):
        _check(name, a, b, c, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", ["sdpa", "eager", "triton"])
def test_naflex_model_under_autocast(backend, dtype, tmp_path):
    """Siglip2Model: the patch Linear with the fp32 position table as its residual (promoted to fp32, as
    transformers' patch_embeds + positions), masked attention, the masked MAP head."""
    text, vision = (dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=11),
                    dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                         num_patches=16, patch_size=4))
    hf = randomize_(transformers.Siglip2Model(transformers.Siglip2Config(text_config=text, vision_config=vision)))
    hf.save_pretrained(tmp_path)
    theirs = transformers.Siglip2Model.from_pretrained(tmp_path, attn_implementation=HF_ATTN[backend]).eval()
    truth_model = transformers.Siglip2Model.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ours = sf.Siglip2Model.from_pretrained(tmp_path, backend=backend)
    grids = torch.tensor([[4, 5], [2, 7], [3, 3]])
    mask = (torch.arange(20)[None] < grids.prod(-1)[:, None]).long()
    kw = dict(input_ids=torch.randint(0, 99, (3, 11)), pixel_values=torch.randn(3, 20, 48),
              pixel_attention_mask=mask, spatial_shapes=grids)
    o, o_grads = _run(ours, kw, "cpu", dtype)
    t, t_grads = _run(theirs, kw, "cpu", dtype)
    f, f_grads = _run(truth_model, kw, "cpu", None)
    real = mask.bool()
    assert o.vision_model_output.hidden_states[0].dtype == torch.float32  # (bf16 GEMM) + (fp32 positions)
    for (name, a), (_, b), (_, c) in zip(_outputs(o), _outputs(t), _outputs(f), strict=True):
        if "vision_model_output" in name and a.dim() == 3:  # the padding tokens' states are not outputs
            a, b, c = a[real], b[real], c[real]
        _check(name, a, b, c, dtype)
    _check_grads(o_grads, t_grads, f_grads, dtype)


@pytest.mark.parametrize("backend", ["sdpa", "eager", "triton"])
def test_grad_scaler_with_fp16(checkpoint, backend):
    """torch.amp.GradScaler on fp16 autocast: the unscaled gradients are the plain fp16-autocast gradients, a step
    is taken; with a scale that overflows fp16, the step is skipped (weights untouched) and the scale backs off."""
    ours = sf.SiglipModel.from_pretrained(checkpoint, backend=backend).train()
    ids, pixels = inputs(ours.config)
    kw = dict(input_ids=ids, pixel_values=pixels, return_loss=True)
    _, plain = _run_loss(ours, kw)
    opt = torch.optim.SGD(ours.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    scaler.scale(_run_loss(ours, kw, backward=False)).backward()
    scaler.unscale_(opt)
    for name, p in ours.named_parameters():
        assert p.grad.dtype == torch.float32, name
        # the same fp16 computation, whose scaled backward rounds differently (TOL[fp16] relative to the gradient's
        # scale; k_proj's bias gradient is roundoff around 0, see _check_grads: at k_proj.weight's scale)
        ref = plain[name.removesuffix("bias") + "weight"] if name.endswith("k_proj.bias") else plain[name]
        assert _err(p.grad, plain[name]) <= TOL[torch.float16] * ref.abs().max().item(), name
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**8
    assert all(not torch.equal(before[n], p) for n, p in ours.named_parameters()), "no step was taken"

    opt.zero_grad(set_to_none=True)
    stepped = {n: p.detach().clone() for n, p in ours.named_parameters()}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # fp16 gradients overflow: the step must be skipped
    scaler.scale(_run_loss(ours, kw, backward=False)).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0**40
    assert all(torch.equal(stepped[n], p) for n, p in ours.named_parameters())


def _run_loss(model, kw, backward=True):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(**kw).loss
    if not backward:
        return loss
    loss.backward()
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("backend", ["eager", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_sigmoid_loss_under_autocast(backend, dtype):
    """fp32 embeddings under autocast: cast to the autocast dtype (autocast's rule for the logits GEMM), the loss's
    own math in fp32 as without autocast; the same value as the loss of the cast embeddings, gradients to the fp32
    inputs (the gradient of the cast embeddings, in fp32)."""
    x = torch.nn.functional.normalize(torch.randn(37, 24), dim=-1).requires_grad_()
    y = torch.nn.functional.normalize(torch.randn(37, 24), dim=-1).requires_grad_()
    t, b = torch.tensor([2.3], requires_grad=True), torch.tensor([-3.0], requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        loss = sf.sigmoid_loss(x, y, t, b, backend=backend)
    loss.backward()
    xl, yl = x.detach().to(dtype).requires_grad_(), y.detach().to(dtype).requires_grad_()
    tl_, bl = t.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ref = sf.sigmoid_loss(xl, yl, tl_, bl, backend=backend)
    ref.backward()
    assert loss.dtype == torch.float32
    assert _err(loss, ref) <= 1e-6 * ref.abs().item()
    for ours, theirs in ((x.grad, xl.grad), (y.grad, yl.grad), (t.grad, tl_.grad), (b.grad, bl.grad)):
        assert ours.dtype == torch.float32
        assert _err(ours, theirs) <= 1e-6 * max(theirs.abs().max().item(), 1e-30)


# ---------------------------------------------------------------------------------------------------------------
# The kernels' mixed-dtype epilogues that autocast needs: an fp32 stream added to a bf16/fp16 GEMM
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def _poisoned(monkeypatch):
    """Every buffer the linear and patch-embed launchers allocate starts as NaN (an unwritten element survives)."""
    import siglip_fast.kernels.linear as linear_mod
    import siglip_fast.kernels.patch_embed as pe

    monkeypatch.setattr(linear_mod, "_empty",
                        lambda shape, device, dtype: torch.full(shape, float("nan"), device=device, dtype=dtype))
    empty = torch.empty
    monkeypatch.setattr(pe.torch, "empty", lambda *a, **k: (lambda t: t.fill_(float("nan")) if t.is_floating_point()
                                                             else t)(empty(*a, **k)))


def _grads(out, tensors, g):
    return torch.autograd.grad(out, tensors, g)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("activation", [None, "gelu_tanh"])
def test_linear_kernel_with_an_fp32_residual(dtype, activation, _poisoned):
    """x, W, b in bf16/fp16 and an fp32 residual: an fp32 output (eager's promotion of residual + GEMM), the
    residual added in fp32 in the epilogue; forward against the float64 formula on the same inputs, every gradient
    against eager autograd (same dtypes: the residual's fp32, the others' low precision)."""
    pytest.importorskip("triton")
    from siglip_fast.kernels.linear import linear, linear_reference

    x = torch.randn(3, 37, 40, dtype=dtype, requires_grad=True)
    w = (torch.randn(29, 40) / 40**0.5).to(dtype).requires_grad_()
    b = torch.randn(29, dtype=dtype, requires_grad=True)
    r = torch.randn(3, 37, 29, requires_grad=True)
    out = linear(x, w, b, activation=activation, residual=r, gemm="triton")
    ref = linear_reference(x, w, b, activation=activation, residual=r)
    assert out.dtype == ref.dtype == torch.float32
    z = x.double() @ w.double().T + b.double()
    exact = r.double() + (torch.nn.functional.gelu(z, approximate="tanh") if activation else z)
    assert _err(out, exact) <= 1e-5 * exact.abs().max().item()  # fp32 accumulation and epilogue, one rounding
    g = torch.randn_like(ref)
    for name, a, e in zip("xwbr", _grads(out, (x, w, b, r), g), _grads(ref, (x, w, b, r), g), strict=True):
        assert a.dtype == e.dtype, name
        assert _err(a, e) <= TOL[dtype] * e.abs().max().item(), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("pixels", ["float", "uint8"])
def test_patch_embed_kernel_with_an_fp32_table(dtype, pixels, _poisoned):
    """The patch convolution in bf16/fp16 with an fp32 position table: an fp32 output (eager's conv(x) + table),
    against the float64 formula on the same inputs; every gradient against eager autograd."""
    pytest.importorskip("triton")
    from siglip_fast.kernels.patch_embed import patch_embed, patch_embed_reference

    if pixels == "uint8":
        px = torch.randint(0, 256, (2, 3, 15, 17), dtype=torch.uint8)
    else:
        px = torch.randn(2, 3, 15, 17, dtype=dtype, requires_grad=True)
    w = (torch.randn(24, 3, 5, 5) / 75**0.5).to(dtype).requires_grad_()
    b = torch.randn(24, dtype=dtype, requires_grad=True)
    pos = torch.randn(9, 24, requires_grad=True)
    out = patch_embed(px, w, b, pos, 5)
    ref = patch_embed_reference(px, w, b, pos, 5)
    assert out.dtype == ref.dtype == torch.float32
    xd = px.double()
    if pixels == "uint8":  # the values the conv sees: normalised, rounded to the weight's dtype, except where the
        # interpreter runs a bf16 call in fp32 (README, "Status and limitations"), which does not round them
        xd = (xd - 127.5) / 127.5
        if not (px.device.type == "cpu" and dtype == torch.bfloat16):
            xd = xd.to(dtype).double()
    exact = torch.nn.functional.conv2d(xd, w.double(), b.double(), stride=5).flatten(2).transpose(1, 2) + pos.double()
    assert _err(out, exact) <= 1e-5 * exact.abs().max().item()
    tensors = (w, b, pos) + ((px,) if pixels == "float" else ())
    g = torch.randn_like(ref)
    for i, (a, e) in enumerate(zip(_grads(out, tensors, g), _grads(ref, tensors, g), strict=True)):
        assert a.dtype == e.dtype, i
        assert _err(a, e) <= TOL[dtype] * e.abs().max().item(), i
