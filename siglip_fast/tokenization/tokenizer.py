"""`SiglipTokenizer`: the transformers-compatible surface over the vocabulary, encoding and padding parts.

The same ids as transformers' `SiglipTokenizer` (v4 == v5, reference/hf-siglip.md §3.2). For one text:
  1. replace every `▁` with a space and prepend `▁`;
  2. split on the special/added token strings (`</s>`, `<unk>`): a literal `</s>` becomes id 1;
  3. every other chunk is canonicalised (lowercase, ASCII punctuation removed, whitespace collapsed and stripped)
     and sentencepiece-encoded as `"<unk>" + chunk` with the pieces of `"<unk>"` dropped again (so sentencepiece
     adds no dummy prefix of its own);
  4. truncation keeps the first `max_length - 1` ids, then EOS (1) is appended unless the ids already end with it;
  5. padding appends the pad id (1, the same as EOS) on the right.
Every chunk of a batch goes through one call of sentencepiece's batch encoder.

Where each part lives: `vocabulary.py` (steps 2-3: the model, special and added tokens, normalisation),
`encoding.py` (steps 1 and 4: texts and pairs -> rows of ids, special tokens, truncation), `padding.py` (step 5,
and `pad`), this module (the call, decoding, files). Files: `spiece.model` and `tokenizer_config.json` (also
`special_tokens_map.json` when present), as transformers.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..files import prepare_save_directory, resolve_pretrained_dir
from .batch import BatchEncoding, _to_tensors
from .config import (
    CALL_DEFAULT_KEYS,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    VOCAB_FILE,
    _check_str_list,
    _content_of,
    _is_int,
    _token_content,
    read_tokenizer_config,
)
from .encoding import Encoding
from .padding import Padding
from .vocabulary import Vocabulary

_UNSET = object()


class SiglipTokenizer(Vocabulary, Encoding, Padding):
    """SigLIP's tokenizer, id-for-id equal to transformers' `SiglipTokenizer` (which has no fast version).

    Call it like the transformers one: `tok(texts, padding="max_length", truncation=True, return_tensors="pt")`;
    pairs `tok(a, b)` give `a </s> b </s>`. Note that, as in transformers, the tokenizer itself does not pad unless
    asked; SigLIP was trained on `padding="max_length"` (see `SiglipProcessor`, which pads that way by default).

    Extension points for a subclass with another text -> ids algorithm (e.g. SigLIP 2's Gemma tokenizer, also a
    sentencepiece model): class attributes `vocab_files_names` (the model file's name) and `padding_side` /
    `truncation_side` (defaults), `config_init_keys` (tokenizer_config.json keys passed to __init__); override
    `_encode_batch(texts, out_type)` (texts -> ids without special tokens, one sentencepiece call per batch;
    `_split_encode` does the added-token split and the batched call), `build_inputs_with_special_tokens` and
    `get_special_tokens_mask` (the special tokens around one text or a pair; `num_special_tokens_to_add` and
    `create_token_type_ids_from_sequences` follow), and if needed `canonicalize_text`, `_token_type_ids`,
    `_skipped_ids` (what decode(skip_special_tokens=True) drops), `convert_tokens_to_string`, `to_config`,
    `truncate_sequences`, `backend` / `overflow_as_rows`, and for another model file `_load_model`,
    `_model_file_names` / `_model_files` (what from_pretrained reads) and `_write_model_files` (what
    save_pretrained writes). `siglip_fast.tokenization_gemma.GemmaTokenizer` is such a subclass. A BOS goes in as a
    named token: `extra_special_tokens={"bos_token": "<bos>"}` gives `bos_token_id`. `__call__`, `pad`,
    truncation, padding, masks, tensors, files and decoding are generic.
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    # return_overflowing_tokens as transformers' python tokenizers return it ("overflowing_tokens"), or, True, as
    # its tokenizers-backed ones do (more rows of input_ids and "overflow_to_sample_mapping", from `_encode_rows`)
    overflow_as_rows = False
    padding_side = "right"
    truncation_side = "right"
    pad_token_type_id = 0
    # the tokenizer_config.json keys from_pretrained passes to __init__ as they are (besides the special tokens)
    config_init_keys = ("sp_model_kwargs", "do_lower_case", "model_input_names", "clean_up_tokenization_spaces",
                        "padding_side", "truncation_side", "added_tokens_decoder", "legacy", *CALL_DEFAULT_KEYS)

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        *,
        model_proto: bytes | None = None,
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        pad_token: str | None = "</s>",
        additional_special_tokens: Iterable[str] | None = None,
        extra_special_tokens: Iterable[str] | dict | None = None,
        sp_model_kwargs: dict | None = None,
        model_max_length: int = 64,
        do_lower_case: bool = True,
        model_input_names: Sequence[str] | None = None,
        clean_up_tokenization_spaces: bool = False,
        padding_side: str | None = None,
        truncation_side: str | None = None,
        added_tokens_decoder: dict | None = None,
        legacy: bool | None = None,
        add_special_tokens: Any = _UNSET,
        **call_defaults: Any,
    ):
        if add_special_tokens is not _UNSET:
            # transformers v5 refuses it too ("add_special_tokens conflicts with the method add_special_tokens")
            raise TypeError(
                "SiglipTokenizer(add_special_tokens=...) is not a constructor option (transformers' SiglipTokenizer "
                "refuses it as well): pass add_special_tokens=False to the call, extra_special_tokens=[...] or "
                "{'name_token': '...'} to the constructor, or call tok.add_special_tokens({...}) after loading")
        for key in call_defaults:
            if key not in CALL_DEFAULT_KEYS:
                raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword argument {key!r} "
                                f"(call options it keeps as defaults: {list(CALL_DEFAULT_KEYS)})")
        # as transformers: kept and saved; SiglipProcessor applies them as defaults of its text options (the
        # tokenizer's own __call__ does not, as transformers' does not)
        self.call_defaults = dict(call_defaults)
        self._load_model(vocab_file, model_proto, sp_model_kwargs, legacy)
        padding_side = type(self).padding_side if padding_side is None else padding_side  # class default
        truncation_side = type(self).truncation_side if truncation_side is None else truncation_side
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("left", "right"):
                raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        if not _is_int(model_max_length) or model_max_length < 1:
            raise ValueError(f"model_max_length must be a positive int, got {model_max_length!r}")
        self.model_max_length = int(model_max_length)
        for name, value in (("do_lower_case", do_lower_case), ("clean_up_tokenization_spaces",
                                                                clean_up_tokenization_spaces)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
        self.do_lower_case = do_lower_case
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        if model_input_names is not None:
            model_input_names = _check_str_list("model_input_names", model_input_names)
        self.model_input_names = model_input_names if model_input_names is not None else [
            "input_ids", "attention_mask"]
        if not self.model_input_names or self.model_input_names[0] != "input_ids":
            raise ValueError(f"model_input_names must start with 'input_ids', got {self.model_input_names}")

        self._init_special_tokens(eos_token, unk_token, pad_token, additional_special_tokens, extra_special_tokens)
        self._init_added_tokens(added_tokens_decoder)

    # -- the call ---------------------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Encode one text (flat lists, or a (1, L) tensor) or a batch of texts, optionally with pairs
        (`text_pair`, or a batch of (text, pair) tuples), as transformers does.

        `is_split_into_words=True`: a text is a list of words, each encoded on its own (as transformers' python
        tokenizers do; a batch is a list of such lists, a pair in a batch a tuple of two). With
        `return_overflowing_tokens=True` (and truncation), "overflowing_tokens" holds the ids cut off plus `stride`
        ids before them and "num_truncated_tokens" how many were cut, as transformers' python tokenizers (its
        SiglipTokenizer) return them: for one text only when some were cut; for a batch one entry per row ([] and
        0 for rows that were not cut, where transformers lists only the cut rows); `longest_first` on pairs is
        refused, as there. The encoding's `sequence_ids(i)` maps each position to 0 (first text), 1 (pair) or None
        (special tokens, padding)."""
        if return_offsets_mapping:
            raise NotImplementedError("return_offset_mapping is not available for SiglipTokenizer (transformers' "
                                      "slow tokenizers do not offer it either)")
        for name, value in (("add_special_tokens", add_special_tokens), ("return_special_tokens_mask",
                            return_special_tokens_mask), ("return_length", return_length), ("verbose", verbose),
                            ("return_attention_mask", return_attention_mask),
                            ("return_token_type_ids", return_token_type_ids),
                            ("is_split_into_words", is_split_into_words),
                            ("return_overflowing_tokens", return_overflowing_tokens)):
            if not isinstance(value, bool) and not (value is None and name.startswith("return_") and
                                                    name.endswith(("mask", "ids"))):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
        if not _is_int(stride) or stride < 0:
            raise ValueError(f"stride must be an int >= 0, got {stride!r}")
        if stride and not return_overflowing_tokens:
            raise ValueError(f"stride={stride} only applies to the overflowing tokens: pass "
                             "return_overflowing_tokens=True with it (or leave stride at 0)")
        if return_overflowing_tokens and not self.overflow_as_rows:
            if return_tensors is not None:
                raise ValueError(f"return_overflowing_tokens=True with return_tensors={return_tensors!r}: the "
                                 "overflowing tokens are ragged lists, which transformers' SiglipTokenizer drops "
                                 "without a word when converting to tensors; call with return_tensors=None")
        batched, texts, pairs = self._texts(text, text_pair, is_split_into_words)
        if return_overflowing_tokens and self.overflow_as_rows:
            batched = True  # rows per text, even for one text (transformers' tokenizers-backed classes)
        padding_side = self.padding_side if padding_side is None else padding_side
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        pad, truncate, max_length = self._resolve_lengths(padding, truncation, max_length, pad_to_multiple_of)
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names

        data = self._encode_rows(
            texts, pairs, add_special_tokens=add_special_tokens, truncate=truncate, max_length=max_length,
            return_special_tokens_mask=return_special_tokens_mask, return_token_type_ids=return_token_type_ids,
            return_overflowing_tokens=return_overflowing_tokens, stride=stride)
        rows = data["input_ids"]
        if verbose and max_length is None and rows:
            longest = max(len(r) for r in rows)
            if longest > self.model_max_length:  # transformers' (logged) warning; the model would fail later
                warnings.warn(f"Token indices sequence length is longer than the specified maximum sequence length "
                              f"for this model ({longest} > {self.model_max_length}). Running this sequence through "
                              "the model will result in indexing errors; pass truncation=True (SigLIP was trained "
                              "with padding='max_length', truncation=True).", UserWarning, stacklevel=2)
        if return_overflowing_tokens and not batched and not data.get("overflowing_tokens", [1])[0]:
            del data["overflowing_tokens"], data["num_truncated_tokens"]  # transformers: only when some were cut
        if return_length and batched:  # transformers: the unpadded lengths for a batch, the padded one for a text
            data["length"] = [len(r) for r in rows]
        self._pad_rows(data, pad, max_length, pad_to_multiple_of, padding_side, return_attention_mask)
        if return_length and not batched:
            data["length"] = [len(data["input_ids"][0])]
        sequence_ids = data.pop("_sequence_ids")
        if not batched:
            data = {k: v[0] if return_tensors is None else [v[0]] for k, v in data.items()}
        return BatchEncoding(_to_tensors(data, return_tensors, what="texts"), sequence_ids=sequence_ids)

    @property
    def backend(self) -> str:
        """transformers v5's name of the tokenizer's backend: "sentencepiece", as its SiglipTokenizer."""
        return "sentencepiece"

    def encode(self, text: str, text_pair: str | None = None, **kwargs) -> list[int]:
        """The ids of one text (with EOS), or of a pair (a list of words each with is_split_into_words=True)."""
        if not isinstance(text, str) and not (kwargs.get("is_split_into_words") is True and
                                              isinstance(text, (list, tuple))):
            raise TypeError(f"text must be a str (or a list of words with is_split_into_words=True), got "
                            f"{type(text).__name__}")
        return self(text, text_pair, **kwargs)["input_ids"]

    # -- ids -> text ------------------------------------------------------------------------------------------

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        special = set(self.all_special_tokens)
        current: list[str] = []
        out = ""
        prev_is_special = False
        for token in tokens:
            if token in special:
                if not prev_is_special:
                    out += " "
                out += self.sp_model.decode(current) + token
                prev_is_special = True
                current = []
            else:
                current.append(token)
                prev_is_special = False
        out += self.sp_model.decode(current)
        return out.strip()

    @staticmethod
    def _clean_up(text: str) -> str:
        for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
            text = text.replace(a, b)
        return text

    clean_up_tokenization = _clean_up

    def decode(self, token_ids, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str | list[str]:
        """Ids -> text; a batch (list of lists or a 2-D tensor/array) gives a list of texts."""
        if isinstance(token_ids, (torch.Tensor, np.ndarray)):
            token_ids = token_ids.tolist()
        if _is_int(token_ids):
            token_ids = [int(token_ids)]
        if not isinstance(token_ids, (list, tuple)):
            raise TypeError(f"token_ids must be ints, a list, an array or a tensor, got {type(token_ids).__name__}")
        if token_ids and isinstance(token_ids[0], (list, tuple)):
            return self.batch_decode(token_ids, skip_special_tokens, clean_up_tokenization_spaces)
        text = self.convert_tokens_to_string(self.convert_ids_to_tokens(token_ids, skip_special_tokens))
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else \
            clean_up_tokenization_spaces
        return self._clean_up(text) if clean else text

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        if isinstance(sequences, (torch.Tensor, np.ndarray)):
            sequences = sequences.tolist()
        if not isinstance(sequences, (list, tuple)):
            raise TypeError(f"sequences must be a list of id lists, an array or a tensor, got "
                            f"{type(sequences).__name__}")
        out = []
        for i, s in enumerate(sequences):
            if not isinstance(s, (list, tuple)):
                raise TypeError(f"sequences[{i}] must be a list of ids, got {type(s).__name__} (decode() takes one "
                                "sequence)")
            if s and isinstance(s[0], (list, tuple)):
                raise TypeError(f"sequences[{i}] must be a flat list of ids, got nested lists (a 3-D input?)")
            out.append(self.decode(list(s), skip_special_tokens, clean_up_tokenization_spaces))
        return out

    # -- files ------------------------------------------------------------------------------------------------

    def to_config(self) -> dict:
        """The tokenizer_config.json transformers v5 writes (and v4 reads)."""
        added = {}
        for content, idx in sorted(self._added.items(), key=lambda kv: kv[1]):
            flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     **self._added_flags.get(content, {})}
            added[str(idx)] = {"content": content, **{k: bool(flags[k]) for k in sorted(flags)},
                               "special": content in self._special}
        config = {
            "added_tokens_decoder": added,
            "backend": "sentencepiece",
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "do_lower_case": self.do_lower_case,
            "extra_special_tokens": list(self._extra),
            "model_input_names": list(self.model_input_names),
            "model_max_length": self.model_max_length,
            "sp_model_kwargs": dict(self.sp_model_kwargs),
            "tokenizer_class": type(self).__name__,
        }
        config.update(self.special_tokens_map)
        if "pad_token" not in config:
            config["pad_token"] = None
        if self._legacy_given is not None:  # transformers saves it when it was given
            config["legacy"] = self._legacy_given
        config.update(self.call_defaults)
        if self.padding_side != "right" or type(self).padding_side != "right":
            config["padding_side"] = self.padding_side
        if self.truncation_side != "right" or type(self).truncation_side != "right":
            config["truncation_side"] = self.truncation_side
        return config

    def save_pretrained(self, save_directory: str | os.PathLike, *, processor_class: str | None = None) -> list[str]:
        """Write the model file (spiece.model) and tokenizer_config.json; returns the paths written."""
        save_directory = prepare_save_directory(save_directory, f"{type(self).__name__}.save_pretrained")
        written = self._write_model_files(save_directory)
        config = self.to_config()
        if processor_class is not None:
            config["processor_class"] = processor_class
        config_path = os.path.join(save_directory, TOKENIZER_CONFIG_FILE)
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")
        return [*written, config_path]

    def _write_model_files(self, save_directory: str) -> list[str]:
        """Write the model file (the sentencepiece proto as it was read); returns its path."""
        vocab_path = os.path.join(save_directory, self.vocab_files_names["vocab_file"])
        with open(vocab_path, "wb") as f:
            f.write(self._proto)
        return [vocab_path]

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, revision: str | None = None,
                        **overrides) -> "SiglipTokenizer":
        """Load from a directory with spiece.model (+ tokenizer_config.json), or a hub id (needs huggingface_hub).

        `overrides` (e.g. `model_max_length=16`) take precedence over the saved config."""
        directory = resolve_pretrained_dir(
            path_or_id, allow_patterns=[*cls._model_file_names(), TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE],
            what=f"{cls.__name__}.from_pretrained", revision=revision)
        files = cls._model_files(directory, path_or_id)
        return cls(**{**cls._config_kwargs(read_tokenizer_config(directory)), **files, **overrides})

    @classmethod
    def _model_file_names(cls) -> list[str]:
        """The model files from_pretrained looks for (fetched from the hub with the configs)."""
        return [cls.vocab_files_names["vocab_file"]]

    @classmethod
    def _model_files(cls, directory: str, path_or_id: str | os.PathLike) -> dict[str, str]:
        """The __init__ argument naming the model file in `directory` ({"vocab_file": path})."""
        vocab_name = cls.vocab_files_names["vocab_file"]
        vocab_file = os.path.join(directory, vocab_name)
        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"{cls.__name__}.from_pretrained: no {vocab_name} in {os.fspath(path_or_id)!r}")
        return {"vocab_file": vocab_file}

    @classmethod
    def _config_kwargs(cls, config: dict) -> dict[str, Any]:
        """The __init__ arguments a tokenizer_config.json (+ special_tokens_map.json) gives."""
        kwargs: dict[str, Any] = {}
        for key in ("eos_token", "unk_token", "pad_token"):
            if key in config:
                kwargs[key] = _token_content(config[key])
        extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
        named = {k: _content_of(v) for k, v in config.items()  # bos_token, image_token...: named special tokens
                 if k.endswith("_token") and k not in ("eos_token", "unk_token", "pad_token")
                 and isinstance(_content_of(v), str)}
        if isinstance(extra, dict):  # named model-specific tokens
            named.update({k: _token_content(v) for k, v in extra.items()})
            extra = []
        if extra or "additional_special_tokens" in config or isinstance(config.get("extra_special_tokens"), list):
            kwargs["additional_special_tokens"] = [_token_content(t) for t in extra]
        if named:
            kwargs["extra_special_tokens"] = named
        for key in cls.config_init_keys:
            if config.get(key) is not None:
                kwargs[key] = config[key]
        if config.get("model_max_length") is not None:
            kwargs["model_max_length"] = int(config["model_max_length"])
        return kwargs

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
                f"do_lower_case={self.do_lower_case}, model_input_names={self.model_input_names})")
