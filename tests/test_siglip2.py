"""SigLIP 2 (NaFlex) model parity with transformers' `Siglip2*` classes on tiny random checkpoints, both directions:
logits, embeddings, hidden states, loss and every gradient, through the eager reference (<= 1e-5) and the Triton
kernels (interpreted on CPU, compiled on a GPU: <= 1e-5), errors relative to each tensor's scale
(max|ours - ref| / max|ref|; gradients down to a floor of 1e-2 x the model's largest gradient, see
tests/test_model_parity.py), with padded patch tokens (random pixels in the padding, so masking is tested) and images
of several patch grids; plus the towers (on both backends), the classifier, the CUDA-graph runner and bad input.
"""

from __future__ import annotations

import json

import pytest
import torch

import siglip_fast as sf
from siglip_fast.modeling_siglip2 import resize_positional_embeddings
from tests._tiny import TRANSFORMERS_FLOOR, randomize_

# Older releases resize SigLIP 2's position table differently (README, "Supported transformers range"): the parity
# tests skip there, saying which version was found.
transformers = pytest.importorskip("transformers", minversion=TRANSFORMERS_FLOOR)

from tests.test_model_parity import EAGER_RTOL, GRAD_FLOOR, KERNEL_RTOL, _err  # noqa: E402

ATOL = {"eager": EAGER_RTOL, "triton": KERNEL_RTOL}  # relative to each tensor's scale (the name is kept: one table)

# (text kwargs, vision kwargs): head dims 16 and 72 (So400m's), a 4 x 4 and a 3 x 3 position table, 1 channel.
TINY = {
    "base": (
        dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
             max_position_embeddings=11),
        dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, num_patches=16,
             patch_size=4),
    ),
    "hd72": (
        dict(vocab_size=50, hidden_size=144, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2,
             max_position_embeddings=7),
        dict(hidden_size=144, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2, num_patches=9,
             patch_size=3, num_channels=1),
    ),
}
# Patch grids per image (rows, cols) and the padded length: a full grid, wide, tall, one patch, a grid larger
# than the position table (upsampled positions) and one smaller (downsampled, antialiased).
GRIDS = [(4, 5), (2, 7), (7, 1), (1, 1), (3, 3)]
MAX_PATCHES = 20


def _hf_config(name: str):
    text, vision = TINY[name]
    return transformers.Siglip2Config(text_config=dict(text), vision_config=dict(vision))


@pytest.fixture(scope="module", params=sorted(TINY))
def hf_checkpoint(request, tmp_path_factory):
    torch.manual_seed(sum(map(ord, request.param)))
    model = randomize_(transformers.Siglip2Model(_hf_config(request.param))).eval()
    path = tmp_path_factory.mktemp(f"hf_siglip2_{request.param}")
    model.save_pretrained(path)
    return model, path


def _inputs(config, grids=GRIDS, max_patches=MAX_PATCHES):
    tc, vc = config.text_config, config.vision_config
    B = len(grids)
    ids = torch.randint(0, tc.vocab_size, (B, tc.max_position_embeddings))
    pixels = torch.randn(B, max_patches, vc.num_channels * vc.patch_size**2)  # random padding too
    shapes = torch.tensor(grids, dtype=torch.long)
    mask = (torch.arange(max_patches)[None] < shapes.prod(-1)[:, None]).to(torch.int32)
    return dict(input_ids=ids, pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=shapes)


