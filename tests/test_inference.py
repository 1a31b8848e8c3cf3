"""The inference fast path (siglip_fast.inference): static-batch runners of both towers, with and without a CUDA
graph, against the towers' own forward on the same inputs.

Chunking and padding run everywhere (cuda_graph=False on CPU); graph capture and replay need a GPU. Tolerances:
fp32 on CPU 1e-5 eager / 1e-4 through the interpreted kernels (the padded batch changes GEMM shapes, so the values
are not bitwise those of the unpadded forward); on a GPU, graph replays against the same runner run without a graph
(same kernels and shapes) at 1e-5 (fp32) / 1e-2 (bf16) of the output scale, and against the forward at 1e-4 (fp32).
"""

from __future__ import annotations

import pytest
import torch

import siglip_fast as sf
from siglip_fast.configuration import SiglipTextConfig, SiglipVisionConfig

TEXT = dict(vocab_size=70, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3,
            max_position_embeddings=9)
VISION = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3, image_size=18,
              patch_size=5)
ATOL = {("cpu", "eager"): 1e-5, ("cpu", "triton"): 1e-4, ("cuda", "eager"): 1e-4, ("cuda", "triton"): 1e-4,
        ("cuda", torch.float32): 1e-4}
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5 if p.ndim >= 2 else 5))
    return model.eval()


def _vision(backend="eager", device="cpu", dtype=torch.float32, **kw):
    return _randomize(sf.SiglipVisionModel(SiglipVisionConfig(**{**VISION, **kw}), backend=backend)).to(device, dtype)


def _text(backend="eager", device="cpu", dtype=torch.float32):
    return _randomize(sf.SiglipTextModel(SiglipTextConfig(**TEXT), backend=backend)).to(device, dtype)


