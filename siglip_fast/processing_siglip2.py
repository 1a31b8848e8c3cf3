"""SigLIP 2's processor: the Gemma tokenizer and an image processor behind one call, as transformers'
`Siglip2Processor`; and `load_processor`, which picks the right processor for any SigLIP / SigLIP 2 directory.

`Siglip2Processor` is a `SiglipProcessor` (siglip_fast.processing) with SigLIP 2's parts and text defaults: texts
are padded to 64 tokens with truncation by default (transformers' `Siglip2Processor` defaults: SigLIP 2 was
trained that way). SigLIP 2 was also trained on lowercased text: `Siglip2Tokenizer` (what transformers picks for
NaFlex checkpoints) lowercases; the fixed-resolution checkpoints' tokenizer_config names `GemmaTokenizer`, which
transformers loads as is (no lowercasing), and so does this module: lowercase the texts yourself, or pass
`lowercase=True` to `from_pretrained`.
"""

from __future__ import annotations

import os

from .checkpoint import resolve_pretrained_dir
from .image_processing import IMAGE_PROCESSOR_FILE, PROCESSOR_FILE, SiglipImageProcessor
from .image_processing_siglip2 import Siglip2ImageProcessor
from .processing import SiglipProcessor
from .tokenization import SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE, VOCAB_FILE
from .tokenization_gemma import GEMMA_JSON_FILE, GEMMA_VOCAB_FILE, GemmaTokenizer, gemma_tokenizer_class

TEXT_DEFAULTS = {"padding": "max_length", "truncation": True, "max_length": 64}


class Siglip2Processor(SiglipProcessor):
    """`processor(images=..., text=...)` → BatchFeature with `input_ids` (+ `attention_mask`) and the image
    processor's outputs, as transformers' `Siglip2Processor`.

    `image_processor` is a `Siglip2ImageProcessor` (NaFlex: `pixel_values`, `pixel_attention_mask`,
    `spatial_shapes`) or, for the fixed-resolution SigLIP 2 checkpoints, a `SiglipImageProcessor` (`pixel_values`);
    `tokenizer` a `GemmaTokenizer` / `Siglip2Tokenizer`. Text defaults: `padding="max_length", truncation=True,
    max_length=64` (each overridable per call). Text options (pairs included) go to the tokenizer, image options to
    the image processor (or pass `text_kwargs={...}` / `images_kwargs={...}`); `return_tensors` applies to both.
    `from_pretrained(..., lowercase=True)` picks `Siglip2Tokenizer` whatever the directory says.
    """

    image_processor_classes = (Siglip2ImageProcessor, SiglipImageProcessor)
    tokenizer_class = GemmaTokenizer
    processor_class = "Siglip2Processor"
    text_defaults = TEXT_DEFAULTS

    @classmethod
    def _tokenizer_class_for(cls, directory: str, lowercase: bool | None) -> type[GemmaTokenizer]:
        return gemma_tokenizer_class(directory, lowercase)


def load_processor(path_or_id: str | os.PathLike, *, revision: str | None = None):
    """The processor of any SigLIP or SigLIP 2 checkpoint directory: `SiglipProcessor` when it holds SigLIP's
    `spiece.model`, `Siglip2Processor` when it holds Gemma's `tokenizer.model` (NaFlex, or fixed-resolution SigLIP 2
    whose model loads into `SiglipModel`)."""
    directory = resolve_pretrained_dir(
        path_or_id, what="load_processor", revision=revision,
        allow_patterns=[PROCESSOR_FILE, IMAGE_PROCESSOR_FILE, GEMMA_VOCAB_FILE, GEMMA_JSON_FILE, VOCAB_FILE,
                        TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, "config.json"])
    if os.path.isfile(os.path.join(directory, GEMMA_VOCAB_FILE)):
        return Siglip2Processor.from_pretrained(directory)
    if os.path.isfile(os.path.join(directory, VOCAB_FILE)):
        return SiglipProcessor.from_pretrained(directory)
    if os.path.isfile(os.path.join(directory, GEMMA_JSON_FILE)):  # saved by transformers 5: only tokenizer.json
        return Siglip2Processor.from_pretrained(directory)
    raise FileNotFoundError(f"load_processor: neither {GEMMA_VOCAB_FILE} / {GEMMA_JSON_FILE} (SigLIP 2) nor "
                            f"{VOCAB_FILE} (SigLIP) in "
                            f"{os.fspath(path_or_id)!r}")