def _compare_dual(o, t, atol, with_loss=False):
    for key in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        assert _err(o[key], t[key]) <= atol, key
    for tower in ("text_model_output", "vision_model_output"):
        for key in ("last_hidden_state", "pooler_output"):
            assert _err(o[tower][key], t[tower][key]) <= atol, (tower, key)
        assert len(o[tower].hidden_states) == len(t[tower].hidden_states)
        for i, (a, b) in enumerate(zip(o[tower].hidden_states, t[tower].hidden_states, strict=True)):
            assert _err(a, b) <= atol, (tower, "hidden_states", i)
    if with_loss:
        assert _err(o.loss, t.loss) <= atol


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_dual_model_outputs_and_loss(hf_checkpoint, backend):
    theirs, path = hf_checkpoint
    ours = sf.Siglip2Model.from_pretrained(path, backend=backend)
    kw = _inputs(theirs.config)
    with torch.no_grad():
        o = ours(**kw, return_loss=True, output_hidden_states=True)
        t = theirs(**kw, return_loss=True, output_hidden_states=True)
    _compare_dual(o, t, ATOL[backend], with_loss=True)


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_gradients_of_every_parameter(hf_checkpoint, backend):
    theirs, path = hf_checkpoint
    ours = sf.Siglip2Model.from_pretrained(path, backend=backend).train()
    kw = _inputs(theirs.config)
    theirs.train()
    try:
        ours(**kw, return_loss=True).loss.backward()
        theirs.zero_grad()
        theirs(**kw, return_loss=True).loss.backward()
    finally:
        theirs.eval()
    grads = {n: p.grad for n, p in theirs.named_parameters()}
    floor = GRAD_FLOOR * max(g.abs().max().item() for g in grads.values())
    checked = 0
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        assert _err(p.grad, grads[name], floor) <= ATOL[backend], name
        checked += 1
    assert checked == len(grads)


def test_padding_never_changes_the_real_patches(hf_checkpoint):
    """The same images padded to more patches (through the kernels): pooled embeddings and real-patch states equal."""
    theirs, path = hf_checkpoint
    ours = sf.Siglip2Model.from_pretrained(path, backend="triton")
    short = _inputs(theirs.config, GRIDS[:2])
    n = short["pixel_values"].shape[1]
    long = dict(short, pixel_values=torch.cat([short["pixel_values"], 100 * torch.randn_like(short["pixel_values"])],
                                              dim=1),
                pixel_attention_mask=torch.cat([short["pixel_attention_mask"],
                                                torch.zeros_like(short["pixel_attention_mask"])], dim=1))
    with torch.no_grad():
        a = ours.get_image_features(**{k: v for k, v in short.items() if k != "input_ids"})
        b = ours.get_image_features(**{k: v for k, v in long.items() if k != "input_ids"})
    assert _err(a.pooler_output, b.pooler_output) <= KERNEL_RTOL
    for i, (h, w) in enumerate(GRIDS[:2]):
        real = h * w
        assert _err(a.last_hidden_state[i, :real], b.last_hidden_state[i, :real]) <= KERNEL_RTOL
    assert b.last_hidden_state.shape[1] == 2 * n


def test_position_resize_matches_transformers_and_interpolate():
    """The batched position resize equals transformers' per-image weights on every grid (padding positions take
    position (0, 0)), and PyTorch's F.interpolate(bilinear, antialias) on grids with both sides > 1 (on a
    single-row/column output PyTorch's antialiased kernel differs from its own definition; transformers' weights are
    what the checkpoints run with)."""
    from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

    table = torch.randn(4, 4, 8)
    shapes = torch.tensor(GRIDS)
    out = resize_positional_embeddings(table, shapes, MAX_PATCHES)
    assert _err(out, Siglip2VisionEmbeddings.resize_positional_embeddings(table, shapes, MAX_PATCHES)) <= 1e-6
    for i, (h, w) in enumerate(GRIDS):
        assert torch.equal(out[i, h * w:], out[i, :1].expand(MAX_PATCHES - h * w, 8)) or h * w == MAX_PATCHES
        if min(h, w) > 1:
            ref = torch.nn.functional.interpolate(table.permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                                                  align_corners=False, antialias=True)[0].permute(1, 2, 0)
            assert _err(out[i, :h * w], ref.reshape(h * w, 8)) <= 1e-5, (h, w)


