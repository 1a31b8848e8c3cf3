"""Tiny random SigLIP models shared by the model-level tests (built with transformers, the parity peer)."""

from __future__ import annotations

import torch

# The oldest transformers the parity tests hold against (pyproject.toml's `test` extra; README, "Supported
# transformers range"): SigLIP 2's position-embedding resize changed in 5.24, so its model parity needs 5.24 or later.
TRANSFORMERS_FLOOR = "5.24"

# (text kwargs, vision kwargs): head dims 16, 72 and 8; an image size not divisible by the patch; no vision head.
TINY_CONFIGS = {
    "base": (
        dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
             max_position_embeddings=11),
        dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=20,
             patch_size=5),
    ),
    "hd72_crop": (
        dict(vocab_size=50, hidden_size=144, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2,
             max_position_embeddings=7),
        dict(hidden_size=144, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=30,
             patch_size=7),
    ),
    "odd": (
        dict(vocab_size=64, hidden_size=24, intermediate_size=37, num_hidden_layers=3, num_attention_heads=3,
             max_position_embeddings=9),
        dict(hidden_size=24, intermediate_size=37, num_hidden_layers=1, num_attention_heads=3, image_size=16,
             patch_size=4, num_channels=1),
    ),
}


def randomize_(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Every parameter random (transformers initialises biases and logit parameters to zero, which would hide bugs):
    matrices with std 1/sqrt(fan_in) and LayerNorm weights around 1, so activations stay O(1) as in real models."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + std * torch.randn_like(p))
            elif "logit_scale" in name:
                p.fill_(float(torch.empty(()).uniform_(0.5, 2.5)))
            elif p.ndim >= 2:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
            else:
                p.copy_(std * torch.randn_like(p))
    return model


def hf_config(name: str, **kwargs):
    import transformers

    text, vision = TINY_CONFIGS[name]
    return transformers.SiglipConfig(text_config=dict(text), vision_config=dict(vision), **kwargs)


def inputs(config, batch: int = 3, *, image_hw=None):
    tc, vc = config.text_config, config.vision_config
    ids = torch.randint(0, tc.vocab_size, (batch, tc.max_position_embeddings))
    h, w = image_hw or (vc.image_size, vc.image_size)
    pixels = torch.randn(batch, vc.num_channels, h, w)
    return ids, pixels
