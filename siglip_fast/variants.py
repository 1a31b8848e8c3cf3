"""Named SigLIP shapes: one exact table from checkpoint name to config, and the model's matmul FLOP count.

`config_for("so400m-patch14-384")` (or `"google/siglip-so400m-patch14-384"`) returns the `SiglipConfig` of that public
checkpoint (reference/hf-siglip.md §1.4): widths, depths, heads, MLP widths, image and patch sizes, vocabulary and text
positions. Names are matched exactly — no fuzzy matching; an unknown name is a ValueError listing the known ones.

`matmul_flops(config, ...)` counts the matrix-multiply FLOPs of one forward pass analytically (2 per multiply-add;
patch embedding, Q/K/V, attention at the true head dim, output projection, MLP, MAP head, text head), which the
benchmarks turn into TFLOP/s and MFU. Elementwise work (LayerNorm, GELU, softmax, adds) is not counted.
"""

from __future__ import annotations

from .configuration import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from .configuration_siglip2 import Siglip2Config, Siglip2VisionConfig

HUB_PREFIX = "google/siglip-"

# Tower widths: (hidden, layers, heads, mlp), big_vision's B, L and So400m; text and vision share them in every
# public checkpoint.
_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_L = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
_SO400M = dict(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16, intermediate_size=4304)


def _variant(width: dict, image_size: int, patch_size: int, *, vocab_size: int = 32000, max_text: int = 64) -> dict:
    return {
        "text_config": dict(width, vocab_size=vocab_size, max_position_embeddings=max_text),
        "vision_config": dict(width, image_size=image_size, patch_size=patch_size),
    }


# name -> SiglipConfig kwargs (text_config / vision_config dicts), as the public checkpoints.
VARIANTS: dict[str, dict] = {
    "base-patch16-224": _variant(_B, 224, 16),
    "base-patch16-256": _variant(_B, 256, 16),
    "base-patch16-384": _variant(_B, 384, 16),
    "base-patch16-512": _variant(_B, 512, 16),
    "large-patch16-256": _variant(_L, 256, 16),
    "large-patch16-384": _variant(_L, 384, 16),
    "so400m-patch14-384": _variant(_SO400M, 384, 14),  # 27 x 27 = 729 patches; the last 6 pixel rows/cols unused
    "so400m-patch14-224": _variant(_SO400M, 224, 14, max_text=16),  # text length 16 for this checkpoint only
    "base-patch16-256-multilingual": _variant(_B, 256, 16, vocab_size=250000),  # mC4 vocab, identity text head
}


# SigLIP 2 (Tschannen et al. 2025), the public google/siglip2-* checkpoints, keyed by their hub names without
# "google/". Vocabulary 256000 (Gemma) and 64 text positions in every one; the fixed-resolution checkpoints are plain
# SigLIP (model_type "siglip"), the NaFlex ones model_type "siglip2" (a 16 x 16 position table, resized per image).
# giant-opt pairs a g-opt vision tower (1536 wide, 40 layers) with an So400m text tower projected to 1536.
SIGLIP2_HUB_PREFIX = "google/"
_G_OPT = dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=16, intermediate_size=6144)


def _siglip2_text(width: dict, projection_size: int | None = None) -> dict:
    text = dict(width, vocab_size=256000, max_position_embeddings=64)
    if projection_size is not None:
        text["projection_size"] = projection_size
    return text


def _siglip2(width: dict, image_size: int, patch_size: int, *, text_width: dict | None = None) -> dict:
    projection = width["hidden_size"] if text_width is not None else None
    return {"text_config": _siglip2_text(text_width or width, projection),
            "vision_config": dict(width, image_size=image_size, patch_size=patch_size)}


def _naflex(width: dict, patch_size: int) -> dict:
    return {"text_config": _siglip2_text(width), "vision_config": dict(width, patch_size=patch_size, num_patches=256)}


