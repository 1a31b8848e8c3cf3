"""The Gemma tokenizer of SigLIP 2: the same ids as transformers v5's `GemmaTokenizer` / `Siglip2Tokenizer`.

transformers v5 builds `GemmaTokenizer` from `tokenizer.model` as a `tokenizers` BPE (vocabulary and merges
extracted from the sentencepiece proto, byte fallback, spaces replaced by `▁`, no dummy prefix), with the proto's
control and user-defined pieces and the bos/eos/pad/unk/mask tokens as added tokens, matched in the raw text first.
`Siglip2Tokenizer` (what `AutoTokenizer` returns for model_type "siglip2") prepends a `Lowercase` normaliser:
SigLIP 2 was trained on lowercased text. For one text this is, here:
  1. split the text on the added tokens (longest first), which map to their ids;
  2. every other chunk (per-character lowercased for `Siglip2Tokenizer`) is sentencepiece-encoded as is (Gemma's
     proto has no normaliser and no dummy prefix, so sentencepiece's BPE gives the ids transformers' BPE gives);
  3. `<bos>` is prepended if `add_bos_token`, `<eos>` appended if `add_eos_token` (truncation keeps room for them,
     so with add_eos_token the last id is always EOS: big_vision's "sticky" EOS);
  4. padding with `<pad>` (id 0) on `padding_side` (transformers' class default "left", the config's otherwise).
Expected layout: `<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3, byte fallback (Gemma's; 256k pieces in SigLIP 2).
Files: `tokenizer.model` and `tokenizer_config.json` (a `tokenizer.json` beside them is not read).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Sequence

import numpy as np
import sentencepiece as spm
import torch

from .checkpoint import resolve_pretrained_dir
from .tokenization import (
    LARGE_INTEGER,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    BatchEncoding,
    _to_tensors,
    _token_content,
)

GEMMA_VOCAB_FILE = "tokenizer.model"
_CONTROL, _USER_DEFINED = 3, 4  # sentencepiece ModelProto.SentencePiece.Type


def _piece_types(sp: spm.SentencePieceProcessor) -> dict[str, int]:
    """Control and user-defined pieces of the proto (transformers makes them added tokens)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    return {p.piece: p.type for p in proto.pieces if p.type in (_CONTROL, _USER_DEFINED)}


