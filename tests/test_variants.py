"""The named-shape table (exact names, public checkpoint shapes and parameter counts) and the matmul FLOP count."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from siglip_fast import SiglipConfig, SiglipModel, SiglipTextConfig, SiglipVisionConfig
from siglip_fast.variants import VARIANTS, config_for, matmul_flops, text_flops, vision_flops

# reference/hf-siglip.md §1.4: total parameters of each public checkpoint (transformers v5, meta device).
PARAMS = {
    "base-patch16-224": 203_155_970,
    "base-patch16-256": 203_202_050,
    "base-patch16-384": 203_447_810,
    "base-patch16-512": 203_791_874,
    "large-patch16-256": 652_150_786,
    "large-patch16-384": 652_478_466,
    "so400m-patch14-384": 877_960_498,
    "so400m-patch14-224": 877_360_306,
    "base-patch16-256-multilingual": 370_626_050,
}


def _meta_model(config):
    with torch.device("meta"):
        return SiglipModel(config)


def test_table_has_exactly_the_public_checkpoints():
    assert set(VARIANTS) == set(PARAMS)


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count_matches_checkpoint(name):
    model = _meta_model(config_for(name))
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


def test_base_tower_parameter_counts():
    model = _meta_model(config_for("base-patch16-224"))
    assert sum(p.numel() for p in model.vision_model.parameters()) == 92_884_224
    assert sum(p.numel() for p in model.text_model.parameters()) == 110_271_744


def test_shape_details():
    so = config_for("so400m-patch14-384")
    assert (so.vision_config.hidden_size, so.vision_config.num_hidden_layers, so.vision_config.num_attention_heads,
            so.vision_config.intermediate_size) == (1152, 27, 16, 4304)
    assert so.vision_config.head_dim == 72 and so.vision_config.num_patches == 729
    assert so.text_config.max_position_embeddings == 64
    assert config_for("so400m-patch14-224").text_config.max_position_embeddings == 16
    assert config_for("base-patch16-256-multilingual").text_config.vocab_size == 250000
    large = config_for("large-patch16-384")
    assert (large.text_config.hidden_size, large.text_config.num_hidden_layers, large.vision_config.num_patches) == (
        1024, 24, 576)
    for name in VARIANTS:  # every tower pair shares width, depth and heads; the text head is square
        c = config_for(name)
        assert c.text_config.hidden_size == c.vision_config.hidden_size == c.text_config.projection_size


def test_google_prefix_is_the_same_config():
    for name in VARIANTS:
        assert config_for("google/siglip-" + name) == config_for(name)


def test_configs_are_fresh_objects():
    a = config_for("base-patch16-224")
    a.vision_config.num_hidden_layers = 1
    assert config_for("base-patch16-224").vision_config.num_hidden_layers == 12


@pytest.mark.parametrize("name", ["so400m", "siglip-base-patch16-224", "Base-Patch16-224", "base_patch16_224",
                                  "google/siglip2-base-patch16-999", "base-patch16-224 ", ""])
def test_unknown_names_are_rejected_listing_the_known_ones(name):
    with pytest.raises(ValueError, match="unknown SigLIP variant") as info:
        config_for(name)
    for known in VARIANTS:
        assert known in str(info.value)


def test_non_string_name():
    with pytest.raises(TypeError, match="must be a str"):
        config_for(224)


# ---------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------

TINY = SiglipConfig(
    text_config=dict(vocab_size=50, hidden_size=8, intermediate_size=12, num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=5, projection_size=8),
    vision_config=dict(hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2, image_size=9,
                       patch_size=4),  # 2 x 2 = 4 patches; the last pixel row/column unused
)


def test_vision_flops_hand_count():
    n, d, mlp, h, hd = 4, 8, 12, 2, 4
    patch = 2 * n * (3 * 4 * 4) * d  # 3072
    layer = (2 * n * d * 3 * d  # q, k, v projections: 1536
             + h * 2 * n * n * hd  # q @ k^T per head: 256
             + h * 2 * n * n * hd  # p @ v per head: 256
             + 2 * n * d * d  # out proj: 512
             + 2 * n * d * mlp + 2 * n * mlp * d)  # fc1, fc2: 1536
    head = (2 * d * d  # probe -> q
            + 2 * n * d * 2 * d  # k, v
            + h * 2 * 1 * n * hd * 2  # one query: scores and weighted sum
            + 2 * d * d  # out proj
            + 2 * d * mlp * 2)  # MLP on one token
    assert patch + layer + head == 8960
    assert vision_flops(TINY.vision_config) == 8960
    assert matmul_flops(TINY.vision_config, images=3) == 3 * 8960


def test_text_flops_hand_count():
    n, d, mlp, h, hd, proj = 5, 8, 12, 2, 4, 8
    layer = 2 * n * d * 3 * d + 2 * h * 2 * n * n * hd + 2 * n * d * d + 2 * 2 * n * d * mlp  # 5280
    assert 2 * layer + 2 * d * proj == 10688
    assert text_flops(TINY.text_config) == 10688
    assert text_flops(TINY.text_config, seq_len=3) < 10688


def test_dual_and_training_flops():
    dual = matmul_flops(TINY, images=3, texts=2)
    assert dual == 3 * 8960 + 2 * 10688 + 2 * 2 * 3 * 8  # + the (texts x images) logits
    assert matmul_flops(TINY, images=3, texts=2, backward=True) == 3 * dual
    with pytest.raises(ValueError, match="text config"):
        matmul_flops(TINY.vision_config, texts=1)
    with pytest.raises(TypeError, match="SiglipConfig"):
        matmul_flops({"hidden_size": 8}, images=1)


def test_flops_match_torch_flop_counter():
    """The analytic count equals what torch's FlopCounterMode sees in the eager model (batch 1: the MAP probe's
    query projection is computed once per batch)."""
    torch.manual_seed(0)
    model = SiglipModel(TINY, backend="eager").eval()
    pixels = torch.randn(1, 3, 9, 9)
    ids = torch.randint(0, 50, (1, 5))
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model.vision_model(pixel_values=pixels)
        assert counter.get_total_flops() == matmul_flops(TINY, images=1)
        with FlopCounterMode(display=False) as counter:
            model.text_model(input_ids=ids)
        assert counter.get_total_flops() == matmul_flops(TINY, texts=1)


def test_flops_of_real_shapes_match_the_anchors():
    # reference/anchors.md: B/16-224 35.4 GFLOP per image, So400m/14-384 670 GFLOP per image (vision forward).
    assert round(vision_flops(config_for("base-patch16-224").vision_config) / 1e9, 1) == 35.4
    assert round(vision_flops(config_for("so400m-patch14-384").vision_config) / 1e9) == 670
    assert isinstance(config_for("base-patch16-224").vision_config, SiglipVisionConfig)
    assert isinstance(config_for("base-patch16-224").text_config, SiglipTextConfig)
