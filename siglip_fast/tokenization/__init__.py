"""SigLIP's sentencepiece tokenizer: the same ids as transformers' `SiglipTokenizer`, encoded in batches.

The package, one part of the tokenizer per module (each readable on its own):
  - `vocabulary.py`: the sentencepiece model, special and added tokens, ids <-> tokens, the normalisation;
  - `encoding.py`: texts and pairs -> rows of ids with the special tokens, truncation;
  - `padding.py`: padding and the lengths a call resolves to, `pad`;
  - `tokenizer.py`: `SiglipTokenizer` itself, the transformers-compatible surface (the call, decoding, files);
  - `batch.py`: `BatchEncoding`, the dict every preprocessing call returns;
  - `config.py`: file names, reading tokenizer_config.json, the small helpers the parts share.
"""

from .batch import BatchEncoding, _to_tensors
from .config import (
    CALL_DEFAULT_KEYS,
    LARGE_INTEGER,
    SPECIAL_TOKENS_MAP_FILE,
    SPIECE_UNDERLINE,
    TOKENIZER_CONFIG_FILE,
    VOCAB_FILE,
    _read_json,
    read_tokenizer_config,
)
from .tokenizer import SiglipTokenizer

__all__ = ["BatchEncoding", "SiglipTokenizer", "CALL_DEFAULT_KEYS", "LARGE_INTEGER", "SPECIAL_TOKENS_MAP_FILE",
           "SPIECE_UNDERLINE", "TOKENIZER_CONFIG_FILE", "VOCAB_FILE", "read_tokenizer_config", "_read_json",
           "_to_tensors"]
