"""The CPU inference path of backend="auto" (siglip_fast.cpu): its outputs against the eager reference (fp32 within
1e-4, bf16 at cosine >= 0.9999 against fp32), the fallback to the autograd path when gradients are needed, and its
prepacked weights following every change of the parameters."""

from __future__ import annotations

import copy

import pytest
import torch

from siglip_fast import Siglip2Config, Siglip2VisionModel, SiglipConfig, SiglipModel, cpu
from tests._tiny import TINY_CONFIGS, randomize_

pytestmark = pytest.mark.skipif(not cpu.available(), reason="this torch build has no oneDNN (mkldnn) CPU kernels")
FP32_ATOL = 1e-4  # fp32 rounding only: the GEMMs sum in another order than the eager path's
BF16_MIN_COS = 0.9999  # bf16 weights and activations against the fp32 model, on the pooled outputs


def _model(name: str = "base", hidden_act: str = "gelu_pytorch_tanh", backend: str = "auto") -> SiglipModel:
    text, vision = TINY_CONFIGS[name]
    config = SiglipConfig(text_config=dict(text, hidden_act=hidden_act),
                          vision_config=dict(vision, hidden_act=hidden_act))
    return randomize_(SiglipModel(config, backend=backend)).eval()


def _inputs(model: SiglipModel, batch: int = 3):
    tc, vc = model.config.text_config, model.config.vision_config
    ids = torch.randint(0, tc.vocab_size, (batch, tc.max_position_embeddings))
    return ids, torch.randn(batch, vc.num_channels, vc.image_size, vc.image_size)


def _outputs(model, ids, pixels, mask=None, hidden_states=False):
    text = model.text_model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden_states)
    vision = model.vision_model(pixel_values=pixels, output_hidden_states=hidden_states)
    out = [text.pooler_output, text.last_hidden_state, vision.pooler_output, vision.last_hidden_state]
    if hidden_states:
        out += [*text.hidden_states, *vision.hidden_states]
    return out


def _took_cpu_path(model) -> bool:
    return model.text_model.encoder in cpu._PLANS and model.vision_model.encoder in cpu._PLANS


def _assert_close(got, want, atol):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, atol=atol, rtol=0)


@pytest.mark.parametrize(("name", "hidden_act", "grad_mode"), [
    *((name, "gelu_pytorch_tanh", "inference_mode") for name in sorted(TINY_CONFIGS)),  # tanh GELU fused into fc1
    ("odd", "gelu", "no_grad"),  # erf GELU, fused
    ("odd", "quick_gelu", "inference_mode"),  # not fused: after the GEMM
    ("base", "gelu_pytorch_tanh", "no_grad"),
])
def test_fp32_matches_eager(name, hidden_act, grad_mode):
    model = _model(name, hidden_act)
    eager = copy.deepcopy(model).set_backend("eager")
    ids, pixels = _inputs(model)
    mask = torch.rand(ids.shape) > 0.3
    mask[:, 0] = True
    context = torch.inference_mode if grad_mode == "inference_mode" else torch.no_grad
    with context():
        cpu.release()
        got = _outputs(model, ids, pixels, mask, hidden_states=True)
        assert _took_cpu_path(model)
        want = _outputs(eager, ids, pixels, mask, hidden_states=True)
    _assert_close(got, want, FP32_ATOL)


def test_siglip2_naflex_vision_with_padding_mask_matches_eager():
    _, vision = TINY_CONFIGS["base"]
    config = Siglip2Config(vision_config=dict(vision, num_patches=16)).vision_config
    model = randomize_(Siglip2VisionModel(config)).eval()
    eager = copy.deepcopy(model).set_backend("eager")
    B, N = 3, 16
    pixels = torch.randn(B, N, config.patch_dim)
    shapes = torch.tensor([[4, 4], [2, 3], [3, 5]])
    mask = (torch.arange(N)[None] < shapes.prod(-1)[:, None]).long()  # 1 = real patch
    with torch.inference_mode():
        got = model(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=shapes)
        assert model.encoder in cpu._PLANS
        want = eager(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=shapes)
    _assert_close([got.pooler_output, got.last_hidden_state], [want.pooler_output, want.last_hidden_state],
                  FP32_ATOL)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no oneDNN bf16 on this CPU")
