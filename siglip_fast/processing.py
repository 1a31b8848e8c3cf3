"""SigLIP's processor: the tokenizer and the image processor behind one call, saved as transformers v5 saves it."""

from __future__ import annotations

import json
import os
from typing import Any

from .files import prepare_save_directory, resolve_pretrained_dir
from .image_processing import (
    IMAGE_PROCESSOR_FILE,
    PROCESSOR_FILE,
    BatchFeature,
    SiglipImageProcessor,
    read_image_processor_config,
)
from .tokenization import (
    CALL_DEFAULT_KEYS,
    LARGE_INTEGER,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    VOCAB_FILE,
    SiglipTokenizer,
)
from .tokenization_gemma import GEMMA_JSON_FILE, GEMMA_VOCAB_FILE, gemma_tokenizer_class

_TEXT_KEYS = ("text_pair", "add_special_tokens", "padding", "truncation", "max_length", "pad_to_multiple_of",
              "padding_side", "return_attention_mask", "return_token_type_ids", "return_special_tokens_mask",
              "return_length")
_TOKENIZER_INIT_KEYS = ("model_max_length", "model_input_names", "padding_side", "truncation_side", "do_lower_case",
                        "eos_token", "unk_token", "pad_token", "additional_special_tokens", "extra_special_tokens",
                        "sp_model_kwargs", "clean_up_tokenization_spaces", "bos_token", "mask_token", "add_bos_token",
                        "add_eos_token", *CALL_DEFAULT_KEYS)
_IMAGE_CALL_EXTRAS = ("return_uint8", "num_workers")
_UNSET = object()
# max_length of the default padding when the tokenizer's model_max_length is unlimited (SigLIP 2's Gemma configs):
# SigLIP 2's text length, transformers' Siglip2Processor default
DEFAULT_TEXT_LENGTH = 64


def _route(options: dict, *parts: tuple[str, tuple, dict], what: str) -> None:
    """Put each option into the dict of the part (name, keys, dict) that has it; TypeError for one none has."""
    for key, value in options.items():
        target = next((into for _, keys, into in parts if key in keys), None)
        if target is None:
            raise TypeError(f"{what} got an unexpected option {key!r}; " + ", ".join(
                f"{name} options: {list(keys)}" for name, keys, _ in parts))
        target[key] = value


