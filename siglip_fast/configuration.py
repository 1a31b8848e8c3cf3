"""SigLIP configurations: the fields, defaults and `config.json` format of transformers' SigLIP configs.

`SiglipTextConfig`, `SiglipVisionConfig` and `SiglipConfig` read and write the same `config.json` as transformers
(v4 and v5): missing keys take the defaults below, unknown keys are kept (and written back), `torch_dtype` (v4, hub
files) and `dtype` (v5) are both accepted. A sub-config can be read from a full `SiglipConfig` file.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from .files import CONFIG_NAME, prepare_save_directory, read_json_file, resolve_pretrained_dir, write_file_atomically

__all__ = ["CONFIG_NAME", "SiglipConfig", "SiglipTextConfig", "SiglipVisionConfig"]

# Keys transformers' PreTrainedConfig writes that carry no model shape; kept as plain attributes when present.
_DTYPE_KEYS = ("dtype", "torch_dtype")

# The fields every transformers PreTrainedConfig has (v5), with its defaults: set from keyword arguments or a
# config.json, read by the models (output_hidden_states, output_attentions, return_dict: the defaults of the
# forward's flags), and written to config.json when they differ from these defaults, as transformers' diff does.
COMMON_FIELDS: dict[str, Any] = {
    "return_dict": True,
    "output_hidden_states": False,
    "output_attentions": False,
    "chunk_size_feed_forward": 0,
    "is_encoder_decoder": False,
    "architectures": None,
}
_DEFAULT_ID2LABEL = {0: "LABEL_0", 1: "LABEL_1"}
# Keys a config file may carry that are not fields: transformers' bookkeeping, never set as attributes.
_IGNORED_KEYS = ("model_type", "transformers_version", "_name_or_path", "_commit_hash", "_attn_implementation",
                 "_attn_implementation_internal", "_experts_implementation", "_experts_implementation_internal")
_PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")

# hidden_act values the model implements (transformers' ACT2FN names); every SigLIP checkpoint uses the first.
ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new", "gelu", "quick_gelu", "relu", "silu", "swish")


def _torch_dtype(value: Any) -> Any:
    """A dtype name as the torch.dtype it names, as transformers' configs hold it ("float32" -> torch.float32);
    anything else as given (None; a name torch lacks is reported when a model is loaded with it)."""
    if isinstance(value, str):
        import torch  # only when a config names a dtype: a bare config needs no torch

        named = getattr(torch, value.removeprefix("torch."), None)
        if isinstance(named, torch.dtype):
            return named
    return value


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


class _SiglipBaseConfig:
    """Explicit fields with defaults; anything else given is kept as an attribute and saved back.

    The PreTrainedConfig surface that callers and libraries use: `sub_configs` (class and instance), iteration and
    `in` over the field names, `to_dict()` (every field) and `to_diff_dict()` (what config.json holds: the generic
    fields only when they differ from transformers' defaults), the common fields of `COMMON_FIELDS`, and
    `_attn_implementation`, settable on every config and set on the sub-configs too (a dict value sets each config
    by key: `{"": top, "text_config": ..., "vision_config": ...}`).
    """

    model_type: str = ""
    base_config_key: str = ""
    sub_configs: dict[str, type] = {}
    _defaults: dict[str, Any] = {}
    # field -> the types a value of it may have (checked at construction and when a model is built)
    _field_types: dict[str, tuple[type, ...]] = {}
    # the common fields' defaults on the class too, as on transformers' PreTrainedConfig (a dataclass)
    return_dict: bool | None = COMMON_FIELDS["return_dict"]
    output_hidden_states: bool | None = COMMON_FIELDS["output_hidden_states"]
    output_attentions: bool | None = COMMON_FIELDS["output_attentions"]
    chunk_size_feed_forward: int = COMMON_FIELDS["chunk_size_feed_forward"]
    is_encoder_decoder: bool = COMMON_FIELDS["is_encoder_decoder"]
    architectures: list[str] | None = COMMON_FIELDS["architectures"]

    def __init__(self, **kwargs: Any):
        num_labels = kwargs.pop("num_labels", None)
        id2label = kwargs.pop("id2label", None)
        label2id = kwargs.pop("label2id", None)
        problem_type = kwargs.pop("problem_type", None)
        attn_implementation = kwargs.pop("attn_implementation", None)
        if id2label is not None:
            id2label = self._parse_id2label(id2label)
            if num_labels is not None and num_labels != len(id2label):
                raise ValueError(f"num_labels ({num_labels}) disagrees with id2label ({len(id2label)} labels)")
        self._id2label = id2label
        self._label2id = self._parse_label2id(label2id) if label2id is not None else None
        if num_labels is not None and id2label is None:
            self.num_labels = num_labels
        if problem_type not in _PROBLEM_TYPES:
            raise ValueError(f"{type(self).__name__}.problem_type must be one of {list(_PROBLEM_TYPES)}, got "
                             f"{problem_type!r}")
        self.problem_type = problem_type
        for key, default in self._defaults.items():
            setattr(self, key, copy.deepcopy(kwargs.pop(key, default)))
        for key, default in COMMON_FIELDS.items():
            setattr(self, key, copy.deepcopy(kwargs.pop(key, default)))
        dtype = None
        for key in _DTYPE_KEYS:
            value = kwargs.pop(key, None)
            dtype = value if value is not None else dtype
        self.dtype = _torch_dtype(dtype)
        for key in _IGNORED_KEYS:
            kwargs.pop(key, None)
        self._extra_keys = list(kwargs)
        for key, value in kwargs.items():
            setattr(self, key, value)
        self._post_init()
        if attn_implementation is not None:
            self._attn_implementation = attn_implementation
        self.validate()

    def _post_init(self) -> None:
        pass

    # --- checks -------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Construction-time checks: the field types (transformers' strict configs reject e.g. hidden_size="768"
        or layer_norm_eps=None too), a TypeError naming the field, what it takes and what it got. Values are checked
        by `validate_for_model()` when a model is built, as transformers accepts any value of the right type in a
        config and fails only when building or running the model."""
        for name, types in self._field_types.items():
            self._check_type(name, types)
        for name in ("return_dict", "output_hidden_states", "output_attentions"):
            self._check_type(name, (bool, type(None)))
        self._check_type("is_encoder_decoder", (bool,))
        self._check_type("chunk_size_feed_forward", (int,))
        architectures = self.architectures
        if architectures is not None and not (isinstance(architectures, list)
                                              and all(isinstance(a, str) for a in architectures)):
            raise TypeError(f"{type(self).__name__}.architectures must be a list of class names or None, got "
                            f"{architectures!r} ({_type_name(architectures)})")

    def _check_type(self, name: str, types: tuple[type, ...]) -> None:
        value = getattr(self, name)
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            expected = " or ".join("None" if t is type(None) else ("an " if t.__name__[0] in "aeiou" else "a ")
                                   + t.__name__ for t in types)
            raise TypeError(f"{type(self).__name__}.{name} must be {expected}, got {value!r} ({_type_name(value)})")

    def validate_for_model(self) -> None:
        """Raise ValueError naming the field when the values cannot describe a working model (called by the model
        classes' constructors); the types are checked again first (a field may have been set after construction)."""
        self.validate()

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
        """Set a key that is not a declared field (e.g. a custom one); it is saved with the config."""
        if key not in self._defaults and key not in COMMON_FIELDS and key not in self._extra_keys:
            self._extra_keys.append(key)
        setattr(self, key, value)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # --- attention implementation (transformers' `config._attn_implementation`) ----------------------------------
    @property
    def _attn_implementation(self) -> str | None:
        return self.__dict__.get("_attn_implementation_internal")

    @_attn_implementation.setter
    def _attn_implementation(self, value: str | dict | None) -> None:
        """Set this config's value and the sub-configs' (a dict sets each by key, "" being this config; a key left
        out keeps that config's value), as transformers' PreTrainedConfig. A value set here (or given as
        `attn_implementation=`) is a request: a model built from the config runs that attention ("eager", "sdpa" or
        "siglip_fast_triton") unless a backend is passed. The models then write here the attention that runs; to
        change what a built model runs, use `model.set_attn_implementation()`."""
        self._set_attn_implementation(value, requested=True)

    @property
    def _attn_implementation_requested(self) -> bool:
        """Whether the value was set by the user (honoured by a model built from this config) rather than written by
        a model to report what runs (which says nothing about the next model: "sdpa" is also auto on CPU)."""
        return bool(self.__dict__.get("_attn_requested"))

    def _set_attn_implementation(self, value: str | dict | None, requested: bool) -> None:
        if value is not None and not isinstance(value, (str, dict)):
            raise TypeError(f"{type(self).__name__}._attn_implementation must be a str, a dict of str or None, got "
                            f"{_type_name(value)}")
        if isinstance(value, dict):
            unknown = set(value) - {"", *self.sub_configs}
            if unknown:
                raise ValueError(f"{type(self).__name__}._attn_implementation: unknown key(s) {sorted(unknown)}; "
                                 f"the keys are '' (this config) and {sorted(self.sub_configs)}")
        if not isinstance(value, dict) or "" in value:
            self.__dict__["_attn_implementation_internal"] = value.get("") if isinstance(value, dict) else value
            self.__dict__["_attn_requested"] = requested and self._attn_implementation is not None
        for key in self.sub_configs:
            sub = getattr(self, key, None)
            if isinstance(sub, _SiglipBaseConfig) and (not isinstance(value, dict) or key in value):
                sub._set_attn_implementation(value.get(key) if isinstance(value, dict) else value, requested)

    # --- classification labels (PreTrainedConfig's behaviour: 2 labels unless told otherwise) -------------------
    # Written to config.json only when they differ from that default, as transformers' diff.
    def _parse_id2label(self, value: Any) -> dict[int, str]:
        if not isinstance(value, dict):
            raise TypeError(f"{type(self).__name__}.id2label must be a dict of class index -> label name, got "
                            f"{_type_name(value)}")
        parsed = {}
        for key, label in value.items():
            try:
                index = int(key)
            except (TypeError, ValueError):
                index = None
            if index is None or isinstance(key, bool) or isinstance(key, float) or index < 0:
                raise ValueError(f"{type(self).__name__}.id2label keys must be class indices (non-negative ints, or "
                                 f"their decimal strings as in config.json), got the key {key!r}")
            parsed[index] = label
        return parsed

    def _parse_label2id(self, value: Any) -> dict[str, int]:
        if not isinstance(value, dict):
            raise TypeError(f"{type(self).__name__}.label2id must be a dict of label name -> class index, got "
                            f"{_type_name(value)}")
        return dict(value)

    @property
    def id2label(self) -> dict[int, str]:
        return self._id2label if self._id2label is not None else dict(_DEFAULT_ID2LABEL)

    @id2label.setter
    def id2label(self, value: dict) -> None:
        self._id2label = self._parse_id2label(value)
        self._label2id = None

    @property
    def label2id(self) -> dict[str, int]:
        if self._label2id is not None:
            return self._label2id
        return {v: k for k, v in self.id2label.items()}

    @label2id.setter
    def label2id(self, value: dict) -> None:
        self._label2id = self._parse_label2id(value)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"num_labels must be a non-negative int, got {n!r}")
        self._id2label = {i: f"LABEL_{i}" for i in range(n)}
        self._label2id = None

    # --- iteration (PreTrainedConfig iterates its attribute names) -----------------------------------------------
    def _field_names(self) -> list[str]:
        names = [*self._defaults, *COMMON_FIELDS, "dtype", "id2label", "label2id", "problem_type"]
        return names + [k for k in self._extra_keys if k not in names]

    def __iter__(self):
        """The names of the config's fields (declared, common, labels and the extra keys it carries), as
        `for key in config: getattr(config, key)` in transformers."""
        return iter(self._field_names())

    def __contains__(self, key: object) -> bool:
        return key in self._field_names()

    # --- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field: the declared ones, the common PreTrainedConfig fields, dtype, the labels and the extra keys
        (as transformers' `to_dict`, without its bookkeeping keys); sub-configs as dicts."""
        out: dict[str, Any] = {}
        for key in self._field_names():
            value = getattr(self, key)
            out[key] = value.to_dict() if isinstance(value, _SiglipBaseConfig) else copy.deepcopy(value)
        if out["dtype"] is not None and not isinstance(out["dtype"], str):  # a torch.dtype set on the config
            out["dtype"] = str(out["dtype"]).removeprefix("torch.")
        out["model_type"] = self.model_type
        return dict(sorted(out.items()))

    def to_diff_dict(self) -> dict[str, Any]:
        """What config.json holds (transformers' `to_diff_dict`): every SigLIP field and extra key, and the common
        fields, dtype and labels only where they differ from a bare PreTrainedConfig's; sub-configs the same way."""
        out = self.to_dict()
        for key in self.sub_configs:
            value = getattr(self, key, None)
            if isinstance(value, _SiglipBaseConfig):
                out[key] = value.to_diff_dict()
        for key, default in {**COMMON_FIELDS, "dtype": None, "problem_type": None}.items():
            if key in out and out[key] == default:
                del out[key]
        if self._id2label is None or self._id2label == _DEFAULT_ID2LABEL:
            out.pop("id2label")
            if self.label2id == {v: k for k, v in _DEFAULT_ID2LABEL.items()}:
                out.pop("label2id")
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        """The config as JSON: `to_diff_dict()` (what config.json holds), or with use_diff=False `to_dict()`."""
        if not isinstance(use_diff, bool):
            raise TypeError(f"use_diff must be a bool, got {type(use_diff).__name__}")
        data = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps(_json_keys(data), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        """Write `to_json_string(use_diff)` to `json_file_path`, as transformers' `to_json_file`."""
        text = self.to_json_string(use_diff)
        with open(json_file_path, "w", encoding="utf-8") as f:
            f.write(text)

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
        """Write `config.json` (`to_json_string()`) atomically: a temporary file in the directory, then os.replace.
        A save_directory that is empty or an existing file is a ValueError; a failed write an OSError naming the
        file, the previous config.json left as it was."""
        directory = prepare_save_directory(save_directory, f"{type(self).__name__}.save_pretrained")
        text = self.to_json_string()

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)

        write_file_atomically(os.path.join(directory, CONFIG_NAME), write)

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
        directory = resolve_pretrained_dir(path_or_id, allow_patterns=[CONFIG_NAME],
                                           what=f"{cls.__name__}.from_pretrained", subfolder=subfolder,
                                           revision=revision, cache_dir=cache_dir, token=token,
                                           local_files_only=local_files_only, force_download=force_download)
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"no {CONFIG_NAME} in {path_or_id!s}")
        config = cls.from_json_file(path)
        for key, value in kwargs.items():
            current = getattr(config, key, None)
            if isinstance(current, _SiglipBaseConfig) and isinstance(value, dict):  # update that sub-config's fields
                value = type(current).from_dict({**current.to_dict(), **value})
            setattr(config, key, value)
        config.validate()
        return config

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