def test_bf16_model_close_to_fp32():
    model = _model("hd72_crop")
    ids, pixels = _inputs(model, batch=4)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    with torch.inference_mode():
        want = _outputs(model, ids, pixels)
        got = _outputs(bf16, ids, pixels.bfloat16())
        assert _took_cpu_path(bf16)
    for g, w in ((got[0], want[0]), (got[2], want[2])):  # pooled outputs
        assert g.dtype == torch.bfloat16
        cos = torch.nn.functional.cosine_similarity(g.float(), w, dim=-1)
        assert cos.min().item() >= BF16_MIN_COS, cos


def _eager_bf16_attention(q, k, v, scale, mask):
    """transformers' eager attention in bf16 (siglip: matmul in bf16, softmax in fp32, rounded to bf16)."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s + mask
    return torch.matmul(torch.softmax(s, -1, dtype=torch.float32).to(q.dtype), v)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no oneDNN bf16 on this CPU")
@pytest.mark.parametrize(("B", "N", "H", "d", "masked"), [(3, 7, 3, 5, False), (3, 13, 2, 64, True),
                                                           (4, 9, 5, 72, True)])
def test_bf16_attention_as_accurate_as_eager_bf16(B, N, H, d, masked):
    """cpu._attention in bf16 (two batched GEMMs around a softmax, into reused buffers, two images at a time: the
    last chunk of 3 images is short) against float64, on the same
    bf16 q/k/v: no less accurate than transformers' eager bf16 attention (within 1.25x its error)."""
    torch.manual_seed(0)
    D = H * d
    qkv = torch.randn(B * N, 3 * D).bfloat16()  # q/k/v as the QKV GEMM writes them, (B·N, 3D)
    layer = cpu._Layer.__new__(cpu._Layer)
    layer.heads, layer.head_dim, layer.scale, layer.scores_in_gemm = H, d, d**-0.5, True
    q, k, v = qkv.view(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d)
    mask = None
    if masked:
        keep = torch.rand(B, N) > 0.4
        keep[:, 0] = True
        keep[-1] = False  # a fully masked row: every key averaged, as the sdpa path and transformers
        mask = torch.zeros(B, 1, 1, N, dtype=torch.bfloat16).masked_fill_(~keep[:, None, None, :],
                                                                          torch.finfo(torch.bfloat16).min)
    want = torch.softmax(q.double() @ k.double().transpose(-1, -2) * d**-0.5 + (0 if mask is None else
                         mask.double().clamp(min=-1e30)), -1) @ v.double()  # (B, H, N, d)
    want = want.transpose(1, 2).reshape(B * N, D)
    eager = _eager_bf16_attention(q, k, v, d**-0.5, mask).transpose(1, 2).reshape(B * N, D)
    scaled = qkv.clone()
    scaled[:, :D] = (qkv[:, :D].float() * d**-0.5).bfloat16()  # what _Layer's packed weights give
    work = cpu._Workspace(B, N, H, d, torch.bfloat16, budget=2 * H * N * N * 2)  # scores of 2 images at a time
    assert work.images == 2 and work.scores.shape == (2 * H, N, N)
    for buf in (work.parts, work.scores, work.probs, work.by_head, work.out):
        buf.fill_(float("nan"))  # poisoned: every element must be written
    for _ in range(2):  # the buffers are reused, layer after layer
        got = cpu._attention(scaled, B, N, layer, mask, work)
        assert got.shape == (B * N, D) and got.dtype == torch.bfloat16
        err = (got.double() - want).abs().max().item()
        eager_err = (eager.double() - want).abs().max().item()
        assert err <= 1.25 * eager_err, (err, eager_err)  # 0.6-1.0x measured; a 1 % error in the scores: 1.4x


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no oneDNN bf16 on this CPU")
@pytest.mark.parametrize("name", ["base", "odd"])
def test_bf16_model_with_padding_mask_close_to_fp32(name):
    model = _model(name)
    ids, pixels = _inputs(model, batch=4)
    mask = torch.rand(ids.shape) > 0.3
    mask[:, 0] = True
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    with torch.inference_mode():
        want = model.text_model(input_ids=ids, attention_mask=mask)
        got = bf16.text_model(input_ids=ids, attention_mask=mask)
        assert bf16.text_model.encoder in cpu._PLANS
    for g, w in ((got.pooler_output, want.pooler_output), (got.last_hidden_state[mask], want.last_hidden_state[mask])):
        cos = torch.nn.functional.cosine_similarity(g.float(), w, dim=-1)
        assert cos.min().item() >= BF16_MIN_COS, cos


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no oneDNN bf16 on this CPU")
def test_autocast_bf16_packs_bf16_weights_beside_the_fp32_ones():
    """An fp32 model under CPU autocast to bf16 runs here with bf16 GEMMs (its values against transformers under
    the same autocast: tests/test_autocast.py); without autocast it keeps its fp32 numbers, both plans kept."""
    model = _model()
    eager = copy.deepcopy(model).set_backend("eager")
    ids, pixels = _inputs(model)
    cpu.release()
    with torch.inference_mode():
        want = _outputs(eager, ids, pixels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = _outputs(model, ids, pixels)
        assert sorted(map(str, cpu._PLANS[model.vision_model.encoder])) == ["torch.bfloat16"]
        got = _outputs(model, ids, pixels)
        assert sorted(map(str, cpu._PLANS[model.vision_model.encoder])) == ["torch.bfloat16", "torch.float32"]
        with torch.autocast("cpu", dtype=torch.float16):  # fp16 autocast: the PyTorch path
            cpu.release()
            _outputs(model, ids, pixels)
            assert not _took_cpu_path(model)
    _assert_close(got, want, FP32_ATOL)
    assert [t.dtype for t in amp] == [torch.bfloat16, torch.float32, torch.bfloat16, torch.float32]  # as autocast's
    for g, w in ((amp[0], want[0]), (amp[2], want[2])):
        cos = torch.nn.functional.cosine_similarity(g.float(), w, dim=-1)
        assert cos.min().item() >= BF16_MIN_COS, cos


def test_gradients_take_the_autograd_path():
    model = _model("odd")
    eager = copy.deepcopy(model).set_backend("eager")
    ids, pixels = _inputs(model)
    cpu.release()
    outs = []
    for m in (model, eager):
        out = m(input_ids=ids, pixel_values=pixels, return_loss=True)
        out.loss.backward()
        outs.append((out.loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    assert not _took_cpu_path(model)  # autograd was recording: the model took its differentiable path
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=0)
    for n, g in outs[1][1].items():
        torch.testing.assert_close(outs[0][1][n], g, atol=1e-5, rtol=1e-4, msg=n)


def test_frozen_model_with_grad_enabled_takes_the_cpu_path():
    model = _model().requires_grad_(False)
    ids, pixels = _inputs(model)
    cpu.release()
    got = _outputs(model, ids, pixels)
    assert _took_cpu_path(model)
    with torch.inference_mode():
        want = _outputs(copy.deepcopy(model).set_backend("eager"), ids, pixels)
    _assert_close(got, want, FP32_ATOL)


def test_output_attentions_and_dropout_take_the_eager_path():
    model = _model()
    ids, pixels = _inputs(model)
    cpu.release()
    with torch.inference_mode():
        out = model.vision_model(pixel_values=pixels, output_attentions=True)
    assert len(out.attentions) == model.config.vision_config.num_hidden_layers
    assert model.vision_model.encoder not in cpu._PLANS
    model.config.text_config.attention_dropout = 0.5
    model.text_model.encoder.layers[0].self_attn.dropout = 0.5
    model.train()
    with torch.no_grad():
        model.text_model(input_ids=ids)
    assert model.text_model.encoder not in cpu._PLANS


def _check_against_eager(model, ids, pixels):
    with torch.inference_mode():
        got = _outputs(model, ids, pixels)
        want = _outputs(copy.deepcopy(model).set_backend("eager"), ids, pixels)
    _assert_close(got, want, FP32_ATOL)


def test_prepacked_weights_follow_weight_changes():
    model = _model()
    ids, pixels = _inputs(model)
    _check_against_eager(model, ids, pixels)  # packs
    before = _outputs(model, ids, pixels)[0]

    model.load_state_dict(randomize_(_model()).state_dict())  # in place, new values
    _check_against_eager(model, ids, pixels)
    assert not torch.allclose(_outputs(model, ids, pixels)[0], before)

    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # a training step, then inference again
    model(input_ids=ids, pixel_values=pixels, return_loss=True).loss.backward()
    opt.step()
    _check_against_eager(model, ids, pixels)

    with torch.no_grad():  # nn.init and in-place edits of a parameter
        torch.nn.init.normal_(model.vision_model.encoder.layers[0].mlp.fc1.weight)
        model.text_model.encoder.layers[-1].self_attn.k_proj.bias.add_(1.0)
    _check_against_eager(model, ids, pixels)

    model.to(torch.bfloat16).to(torch.float32)  # replaced storage
    _check_against_eager(model, ids, pixels)

    layer = model.vision_model.encoder.layers[0]  # a parameter assigned anew
    layer.self_attn.q_proj.weight = torch.nn.Parameter(torch.randn_like(layer.self_attn.q_proj.weight))
    _check_against_eager(model, ids, pixels)


def test_writes_through_data_need_release():
    """`param.data` edits in place bypass the version counter (documented in siglip_fast.cpu): `release` repacks."""
    model = _model()
    ids, pixels = _inputs(model)
    _check_against_eager(model, ids, pixels)
    model.vision_model.encoder.layers[0].mlp.fc2.weight.data.mul_(3.0)
    cpu.release(model)
    _check_against_eager(model, ids, pixels)


def test_other_dtypes_and_backends_do_not_take_the_cpu_path():
    model = _model().double()
    ids, pixels = _inputs(model)
    cpu.release()
    with torch.inference_mode():
        model.vision_model(pixel_values=pixels.double())
        assert model.vision_model.encoder not in cpu._PLANS
        model.float().set_backend("sdpa").vision_model(pixel_values=pixels)
        assert model.vision_model.encoder not in cpu._PLANS


def test_native_bf16_helpers():
    assert isinstance(cpu.cpu_has_native_bf16(), bool)
    assert cpu.default_cpu_dtype() == (torch.bfloat16 if cpu.cpu_has_native_bf16() else torch.float32)


def test_tracers_get_the_plain_pytorch_ops():
    """torch.jit.trace (as the ONNX exporter uses) must not record oneDNN ops on packed weights."""
    model = _model().requires_grad_(False)  # the traced function holds the weights as constants
    _, pixels = _inputs(model)
    cpu.release()
    with torch.no_grad():
        traced = torch.jit.trace(lambda x: model.vision_model(pixel_values=x).pooler_output, (pixels,),
                                 check_trace=False)
    assert model.vision_model.encoder not in cpu._PLANS
    assert "mkldnn" not in str(traced.inlined_graph)
    with torch.inference_mode():
        want = model.vision_model(pixel_values=pixels).pooler_output
        torch.testing.assert_close(traced(pixels), want, atol=FP32_ATOL, rtol=0)


def test_packed_weights_are_freed_with_the_model():
    import gc
    import weakref

    model = _model()
    ids, pixels = _inputs(model)
    with torch.inference_mode():
        _outputs(model, ids, pixels)
    assert _took_cpu_path(model)
    packed = weakref.ref(cpu._PLANS[model.vision_model.encoder][torch.float32].layers[0].fc1)
    n = len(cpu._PLANS)
    del model
    gc.collect()
    assert len(cpu._PLANS) == n - 2 and packed() is None