def _diff(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_vision_runner_matches_forward_at_every_batch_size(backend, device):
    model = _vision(backend, device)
    runner = model.compile_for_inference(3, keep_last_hidden_state=True, cuda_graph=False)
    assert not runner.cuda_graph
    for n in (1, 3, 7):  # padded, exact, chunked with a padded tail
        pixels = torch.randn(n, 3, 18, 18, device=device)
        got = runner(pixel_values=pixels)
        with torch.no_grad():
            want = model(pixel_values=pixels)
        assert got.pooler_output.shape == (n, 24) and got.last_hidden_state.shape == (n, 9, 24)
        assert _diff(got.pooler_output, want.pooler_output) <= ATOL[device.type, backend]
        assert _diff(got.last_hidden_state, want.last_hidden_state) <= ATOL[device.type, backend]


def test_vision_runner_uint8_and_other_sizes():
    model = _vision(num_channels=1)
    runner = model.compile_for_inference(2, image_size=(23, 14), pixel_dtype=torch.uint8,
                                         interpolate_pos_encoding=True)
    raw = torch.randint(0, 256, (5, 1, 23, 14), dtype=torch.uint8)
    got = runner(pixel_values=raw)
    with torch.no_grad():
        want = model(pixel_values=raw, interpolate_pos_encoding=True)
    assert got.last_hidden_state is None and got.pooler_output.shape == (5, 24)
    assert _diff(got.pooler_output, want.pooler_output) <= ATOL["cpu", "eager"]
    with pytest.raises(TypeError, match="pixel_values must be a uint8 tensor"):
        runner(pixel_values=raw.float())


def test_vision_runner_without_head_keeps_last_hidden_state():
    model = _vision(vision_use_head=False)
    got = model.compile_for_inference(2)(pixel_values=torch.randn(3, 3, 18, 18))
    assert got.pooler_output is None and got.last_hidden_state.shape == (3, 9, 24)


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_text_runner_with_and_without_masks(backend, device):
    model = _text(backend, device)
    runner = model.compile_for_inference(4, seq_len=7, with_attention_mask=True, cuda_graph=False)
    ids = torch.randint(0, 70, (6, 7), device=device)
    mask = torch.ones(6, 7, dtype=torch.long, device=device)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    with torch.no_grad():
        want_masked = model(input_ids=ids, attention_mask=mask).pooler_output
        want_plain = model(input_ids=ids).pooler_output
    tol = ATOL[device.type, backend]
    assert _diff(runner(input_ids=ids, attention_mask=mask).pooler_output, want_masked) <= tol
    assert _diff(runner(input_ids=ids).pooler_output, want_plain) <= tol  # no mask: attend all


def test_outputs_are_fresh_ordinary_tensors():
    model = _vision()
    runner = model.compile_for_inference(2)
    a = runner(pixel_values=torch.randn(2, 3, 18, 18)).pooler_output
    b = runner(pixel_values=torch.randn(2, 3, 18, 18)).pooler_output
    assert _diff(a, b) > 1e-3  # the second call did not overwrite (or alias) the first call's output
    a /= a.norm(dim=-1, keepdim=True)  # not an inference tensor: in-place edits work outside inference_mode
    empty = runner(pixel_values=torch.randn(0, 3, 18, 18)).pooler_output
    assert empty.shape == (0, 24)


def test_built_and_called_in_or_out_of_inference_mode():
    model = _vision()
    pixels = torch.randn(3, 3, 18, 18)
    with torch.no_grad():
        want = model(pixel_values=pixels).pooler_output
    with torch.inference_mode():
        runner = model.compile_for_inference(2)
    assert _diff(runner(pixel_values=pixels).pooler_output, want) <= ATOL["cpu", "eager"]
    with torch.inference_mode():
        assert _diff(runner(pixel_values=pixels).pooler_output, want) <= ATOL["cpu", "eager"]


def test_runner_rejects_bad_arguments_and_inputs():
    model = _vision()
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            model.compile_for_inference(bad)
    with pytest.raises(ValueError, match="warmup"):
        model.compile_for_inference(2, warmup=0)
    with pytest.raises(ValueError, match="image_size"):
        model.compile_for_inference(2, image_size=(18,))
    with pytest.raises(TypeError, match="pixel_dtype"):
        model.compile_for_inference(2, pixel_dtype=torch.int32)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_graph=True needs the model on a CUDA device"):
            model.compile_for_inference(2, cuda_graph=True)
    runner = model.compile_for_inference(2)
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(B, 3, 18, 18\)"):
        runner(pixel_values=torch.randn(2, 3, 18, 17))
    with pytest.raises(TypeError, match="floating-point"):
        runner(pixel_values=torch.zeros(2, 3, 18, 18, dtype=torch.uint8))
    with pytest.raises(TypeError, match="unexpected inputs"):
        runner(pixel_values=torch.randn(2, 3, 18, 18), input_ids=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="missing inputs"):
        runner()
    dropping = _vision(attention_dropout=0.1).train()
    with pytest.raises(ValueError, match=r"training mode with attention_dropout=0.1: call .eval\(\) first"):
        dropping.compile_for_inference(2)
    dropping.eval().compile_for_inference(2)
    text = _text()
    with pytest.raises(ValueError, match="seq_len"):
        text.compile_for_inference(2, seq_len=10)
    runner = text.compile_for_inference(2, seq_len=5, with_attention_mask=True)
    with pytest.raises(ValueError, match="rows"):
        runner(input_ids=torch.zeros(3, 5, dtype=torch.long), attention_mask=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        runner(input_ids=torch.zeros(2, 5))
    with pytest.raises(TypeError, match="unexpected inputs"):
        text.compile_for_inference(2)(input_ids=torch.zeros(2, 9, dtype=torch.long),
                                      attention_mask=torch.ones(2, 9, dtype=torch.long))


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_replays_match_direct_runs(dtype):
    """The captured graph against the same runner without a graph (same kernels, same padded shapes): only capture
    and replay differ, so they agree to rounding (relative to the output scale, per dtype); in fp32 both also match
    the tower's own forward on the captured batch size."""
    model = _vision("triton", "cuda", dtype)
    text = _text("triton", "cuda", dtype)
    graphed = model.compile_for_inference(4, keep_last_hidden_state=True)
    direct = model.compile_for_inference(4, keep_last_hidden_state=True, cuda_graph=False)
    graphed_text = text.compile_for_inference(4, with_attention_mask=True)
    direct_text = text.compile_for_inference(4, with_attention_mask=True, cuda_graph=False)
    assert graphed.cuda_graph and not direct.cuda_graph
    rel = {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for n in (4, 3, 9):  # the captured batch, a padded one, two replays and a padded tail
        pixels = torch.randn(n, 3, 18, 18, device="cuda")  # fp32 pixels: cast on copy as the forward casts
        ids = torch.randint(0, 70, (n, 9), device="cuda")
        mask = (torch.rand(n, 9, device="cuda") < 0.8).long()
        mask[:, 0] = 1
        pairs = [(graphed(pixel_values=pixels), direct(pixel_values=pixels), ("pooler_output", "last_hidden_state")),
                 (graphed_text(input_ids=ids, attention_mask=mask), direct_text(input_ids=ids, attention_mask=mask),
                  ("pooler_output",))]
        for got, want, keys in pairs:
            for key in keys:
                assert got[key].shape[0] == n
                assert _diff(got[key], want[key]) <= rel * want[key].abs().max().item(), (n, key)
        if dtype == torch.float32 and n == 4:
            with torch.inference_mode():
                forward = model(pixel_values=pixels).pooler_output
            assert _diff(pairs[0][0].pooler_output, forward) <= ATOL["cuda", torch.float32]


@cuda_only
def test_cuda_graph_sees_in_place_weight_updates():
    model = _vision("triton", "cuda", torch.float32)
    runner = model.compile_for_inference(2)
    pixels = torch.randn(2, 3, 18, 18, device="cuda")
    before = runner(pixel_values=pixels).pooler_output
    with torch.no_grad():
        model.head.mlp.fc2.bias.add_(1.0)
        want = model(pixel_values=pixels).pooler_output
    got = runner(pixel_values=pixels).pooler_output
    assert _diff(got, before) > 0.5 and _diff(got, want) <= ATOL["cuda", torch.float32]


@cuda_only
def test_torch_compile_reduce_overhead_through_the_kernels():
    """The other opt-in route: torch.compile's CUDA-graph mode traces the fused tower in one graph and replays it."""
    model = _vision("triton", "cuda", torch.float32)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up and recording runs, then replays
        pixels = torch.randn(4, 3, 18, 18, device="cuda")
        with torch.inference_mode():
            got = compiled(pixel_values=pixels).pooler_output.clone()
            want = model(pixel_values=pixels).pooler_output
        assert _diff(got, want) <= ATOL["cuda", torch.float32]
