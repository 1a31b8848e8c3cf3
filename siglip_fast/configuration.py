"""SigLIP configurations: the fields, defaults and `config.json` format of transformers' SigLIP configs.

`SiglipTextConfig`, `SiglipVisionConfig` and `SiglipConfig` read and write the same `config.json` as transformers
(v4 and v5): missing keys take the defaults below, unknown keys are kept (and written back), `torch_dtype` (v4, hub
files) and `dtype` (v5) are both accepted. A sub-config can be read from a full `SiglipConfig` file.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from typing import Any

CONFIG_NAME = "config.json"

# Keys transformers' PreTrainedConfig writes that carry no model shape; kept as plain attributes when present.
_DTYPE_KEYS = ("dtype", "torch_dtype")

# hidden_act values the model implements (transformers' ACT2FN names); every SigLIP checkpoint uses the first.
ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new", "gelu", "quick_gelu", "relu", "silu", "swish")


class _SiglipBaseConfig:
    """Explicit fields with defaults; anything else given is kept as an attribute and saved back."""

    model_type: str = ""
    base_config_key: str = ""
    _defaults: dict[str, Any] = {}

    def __init__(self, **kwargs: Any):
        num_labels = kwargs.pop("num_labels", None)
        id2label = kwargs.pop("id2label", None)
        label2id = kwargs.pop("label2id", None)
        problem_type = kwargs.pop("problem_type", None)
        if id2label is not None:
            id2label = {int(k): v for k, v in id2label.items()}
            if num_labels is not None and num_labels != len(id2label):
                raise ValueError(f"num_labels ({num_labels}) disagrees with id2label ({len(id2label)} labels)")
        self._id2label = id2label
        self._label2id = dict(label2id) if label2id is not None else None
        if num_labels is not None and id2label is None:
            self.num_labels = num_labels
        if problem_type not in (None, "regression", "single_label_classification", "multi_label_classification"):
            raise ValueError(f"{type(self).__name__}.problem_type {problem_type!r} is not a known problem type")
        self.problem_type = problem_type
        for key, default in self._defaults.items():
            setattr(self, key, copy.deepcopy(kwargs.pop(key, default)))
        dtype = None
        for key in _DTYPE_KEYS:
            value = kwargs.pop(key, None)
            dtype = value if value is not None else dtype
        self.dtype = dtype
        kwargs.pop("model_type", None)
        kwargs.pop("transformers_version", None)
        self._extra_keys = list(kwargs)
        for key, value in kwargs.items():
            setattr(self, key, value)
        self._post_init()
        self.validate()

    def _post_init(self) -> None:
        pass

    def validate(self) -> None:
        """Construction-time checks: only the field types (transformers' strict configs reject e.g.
        hidden_size="768" too). Values are checked by `validate_for_model()` when a model is built, as transformers
        accepts any value in a config and fails only when building or running the model."""

    def validate_for_model(self) -> None:
        """Raise ValueError naming the field when the values cannot describe a working model (called by the model
        classes' constructors)."""

    @staticmethod
    def _check_int_types(config: "_SiglipBaseConfig", names: tuple[str, ...]) -> None:
        for name in names:
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(
                    f"{type(config).__name__}.{name} must be an int, got {value!r} ({type(value).__name__})"
                )

    @staticmethod
    def _check_positive(config: "_SiglipBaseConfig", names: tuple[str, ...]) -> None:
        for name in names:
            if getattr(config, name) <= 0:
                raise ValueError(f"{type(config).__name__}.{name} must be positive, got {getattr(config, name)}")

    @staticmethod
    def _check_layers(config: "_SiglipBaseConfig") -> None:
        if config.hidden_size % config.num_attention_heads != 0:
            raise ValueError(
                f"{type(config).__name__}: hidden_size ({config.hidden_size}) must be divisible by "
                f"num_attention_heads ({config.num_attention_heads})"
            )
        if config.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"{type(config).__name__}.hidden_act must be one of {sorted(ACTIVATIONS)} (every SigLIP checkpoint "
                f"uses 'gelu_pytorch_tanh'), got {config.hidden_act!r}"
            )
        if not config.layer_norm_eps > 0:
            raise ValueError(f"{type(config).__name__}.layer_norm_eps must be > 0, got {config.layer_norm_eps}")
        if not 0.0 <= config.attention_dropout <= 1.0:
            raise ValueError(
                f"{type(config).__name__}.attention_dropout must be in [0, 1], got {config.attention_dropout}"
            )

    def set_extra(self, key: str, value: Any) -> None:
        """Set a key that is not a declared field (e.g. `architectures`); it is saved with the config."""
        if key not in self._defaults and key not in self._extra_keys:
            self._extra_keys.append(key)
        setattr(self, key, value)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # --- classification labels (PreTrainedConfig's behaviour: 2 labels unless told otherwise) -------------------
    # Written to config.json only once set (num_labels/id2label given), as transformers' diff of the defaults.
    @property
    def id2label(self) -> dict[int, str]:
        return self._id2label if self._id2label is not None else {0: "LABEL_0", 1: "LABEL_1"}

    @id2label.setter
    def id2label(self, value: dict) -> None:
        self._id2label = {int(k): v for k, v in value.items()}
        self._label2id = None

    @property
    def label2id(self) -> dict[str, int]:
        if self._label2id is not None:
            return self._label2id
        return {v: k for k, v in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"num_labels must be a non-negative int, got {n!r}")
        self._id2label = {i: f"LABEL_{i}" for i in range(n)}
        self._label2id = None

    # --- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self._defaults:
            value = getattr(self, key)
            out[key] = value.to_dict() if isinstance(value, _SiglipBaseConfig) else copy.deepcopy(value)
        for key in self._extra_keys:
            out[key] = copy.deepcopy(getattr(self, key))
        if self.dtype is not None:
            out["dtype"] = self.dtype
        if self._id2label is not None:
            out["id2label"] = {str(k): v for k, v in self.id2label.items()}
            out["label2id"] = self.label2id
        if self.problem_type is not None:
            out["problem_type"] = self.problem_type
        out["model_type"] = self.model_type
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        """Write `to_json_string()` to `json_file_path`, as transformers' `to_json_file`.

        transformers' `use_diff=True` drops the keys equal to a bare `PreTrainedConfig()`'s (generic fields such as
        `output_hidden_states`); our configs hold no such generic defaults, so the full dict — every SigLIP field, as
        transformers also writes them — is written whatever `use_diff` is.
        """
        if not isinstance(use_diff, bool):
            raise TypeError(f"use_diff must be a bool, got {type(use_diff).__name__}")
        with open(json_file_path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> "_SiglipBaseConfig":
        """The text config, as transformers' `PreTrainedConfig.get_text_config`: a dual config's `text_config`, else
        the config itself (a text config, and a vision config too, for which transformers also returns `self`).

        transformers files `text_config` under the *decoder* names: it is returned when `decoder` and `encoder` are
        both unset (or both set) or when `decoder=True`; an encoder-only search (`decoder=False` or `encoder=True`
        alone) finds no `text_encoder` and returns the config itself — reproduced here.
        """
        text_config = getattr(self, "text_config", None)
        if isinstance(text_config, _SiglipBaseConfig) and (decoder == encoder or decoder):
            return text_config
        return self

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `config.json` atomically (a temporary file in the directory, then os.replace)."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        tmp = os.path.join(save_directory, f".{CONFIG_NAME}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self.to_json_string())
            os.replace(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.remove(tmp)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        if not isinstance(config_dict, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(config_dict).__name__}")
        config_dict = dict(config_dict)
        # A full SiglipConfig file given to a tower config: take the tower's part, as transformers does.
        if cls.base_config_key and config_dict.get("model_type") == "siglip" and cls.base_config_key in config_dict:
            config_dict = dict(config_dict[cls.base_config_key] or {})
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(
                f"{cls.__name__} expects a config with model_type {cls.model_type!r}, got {model_type!r}"
            )
        config_dict.update(kwargs)
        return cls(**config_dict)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike):
        """Read a config file; every error (not UTF-8, not JSON, not an object, a bad field) names the file."""
        from .checkpoint import read_json_file

        data = read_json_file(path, "config file")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            if type(e) not in (TypeError, ValueError):
                raise
            raise type(e)(f"config file {os.fspath(path)}: {e}") from e

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, subfolder: str = "", revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                        local_files_only: bool = False, force_download: bool = False, **kwargs: Any):
        """Read `config.json` from a checkpoint directory (or a hub id when huggingface_hub is installed).

        `subfolder` selects a directory inside either; `revision`, `cache_dir`, `token`, `local_files_only` and
        `force_download` go to huggingface_hub (as the models' from_pretrained). Other keyword arguments are set on
        the config read.
        """
        from .checkpoint import resolve_pretrained_dir

        directory = resolve_pretrained_dir(path_or_id, allow_patterns=[CONFIG_NAME],
                                           what=f"{cls.__name__}.from_pretrained", subfolder=subfolder,
                                           revision=revision, cache_dir=cache_dir, token=token,
                                           local_files_only=local_files_only, force_download=force_download)
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"no {CONFIG_NAME} in {path_or_id!s}")
        config = cls.from_json_file(path)
        for key, value in kwargs.items():
            setattr(config, key, value)
        config.validate()
        return config

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


