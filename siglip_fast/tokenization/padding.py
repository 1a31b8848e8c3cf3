"""Padding: the lengths a call resolves to, and rows padded to them, as transformers' tokenizers pad.

`Padding` is the part of `SiglipTokenizer` that turns `padding=` / `truncation=` / `max_length=` /
`pad_to_multiple_of=` into one target (`_resolve_lengths`, transformers' `_get_padding_truncation_strategies`),
pads rows of ids with the attention mask, token type ids and special-tokens mask alongside (`_pad_rows`), and
offers transformers' `pad` (a dict of lists, a BatchEncoding, or a list of per-example dicts: a DataLoader
`collate_fn`). It reads `pad_token_id`, `pad_token_type_id`, `padding_side`, `model_max_length` and
`model_input_names` from the tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .batch import BatchEncoding, _to_tensors
from .config import LARGE_INTEGER, _is_int

_TRUNCATIONS = {True: "longest_first", "longest_first": "longest_first", "only_first": "only_first",
                "only_second": "only_second", False: None, None: None, "do_not_truncate": None}


class Padding:
    """Padding and the resolution of lengths (a mixin of `SiglipTokenizer`; see the module docstring)."""

    def _resolve_lengths(self, padding, truncation, max_length, pad_to_multiple_of):
        """transformers' `_get_padding_truncation_strategies`: -> (pad mode None/'longest'/'max_length',
        truncation strategy None/'longest_first'/'only_first'/'only_second', max_length)."""
        if max_length is not None and (not _is_int(max_length) or max_length < 1):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        if pad_to_multiple_of is not None and (not _is_int(pad_to_multiple_of) or pad_to_multiple_of < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}")
        if max_length is not None and padding is False and truncation is None:
            truncation = True  # transformers: max_length alone switches truncation on
        if padding is True or padding == "longest":
            pad = "longest"
        elif padding is False or padding is None or padding == "do_not_pad":
            pad = None
        elif padding == "max_length":
            pad = "max_length"
        else:
            raise ValueError(f"padding must be False, True, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        try:
            if not (truncation is None or isinstance(truncation, (bool, str))):
                raise KeyError(truncation)  # 1 would otherwise match True
            truncate = _TRUNCATIONS[truncation]
        except (KeyError, TypeError):
            raise ValueError(f"truncation must be a bool, 'longest_first', 'only_first', 'only_second' or "
                             f"'do_not_truncate', got {truncation!r}") from None
        if max_length is None:
            if pad == "max_length":
                if self.model_max_length > LARGE_INTEGER:
                    pad = None
                else:
                    max_length = self.model_max_length
            if truncate:
                if self.model_max_length > LARGE_INTEGER:
                    truncate = None
                else:
                    max_length = self.model_max_length
        if pad is not None and self.pad_token_id is None:
            raise ValueError("asked to pad, but the tokenizer has no pad_token")
        if truncate and pad is not None and pad_to_multiple_of and max_length and max_length % pad_to_multiple_of:
            raise ValueError(f"truncation length ({max_length}) is not a multiple of pad_to_multiple_of "
                             f"({pad_to_multiple_of})")
        if max_length is not None:
            max_length = int(max_length)
        return pad, truncate, max_length

    def _pad_rows(self, data: dict, pad: str | None, max_length: int | None, pad_to_multiple_of: int | None,
                  padding_side: str, return_attention_mask: bool) -> None:
        """Pad data["input_ids"] (a list of rows) in place, with the attention mask (added when asked), token type
        ids (pad 0) and special tokens mask (pad 1) alongside, as transformers' `pad`."""
        rows = data["input_ids"]
        target = None
        if pad == "longest":
            target = max((len(r) for r in rows), default=0)
        elif pad == "max_length":
            target = max_length
        if target is not None and pad_to_multiple_of and target % pad_to_multiple_of:
            target = (target // pad_to_multiple_of + 1) * pad_to_multiple_of
        if return_attention_mask and "attention_mask" not in data:
            data["attention_mask"] = [[1] * len(r) for r in rows]
        if target is None:
            return
        gaps = [target - len(r) for r in rows]
        fills = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": self.pad_token_type_id,
                 "special_tokens_mask": 1, "_sequence_ids": None}
        for key, fill in fills.items():
            if key not in data:
                continue
            if padding_side == "right":
                data[key] = [row + [fill] * gap if gap > 0 else row for row, gap in zip(data[key], gaps, strict=True)]
            else:
                data[key] = [[fill] * gap + row if gap > 0 else row for row, gap in zip(data[key], gaps, strict=True)]

    def pad(self, encoded_inputs: Any, padding: bool | str = True, max_length: int | None = None,
            pad_to_multiple_of: int | None = None, padding_side: str | None = None,
            return_attention_mask: bool | None = None, return_tensors: str | None = None,
            verbose: bool = True) -> BatchEncoding:
        """Pad encodings, as transformers' `pad`: a dict of lists (one row or a batch), a BatchEncoding, or a list
        of per-example dicts (a DataLoader collate_fn). Tensors/arrays in give tensors/arrays out unless
        return_tensors says otherwise. `attention_mask`, `token_type_ids` and `special_tokens_mask` are padded
        alongside `input_ids`; other keys are passed through."""
        if isinstance(encoded_inputs, (list, tuple)):
            if not encoded_inputs:
                raise ValueError("encoded_inputs: got an empty list; expected encodings with 'input_ids'")
            for i, e in enumerate(encoded_inputs):
                if not isinstance(e, Mapping):
                    raise TypeError(f"encoded_inputs[{i}] must be a dict of encodings, got {type(e).__name__}")
            keys = list(encoded_inputs[0].keys())
            for i, e in enumerate(encoded_inputs):
                if set(e.keys()) != set(keys):
                    raise ValueError(f"encoded_inputs[{i}] has keys {sorted(e.keys())}, but encoded_inputs[0] has "
                                     f"{sorted(keys)}")
            encoded_inputs = {k: [e[k] for e in encoded_inputs] for k in keys}
        if not isinstance(encoded_inputs, Mapping):
            raise TypeError(f"encoded_inputs must be a dict (or BatchEncoding) or a list of dicts, got "
                            f"{type(encoded_inputs).__name__}")
        main = self.model_input_names[0]
        if main not in encoded_inputs:
            raise ValueError(f"encoded_inputs must include {main!r}, got keys {list(encoded_inputs.keys())}")
        padding_side = self.padding_side if padding_side is None else padding_side
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names

        def as_list(value):
            if isinstance(value, (torch.Tensor, np.ndarray)):
                return value.tolist()
            if isinstance(value, (list, tuple)):
                return [as_list(v) for v in value]
            return value

        inferred = None
        first = encoded_inputs[main]
        probe = first[0] if isinstance(first, (list, tuple)) and len(first) else first
        if isinstance(probe, torch.Tensor) or isinstance(first, torch.Tensor):
            inferred = "pt"
        elif isinstance(probe, np.ndarray) or isinstance(first, np.ndarray):
            inferred = "np"
        return_tensors = inferred if return_tensors is None else return_tensors
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        data = {k: as_list(v) for k, v in encoded_inputs.items()}
        rows = data[main]
        if not isinstance(rows, list):
            raise TypeError(f"encoded_inputs[{main!r}] must be a list of ids or of rows of ids, got "
                            f"{type(rows).__name__}")
        single = not rows or not isinstance(rows[0], list)
        if single:
            data = {k: [v] for k, v in data.items()}
            rows = data[main]
        for key in ("attention_mask", "token_type_ids", "special_tokens_mask", main):
            if key not in data:
                continue
            if len(data[key]) != len(rows):
                raise ValueError(f"encoded_inputs[{key!r}] has {len(data[key])} rows but {main!r} has {len(rows)}")
            for i, (row, ids) in enumerate(zip(data[key], rows, strict=True)):
                if not isinstance(row, list) or not all(_is_int(x) for x in row):
                    raise TypeError(f"encoded_inputs[{key!r}][{i}] must be a list of ints, got {row!r}")
                if len(row) != len(ids):
                    raise ValueError(f"encoded_inputs[{key!r}][{i}] has length {len(row)} but {main!r}[{i}] has "
                                     f"{len(ids)}")
        pad, _, max_length = self._resolve_lengths(padding, None, max_length, pad_to_multiple_of)
        self._pad_rows(data, pad, max_length, pad_to_multiple_of, padding_side, return_attention_mask)
        if single:
            data = {k: v[0] if return_tensors is None else v for k, v in data.items()}
        return BatchEncoding(_to_tensors(data, return_tensors, what="sequences"))