def test_without_pixel_attention_mask_every_patch_attends(hf_checkpoint):
    theirs, path = hf_checkpoint
    ours = sf.Siglip2VisionModel.from_pretrained(path, backend="eager")
    kw = _inputs(theirs.config)
    with torch.no_grad():
        o = ours(kw["pixel_values"], None, kw["spatial_shapes"])
        t = theirs.vision_model(kw["pixel_values"], None, kw["spatial_shapes"])
    assert _err(o.pooler_output, t.pooler_output) <= EAGER_RTOL
    assert _err(o.last_hidden_state, t.last_hidden_state) <= EAGER_RTOL


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_towers_from_the_full_checkpoint(hf_checkpoint, backend):
    theirs, path = hf_checkpoint
    kw = _inputs(theirs.config)
    vision = sf.Siglip2VisionModel.from_pretrained(path, backend=backend)
    text = sf.Siglip2TextModel.from_pretrained(path, backend=backend)
    assert type(vision) is sf.Siglip2VisionModel and type(text) is sf.Siglip2TextModel
    with torch.no_grad():
        o = vision(pixel_values=kw["pixel_values"], pixel_attention_mask=kw["pixel_attention_mask"],
                   spatial_shapes=kw["spatial_shapes"])
        t = theirs.get_image_features(pixel_values=kw["pixel_values"], pixel_attention_mask=kw["pixel_attention_mask"],
                                      spatial_shapes=kw["spatial_shapes"])
        assert _err(o.pooler_output, t.pooler_output) <= ATOL[backend]
        assert _err(o.last_hidden_state, t.last_hidden_state) <= ATOL[backend]
        o, t = text(input_ids=kw["input_ids"]), theirs.get_text_features(input_ids=kw["input_ids"])
        assert _err(o.pooler_output, t.pooler_output) <= ATOL[backend]


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_image_classification_masked_mean_and_loss(hf_checkpoint, tmp_path, backend):
    _, path = hf_checkpoint
    config = json.loads((path / "config.json").read_text())
    config["num_labels"] = 3
    theirs = randomize_(transformers.Siglip2ForImageClassification(transformers.Siglip2Config(**{
        k: v for k, v in config.items() if k not in ("architectures", "transformers_version")}))).eval()
    theirs.save_pretrained(tmp_path)
    ours = sf.Siglip2ForImageClassification.from_pretrained(tmp_path, backend=backend)
    assert type(ours) is sf.Siglip2ForImageClassification
    kw = _inputs(theirs.config)
    kw.pop("input_ids")
    labels = torch.tensor([0, 2, 1, 1, 0])
    with torch.no_grad():
        o = ours(**kw, labels=labels, output_hidden_states=True)
        t = theirs(**kw, labels=labels, output_hidden_states=True)
    assert _err(o.logits, t.logits) <= ATOL[backend]
    assert _err(o.loss, t.loss) <= ATOL[backend]
    for a, b in zip(o.hidden_states, t.hidden_states, strict=True):
        assert _err(a, b) <= ATOL[backend]


def test_save_here_load_in_transformers(tmp_path):
    text, vision = TINY["base"]
    config = sf.Siglip2Config(text_config=dict(text), vision_config=dict(vision))
    ours = randomize_(sf.Siglip2Model(config, backend="eager")).eval()
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "siglip2" and saved["vision_config"]["model_type"] == "siglip2_vision_model"
    assert "image_size" not in saved["vision_config"]
    theirs = transformers.Siglip2Model.from_pretrained(tmp_path).eval()
    kw = _inputs(theirs.config)
    with torch.no_grad():
        _compare_dual(ours(**kw, output_hidden_states=True), theirs(**kw, output_hidden_states=True), EAGER_RTOL)
    vision_dir = tmp_path / "vision"
    ours.vision_model.save_pretrained(vision_dir)
    tv = transformers.Siglip2VisionModel.from_pretrained(vision_dir).eval()
    with torch.no_grad():
        o = ours.vision_model(kw["pixel_values"], kw["pixel_attention_mask"], kw["spatial_shapes"])
        t = tv(kw["pixel_values"], kw["pixel_attention_mask"], kw["spatial_shapes"])
    assert _err(o.pooler_output, t.pooler_output) <= EAGER_RTOL


def test_configs_round_trip_with_transformers(tmp_path):
    text, vision = TINY["hd72"]
    theirs = transformers.Siglip2Config(text_config=dict(text), vision_config=dict(vision))
    theirs.save_pretrained(tmp_path)
    ours = sf.Siglip2Config.from_pretrained(tmp_path)
    assert ours.vision_config.num_patches == 9 and ours.vision_config.num_channels == 1
    assert ours.text_config.max_position_embeddings == 7
    assert sf.Siglip2VisionConfig.from_pretrained(tmp_path).hidden_size == 144  # a tower config from a full file
    assert sf.Siglip2TextConfig.from_pretrained(tmp_path).vocab_size == 50
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.Siglip2Config.from_pretrained(tmp_path / "ours")
    assert back.vision_config.to_dict()["num_patches"] == 9 and back.text_config.hidden_size == 144
    odd = sf.Siglip2VisionConfig(num_patches=20)  # accepted as a config, as transformers does; refused by a model
    with pytest.raises(ValueError, match="perfect square"):
        sf.Siglip2VisionModel(odd)
    with pytest.raises(ValueError, match="model_type"):
        sf.Siglip2Config.from_dict({"model_type": "siglip"})


