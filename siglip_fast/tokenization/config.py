"""The tokenizer's files and the small helpers its parts share.

File names (`spiece.model`, `tokenizer_config.json`, `special_tokens_map.json`), reading them, and the ways a
token is written in them (a string, an AddedToken dict `{"content": ...}`, or an AddedToken object).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

SPIECE_UNDERLINE = "\u2581"
VOCAB_FILE = "spiece.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
LARGE_INTEGER = int(1e20)  # transformers' marker for "no model_max_length"
# __call__ options a tokenizer takes at init / from_pretrained as transformers does (kept in its init_kwargs and
# tokenizer_config.json): transformers' processor applies them as call defaults, its tokenizer's own call does not
CALL_DEFAULT_KEYS = ("padding", "truncation", "max_length", "pad_to_multiple_of", "return_attention_mask",
                     "return_token_type_ids", "return_special_tokens_mask", "return_length")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path!r} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path!r} must hold a JSON object, got {type(config).__name__}")
    return config


def read_tokenizer_config(directory: str) -> dict:
    """special_tokens_map.json updated by tokenizer_config.json (the latter wins), {} when neither exists."""
    config: dict = {}
    for name in (SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            config.update(_read_json(path))
    return config


def _content_of(token: Any) -> Any:
    """The string of a token (str, {"content": ...} or an AddedToken); anything else is returned as it is."""
    if isinstance(token, dict) and isinstance(token.get("content"), str):
        return token["content"]
    if not isinstance(token, str) and isinstance(getattr(token, "content", None), str):
        return token.content
    return token


def _token_content(token: Any) -> str | None:
    """A special token as written in tokenizer configs: a string or an AddedToken dict {"content": ...}."""
    if token is None or isinstance(token, str):
        return token
    if isinstance(token, dict) and "content" in token:
        return token["content"]
    if isinstance(getattr(token, "content", None), str):  # transformers' / tokenizers' AddedToken
        return token.content
    raise TypeError(f"special token must be a string or a dict with 'content', got {token!r}")


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------------------------------------------

_SPECIAL_TOKENS_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                              "mask_token")
_TRUNCATIONS = {True: "longest_first", "longest_first": "longest_first", "only_first": "only_first",
                "only_second": "only_second", False: None, None: None, "do_not_truncate": None}
_UNSET = object()
# __call__ options a tokenizer takes at init / from_pretrained as transformers does (kept in its init_kwargs and
# tokenizer_config.json): transformers' processor applies them as call defaults, its tokenizer's own call does not
CALL_DEFAULT_KEYS = ("padding", "truncation", "max_length", "pad_to_multiple_of", "return_attention_mask",
                     "return_token_type_ids", "return_special_tokens_mask", "return_length")


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_str_list(name: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of str, got {type(value).__name__}")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(v).__name__}")
    return list(value)

