"""Model parity with transformers on tiny random checkpoints, both directions, every output and gradient.

Errors are relative to each tensor's scale, max|ours - ref| / max|ref| (`_err`), so a small gradient is held as
tightly as a large one. Tolerances (fp32): the eager backend <= 1e-5 (design.md); the Triton kernels (compiled on a
GPU, the interpreter on CPU) <= KERNEL_RTOL, compared with transformers directly (outputs, hidden states, loss, every
gradient; interpolate_pos_encoding, the classification model, the towers alone) and with our eager backend.
"""

from __future__ import annotations

import pytest
import torch

import siglip_fast as sf
from siglip_fast import ops
from tests._tiny import TINY_CONFIGS, hf_config, inputs, randomize_

transformers = pytest.importorskip("transformers")

EAGER_RTOL = 1e-5
# fp32 through the kernels: their accumulation order differs from PyTorch's (seen: <= 2e-6 on these models); an
# error of 5e-5 relative planted in a kernel's output or gradient is over it
KERNEL_RTOL = 1e-5
RTOL = {"eager": EAGER_RTOL, "triton": KERNEL_RTOL}
# Gradients: each is held relative to its own scale down to GRAD_FLOOR x the largest gradient of the model; below
# that (k_proj.bias, exactly zero in exact arithmetic: the softmax ignores a constant per query row) relative to
# that floor, so rounding noise around zero is not read as a relative error.
GRAD_FLOOR = 1e-2