def test_output_attentions_and_tuples(hf_checkpoint):
    theirs, path = hf_checkpoint
    ours = sf.Siglip2Model.from_pretrained(path, backend="eager")
    eager_theirs = transformers.Siglip2Model.from_pretrained(path, attn_implementation="eager").eval()
    kw = _inputs(theirs.config)
    with torch.no_grad():
        o = ours(**kw, output_attentions=True)
        t = eager_theirs(**kw, output_attentions=True)
        for tower in ("text_model_output", "vision_model_output"):
            assert len(o[tower].attentions) == len(t[tower].attentions)
            for a, b in zip(o[tower].attentions, t[tower].attentions, strict=True):
                assert a.shape == b.shape and _err(a, b) <= EAGER_RTOL
        o = ours(**kw, return_dict=False)
        t = theirs(**kw, return_dict=False)
    assert isinstance(o, tuple) and len(o) == len(t)


def test_compile_for_inference_static_buffers(hf_checkpoint):
    """The CUDA-graph runner's static path (cuda_graph=False on CPU, captured on CUDA): chunks of 2 with a padded
    last chunk equal the plain forward."""
    theirs, path = hf_checkpoint
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours = sf.Siglip2VisionModel.from_pretrained(path, backend="auto", device=device)
    kw = _inputs(theirs.config)
    kw = {k: v.to(device) for k, v in kw.items() if k != "input_ids"}
    runner = ours.compile_for_inference(2, max_num_patches=MAX_PATCHES, keep_last_hidden_state=True)
    assert runner.cuda_graph == (device == "cuda")
    out = runner(**kw)
    with torch.no_grad():
        ref = ours(**kw)
    assert _err(out.pooler_output, ref.pooler_output) <= KERNEL_RTOL
    assert _err(out.last_hidden_state, ref.last_hidden_state) <= KERNEL_RTOL
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        runner(**dict(kw, pixel_values=kw["pixel_values"][:, :5]))


def test_bad_input(hf_checkpoint):
    theirs, path = hf_checkpoint
    ours = sf.Siglip2VisionModel.from_pretrained(path, backend="eager")
    kw = _inputs(theirs.config)
    pv, mask, shapes = kw["pixel_values"], kw["pixel_attention_mask"], kw["spatial_shapes"]
    with pytest.raises(ValueError, match="pixel_values must be a float tensor of shape"):
        ours(pv[..., :-1], mask, shapes)
    with pytest.raises(ValueError, match="spatial_shapes must be an integer tensor"):
        ours(pv, mask, shapes[:2])
    with pytest.raises(ValueError, match="rows \\* cols <= max_num_patches"):
        ours(pv, mask, shapes * 3)
    with pytest.raises(ValueError, match="pixel_attention_mask must have shape"):
        ours(pv, mask[:, :3], shapes)
    with pytest.raises(TypeError, match="needs a Siglip2VisionConfig"):
        sf.Siglip2VisionModel(sf.SiglipVisionConfig())


def test_sdpa_backend_and_gradient_checkpointing(hf_checkpoint):
    theirs, path = hf_checkpoint
    ours = sf.Siglip2Model.from_pretrained(path, backend="eager").set_backend("sdpa")
    kw = _inputs(theirs.config)
    with torch.no_grad():
        _compare_dual(ours(**kw, output_hidden_states=True), theirs(**kw, output_hidden_states=True), EAGER_RTOL)
    ours.set_backend("eager").train()
    ours(**kw, return_loss=True).loss.backward()
    plain = {n: p.grad.clone() for n, p in ours.named_parameters()}
    ours.zero_grad()
    ours.gradient_checkpointing_enable()
    ours(**kw, return_loss=True).loss.backward()
    for n, p in ours.named_parameters():
        assert torch.equal(p.grad, plain[n]), n
