"""Bad input to the models fails loudly (issue 13): inputs on another device, token / position ids out of range,
attention masks that are not 0/1 (an additive mask used to be silently inverted), and head dims the Triton kernel
cannot take (the call falls back to SDPA and says so)."""

from __future__ import annotations

import warnings

import pytest
import torch

import siglip_fast as sf
from siglip_fast import ops
from tests._tiny import randomize_

TEXT = dict(vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=8)
VISION = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2, image_size=16,
              patch_size=4)
BACKENDS = ["eager", "sdpa", "triton"]


def _model(backend="eager", text=TEXT, vision=VISION):
    return randomize_(sf.SiglipModel(sf.SiglipConfig(text_config=text, vision_config=vision), backend=backend)).eval()


def _ids(batch=3, high=50, length=8):
    return torch.randint(0, high, (batch, length))


@pytest.mark.parametrize("name", ["input_ids", "attention_mask", "position_ids", "pixel_values"])
def test_inputs_on_another_device_are_refused(name):
    model = _model()
    kw = dict(input_ids=_ids(), pixel_values=torch.randn(3, 3, 16, 16), attention_mask=torch.ones(3, 8),
              position_ids=torch.arange(8)[None])
    kw[name] = kw[name].to("meta")
    with pytest.raises(ValueError, match=rf"{name} must be on the model's device cpu, got a tensor on meta"):
        model(**kw)


@pytest.mark.parametrize("bad", [50, 1000, -1])
def test_token_ids_outside_the_vocabulary(bad):
    model = _model()
    ids = _ids()
    ids[1, 3] = bad
    with pytest.raises(ValueError, match=rf"input_ids must be in \[0, 50\) \(the vocabulary\), got {bad}"):
        model.get_text_features(input_ids=ids)


@pytest.mark.parametrize("bad", [8, -2])
def test_position_ids_outside_the_table(bad):
    model = _model()
    position_ids = torch.arange(8).repeat(3, 1)
    position_ids[2, 0] = bad
    with pytest.raises(ValueError, match=rf"position_ids must be in \[0, 8\) \(max_position_embeddings\), got {bad}"):
        model.get_text_features(input_ids=_ids(), position_ids=position_ids)
    with pytest.raises(ValueError, match="position_ids must be an integer tensor of shape"):
        model.get_text_features(input_ids=_ids(), position_ids=torch.arange(7)[None])