SIGLIP2_VARIANTS: dict[str, dict] = {
    "siglip2-base-patch16-224": _siglip2(_B, 224, 16),
    "siglip2-base-patch16-256": _siglip2(_B, 256, 16),
    "siglip2-base-patch16-384": _siglip2(_B, 384, 16),
    "siglip2-base-patch16-512": _siglip2(_B, 512, 16),
    "siglip2-base-patch32-256": _siglip2(_B, 256, 32),
    "siglip2-large-patch16-256": _siglip2(_L, 256, 16),
    "siglip2-large-patch16-384": _siglip2(_L, 384, 16),
    "siglip2-large-patch16-512": _siglip2(_L, 512, 16),
    "siglip2-so400m-patch14-224": _siglip2(_SO400M, 224, 14),  # text length 64, unlike SigLIP's so400m-patch14-224
    "siglip2-so400m-patch14-384": _siglip2(_SO400M, 384, 14),
    "siglip2-so400m-patch16-256": _siglip2(_SO400M, 256, 16),
    "siglip2-so400m-patch16-384": _siglip2(_SO400M, 384, 16),
    "siglip2-so400m-patch16-512": _siglip2(_SO400M, 512, 16),
    "siglip2-giant-opt-patch16-256": _siglip2(_G_OPT, 256, 16, text_width=_SO400M),
    "siglip2-giant-opt-patch16-384": _siglip2(_G_OPT, 384, 16, text_width=_SO400M),
    "siglip2-base-patch16-naflex": _naflex(_B, 16),
    "siglip2-so400m-patch16-naflex": _naflex(_SO400M, 16),
}


