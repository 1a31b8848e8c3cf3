"""SigLIP 2's processor: the Gemma tokenizer and an image processor behind one call, as transformers'
`Siglip2Processor`; and `load_processor`, which picks the right processor for any SigLIP / SigLIP 2 directory.

Texts are padded to 64 tokens with truncation by default (transformers' `Siglip2Processor` defaults: SigLIP 2 was
trained that way). SigLIP 2 was also trained on lowercased text: `Siglip2Tokenizer` (what transformers picks for
NaFlex checkpoints) lowercases; the fixed-resolution checkpoints' tokenizer_config names `GemmaTokenizer`, which
transformers loads as is (no lowercasing), and so does this module: lowercase the texts yourself, or pass
`lowercase=True` to `from_pretrained`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .checkpoint import resolve_pretrained_dir
from .image_processing import (
    _CONFIG_KEYS as _SIGLIP_IMAGE_KEYS,
)
from .image_processing import (
    IMAGE_PROCESSOR_FILE,
    PROCESSOR_FILE,
    BatchFeature,
    SiglipImageProcessor,
    read_image_processor_config,
)
from .image_processing_siglip2 import _CONFIG_KEYS as _SIGLIP2_IMAGE_KEYS
from .image_processing_siglip2 import Siglip2ImageProcessor
from .tokenization import SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE, VOCAB_FILE
from .tokenization_gemma import GEMMA_VOCAB_FILE, GemmaTokenizer, Siglip2Tokenizer, read_tokenizer_config

_TEXT_KEYS = ("add_special_tokens", "padding", "truncation", "max_length", "pad_to_multiple_of", "padding_side",
              "return_attention_mask")
_IMAGE_CALL_KEYS = tuple(dict.fromkeys((*_SIGLIP_IMAGE_KEYS, *_SIGLIP2_IMAGE_KEYS, "return_uint8", "num_workers")))
TEXT_DEFAULTS = {"padding": "max_length", "truncation": True, "max_length": 64}


class Siglip2Processor:
    """`processor(images=..., text=...)` → BatchFeature with `input_ids` (+ `attention_mask`) and the image
    processor's outputs, as transformers' `Siglip2Processor`.

    `image_processor` is a `Siglip2ImageProcessor` (NaFlex: `pixel_values`, `pixel_attention_mask`,
    `spatial_shapes`) or, for the fixed-resolution SigLIP 2 checkpoints, a `SiglipImageProcessor` (`pixel_values`);
    `tokenizer` a `GemmaTokenizer` / `Siglip2Tokenizer`. Text defaults: `padding="max_length", truncation=True,
    max_length=64` (override per call). Text options go to the tokenizer, image options to the image processor (or
    pass `text_kwargs={...}` / `images_kwargs={...}`); `return_tensors` applies to both.
    """

    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor: Siglip2ImageProcessor | SiglipImageProcessor, tokenizer: GemmaTokenizer):
        if not isinstance(image_processor, SiglipImageProcessor):
            raise TypeError(f"image_processor must be a Siglip2ImageProcessor or SiglipImageProcessor, got "
                            f"{type(image_processor).__name__}")
        if not isinstance(tokenizer, GemmaTokenizer):
            raise TypeError(f"tokenizer must be a GemmaTokenizer or Siglip2Tokenizer, got {type(tokenizer).__name__}")
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @property
    def model_input_names(self) -> list[str]:
        return [*self.tokenizer.model_input_names, *self.image_processor.model_input_names]

    def __call__(self, images: Any = None, text: Any = None, *, return_tensors: str | None = None,
                 text_kwargs: dict | None = None, images_kwargs: dict | None = None, **kwargs) -> BatchFeature:
        if images is None and text is None:
            raise ValueError("Siglip2Processor needs text=, images= or both")
        text_kwargs = {**TEXT_DEFAULTS, **(text_kwargs or {})}
        images_kwargs = dict(images_kwargs or {})
        for key, value in kwargs.items():
            if key in _TEXT_KEYS:
                text_kwargs[key] = value
            elif key in _IMAGE_CALL_KEYS:
                images_kwargs[key] = value
            else:
                raise TypeError(f"Siglip2Processor got an unexpected option {key!r}; text options: "
                                f"{list(_TEXT_KEYS)}, image options: {list(_IMAGE_CALL_KEYS)}")
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
        """Write what transformers v5 writes: processor_config.json (the image processor nested), tokenizer.model
        and tokenizer_config.json."""
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory: {save_directory!r} is a file, expected a directory")
        os.makedirs(save_directory, exist_ok=True)
        written = self.tokenizer.save_pretrained(save_directory, processor_class="Siglip2Processor")
        path = os.path.join(save_directory, PROCESSOR_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"image_processor": self.image_processor.to_dict(), "processor_class": "Siglip2Processor"}, f,
                      indent=2, sort_keys=True)
            f.write("\n")
        return [*written, path]

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, revision: str | None = None,
                        lowercase: bool | None = None) -> "Siglip2Processor":
        """Load from a SigLIP 2 directory (NaFlex or fixed-resolution) or hub id.

        The image processor follows its config (`Siglip2ImageProcessor` or `SiglipImageProcessor`); the tokenizer is
        `tokenizer.model` loaded as transformers' `AutoTokenizer` loads it: `Siglip2Tokenizer` (lowercasing) for
        model_type "siglip2" or when tokenizer_config names it, `GemmaTokenizer` otherwise. `lowercase` overrides."""
        directory = resolve_pretrained_dir(
            path_or_id, what="Siglip2Processor.from_pretrained", revision=revision,
            allow_patterns=[PROCESSOR_FILE, IMAGE_PROCESSOR_FILE, GEMMA_VOCAB_FILE, TOKENIZER_CONFIG_FILE,
                            SPECIAL_TOKENS_MAP_FILE, "config.json"])
        image_config = read_image_processor_config(directory)
        kind = str(image_config.get("image_processor_type", "SiglipImageProcessor"))
        if kind.removesuffix("Pil").removesuffix("Fast") == "Siglip2ImageProcessor":
            image_processor = Siglip2ImageProcessor.from_dict(image_config)
        else:
            image_processor = SiglipImageProcessor.from_dict(image_config)
        tokenizer_class = _tokenizer_class(directory, lowercase)
        return cls(image_processor, tokenizer_class.from_pretrained(directory))

    def __repr__(self) -> str:
        return f"Siglip2Processor(\n  image_processor={self.image_processor!r},\n  tokenizer={self.tokenizer!r})"


def _model_type(directory: str) -> str | None:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("model_type")


def _tokenizer_class(directory: str, lowercase: bool | None) -> type[GemmaTokenizer]:
    if lowercase is not None:
        return Siglip2Tokenizer if lowercase else GemmaTokenizer
    declared = str(read_tokenizer_config(directory).get("tokenizer_class") or "").removesuffix("Fast")
    # transformers lists siglip2 among the models whose hub tokenizer_class is wrong: model_type wins there
    if _model_type(directory) == "siglip2" or declared == "Siglip2Tokenizer":
        return Siglip2Tokenizer
    return GemmaTokenizer


def load_processor(path_or_id: str | os.PathLike, *, revision: str | None = None):
    """The processor of any SigLIP or SigLIP 2 checkpoint directory: `SiglipProcessor` when it holds SigLIP's
    `spiece.model`, `Siglip2Processor` when it holds Gemma's `tokenizer.model` (NaFlex, or fixed-resolution SigLIP 2
    whose model loads into `SiglipModel`)."""
    from .processing import SiglipProcessor

    directory = resolve_pretrained_dir(
        path_or_id, what="load_processor", revision=revision,
        allow_patterns=[PROCESSOR_FILE, IMAGE_PROCESSOR_FILE, GEMMA_VOCAB_FILE, VOCAB_FILE, TOKENIZER_CONFIG_FILE,
                        SPECIAL_TOKENS_MAP_FILE, "config.json"])
    if os.path.isfile(os.path.join(directory, GEMMA_VOCAB_FILE)):
        return Siglip2Processor.from_pretrained(directory)
    if os.path.isfile(os.path.join(directory, VOCAB_FILE)):
        return SiglipProcessor.from_pretrained(directory)
    raise FileNotFoundError(f"load_processor: neither {GEMMA_VOCAB_FILE} (SigLIP 2) nor {VOCAB_FILE} (SigLIP) in "
                            f"{os.fspath(path_or_id)!r}")
