"""SigLIP 2 (NaFlex) configurations: the fields, defaults and `config.json` of transformers' `models/siglip2`.

`Siglip2TextConfig` is SigLIP's text config under model_type "siglip2_text_model". `Siglip2VisionConfig` has no
`image_size`: it holds `num_patches` (the size of the learned position table, a square 16 x 16 = 256 in the public
checkpoints), which the model resizes to each image's patch grid. `Siglip2Config` (model_type "siglip2") nests the two.
The fixed-resolution SigLIP 2 checkpoints are plain SigLIP (`SiglipConfig`, model_type "siglip").
"""

from __future__ import annotations

import math
from typing import Any

from .configuration import _LAYER_FIELD_TYPES, SiglipConfig, SiglipTextConfig, _SiglipBaseConfig


def _tower_dict(cls, config_dict: dict[str, Any]) -> dict[str, Any]:
    """A full "siglip2" config file given to a tower config: take the tower's part, as transformers does."""
    config_dict = dict(config_dict)
    if config_dict.get("model_type") == "siglip2" and cls.base_config_key in config_dict:
        config_dict = dict(config_dict[cls.base_config_key] or {})
    return config_dict


class Siglip2TextConfig(SiglipTextConfig):
    """The text tower's shape: SigLIP's text config (the SigLIP 2 text tower is SigLIP's)."""

    model_type = "siglip2_text_model"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        if not isinstance(config_dict, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(config_dict).__name__}")
        return super().from_dict(_tower_dict(cls, config_dict), **kwargs)


class Siglip2VisionConfig(_SiglipBaseConfig):
    """The NaFlex vision tower's shape. Defaults are google/siglip2-base-patch16-naflex's (transformers' defaults).

    `num_patches` is the number of learned positions (a perfect square: the table is a side x side grid); images may
    have any patch grid of at most `max_num_patches` patches (the image processor's setting, not the model's)."""

    model_type = "siglip2_vision_model"
    base_config_key = "vision_config"
    _defaults = {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_channels": 3,
        "patch_size": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
        "vision_use_head": True,
        "num_patches": 256,
    }

    _INT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                   "patch_size", "num_patches")
    _field_types = {**dict.fromkeys(_INT_FIELDS, (int,)), **_LAYER_FIELD_TYPES, "vision_use_head": (bool,)}

    def validate_for_model(self) -> None:
        super().validate_for_model()
        self._check_positive(self, self._INT_FIELDS)
        self._check_layers(self)
        if math.isqrt(self.num_patches) ** 2 != self.num_patches:
            raise ValueError(f"Siglip2VisionConfig.num_patches must be a perfect square (the position table is a "
                             f"side x side grid), got {self.num_patches}")

    @property
    def position_embedding_size(self) -> int:
        """The side of the square position table."""
        return math.isqrt(self.num_patches)

    @property
    def patch_dim(self) -> int:
        """The length of one flattened patch: num_channels * patch_size**2."""
        return self.num_channels * self.patch_size**2

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        if not isinstance(config_dict, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(config_dict).__name__}")
        return super().from_dict(_tower_dict(cls, config_dict), **kwargs)


class Siglip2Config(SiglipConfig):
    """The NaFlex dual-encoder config (model_type "siglip2"): a `Siglip2TextConfig` and a `Siglip2VisionConfig`."""

    model_type = "siglip2"
    sub_configs = {"text_config": Siglip2TextConfig, "vision_config": Siglip2VisionConfig}