def canonical_name(name: str) -> str:
    """The table key of `name` (a key itself, its exact `google/siglip-` form, or for SigLIP 2 `google/siglip2-...`);
    ValueError otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"variant name must be a str, got {type(name).__name__}")
    if name.startswith(SIGLIP2_HUB_PREFIX + "siglip2-") and name[len(SIGLIP2_HUB_PREFIX):] in SIGLIP2_VARIANTS:
        return name[len(SIGLIP2_HUB_PREFIX):]
    if name in SIGLIP2_VARIANTS:
        return name
    key = name[len(HUB_PREFIX):] if name.startswith(HUB_PREFIX) else name
    if key not in VARIANTS:
        known = ", ".join([*VARIANTS, *SIGLIP2_VARIANTS])
        raise ValueError(f"unknown SigLIP variant {name!r}; known names (optionally prefixed {HUB_PREFIX!r}, or "
                         f"{SIGLIP2_HUB_PREFIX!r} for siglip2-*): {known}")
    return key


def is_variant(name: str) -> bool:
    try:
        canonical_name(name)
    except (TypeError, ValueError):
        return False
    return True


def config_for(name: str) -> SiglipConfig:
    """The SiglipConfig of a public checkpoint, by exact name (e.g. 'base-patch16-224' or 'google/siglip-...');
    for SigLIP 2 ('siglip2-...' or 'google/siglip2-...') a SiglipConfig (fixed resolution) or a Siglip2Config (the
    '-naflex' checkpoints)."""
    key = canonical_name(name)
    if key in SIGLIP2_VARIANTS:
        kwargs = SIGLIP2_VARIANTS[key]
        cls = Siglip2Config if key.endswith("-naflex") else SiglipConfig
        return cls(text_config=dict(kwargs["text_config"]), vision_config=dict(kwargs["vision_config"]))
    kwargs = VARIANTS[key]
    return SiglipConfig(text_config=dict(kwargs["text_config"]), vision_config=dict(kwargs["vision_config"]))


# ---------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------


def _encoder_flops(tokens: int, hidden: int, mlp: int, layers: int) -> int:
    """Matmul FLOPs of the pre-LN encoder on one sequence of `tokens` tokens."""
    n, d = tokens, hidden
    qkv = 2 * n * d * 3 * d
    attention = 2 * (2 * n * n * d)  # q @ k^T and p @ v, summed over heads: H * n * n * head_dim = n * n * d each
    out_proj = 2 * n * d * d
    ffn = 2 * (2 * n * d * mlp)
    return layers * (qkv + attention + out_proj + ffn)


def vision_flops(config: SiglipVisionConfig, image_size: int | None = None) -> int:
    """Forward matmul FLOPs of the vision tower for one image (of `image_size` pixels a side, default the config's)."""
    side = (image_size or config.image_size) // config.patch_size
    n, d, mlp = side * side, config.hidden_size, config.intermediate_size
    patch = 2 * n * (config.num_channels * config.patch_size**2) * d
    total = patch + _encoder_flops(n, d, mlp, config.num_hidden_layers)
    if config.vision_use_head:  # MAP head: one probe query over the n tokens, then out proj and MLP on one token
        q = 2 * d * d
        kv = 2 * n * d * 2 * d
        attention = 2 * (2 * n * d)
        total += q + kv + attention + 2 * d * d + 2 * (2 * d * mlp)
    return total


def naflex_vision_flops(config: Siglip2VisionConfig, num_patches: int) -> int:
    """Forward matmul FLOPs of the NaFlex vision tower for one image padded to `num_patches` patches (the padding
    tokens are computed too: the count is what the GPU does at that max_num_patches)."""
    n, d, mlp = num_patches, config.hidden_size, config.intermediate_size
    total = 2 * n * config.patch_dim * d + _encoder_flops(n, d, mlp, config.num_hidden_layers)
    if config.vision_use_head:
        total += 2 * d * d + 2 * n * d * 2 * d + 2 * (2 * n * d) + 2 * d * d + 2 * (2 * d * mlp)
    return total


def text_flops(config: SiglipTextConfig, seq_len: int | None = None) -> int:
    """Forward matmul FLOPs of the text tower for one text of `seq_len` tokens (default max_position_embeddings).
    The token embedding is a lookup (no FLOPs); the head projects the last token only."""
    n = seq_len or config.max_position_embeddings
    enc = _encoder_flops(n, config.hidden_size, config.intermediate_size, config.num_hidden_layers)
    return enc + 2 * config.hidden_size * config.projection_size


def matmul_flops(config, *, images: int = 0, texts: int = 0, seq_len: int | None = None,
                 image_size: int | None = None, backward: bool = False, num_patches: int | None = None) -> int:
    """Matmul FLOPs of a forward pass over `images` images and `texts` texts (the dual model's logits add
    2 * texts * images * projection), times 3 with `backward` (the backward pass costs twice the forward).

    `config` is a SiglipConfig, or a SiglipVisionConfig / SiglipTextConfig for one tower alone; or the SigLIP 2
    NaFlex Siglip2Config / Siglip2VisionConfig, whose images count `num_patches` tokens each (max_num_patches,
    default the config's num_patches)."""
    if isinstance(config, SiglipConfig):
        vc, tc = config.vision_config, config.text_config
    elif isinstance(config, (SiglipVisionConfig, Siglip2VisionConfig)):
        vc, tc = config, None
    elif isinstance(config, SiglipTextConfig):
        vc, tc = None, config
    else:
        raise TypeError(f"config must be a SiglipConfig, SiglipVisionConfig or SiglipTextConfig, got "
                        f"{type(config).__name__}")
    if images and vc is None:
        raise ValueError("images > 0 needs a vision config (SiglipConfig or SiglipVisionConfig)")
    if texts and tc is None:
        raise ValueError("texts > 0 needs a text config (SiglipConfig or SiglipTextConfig)")
    total = 0
    if images and isinstance(vc, Siglip2VisionConfig):
        total += images * naflex_vision_flops(vc, num_patches or vc.num_patches)
    elif images:
        total += images * vision_flops(vc, image_size)
    if texts:
        total += texts * text_flops(tc, seq_len)
    if images and texts:
        total += 2 * texts * images * tc.projection_size
    return 3 * total if backward else total