def test_range_checks_compile_fullgraph():
    """Under torch.compile(fullgraph=True) the checks are device-side asserts (no graph break, no host sync): good
    ids give the eager result, bad ids raise with the same message; a 0/1 float mask traces into the graph too."""
    model = _model()
    compiled = torch.compile(model.text_model, fullgraph=True, backend="aot_eager")
    ids = _ids()
    mask = torch.ones(3, 8)
    mask[0, 5:] = 0
    with torch.no_grad():
        expected = model.text_model(input_ids=ids, attention_mask=mask).pooler_output
        got = compiled(input_ids=ids, attention_mask=mask).pooler_output
        assert (got - expected).abs().max().item() <= 1e-5
        ids[0, 0] = 50
        with pytest.raises(RuntimeError, match=r"input_ids must be in \[0, 50\)"):
            compiled(input_ids=ids, attention_mask=mask)
        ids[0, 0] = 0
        mask[1, 1] = 0.5
        with pytest.raises(RuntimeError, match="attention_mask must hold only 0"):
            compiled(input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_mask_rule_on_every_backend(backend):
    """bool, integer and float 0/1 masks give the same result (1 = attend); an additive float mask (0 / -inf),
    which read as 0/1 would silently invert, and any other value, are refused with the same error everywhere."""
    model = _model(backend)
    ids = _ids()
    keep = torch.ones(3, 8, dtype=torch.bool)
    keep[0, 4:] = False
    keep[2, 1:] = False
    with torch.no_grad():
        outs = [model.get_text_features(input_ids=ids, attention_mask=keep.to(dtype)).pooler_output
                for dtype in (torch.bool, torch.long, torch.int32, torch.float32)]
        unmasked = model.get_text_features(input_ids=ids).pooler_output
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    assert not torch.allclose(outs[0][0], unmasked[0])
    additive = torch.zeros(3, 8).masked_fill(~keep, float("-inf"))
    for bad in (additive, torch.zeros(3, 8).masked_fill(~keep, torch.finfo(torch.float32).min), keep.long() * 2):
        with pytest.raises(ValueError, match=r"attention_mask must hold only 0 \(masked\) and 1 \(attend\)"):
            model.get_text_features(input_ids=ids, attention_mask=bad)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(batch, sequence length\)"):
        model.get_text_features(input_ids=ids, attention_mask=keep[:, :5])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_attention_refuses_additive_masks(backend):
    q, k, v = (torch.randn(2, 5, 2, 8) for _ in range(3))
    additive = torch.zeros(2, 5)
    additive[0, 3:] = float("-inf")
    with pytest.raises(ValueError, match="additive mask"):
        ops.attention(q, k, v, additive, scale=8**-0.5, backend=backend)
    out, _ = ops.attention(q, k, v, (additive == 0).float(), scale=8**-0.5, backend=backend)
    ref, _ = ops.attention(q, k, v, additive == 0, scale=8**-0.5, backend="eager")
    assert (out - ref).abs().max().item() <= 1e-5


def test_head_dim_above_the_kernel_limit_falls_back(monkeypatch):
    """Head dim 136 > 128 (the Triton kernel's limit): the triton backend runs it through SDPA, says why once, and
    matches the eager backend; auto never fails where eager works."""
    monkeypatch.setattr(ops, "_WARNED", set())
    text = dict(TEXT, hidden_size=272, intermediate_size=64, num_hidden_layers=1, max_position_embeddings=5)
    vision = dict(VISION, hidden_size=272, intermediate_size=64)
    eager = _model("eager", text, vision)
    ids, pixels = _ids(2, length=5), torch.randn(2, 3, 16, 16)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, 3:] = 0
    with torch.no_grad():
        ref = eager(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits_per_image
        for backend in ("triton", "auto"):
            eager.set_backend(backend)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = eager(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits_per_image
                eager(input_ids=ids, pixel_values=pixels)
            assert (out - ref).abs().max().item() <= 1e-4
            reasons = [str(w.message) for w in caught if "head dim 136" in str(w.message)]
            assert len(reasons) == (1 if backend == "triton" else 0), reasons


@pytest.mark.skipif(not torch.cuda.is_available(), reason="what auto picks on CUDA needs CUDA")
def test_auto_on_cuda_runs_what_the_kernels_do_not_take():
    """A float64 model on CUDA: the kernels take fp32/bf16/fp16, so auto runs it on PyTorch instead of failing."""
    model = _model("eager").double().cuda()
    ids, pixels = _ids().cuda(), torch.randn(3, 3, 16, 16, dtype=torch.float64, device="cuda")
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pixels).logits_per_image
        out = model.set_backend("auto")(input_ids=ids, pixel_values=pixels).logits_per_image
    assert (out - ref).abs().max().item() <= 1e-10


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int8])
def test_token_ids_of_a_dtype_embedding_cannot_index(dtype):
    # issue 23: uint8 ids reached nn.Embedding ("Expected tensor for argument #1 'indices' ..."), a deep error
    model = _model()
    with pytest.raises(TypeError, match=rf"input_ids must be .* int64 or int32 .*{dtype}"):
        model.get_text_features(input_ids=_ids().to(dtype))
    with pytest.raises(ValueError, match=rf"position_ids must be an integer tensor .* int64 or int32 .*{dtype}"):
        model.get_text_features(input_ids=_ids(), position_ids=torch.arange(8).to(dtype))
    ids = _ids()
    out = model.get_text_features(input_ids=ids.int(), position_ids=torch.arange(8, dtype=torch.int32))
    ref = model.get_text_features(input_ids=ids, position_ids=torch.arange(8))
    assert torch.equal(out.pooler_output, ref.pooler_output)


def test_texts_without_tokens_are_refused():
    # issue 23: (B, 0) ids failed deep inside (indexing the last position of an empty sequence)
    with pytest.raises(ValueError, match=r"input_ids must hold at least one token .*\(3, 0\)"):
        _model().get_text_features(input_ids=torch.zeros(3, 0, dtype=torch.long))