class SiglipProcessor:
    """`processor(images=..., text=...)` -> BatchFeature with `pixel_values` and/or `input_ids` (+ `attention_mask`
    when the tokenizer's `model_input_names` list it), as transformers' `SiglipProcessor`.

    Text options go to the tokenizer, image options to the image processor (or pass `text_kwargs={...}` /
    `images_kwargs={...}`); `return_tensors` applies to both.

    One deliberate difference from transformers: when the caller does not say how to pad (no `padding`
    argument), texts are padded to `max_length` (the tokenizer's `model_max_length`: 64, or 16 for
    so400m-patch14-224; 64 when it is unlimited, as in SigLIP 2's Gemma configs) with truncation, because SigLIP
    was trained that way; ragged or longest padding silently changes the text embeddings (last-token pooling, no
    attention mask). Pass `padding=...` explicitly to get transformers' behaviour exactly (transformers pads nothing
    by default).

    The tokenizer may be a `GemmaTokenizer` (a fixed-resolution SigLIP 2 checkpoint: model_type "siglip" with
    Gemma's tokenizer.model, which `from_pretrained` loads as transformers' AutoTokenizer does).

    Extension points (see `Siglip2Processor`): the class attributes below, `text_defaults` (text options applied
    to every call unless given) and `_tokenizer_class_for` (the tokenizer class for a directory).
    """

    attributes = ["image_processor", "tokenizer"]
    # what a subclass (e.g. SigLIP 2's processor) swaps: the part classes and the name written to the files
    image_processor_class = SiglipImageProcessor  # accepted by __init__ (subclasses included)
    image_processor_classes: tuple = (SiglipImageProcessor,)  # from_pretrained picks by image_processor_type
    tokenizer_class = SiglipTokenizer  # accepted by __init__ (subclasses included: GemmaTokenizer)
    processor_class = "SiglipProcessor"
    text_defaults: dict = {}

    def __init__(self, image_processor: SiglipImageProcessor, tokenizer: SiglipTokenizer):
        if not isinstance(image_processor, self.image_processor_class):
            raise TypeError(f"image_processor must be a {self.image_processor_class.__name__}, got "
                            f"{type(image_processor).__name__}")
        if not isinstance(tokenizer, self.tokenizer_class):
            raise TypeError(f"tokenizer must be a {self.tokenizer_class.__name__}, got {type(tokenizer).__name__}")
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @property
    def model_input_names(self) -> list[str]:
        """The image processor's then the tokenizer's, in transformers' attribute order."""
        return [*self.image_processor.model_input_names, *self.tokenizer.model_input_names]

    def __call__(self, images: Any = None, text: Any = None, *, padding: Any = _UNSET,
                 return_tensors: str | None = None, text_kwargs: dict | None = None,
                 images_kwargs: dict | None = None, **kwargs) -> BatchFeature:
        if images is None and text is None:
            raise ValueError(f"{type(self).__name__} needs text=, images= or both")
        for name, value in (("text_kwargs", text_kwargs), ("images_kwargs", images_kwargs)):
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"{name} must be a dict, got {type(value).__name__}")
        text_kwargs = dict(text_kwargs or {})
        images_kwargs = dict(images_kwargs or {})
        image_keys = (*self.image_processor.config_keys, *_IMAGE_CALL_EXTRAS)
        for key in text_kwargs:
            if key not in _TEXT_KEYS:
                raise TypeError(f"text_kwargs: unexpected option {key!r}; text options: {list(_TEXT_KEYS)}")
        for key in images_kwargs:
            if key not in image_keys:
                raise TypeError(f"images_kwargs: unexpected option {key!r}; image options: {list(image_keys)}")
        plain = dict(kwargs) if padding is _UNSET else {**kwargs, "padding": padding}
        for modality, given in (("text_kwargs", text_kwargs), ("images_kwargs", images_kwargs)):
            for key in given:
                if key in plain:  # transformers' ProcessorMixin._merge_kwargs error, word for word
                    raise ValueError(f"Keyword argument {key} was passed two times:\n"
                                     f"in a dictionary for {modality} and as a **kwarg.")
        _route(kwargs, ("text", _TEXT_KEYS, text_kwargs), ("image", image_keys, images_kwargs),
               what=type(self).__name__)
        if padding is not _UNSET:
            text_kwargs["padding"] = padding
        # the tokenizer's init call defaults (from_pretrained(..., max_length=...)), over the class's, as transformers
        for key, value in getattr(self.tokenizer, "call_defaults", {}).items():
            text_kwargs.setdefault(key, value)
        for key, value in self.text_defaults.items():
            text_kwargs.setdefault(key, value)
        if "padding" not in text_kwargs:  # SigLIP's training setting, see the class docstring
            text_kwargs["padding"] = "max_length"
            text_kwargs.setdefault("truncation", True)
            if self.tokenizer.model_max_length > LARGE_INTEGER:
                text_kwargs.setdefault("max_length", DEFAULT_TEXT_LENGTH)
        if text is None and text_kwargs.get("text_pair") is not None:
            raise ValueError("text_pair needs text= as well")
        out = BatchFeature()
        if text is not None:
            out.update(self.tokenizer(text, return_tensors=return_tensors, **text_kwargs))
        if images is not None:
            out.update(self.image_processor(images, return_tensors=return_tensors, **images_kwargs))
        return out

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def to_dict(self) -> dict:
        """processor_config.json's content, as transformers' `ProcessorMixin.to_dict`: the image processor's
        `to_dict` nested under "image_processor", and "processor_class" (the tokenizer is saved on its own)."""
        return {"image_processor": self.image_processor.to_dict(), "processor_class": self.processor_class}

    def to_json_string(self) -> str:
        """The JSON transformers writes to processor_config.json (sorted keys, 2-space indent, trailing newline)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        if not isinstance(json_file_path, (str, os.PathLike)):
            raise TypeError(f"json_file_path must be a path, got {type(json_file_path).__name__}")
        with open(json_file_path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write what transformers v5 writes: processor_config.json (with the image processor nested), the
        tokenizer's model (spiece.model / tokenizer.model) and tokenizer_config.json.

        Returns the written paths, processor_config.json first: transformers returns `[processor_config.json]`
        alone, so `save_pretrained(d)[0]` is the same JSON file with both; the tokenizer's files follow."""
        save_directory = prepare_save_directory(save_directory, f"{type(self).__name__}.save_pretrained")
        written = self.tokenizer.save_pretrained(save_directory, processor_class=self.processor_class)
        path = os.path.join(save_directory, PROCESSOR_FILE)
        self.to_json_file(path)
        return [path, *written]

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, revision: str | None = None,
                        lowercase: bool | None = None, **overrides) -> "SiglipProcessor":
        """Load from a directory (v5 processor_config.json or v4/hub preprocessor_config.json, plus the tokenizer
        files) or a hub id (needs huggingface_hub). `overrides` go to the part that has them, as in transformers:
        tokenizer options (`model_max_length=16`...) to the tokenizer, image options (`size=...`) to the image
        processor.

        A fixed-resolution SigLIP 2 directory (Gemma's tokenizer.model, no spiece.model) gets the Gemma tokenizer
        transformers' AutoTokenizer gives it (`GemmaTokenizer`, or `Siglip2Tokenizer` where tokenizer_config.json
        or model_type "siglip2" says so); `lowercase=True` / `False` picks `Siglip2Tokenizer` / `GemmaTokenizer`
        instead (Gemma tokenizers only)."""
        text_overrides, image_overrides = {}, {}
        image_keys = tuple(dict.fromkeys(k for c in cls.image_processor_classes for k in (*c.config_keys,
                                                                                        "num_workers")))
        _route(overrides, ("tokenizer", _TOKENIZER_INIT_KEYS, text_overrides), ("image", image_keys, image_overrides),
               what=f"{cls.__name__}.from_pretrained")
        if lowercase is not None and not isinstance(lowercase, bool):
            raise TypeError(f"lowercase must be a bool or None, got {type(lowercase).__name__}")
        directory = resolve_pretrained_dir(
            path_or_id, what=f"{cls.__name__}.from_pretrained", revision=revision,
            allow_patterns=[PROCESSOR_FILE, IMAGE_PROCESSOR_FILE, VOCAB_FILE, GEMMA_VOCAB_FILE, GEMMA_JSON_FILE,
                            TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, "config.json"])
        image_config = read_image_processor_config(directory)
        kind = str(image_config.get("image_processor_type", "")).removesuffix("Pil").removesuffix("Fast")
        image_class = next((c for c in cls.image_processor_classes if c.image_processor_type == kind),
                           cls.image_processor_classes[-1])  # from_dict names a mismatch
        image_processor = image_class.from_dict(image_config, **image_overrides)
        tokenizer_class = cls._tokenizer_class_for(directory, lowercase)
        return cls(image_processor, tokenizer_class.from_pretrained(directory, **text_overrides))

    @classmethod
    def _tokenizer_class_for(cls, directory: str, lowercase: bool | None) -> type[SiglipTokenizer]:
        """SigLIP's tokenizer for spiece.model; Gemma's for a directory with only tokenizer.model or tokenizer.json
        (fixed-resolution SigLIP 2)."""
        if not os.path.isfile(os.path.join(directory, VOCAB_FILE)) and any(
                os.path.isfile(os.path.join(directory, name)) for name in (GEMMA_VOCAB_FILE, GEMMA_JSON_FILE)):
            return gemma_tokenizer_class(directory, lowercase)
        if lowercase is not None:
            raise ValueError(f"lowercase= picks a Gemma tokenizer (SigLIP 2), but {directory!r} holds SigLIP's "
                             f"{VOCAB_FILE}; SigLIP's tokenizer lowercases by itself (do_lower_case)")
        return cls.tokenizer_class

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(\n  image_processor={self.image_processor!r},\n  tokenizer="
                f"{self.tokenizer!r})")
