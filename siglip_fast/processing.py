"""SigLIP's processor: the tokenizer and the image processor behind one call, saved as transformers v5 saves it."""

from __future__ import annotations

import json
import os
from typing import Any

from .checkpoint import resolve_pretrained_dir
from .image_processing import (
    IMAGE_PROCESSOR_FILE,
    PROCESSOR_FILE,
    BatchFeature,
    SiglipImageProcessor,
    read_image_processor_config,
)
from .tokenization import (
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    VOCAB_FILE,
    SiglipTokenizer,
)

_TEXT_KEYS = ("text_pair", "add_special_tokens", "padding", "truncation", "max_length", "pad_to_multiple_of",
              "padding_side", "return_attention_mask", "return_token_type_ids", "return_special_tokens_mask",
              "return_length")
_TOKENIZER_INIT_KEYS = ("model_max_length", "model_input_names", "padding_side", "truncation_side", "do_lower_case",
                        "eos_token", "unk_token", "pad_token", "additional_special_tokens", "extra_special_tokens",
                        "sp_model_kwargs", "clean_up_tokenization_spaces")
_IMAGE_CALL_EXTRAS = ("return_uint8", "num_workers")
_UNSET = object()


class SiglipProcessor:
    """`processor(images=..., text=...)` -> BatchFeature with `pixel_values` and/or `input_ids` (+ `attention_mask`
    when the tokenizer's `model_input_names` list it), as transformers' `SiglipProcessor`.

    Text options go to the tokenizer, image options to the image processor (or pass `text_kwargs={...}` /
    `images_kwargs={...}`); `return_tensors` applies to both.

    One deliberate difference from transformers: when the caller does not say how to pad (no `padding`
    argument), texts are padded to `max_length` (the tokenizer's `model_max_length`: 64, or 16 for
    so400m-patch14-224) with truncation, because SigLIP was trained that way; ragged or longest padding silently
    changes the text embeddings (last-token pooling, no attention mask). Pass `padding=...` explicitly to get
    transformers' behaviour exactly (transformers pads nothing by default).
    """

    attributes = ["image_processor", "tokenizer"]
    # what a subclass (e.g. SigLIP 2's processor) swaps: the part classes and the name written to the files
    image_processor_class = SiglipImageProcessor
    tokenizer_class = SiglipTokenizer
    processor_class = "SiglipProcessor"

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
            raise ValueError("SiglipProcessor needs text=, images= or both")
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
        for key, value in kwargs.items():
            if key in _TEXT_KEYS:
                text_kwargs[key] = value
            elif key in image_keys:
                images_kwargs[key] = value
            else:
                raise TypeError(f"SiglipProcessor got an unexpected option {key!r}; text options: {list(_TEXT_KEYS)}, "
                                f"image options: {list(image_keys)}")
        if padding is not _UNSET:
            text_kwargs["padding"] = padding
        if "padding" not in text_kwargs:  # SigLIP's training setting, see the class docstring
            text_kwargs["padding"] = "max_length"
            text_kwargs.setdefault("truncation", True)
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

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write what transformers v5 writes: processor_config.json (with the image processor nested), spiece.model
        and tokenizer_config.json."""
        if not isinstance(save_directory, (str, os.PathLike)):
            raise TypeError(f"save_directory must be a path, got {type(save_directory).__name__}")
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory: {save_directory!r} is a file, expected a directory")
        os.makedirs(save_directory, exist_ok=True)
        written = self.tokenizer.save_pretrained(save_directory, processor_class=self.processor_class)
        path = os.path.join(save_directory, PROCESSOR_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"image_processor": self.image_processor.to_dict(), "processor_class": self.processor_class}, f,
                      indent=2, sort_keys=True)
            f.write("\n")
        return [*written, path]

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, revision: str | None = None,
                        **overrides) -> "SiglipProcessor":
        """Load from a directory (v5 processor_config.json or v4/hub preprocessor_config.json, plus the tokenizer
        files) or a hub id (needs huggingface_hub). `overrides` go to the part that has them, as in transformers:
        tokenizer options (`model_max_length=16`...) to the tokenizer, image options (`size=...`) to the image
        processor."""
        text_overrides, image_overrides = {}, {}
        image_keys = (*cls.image_processor_class.config_keys, "num_workers")
        for key, value in overrides.items():
            if key in _TOKENIZER_INIT_KEYS:
                text_overrides[key] = value
            elif key in image_keys:
                image_overrides[key] = value
            else:
                raise TypeError(f"SiglipProcessor.from_pretrained got an unexpected option {key!r}; tokenizer "
                                f"options: {list(_TOKENIZER_INIT_KEYS)}, image options: "
                                f"{list(image_keys)}")
        directory = resolve_pretrained_dir(
            path_or_id, what=f"{cls.__name__}.from_pretrained", revision=revision,
            allow_patterns=[PROCESSOR_FILE, IMAGE_PROCESSOR_FILE, VOCAB_FILE, TOKENIZER_CONFIG_FILE,
                            SPECIAL_TOKENS_MAP_FILE])
        image_processor = cls.image_processor_class.from_dict(read_image_processor_config(directory),
                                                              **image_overrides)
        return cls(image_processor, cls.tokenizer_class.from_pretrained(directory, **text_overrides))

    def __repr__(self) -> str:
        return f"SiglipProcessor(\n  image_processor={self.image_processor!r},\n  tokenizer={self.tokenizer!r})"