def _json_keys(value: Any) -> Any:
    """Dict keys as JSON writes them (id2label's int keys become strings), so sort_keys never compares int to str."""
    if isinstance(value, dict):
        return {str(k): _json_keys(v) for k, v in value.items()}
    return value


# The encoder fields both towers have, and the types a value may take (an int is a valid float, a bool is not).
_LAYER_FIELD_TYPES = {"hidden_act": (str,), "layer_norm_eps": (float, int), "attention_dropout": (float, int)}


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
    _field_types = {**dict.fromkeys(_INT_FIELDS, (int,)), **_LAYER_FIELD_TYPES,
                    **dict.fromkeys(("pad_token_id", "bos_token_id", "eos_token_id"), (int, type(None)))}

    def validate_for_model(self) -> None:
        super().validate_for_model()
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
    _field_types = {**dict.fromkeys(_INT_FIELDS, (int,)), **_LAYER_FIELD_TYPES, "vision_use_head": (bool,)}

    def validate_for_model(self) -> None:
        super().validate_for_model()
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
    sub_configs = {"text_config": SiglipTextConfig, "vision_config": SiglipVisionConfig}
    _defaults = {"text_config": None, "vision_config": None, "initializer_factor": 1.0}
    _field_types = {"initializer_factor": (float, int)}

    def __init__(self, text_config=None, vision_config=None, **kwargs: Any):
        super().__init__(text_config=text_config, vision_config=vision_config, **kwargs)

    def _post_init(self) -> None:
        for name, cls in self.sub_configs.items():
            setattr(self, name, self._sub_config(cls, getattr(self, name), name))

    def _sub_config(self, cls, value, name):
        if value is None:
            return cls()
        if isinstance(value, cls):
            return copy.deepcopy(value)
        if isinstance(value, dict):
            return cls.from_dict(value)
        raise TypeError(f"{type(self).__name__}.{name} must be a dict, a {cls.__name__} or None, got "
                        f"{type(value).__name__}")

    def validate(self) -> None:
        super().validate()
        for name, cls in self.sub_configs.items():
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"{type(self).__name__}.{name} must be a {cls.__name__}, got "
                                f"{type(getattr(self, name)).__name__}")

    def validate_for_model(self, with_text: bool = True) -> None:
        """The towers' checks; with the text tower (SiglipModel) also that the two embeddings can be compared."""
        super().validate_for_model()
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