def _err(a, b, floor: float = 0.0) -> float:
    """max|a - b| / max(max|b|, floor) in float64: the error relative to the reference's scale (absolute where b is
    all zeros and there is no floor)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a - b).abs().max().item()
    scale = max(b.abs().max().item(), floor)
    return diff / scale if scale > 0 else diff


def _check_grads(ours, ref_grads: dict, rtol: float) -> None:
    """Every parameter of `ours` has a gradient within rtol of ref_grads[name], relative to its own scale (see
    GRAD_FLOOR); every reference gradient is checked."""
    floor = GRAD_FLOOR * max(g.abs().max().item() for g in ref_grads.values())
    checked = 0
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        assert _err(p.grad, ref_grads[name], floor) <= rtol, name
        checked += 1
    assert checked == len(ref_grads)


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def hf_checkpoint(request, tmp_path_factory):
    torch.manual_seed(sum(map(ord, request.param)))
    model = randomize_(transformers.SiglipModel(hf_config(request.param))).eval()
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    model.save_pretrained(path)
    return model, path


def _compare_dual(ours, theirs, rtol, **kw):
    o = ours(**kw, output_hidden_states=True)
    t = theirs(**kw, output_hidden_states=True)
    for key in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        assert _err(o[key], t[key]) <= rtol, key
    for tower in ("text_model_output", "vision_model_output"):
        for key in ("last_hidden_state", "pooler_output"):
            assert _err(o[tower][key], t[tower][key]) <= rtol, (tower, key)
        assert len(o[tower].hidden_states) == len(t[tower].hidden_states)
        for i, (a, b) in enumerate(zip(o[tower].hidden_states, t[tower].hidden_states, strict=True)):
            assert _err(a, b) <= rtol, (tower, "hidden_states", i)
    if kw.get("return_loss"):
        assert _err(o.loss, t.loss) <= rtol
    return o, t


def _on(device, **kw):
    return {k: v.to(device) for k, v in kw.items()}


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_dual_model_outputs_and_loss(hf_checkpoint, backend, device):
    """Against transformers directly: the eager backend, and the fused kernels (on the GPU when there is one)."""
    theirs, path = hf_checkpoint
    device = device if backend == "triton" else torch.device("cpu")
    ours = sf.SiglipModel.from_pretrained(path, backend=backend, device=device)
    ids, pixels = inputs(theirs.config)
    with torch.no_grad():
        o = ours(**_on(device, input_ids=ids, pixel_values=pixels), return_loss=True, output_hidden_states=True)
        t = theirs(input_ids=ids, pixel_values=pixels, return_loss=True, output_hidden_states=True)
    rtol = RTOL[backend]
    for key in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds", "loss"):
        assert _err(o[key], t[key]) <= rtol, key
    for tower in ("text_model_output", "vision_model_output"):
        for key in ("last_hidden_state", "pooler_output"):
            assert _err(o[tower][key], t[tower][key]) <= rtol, (tower, key)
        for i, (a, b) in enumerate(zip(o[tower].hidden_states, t[tower].hidden_states, strict=True)):
            assert _err(a, b) <= rtol, (tower, "hidden_states", i)


def test_masked_text_and_position_ids(hf_checkpoint):
    theirs, path = hf_checkpoint
    ours = sf.SiglipModel.from_pretrained(path, backend="eager")
    ids, pixels = inputs(theirs.config)
    L = ids.shape[1]
    mask = torch.ones_like(ids)
    mask[0, L // 2:] = 0
    mask[1, 1:] = 0  # only one key left in that row
    position_ids = torch.randint(0, L, ids.shape)
    with torch.no_grad():
        o = ours.get_text_features(input_ids=ids, attention_mask=mask, position_ids=position_ids)
        t = theirs.get_text_features(input_ids=ids, attention_mask=mask, position_ids=position_ids)
    assert _err(o.pooler_output, t.pooler_output) <= EAGER_RTOL
    assert _err(o.last_hidden_state, t.last_hidden_state) <= EAGER_RTOL


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_interpolated_positions(hf_checkpoint, backend, device):
    theirs, path = hf_checkpoint
    device = device if backend == "triton" else torch.device("cpu")
    ours = sf.SiglipModel.from_pretrained(path, backend=backend, device=device)
    vc = theirs.config.vision_config
    _, pixels = inputs(theirs.config, batch=2, image_hw=(vc.image_size + 2 * vc.patch_size + 1, vc.image_size + 3))
    with torch.no_grad():
        o = ours.get_image_features(pixel_values=pixels.to(device), interpolate_pos_encoding=True)
        t = theirs.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True)
    assert o.last_hidden_state.shape == t.last_hidden_state.shape
    assert _err(o.pooler_output, t.pooler_output) <= RTOL[backend]
    assert _err(o.last_hidden_state, t.last_hidden_state) <= RTOL[backend]


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_gradients_of_every_parameter(hf_checkpoint, backend, device):
    """Every parameter's gradient of the loss against transformers', each relative to its own scale."""
    theirs, path = hf_checkpoint
    device = device if backend == "triton" else torch.device("cpu")
    ours = sf.SiglipModel.from_pretrained(path, backend=backend, device=device)
    ids, pixels = inputs(theirs.config)
    ours.train()
    theirs.train()
    try:
        ours(**_on(device, input_ids=ids, pixel_values=pixels), return_loss=True).loss.backward()
        theirs.zero_grad()
        theirs(input_ids=ids, pixel_values=pixels, return_loss=True).loss.backward()
    finally:
        theirs.eval()
    _check_grads(ours, {n: p.grad for n, p in theirs.named_parameters()}, RTOL[backend])


def test_output_attentions_and_tuples(hf_checkpoint):
    theirs, path = hf_checkpoint
    ours = sf.SiglipModel.from_pretrained(path, backend="eager")
    eager_theirs = transformers.SiglipModel.from_pretrained(path, attn_implementation="eager").eval()
    ids, pixels = inputs(theirs.config, batch=2)
    with torch.no_grad():
        o = ours(input_ids=ids, pixel_values=pixels, output_attentions=True)
        t = eager_theirs(input_ids=ids, pixel_values=pixels, output_attentions=True)
        for tower in ("text_model_output", "vision_model_output"):
            assert len(o[tower].attentions) == len(t[tower].attentions)
            for a, b in zip(o[tower].attentions, t[tower].attentions, strict=True):
                assert a.shape == b.shape and _err(a, b) <= EAGER_RTOL
        o = ours(input_ids=ids, pixel_values=pixels, return_dict=False)
        t = theirs(input_ids=ids, pixel_values=pixels, return_dict=False)
    assert isinstance(o, tuple) and len(o) == len(t)
    assert _err(o[0], t[0]) <= EAGER_RTOL
    assert _err(o[4][1], t[4][1]) <= EAGER_RTOL  # vision pooler_output inside the nested tuple


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_towers_alone(hf_checkpoint, tmp_path, backend, device):
    theirs, path = hf_checkpoint
    device = device if backend == "triton" else torch.device("cpu")
    ids, pixels = inputs(theirs.config, batch=2)
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    hf_vision = transformers.SiglipVisionModel.from_pretrained(path).eval()
    hf_text = transformers.SiglipTextModel.from_pretrained(path).eval()
    hf_vision.save_pretrained(tmp_path / "v")  # a v5 tower checkpoint (keys without prefix)
    for source in (path, tmp_path / "v"):
        vision = sf.SiglipVisionModel.from_pretrained(source, backend=backend, device=device)
        with torch.no_grad():
            o, t = vision(pixel_values=pixels.to(device)), hf_vision(pixel_values=pixels)
        assert _err(o.pooler_output, t.pooler_output) <= RTOL[backend]
        assert _err(o.last_hidden_state, t.last_hidden_state) <= RTOL[backend]
    text = sf.SiglipTextModel.from_pretrained(path, backend=backend, device=device)
    with torch.no_grad():
        o, t = text(input_ids=ids.to(device)), hf_text(input_ids=ids)
        assert _err(o.pooler_output, t.pooler_output) <= RTOL[backend]
        o = text(input_ids=ids.to(device), attention_mask=mask.to(device))
        t = hf_text(input_ids=ids, attention_mask=mask)
    assert _err(o.pooler_output, t.pooler_output) <= RTOL[backend]
    assert _err(o.last_hidden_state, t.last_hidden_state) <= RTOL[backend]


def test_reverse_direction(hf_checkpoint, tmp_path):
    """Saved by siglip_fast, loaded by transformers: same outputs."""
    theirs, path = hf_checkpoint
    ours = sf.SiglipModel.from_pretrained(path, backend="eager")
    ours.save_pretrained(tmp_path / "dual")
    back = transformers.SiglipModel.from_pretrained(tmp_path / "dual").eval()
    ids, pixels = inputs(theirs.config, batch=2)
    with torch.no_grad():
        _compare_dual(ours, back, EAGER_RTOL, input_ids=ids, pixel_values=pixels)
    ours.vision_model.save_pretrained(tmp_path / "vision")
    ours.text_model.save_pretrained(tmp_path / "text")
    hv = transformers.SiglipVisionModel.from_pretrained(tmp_path / "vision").eval()
    ht = transformers.SiglipTextModel.from_pretrained(tmp_path / "text").eval()
    with torch.no_grad():
        assert _err(hv(pixel_values=pixels).pooler_output, ours.vision_model(pixels).pooler_output) <= EAGER_RTOL
        assert _err(ht(input_ids=ids).pooler_output, ours.text_model(ids).pooler_output) <= EAGER_RTOL


def test_state_dict_keys_identical(hf_checkpoint):
    theirs, path = hf_checkpoint
    ours = sf.SiglipModel.from_pretrained(path)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert ours.state_dict()[k].shape == v.shape


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_image_classification(tmp_path, backend, device):
    torch.manual_seed(0)
    device = device if backend == "triton" else torch.device("cpu")
    config = hf_config("hd72_crop", num_labels=5)
    theirs = randomize_(transformers.SiglipForImageClassification(config)).eval()
    theirs.save_pretrained(tmp_path)
    ours = sf.SiglipForImageClassification.from_pretrained(tmp_path, backend=backend, device=device)
    _, pixels = inputs(config, batch=4)
    for labels in (torch.randint(0, 5, (4,)), torch.rand(4, 5)):
        with torch.no_grad():
            o = ours(pixel_values=pixels.to(device), labels=labels.to(device))
            t = theirs(pixel_values=pixels, labels=labels)
        assert _err(o.logits, t.logits) <= RTOL[backend]
        assert _err(o.loss, t.loss) <= RTOL[backend]
        ours.config.problem_type = theirs.config.problem_type = None


def test_classifier_from_dual_checkpoint_is_new(hf_checkpoint):
    theirs, path = hf_checkpoint
    with pytest.warns(UserWarning, match="classifier"):
        model = sf.SiglipForImageClassification.from_pretrained(path)
    assert model.classifier.weight.isfinite().all()
    assert torch.equal(model.vision_model.post_layernorm.weight, theirs.vision_model.post_layernorm.weight)


def test_uint8_pixels_match_normalised_float(hf_checkpoint):
    theirs, path = hf_checkpoint
    ours = sf.SiglipVisionModel.from_pretrained(path, backend="eager")
    vc = theirs.config.vision_config
    raw = torch.randint(0, 256, (2, vc.num_channels, vc.image_size, vc.image_size), dtype=torch.uint8)
    with torch.no_grad():
        a = ours(pixel_values=raw).last_hidden_state
        b = ours(pixel_values=(raw.float() - 127.5) / 127.5).last_hidden_state
    assert _err(a, b) <= EAGER_RTOL


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_other_backends_match_eager(hf_checkpoint, backend, device):
    """The sdpa baseline and the fused Triton path (compiled on a GPU, the interpreter on CPU) against the eager
    backend on CPU, fp32, with gradients."""
    theirs, path = hf_checkpoint
    eager = sf.SiglipModel.from_pretrained(path, backend="eager").train()
    fused = sf.SiglipModel.from_pretrained(path, backend=backend, device=device).train()
    ids, pixels = inputs(theirs.config, batch=2)
    mask = torch.ones_like(ids)
    mask[0, 2:] = 0
    if backend == "triton":
        # A fully masked row: the kernel averages all keys, with the same gradients as transformers' eager attention.
        # (PyTorch SDPA's backward treats such a row differently; its forward is checked in the test below.)
        mask[1] = 0
    kw = dict(return_loss=True, output_hidden_states=True)
    o = fused(input_ids=ids.to(device), pixel_values=pixels.to(device), attention_mask=mask.to(device), **kw)
    e = eager(input_ids=ids, pixel_values=pixels, attention_mask=mask, **kw)
    for key in ("logits_per_image", "text_embeds", "image_embeds", "loss"):
        assert _err(o[key].cpu(), e[key]) <= KERNEL_RTOL, key
    for tower in ("text_model_output", "vision_model_output"):
        for a, b in zip(o[tower].hidden_states, e[tower].hidden_states, strict=True):
            assert _err(a.cpu(), b) <= KERNEL_RTOL
    o.loss.backward()
    e.loss.backward()
    _check_grads(fused, {n: p.grad for n, p in eager.named_parameters()}, KERNEL_RTOL)


def test_sdpa_backend_fully_masked_row_matches_eager():
    """The sdpa baseline takes transformers' eager convention (additive finfo.min), so a batch row with every key
    masked averages all keys on every backend, instead of depending on the SDPA kernel."""
    q, k, v = (torch.randn(2, 5, 2, 8) for _ in range(3))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, 3:] = 0
    mask[1] = 0
    sdpa, _ = ops.attention(q, k, v, mask, scale=8**-0.5, backend="sdpa")
    eager, _ = ops.attention(q, k, v, mask, scale=8**-0.5, backend="eager")
    assert _err(sdpa, eager) <= EAGER_RTOL
    assert _err(eager[1], v[1].mean(0, keepdim=True).expand(5, 2, 8)) <= EAGER_RTOL


def test_attention_dropout_in_training(tmp_path):
    """attention_dropout > 0 acts in training only (through the eager attention, whatever the backend)."""
    config = sf.SiglipVisionConfig(hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=16, patch_size=4, attention_dropout=0.5)
    model = sf.SiglipVisionModel(config, backend="auto")
    pixels = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        a, b = model(pixels).pooler_output, model(pixels).pooler_output
    assert torch.equal(a, b)
    model.train()
    out = model(pixels).pooler_output
    assert out.isfinite().all() and not torch.allclose(out, a)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_torch_compile_fullgraph_through_the_kernels(device):
    """The fused model traces into one graph (the kernels are custom ops), for inference and a training step."""
    config = sf.SiglipConfig(
        text_config=dict(vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8),
        vision_config=dict(hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=4),
    )
    model = randomize_(sf.SiglipModel(config, backend="triton")).to(device)
    ids, pixels = torch.randint(0, 50, (3, 8), device=device), torch.randn(3, 3, 16, 16, device=device)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager" if device.type == "cpu" else "inductor")
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=pixels).logits_per_image
        got = compiled(input_ids=ids, pixel_values=pixels).logits_per_image
    assert _err(got, expected) <= KERNEL_RTOL
    model.train()
    compiled(input_ids=ids, pixel_values=pixels, return_loss=True).loss.backward()
    compiled_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(input_ids=ids, pixel_values=pixels, return_loss=True).loss.backward()
    floor = GRAD_FLOOR * max(p.grad.abs().max().item() for p in model.parameters())
    for name, p in model.named_parameters():
        assert _err(compiled_grads[name], p.grad, floor) <= KERNEL_RTOL, name


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_budget_against_transformers(hf_checkpoint, dtype, backend):
    """In bf16/fp16 the eager (sdpa) backend's error against an fp64 run of the same checkpoint stays within 2x that
    of transformers with the same attention in the same dtype (design.md's error-budget rule, for the model)."""
    theirs, path = hf_checkpoint
    ids, pixels = inputs(theirs.config, batch=2)
    exact = transformers.SiglipModel.from_pretrained(path, dtype=torch.float64).eval()
    low_theirs = transformers.SiglipModel.from_pretrained(path, dtype=dtype, attn_implementation=backend).eval()
    low_ours = sf.SiglipModel.from_pretrained(path, dtype=dtype, backend=backend)
    with torch.no_grad():
        ref = exact(input_ids=ids, pixel_values=pixels.double())
        t = low_theirs(input_ids=ids, pixel_values=pixels.to(dtype))
        o = low_ours(input_ids=ids, pixel_values=pixels.to(dtype))
    for key in ("logits_per_image", "text_embeds", "image_embeds"):
        budget = _err(t[key], ref[key])
        assert _err(o[key], ref[key]) <= 2 * budget + 1e-6, key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernels' bf16/fp16 model budget needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_low_precision_error_budget_on_gpu(hf_checkpoint, dtype):
    """The whole fused model in bf16/fp16 on the GPU: its error against an fp64 run stays within 2x that of the eager
    backend (what transformers computes) in the same dtype on the same GPU, for the outputs and, as one relative
    norm over every parameter, for the gradients of the loss."""
    theirs, path = hf_checkpoint
    ids, pixels = inputs(theirs.config, batch=4)
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0

    def run(backend, run_dtype, device):
        model = sf.SiglipModel.from_pretrained(path, dtype=run_dtype, backend=backend, device=device).train()
        out = model(input_ids=ids.to(device), pixel_values=pixels.to(device, run_dtype),
                    attention_mask=mask.to(device), return_loss=True)
        out.loss.backward()
        grads = torch.cat([p.grad.double().flatten().cpu() for _, p in sorted(model.named_parameters())])
        return {k: out[k].detach().double().cpu() for k in ("logits_per_image", "text_embeds", "image_embeds")}, grads

    exact, exact_grads = run("eager", torch.float64, "cpu")
    fused, fused_grads = run("triton", dtype, "cuda")
    eager, eager_grads = run("eager", dtype, "cuda")
    for key, ref in exact.items():
        budget = (eager[key] - ref).abs().max().item()
        assert (fused[key] - ref).abs().max().item() <= 2 * budget + 1e-6, key
    rel = lambda g: ((g - exact_grads).norm() / exact_grads.norm()).item()
    assert rel(fused_grads) <= 2 * rel(eager_grads) + 1e-6


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_gradient_checkpointing_gives_the_same_gradients(hf_checkpoint, backend, device):
    """Activation checkpointing recomputes each layer in the backward: same loss and gradients as without it."""
    theirs, path = hf_checkpoint
    ids, pixels = inputs(theirs.config, batch=2)
    ids, pixels = ids.to(device), pixels.to(device)
    grads = []
    for checkpointing in (False, True):
        model = sf.SiglipModel.from_pretrained(path, backend=backend, device=device).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        calls = []
        model.vision_model.encoder.layers[0].register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        loss = model(input_ids=ids, pixel_values=pixels, return_loss=True).loss
        loss.backward()
        assert len(calls) == (2 if checkpointing else 1)  # recomputed in the backward
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    floor = GRAD_FLOOR * max(g.abs().max().item() for g in grads[0].values())
    for name, g in grads[0].items():
        assert _err(grads[1][name], g, floor) <= 1e-6, name