class SiglipTextConfig(_SiglipBaseConfig):
    """The text tower's shape. Defaults are google/siglip-base-patch16-224's (transformers' defaults)."""

    model_type = "siglip_text_model"
    base_config_key = "text_config"
    _defaults = {
        "vocab_size": 32000,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 64,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
        "pad_token_id": 1,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "projection_size": None,
    }

    def _post_init(self) -> None:
        if self.projection_size is None:
            self.projection_size = self.hidden_size

    _INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "max_position_embeddings", "projection_size")

    def validate(self) -> None:
        self._check_int_types(self, self._INT_FIELDS)

    def validate_for_model(self) -> None:
        self._check_positive(self, self._INT_FIELDS)
        self._check_layers(self)


class SiglipVisionConfig(_SiglipBaseConfig):
    """The vision tower's shape. Defaults are google/siglip-base-patch16-224's (transformers' defaults)."""

    model_type = "siglip_vision_model"
    base_config_key = "vision_config"
    _defaults = {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_channels": 3,
        "image_size": 224,
        "patch_size": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
        "vision_use_head": True,
    }

    _INT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                   "image_size", "patch_size")

    def validate(self) -> None:
        self._check_int_types(self, self._INT_FIELDS)

    def validate_for_model(self) -> None:
        self._check_positive(self, self._INT_FIELDS)
        self._check_layers(self)
        if self.image_size < self.patch_size:
            raise ValueError(
                f"SiglipVisionConfig.image_size ({self.image_size}) is smaller than patch_size ({self.patch_size})"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class SiglipConfig(_SiglipBaseConfig):
    """The dual-encoder config: a text and a vision config (dicts, config objects or None for the defaults).

    Like every config here it carries the classification fields transformers' PreTrainedConfig has
    (`id2label`/`label2id`/`num_labels`, `problem_type`), used by `SiglipForImageClassification`.
    """

    model_type = "siglip"
    _defaults = {"text_config": None, "vision_config": None, "initializer_factor": 1.0}

    def __init__(self, text_config=None, vision_config=None, **kwargs: Any):
        super().__init__(text_config=text_config, vision_config=vision_config, **kwargs)

    def _post_init(self) -> None:
        self.text_config = self._sub_config(SiglipTextConfig, self.text_config, "text_config")
        self.vision_config = self._sub_config(SiglipVisionConfig, self.vision_config, "vision_config")

    @staticmethod
    def _sub_config(cls, value, name):
        if value is None:
            return cls()
        if isinstance(value, cls):
            return copy.deepcopy(value)
        if isinstance(value, dict):
            return cls.from_dict(value)
        raise TypeError(f"SiglipConfig.{name} must be a dict, a {cls.__name__} or None, got {type(value).__name__}")

    def validate_for_model(self, with_text: bool = True) -> None:
        """The towers' checks; with the text tower (SiglipModel) also that the two embeddings can be compared."""
        text, vision = self.text_config, self.vision_config
        vision.validate_for_model()
        if not with_text:
            return
        text.validate_for_model()
        if vision.vision_use_head and text.projection_size != vision.hidden_size:
            raise ValueError(
                f"SiglipConfig: text_config.projection_size ({text.projection_size}) must equal "
                f"vision_config.hidden_size ({vision.hidden_size}): the logits compare the two embeddings"
            )

    @classmethod
    def from_text_vision_configs(cls, text_config: SiglipTextConfig, vision_config: SiglipVisionConfig, **kwargs):
        """Build from the two tower configs (kept from transformers v4, where it was deprecated; removed in v5)."""
        return cls(text_config=text_config, vision_config=vision_config, **kwargs)
