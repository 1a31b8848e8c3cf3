"""NaFlex masks (issue 23): a `pixel_attention_mask` that disagrees with `spatial_shapes` is refused, padding never
changes the real outputs (not even NaN or 1e30 in it), the classifier refuses an image without real patches, and
inputs on the meta device get a clear error.

Real outputs under poisoned padding are compared bit for bit with the same inputs under finite padding: a masked key
weighs exactly 0 on every path, so finite padding already leaves the real tokens' arithmetic untouched, and the fix
(masked keys' values are not read) must give exactly the same numbers.
"""

from __future__ import annotations

import pytest
import torch

import siglip_fast as sf
from tests._tiny import randomize_

TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=11)
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, num_patches=16,
              patch_size=4)
GRIDS = [(4, 4), (2, 7), (3, 3)]
N = 20
BACKENDS = ["eager", "sdpa", "triton"]


def _config():
    return sf.Siglip2Config(text_config=TEXT, vision_config=VISION)


def _inputs(grids=GRIDS):
    shapes = torch.tensor(grids)
    mask = (torch.arange(N)[None] < shapes.prod(-1)[:, None]).long()
    pixels = torch.randn(len(grids), N, 48) * mask[..., None]  # what the processor gives: zero padding
    return pixels, mask, shapes


def _vision(backend):
    return randomize_(sf.Siglip2VisionModel(_config().vision_config, backend=backend)).eval()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_that_disagrees_with_spatial_shapes_is_refused(backend):
    """Before: accepted, and the features changed by 0.4-1.25 (patches given the positions of another grid)."""
    model = _vision(backend)
    pixels, mask, shapes = _inputs()
    fewer = mask.clone()
    fewer[0, 8:] = 0  # 8 real patches where spatial_shapes says 4 x 4 = 16
    with pytest.raises(ValueError, match=r"pixel_attention_mask disagrees with spatial_shapes for image 0: "
                                         r"spatial_shapes\[0\] = \(4, 4\) says 16 real patches.* has 8 real patches"):
        model(pixels, fewer, shapes)
    later = mask.clone()
    later[1] = 0
    later[1, N - 14:] = 1  # 2 x 7 = 14 real patches, but after the padding
    with pytest.raises(ValueError, match=r"image 1: spatial_shapes\[1\] = \(2, 7\) says 14 real patches, first, "
                                         r"then padding; pixel_attention_mask\[1\] has its 14 real patches not first"):
        model(pixels, later, shapes)
    more = mask.clone()
    more[2, 9:12] = 1
    with pytest.raises(ValueError, match=r"image 2: .* \(3, 3\) says 9 real patches.* has 12 real patches"):
        model(pixels, more.bool(), shapes)
    with torch.no_grad():
        model(pixels, mask, shapes)  # the processor's layout passes (int, bool and float masks alike)
        model(pixels, mask.bool(), shapes)
        model(pixels, mask.float(), shapes)


def test_classifier_refuses_an_image_without_real_patches():
    """Before: an all-zero mask row gave NaN logits (0 / 0 in the masked mean)."""
    config = _config()
    config.num_labels = 3
    model = randomize_(sf.Siglip2ForImageClassification(config, backend="eager")).eval()
    pixels, mask, shapes = _inputs()
    mask[1] = 0
    with pytest.raises(ValueError, match=r"image 1: spatial_shapes\[1\] = \(2, 7\) says 14 real patches.* has 0 real"):
        model(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=shapes)


def test_meta_inputs_are_a_clear_error():
    """Before: spatial_shapes on meta failed deep inside (a host read of a meta tensor), pixels on meta deep in the
    patch Linear."""
    model = _vision("eager")
    pixels, mask, shapes = _inputs()
    with pytest.raises(ValueError, match="spatial_shapes must hold values .* got a tensor on the meta device"):
        model(pixels, mask, shapes.to("meta"))
    with pytest.raises(ValueError, match=r"pixel_values must be on the model's device cpu, got a tensor on meta"):
        model(pixels.to("meta"), mask, shapes)
    with pytest.raises(ValueError, match=r"pixel_attention_mask must be on the model's device cpu, got a tensor on "
                                         r"meta"):
        model(pixels, mask.to("meta"), shapes)


@pytest.mark.parametrize("poison", [float("nan"), 1e30, float("inf")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_poisoned_padding_never_changes_the_real_outputs(backend, poison):
    """NaN, inf or 1e30 in the padding patches of two images: their embeddings and real tokens are bitwise those of
    finite padding (before: NaN; transformers gives NaN too), the third image is untouched, and the classifier's
    masked mean of the real patches is unchanged."""
    torch.manual_seed(0)
    config = _config()
    config.num_labels = 4
    dual = randomize_(sf.Siglip2Model(config, backend=backend)).eval()
    classifier = sf.Siglip2ForImageClassification(config, backend=backend).eval()
    classifier.vision_model.load_state_dict(dual.vision_model.state_dict())
    pixels, mask, shapes = _inputs()
    pixels = pixels + torch.randn_like(pixels) * (1 - mask[..., None])  # finite, random padding
    bad = pixels.clone()
    bad[0:2][~mask[0:2].bool()] = poison  # image 0 has 4 padding patches, image 1 has 6
    with torch.no_grad():
        clean = dual.vision_model(pixels, mask, shapes)
        dirty = dual.vision_model(bad, mask, shapes)
        logits_clean = classifier(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=shapes).logits
        logits_dirty = classifier(pixel_values=bad, pixel_attention_mask=mask, spatial_shapes=shapes).logits
    assert torch.isfinite(dirty.pooler_output).all()
    assert torch.equal(dirty.pooler_output, clean.pooler_output)
    real = mask.bool()
    assert torch.equal(dirty.last_hidden_state[real], clean.last_hidden_state[real])
    assert torch.isfinite(logits_dirty).all()
    assert torch.equal(logits_dirty, logits_clean)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_ignores_non_finite_masked_keys(backend):
    """ops.attention: NaN in masked keys' k and v leaves every row that attends to a key bitwise unchanged; a row
    that attends to none still averages all keys (transformers' rule), its values included."""
    from siglip_fast import ops

    if backend == "triton":
        pytest.importorskip("triton")
    B, Nq, Nk, H, d = 3, 5, 37, 2, 16
    q, k, v = (torch.randn(B, n, H, d) for n in (Nq, Nk, Nk))
    keep = torch.rand(B, Nk) < 0.6
    keep[:, 0] = True
    keep[2] = False  # a row with no key: uniform average of every value
    k_bad, v_bad = k.clone(), v.clone()
    drop = ~keep
    drop[2] = False
    k_bad[drop] = float("nan")
    v_bad[drop] = float("nan")
    clean, _ = ops.attention(q, k, v, keep, scale=d**-0.5, backend=backend)
    dirty, _ = ops.attention(q, k_bad, v_bad, keep, scale=d**-0.5, backend=backend)
    assert torch.equal(dirty, clean)
    torch.testing.assert_close(dirty[2], v[2].mean(0, keepdim=True).expand(Nq, H, d), rtol=1e-5, atol=1e-5)
    probs_clean = ops.attention(q, k, v, keep, scale=d**-0.5, backend=backend, need_probs=True)
    probs_dirty = ops.attention(q, k_bad, v_bad, keep, scale=d**-0.5, backend=backend, need_probs=True)
    assert torch.equal(probs_dirty[0], probs_clean[0]) and torch.equal(probs_dirty[1], probs_clean[1])