class GemmaTokenizer:
    """Gemma's sentencepiece tokenizer, id-for-id transformers v5's `GemmaTokenizer` built from `tokenizer.model`.

    Call it like the transformers one: `tok(texts, padding="max_length", max_length=64, truncation=True,
    return_tensors="pt")`. `do_lower_case=True` is `Siglip2Tokenizer` (SigLIP 2 was trained on lowercased text).
    """

    tokenizer_class_name = "GemmaTokenizer"
    default_lower_case = False

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        *,
        model_proto: bytes | None = None,
        bos_token: str = "<bos>",
        eos_token: str = "<eos>",
        unk_token: str = "<unk>",
        pad_token: str | None = "<pad>",
        mask_token: str | None = "<mask>",
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        additional_special_tokens: Iterable[str] | None = None,
        added_tokens_decoder: dict | None = None,
        do_lower_case: bool | None = None,
        model_max_length: int = LARGE_INTEGER,
        padding_side: str = "left",
        truncation_side: str = "right",
        model_input_names: Sequence[str] | None = None,
    ):
        if (vocab_file is None) == (model_proto is None):
            raise ValueError(f"{type(self).__name__} needs exactly one of vocab_file (a tokenizer.model path) or "
                             "model_proto")
        self.sp_model = spm.SentencePieceProcessor()
        if vocab_file is not None:
            vocab_file = os.fspath(vocab_file)
            if not os.path.isfile(vocab_file):
                raise FileNotFoundError(f"vocab_file: no sentencepiece model at {vocab_file!r}")
            self.sp_model.Load(vocab_file)
        else:
            if not isinstance(model_proto, (bytes, bytearray)):
                raise TypeError(f"model_proto must be bytes, got {type(model_proto).__name__}")
            self.sp_model.LoadFromSerializedProto(bytes(model_proto))
        self.vocab_file = vocab_file
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("left", "right"):
                raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")
        if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length < 1:
            raise ValueError(f"model_max_length must be a positive int, got {model_max_length!r}")
        self.padding_side, self.truncation_side = padding_side, truncation_side
        self.model_max_length = model_max_length
        self.do_lower_case = self.default_lower_case if do_lower_case is None else bool(do_lower_case)
        self.add_bos_token, self.add_eos_token = bool(add_bos_token), bool(add_eos_token)
        self.model_input_names = list(model_input_names or ["input_ids", "attention_mask"])
        if self.model_input_names[0] != "input_ids":
            raise ValueError(f"model_input_names must start with 'input_ids', got {self.model_input_names}")
        self.bos_token, self.eos_token, self.unk_token = bos_token, eos_token, unk_token
        self.pad_token, self.mask_token = pad_token, mask_token
        self.additional_special_tokens = [t for t in (additional_special_tokens or [])]

        # Added tokens (content -> id): the proto's control and user-defined pieces, the named special tokens, the
        # config's added_tokens_decoder and extra tokens; all split out of the raw text before the model sees it.
        self._added: dict[str, int] = {}
        for key, tok in (added_tokens_decoder or {}).items():
            self._added[_token_content(tok)] = int(key)
        for piece in _piece_types(self.sp_model):
            self._added.setdefault(piece, self.sp_model.piece_to_id(piece))
        for tok in [bos_token, eos_token, unk_token, pad_token, mask_token, *self.additional_special_tokens]:
            if tok is None or tok in self._added:
                continue
            piece_id = self.sp_model.piece_to_id(tok)
            in_vocab = self.sp_model.id_to_piece(piece_id) == tok
            self._added[tok] = piece_id if in_vocab else max(len(self), *[i + 1 for i in self._added.values()])
        for name in ("bos_token", "eos_token", "unk_token"):
            if getattr(self, name) not in self._added:
                raise ValueError(f"{name} {getattr(self, name)!r} is not in the vocabulary")
        self._id_to_added = {i: t for t, i in self._added.items()}
        ordered = sorted(self._added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in ordered) + ")") if ordered else None

    # -- vocabulary -------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size()

    def __len__(self) -> int:
        return max([self.vocab_size, *[i + 1 for i in getattr(self, "_added", {}).values()]])

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._added[token]

    @property
    def bos_token_id(self) -> int:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int:
        return self._id(self.eos_token)

    @property
    def unk_token_id(self) -> int:
        return self._id(self.unk_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def all_special_tokens(self) -> list[str]:
        out = []
        for tok in [self.bos_token, self.eos_token, self.unk_token, self.pad_token, self.mask_token,
                    *self.additional_special_tokens]:
            if tok is not None and tok not in out:
                out.append(tok)
        return out

    @property
    def all_special_ids(self) -> list[int]:
        return [self._added[t] for t in self.all_special_tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, (int, np.integer)):
            return self._id_to_added.get(int(ids)) or self.sp_model.id_to_piece(int(ids))
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.convert_ids_to_tokens(int(i)) for i in ids if int(i) not in skip]

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self._added[tokens] if tokens in self._added else self.sp_model.piece_to_id(tokens)
        return [self.convert_tokens_to_ids(t) for t in tokens]

    # -- text -> ids ------------------------------------------------------------------------------------------

    def _normalize(self, text: str) -> str:
        # tokenizers' Lowercase maps each character on its own (no final-sigma rule, unlike str.lower())
        return "".join(c.lower() for c in text) if self.do_lower_case else text

    def _encode_batch(self, texts: Sequence[str], out_type: type = int) -> list[list]:
        """Ids (or pieces) of each text without bos/eos; every chunk of the batch in one sentencepiece call."""
        plans, chunks = [], []
        for text in texts:
            parts = self._split.split(text) if self._split is not None else [text]
            plan = []
            for i, part in enumerate(parts):
                if i % 2 == 1:
                    plan.append(("token", part))
                elif part:
                    plan.append(("chunk", len(chunks)))
                    chunks.append(self._normalize(part))
            plans.append(plan)
        encoded = self.sp_model.encode(chunks, out_type=out_type) if chunks else []
        out = []
        for plan in plans:
            tokens: list = []
            for kind, value in plan:
                if kind == "token":
                    tokens.append(self._added[value] if out_type is int else value)
                else:
                    tokens.extend(encoded[value])
            out.append(tokens)
        return out

    def tokenize(self, text: str) -> list[str]:
        """The pieces of `text` (added tokens as themselves), without bos/eos."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._encode_batch([text], out_type=str)[0]

    def _resolve_lengths(self, padding, truncation, max_length, pad_to_multiple_of):
        """transformers' padding/truncation strategy → (pad mode None/'longest'/'max_length', truncate, max_length)."""
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 1):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
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
        if truncation in (True, "longest_first", "only_first"):
            truncate = True
        elif truncation in (False, None, "do_not_truncate"):
            truncate = False
        else:
            raise ValueError(f"truncation must be a bool, 'longest_first' or 'do_not_truncate', got {truncation!r}")
        if max_length is None:
            limited = self.model_max_length < LARGE_INTEGER
            if pad == "max_length":
                pad = pad if limited else "longest"  # transformers warns and pads to the longest
                max_length = self.model_max_length if limited else None
            if truncate:
                truncate = limited
                max_length = self.model_max_length if limited else None
        if pad is not None and self.pad_token_id is None:
            raise ValueError("asked to pad, but the tokenizer has no pad_token")
        return pad, truncate, max_length

    def __call__(
        self,
        text: str | Sequence[str],
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
    ) -> BatchEncoding:
        """Encode one text or a batch of texts, as transformers does."""
        batched = not isinstance(text, str)
        if batched:
            if not isinstance(text, (list, tuple)):
                raise TypeError(f"text must be a str or a list/tuple of str, got {type(text).__name__}")
            for i, t in enumerate(text):
                if not isinstance(t, str):
                    raise TypeError(f"text[{i}] must be a str, got {type(t).__name__} (pairs and pre-tokenised "
                                    "input are not supported)")
        texts = list(text) if batched else [text]
        padding_side = self.padding_side if padding_side is None else padding_side
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        pad, truncate, max_length = self._resolve_lengths(padding, truncation, max_length, pad_to_multiple_of)
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        bos = [self.bos_token_id] if add_special_tokens and self.add_bos_token else []
        eos = [self.eos_token_id] if add_special_tokens and self.add_eos_token else []
        rows = []
        for ids in self._encode_batch(texts):
            if truncate and max_length is not None:
                keep = max(max_length - len(bos) - len(eos), 0)
                if len(ids) > keep:
                    ids = ids[len(ids) - keep:] if self.truncation_side == "left" else ids[:keep]
            rows.append(bos + ids + eos)
        target = None
        if pad == "longest":
            target = max((len(r) for r in rows), default=0)
        elif pad == "max_length":
            target = max_length
        if target is not None and pad_to_multiple_of and target % pad_to_multiple_of:
            target = (target // pad_to_multiple_of + 1) * pad_to_multiple_of
        masks = [[1] * len(r) for r in rows]
        if target is not None:
            pad_id = self.pad_token_id
            for i, r in enumerate(rows):
                gap = target - len(r)
                if gap > 0:
                    if padding_side == "right":
                        rows[i], masks[i] = r + [pad_id] * gap, masks[i] + [0] * gap
                    else:
                        rows[i], masks[i] = [pad_id] * gap + r, [0] * gap + masks[i]
        data: dict[str, Any] = {"input_ids": rows}
        if return_attention_mask:
            data["attention_mask"] = masks
        if not batched:
            data = {k: v[0] if return_tensors is None else [v[0]] for k, v in data.items()}
        return BatchEncoding(_to_tensors(data, return_tensors, what="texts"))

    def encode(self, text: str, **kwargs) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self(text, **kwargs)["input_ids"]

    # -- ids -> text ------------------------------------------------------------------------------------------

    def decode(self, token_ids, skip_special_tokens: bool = False) -> str | list[str]:
        """Ids → text (byte-fallback pieces fused, `▁` → space); a batch gives a list of texts."""
        if isinstance(token_ids, (torch.Tensor, np.ndarray)):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, (int, np.integer)):
            token_ids = [int(token_ids)]
        if not isinstance(token_ids, (list, tuple)):
            raise TypeError(f"token_ids must be ints, a list, an array or a tensor, got {type(token_ids).__name__}")
        if token_ids and isinstance(token_ids[0], (list, tuple)):
            return self.batch_decode(token_ids, skip_special_tokens)
        special = set(self.all_special_ids)
        out, run = [], []
        for i in map(int, token_ids):
            if i in self._id_to_added:  # added tokens as their text, outside the decoder (as transformers)
                out.append(self.sp_model.decode(run))
                run = []
                if not (skip_special_tokens and i in special):
                    out.append(self._id_to_added[i])
            else:
                run.append(i)
        out.append(self.sp_model.decode(run))
        return "".join(out)

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> list[str]:
        if isinstance(sequences, (torch.Tensor, np.ndarray)):
            sequences = sequences.tolist()
        return [self.decode(list(s), skip_special_tokens) for s in sequences]

    # -- files ------------------------------------------------------------------------------------------------

    def to_config(self) -> dict:
        """tokenizer_config.json as transformers v5 reads it."""
        return {
            "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "extra_special_tokens": list(self.additional_special_tokens),
            "mask_token": self.mask_token,
            "model_input_names": list(self.model_input_names),
            "model_max_length": self.model_max_length,
            "pad_token": self.pad_token,
            "padding_side": self.padding_side,
            "tokenizer_class": self.tokenizer_class_name,
            "truncation_side": self.truncation_side,
            "unk_token": self.unk_token,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, *, processor_class: str | None = None) -> list[str]:
        """Write tokenizer.model and tokenizer_config.json; returns the paths written."""
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory: {save_directory!r} is a file, expected a directory")
        os.makedirs(save_directory, exist_ok=True)
        vocab_path = os.path.join(save_directory, GEMMA_VOCAB_FILE)
        with open(vocab_path, "wb") as f:
            f.write(self.sp_model.serialized_model_proto())
        config = self.to_config()
        if processor_class is not None:
            config["processor_class"] = processor_class
        config_path = os.path.join(save_directory, TOKENIZER_CONFIG_FILE)
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")
        return [vocab_path, config_path]

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, revision: str | None = None, **overrides):
        """Load from a directory with tokenizer.model (+ tokenizer_config.json), or a hub id (needs huggingface_hub).
        `overrides` (e.g. `padding_side="right"`) take precedence over the saved config."""
        directory = resolve_pretrained_dir(
            path_or_id, allow_patterns=[GEMMA_VOCAB_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE],
            what=f"{cls.__name__}.from_pretrained", revision=revision)
        vocab_file = os.path.join(directory, GEMMA_VOCAB_FILE)
        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"{cls.__name__}.from_pretrained: no {GEMMA_VOCAB_FILE} in "
                                    f"{os.fspath(path_or_id)!r}")
        config = read_tokenizer_config(directory)
        kwargs: dict[str, Any] = {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token"):
            if key in config:
                kwargs[key] = _token_content(config[key])
        extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
        if isinstance(extra, dict):
            extra = list(extra.values())
        kwargs["additional_special_tokens"] = [_token_content(t) for t in extra]
        for key in ("add_bos_token", "add_eos_token", "model_input_names", "padding_side", "truncation_side",
                    "added_tokens_decoder"):
            if config.get(key) is not None:
                kwargs[key] = config[key]
        if config.get("model_max_length") is not None:
            kwargs["model_max_length"] = int(config["model_max_length"])
        kwargs.update(overrides)
        return cls(vocab_file, **kwargs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, add_bos_token={self.add_bos_token}, "
                f"add_eos_token={self.add_eos_token}, do_lower_case={self.do_lower_case}, "
                f"padding_side={self.padding_side!r}, model_max_length={self.model_max_length})")


class Siglip2Tokenizer(GemmaTokenizer):
    """`GemmaTokenizer` lowercasing its input, as transformers v5's `Siglip2Tokenizer` (which `AutoTokenizer` picks for
    model_type "siglip2"): SigLIP 2 was trained on lowercased text."""

    tokenizer_class_name = "Siglip2Tokenizer"
    default_lower_case = True


def read_tokenizer_config(directory: str) -> dict:
    """special_tokens_map.json updated by tokenizer_config.json (the latter wins), {} when neither exists."""
    config: dict = {}
    for name in (SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                config.update(json.load(f))
    return config
