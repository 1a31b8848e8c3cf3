"""The vocabulary of a sentencepiece tokenizer and its normalisation: the model, the special and added tokens.

`Vocabulary` is the part of `SiglipTokenizer` that knows which token has which id:
  - the sentencepiece model (`spiece.model` bytes, `sp_model_kwargs`, transformers' `legacy` switch);
  - the named special tokens (`eos_token`, `pad_token`, ..., model-specific ones such as `image_token`) and the
    unnamed extra special tokens;
  - the added tokens (transformers' `added_tokens_decoder`: content -> id, with their flags), which are split out
    of the text before sentencepiece sees it, and `add_tokens` / `add_special_tokens`;
  - ids <-> tokens, `get_vocab`, `len()`;
  - the text normalisation SigLIP was trained with (`canonicalize_text`) and the batched text -> pieces step
    (`_split_encode`: split on the added tokens, canonicalise, one sentencepiece call for the whole batch).

It holds no call options: encoding (`encoding.py`), padding (`padding.py`) and the transformers surface
(`tokenizer.py`) build on the attributes set here (`sp_model`, `_added`, `_named`, `_extra`, `_special`, `_split`).
"""

from __future__ import annotations

import os
import re
import string
from typing import Any, Sequence

import numpy as np
import sentencepiece as spm
import torch

from .config import _check_str_list, _content_of, _is_int

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")
_SPECIAL_TOKENS_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                              "mask_token")


def _without_dummy_prefix(proto: bytes) -> bytes:
    """The sentencepiece model with normalizer_spec.add_dummy_prefix off (what transformers does for legacy=False;
    needs protobuf, as there)."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:
        raise ImportError(f"legacy=False needs protobuf (to turn the sentencepiece model's add_dummy_prefix off), "
                          f"as in transformers: {e}") from None
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    if not model.normalizer_spec.add_dummy_prefix:
        return proto
    model.normalizer_spec.add_dummy_prefix = False
    return model.SerializeToString()


class Vocabulary:
    """Tokens and ids of a sentencepiece tokenizer (a mixin of `SiglipTokenizer`; see the module docstring)."""

    # -- construction (called by SiglipTokenizer.__init__, in this order) -------------------------------------

    def _load_model(self, vocab_file: str | os.PathLike | None, model_proto: bytes | None,
                    sp_model_kwargs: dict | None, legacy: bool | None) -> None:
        """Load the sentencepiece model from `vocab_file` or `model_proto` (exactly one must be given)."""
        if (vocab_file is None) == (model_proto is None):
            raise ValueError(f"{type(self).__name__} needs exactly one of vocab_file (a sentencepiece model path) or "
                             "model_proto")
        if legacy is not None and not isinstance(legacy, bool):
            raise TypeError(f"legacy must be a bool or None, got {type(legacy).__name__} ({legacy!r})")
        if sp_model_kwargs is not None and not isinstance(sp_model_kwargs, dict):
            raise TypeError(f"sp_model_kwargs must be a dict, got {type(sp_model_kwargs).__name__}")
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        try:
            self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        except TypeError as e:
            raise TypeError(f"sp_model_kwargs {self.sp_model_kwargs!r} are not SentencePieceProcessor options: "
                            f"{e}") from None
        if vocab_file is not None:
            if not isinstance(vocab_file, (str, os.PathLike)):
                raise TypeError(f"vocab_file must be a path, got {type(vocab_file).__name__}")
            vocab_file = os.fspath(vocab_file)
            if not os.path.isfile(vocab_file):
                raise FileNotFoundError(f"vocab_file: no sentencepiece model at {vocab_file!r}")
            with open(vocab_file, "rb") as f:
                proto = f.read()
            what = f"vocab_file {vocab_file!r}"
        else:
            if not isinstance(model_proto, (bytes, bytearray)):
                raise TypeError(f"model_proto must be bytes, got {type(model_proto).__name__}")
            proto, what = bytes(model_proto), "model_proto"
        if not proto:
            raise ValueError(f"{what} is empty (0 bytes); expected a sentencepiece model (spiece.model)")
        try:
            self.sp_model.LoadFromSerializedProto(proto)
        except (RuntimeError, OSError, ValueError) as e:
            raise ValueError(f"{what} is not a valid sentencepiece model ({len(proto)} bytes; corrupt, truncated or "
                             f"another format?): sentencepiece says {str(e).strip()!r}") from None
        if self.sp_model.get_piece_size() == 0:
            raise ValueError(f"{what} holds a sentencepiece model with an empty vocabulary")
        # `legacy` as transformers' sentencepiece base reads it (default True; saved only when given): legacy=False
        # turns the model's add_dummy_prefix off. The text still gets its "▁" prefix from the tokenizer (the
        # "<unk>"-prefix-and-drop encoding), so ids come out the same either way in every case tested (only the
        # number of "<unk>" pieces dropped differs, followed here as there). The saved model file stays the original.
        self._legacy_given = legacy
        self.legacy = True if legacy is None else legacy
        self._proto = proto
        if not self.legacy:
            self.sp_model.LoadFromSerializedProto(_without_dummy_prefix(proto))
        self.vocab_file = vocab_file

    def _init_special_tokens(self, eos_token: Any, unk_token: Any, pad_token: Any, additional_special_tokens: Any,
                             extra_special_tokens: Any) -> None:
        # Named special tokens (transformers' SPECIAL_TOKENS_ATTRIBUTES, plus model-specific ones such as
        # `image_token` from a dict of extra_special_tokens) and unnamed extra special tokens.
        self._named: dict[str, str] = {}
        for key, tok in (("eos_token", eos_token), ("unk_token", unk_token), ("pad_token", pad_token)):
            tok = _content_of(tok)
            if key != "pad_token" and tok is None:
                raise ValueError(f"{key} must be a str, got None")
            if tok is not None and not isinstance(tok, str):
                raise TypeError(f"{key} must be a str, got {type(tok).__name__}")
            if tok is not None:
                self._named[key] = tok
        extra: dict[str, None] = {}  # ordered, without repeats
        for name, value in (("additional_special_tokens", additional_special_tokens),
                            ("extra_special_tokens", extra_special_tokens)):
            if value is None:
                continue
            if isinstance(value, dict):
                for key, tok in value.items():
                    if not isinstance(key, str) or not isinstance(_content_of(tok), str):
                        raise TypeError(f"{name} as a dict must map names to token strings, got {key!r}: {tok!r}")
                    self._named[key] = _content_of(tok)
            elif isinstance(value, (list, tuple)):
                for i, tok in enumerate(value):
                    if not isinstance(_content_of(tok), str):
                        raise TypeError(f"{name}[{i}] must be a str, got {type(tok).__name__}")
                    extra[_content_of(tok)] = None
            else:
                raise TypeError(f"{name} must be a list of str or a dict {{name: token}}, got {type(value).__name__}")
        self._extra = list(extra)

    def _init_added_tokens(self, added_tokens_decoder: dict | None) -> None:
        # Added tokens: content -> id, as in transformers' added_tokens_decoder; they are split out of the text
        # before sentencepiece sees it. Ids come from the sentencepiece vocab, or follow it when new.
        self._added: dict[str, int] = {}
        self._added_flags: dict[str, dict] = {}
        self._special: set[str] = set()
        if not isinstance(added_tokens_decoder or {}, dict):
            raise TypeError(f"added_tokens_decoder must be a dict {{id: token}}, got "
                            f"{type(added_tokens_decoder).__name__}")
        for key, tok in (added_tokens_decoder or {}).items():
            content = _content_of(tok)
            if not isinstance(content, str):
                raise TypeError(f"added_tokens_decoder[{key!r}] must be a token str or {{'content': str, ...}}, got "
                                f"{tok!r}")
            try:
                index = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"added_tokens_decoder keys must be token ids, got {key!r}") from None
            self._added[content] = index
            flags = tok if isinstance(tok, dict) else {k: getattr(tok, k) for k in ("lstrip", "normalized",
                                                                                   "rstrip", "single_word", "special")
                                                       if hasattr(tok, k)}
            self._added_flags[content] = {k: flags[k] for k in ("lstrip", "normalized", "rstrip", "single_word")
                                          if k in flags}
            if flags.get("special", True):
                self._special.add(content)
        self._id_to_added = {i: t for t, i in self._added.items()}
        self._length = None
        self._add(self.all_special_tokens, special=True)
        self._unk_length = len(self.sp_model.encode(str(self.unk_token)))

    # -- special tokens ---------------------------------------------------------------------------------------

    def __getattr__(self, name: str):
        # model-specific named special tokens, e.g. `image_token` / `image_token_id` (as transformers)
        named = self.__dict__.get("_named")
        if named is not None:
            if name in named:
                return named[name]
            if name.endswith("_id") and name[:-3] in named:
                return self._added[named[name[:-3]]]
            if name.endswith("_token") or name.endswith("_token_id"):
                if name.removesuffix("_id") in _SPECIAL_TOKENS_ATTRIBUTES:
                    return None  # bos_token, cls_token... : not set for SigLIP
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def eos_token(self) -> str:
        return self._named["eos_token"]

    @property
    def unk_token(self) -> str:
        return self._named["unk_token"]

    @property
    def pad_token(self) -> str | None:
        return self._named.get("pad_token")

    @property
    def eos_token_id(self) -> int:
        return self._added[self.eos_token]

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self._added[self.pad_token]

    @property
    def unk_token_id(self) -> int:
        return self._added[self.unk_token]

    @property
    def additional_special_tokens(self) -> list[str]:
        return list(self._extra)

    extra_special_tokens = additional_special_tokens

    @property
    def extra_special_tokens_ids(self) -> list[int]:
        return [self._added[t] for t in self._extra]

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens (transformers v5: extra special tokens are not listed here)."""
        order = [k for k in _SPECIAL_TOKENS_ATTRIBUTES if k in self._named]
        order += [k for k in self._named if k not in _SPECIAL_TOKENS_ATTRIBUTES]
        return {k: self._named[k] for k in order}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self._extra]))  # (Gemma: thousands)

    @property
    def all_special_ids(self) -> list[int]:
        return [self._added[t] for t in self.all_special_tokens]

    # -- vocabulary -------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """The size of the sentencepiece vocabulary (without added tokens)."""
        return self.sp_model.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        added = self._id_to_added
        vocab = {added.get(i) or self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def __len__(self) -> int:
        """The full vocabulary with the added tokens (transformers: `len(get_vocab())`)."""
        if self._length is None:
            self._length = len(self.get_vocab())
        return self._length

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return {t: i for t, i in sorted(self._added.items(), key=lambda kv: kv[1])}

    def get_added_vocab(self) -> dict[str, int]:
        return self.added_tokens_encoder

    def _add(self, tokens: Sequence[Any], special: bool) -> int:
        """transformers' `_add_tokens`: new tokens get ids after the current vocabulary; a token that is already a
        sentencepiece piece keeps that piece's id. Returns the number of new ids."""
        for i, token in enumerate(tokens):  # all checked before any is added
            if not isinstance(_content_of(token), str):
                raise TypeError(f"new_tokens[{i}] must be a str (or an AddedToken), got {type(token).__name__}")
        added = 0
        for token in tokens:
            content = _content_of(token)
            if content == "" or content in self._added:
                continue
            is_special = special or content in self.all_special_tokens or bool(getattr(token, "special", False))
            normalized = getattr(token, "normalized", not is_special)
            if not is_special and normalized and self.do_lower_case:
                content = content.lower()
                if content in self._added:
                    continue
            piece_id = self.sp_model.piece_to_id(content)
            if piece_id < self.vocab_size and self.sp_model.id_to_piece(piece_id) == content:
                index = piece_id
            else:
                index, added = len(self), added + 1
            self._added[content] = index
            self._id_to_added[index] = content
            flags = {k: False if isinstance(token, str) else bool(getattr(token, k, False))  # str.lstrip: a method
                     for k in ("lstrip", "rstrip", "single_word")}
            self._added_flags[content] = {**flags, "normalized": normalized}
            if is_special:
                self._special.add(content)
                if content not in self.all_special_tokens:
                    self._extra.append(content)
            self._length = None
        ordered = sorted(self._added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in ordered) + ")") if ordered else None
        return added

    def add_tokens(self, new_tokens: str | Sequence[str], special_tokens: bool = False) -> int:
        """Add tokens (recognised in the text before sentencepiece, given ids after the vocabulary, so `len(tok)`
        grows); returns how many new ids were created. Non-special tokens are lowercased when do_lower_case, as in
        transformers."""
        if new_tokens is None or (isinstance(new_tokens, (list, tuple)) and not new_tokens):
            return 0
        if not isinstance(new_tokens, (list, tuple)):
            new_tokens = [new_tokens]
        return self._add(list(new_tokens), special=bool(special_tokens))

    def add_special_tokens(self, special_tokens_dict: dict, replace_extra_special_tokens: bool = True) -> int:
        """`{"pad_token": "<pad>", "extra_special_tokens": [...], "image_token": "<img>"...}` as transformers v5:
        named tokens are set (and added), the extra list replaces the current one (unless
        replace_extra_special_tokens=False). Returns the number of new ids."""
        if not special_tokens_dict:
            return 0
        if not isinstance(special_tokens_dict, dict):
            raise TypeError(f"special_tokens_dict must be a dict, got {type(special_tokens_dict).__name__}")
        special_tokens_dict = dict(special_tokens_dict)
        if "additional_special_tokens" in special_tokens_dict and not special_tokens_dict.get("extra_special_tokens"):
            special_tokens_dict["extra_special_tokens"] = special_tokens_dict.pop("additional_special_tokens")
        allowed = set(_SPECIAL_TOKENS_ATTRIBUTES) | set(self._named) | {"extra_special_tokens"}
        to_add: list[str] = []
        for key, value in special_tokens_dict.items():
            if key not in allowed:
                raise ValueError(f"special_tokens_dict: {key!r} is not a special token name; valid: {sorted(allowed)}")
            if key == "extra_special_tokens":
                value = _check_str_list(key, [_content_of(t) for t in value] if isinstance(value, (list, tuple))
                                        else value)
                new = [t for t in value if replace_extra_special_tokens or t not in self._extra]
                if replace_extra_special_tokens and new:
                    self._extra = []
                self._extra.extend(t for t in new if t not in self._extra)
                to_add.extend(new)
            else:
                content = _content_of(value)
                if not isinstance(content, str):
                    raise TypeError(f"special_tokens_dict[{key!r}] must be a str, got {type(value).__name__}")
                self._named[key] = content
                to_add.append(content)
        for t in to_add:
            self._special.add(t)
        result = self._add(to_add, special=True)
        self._unk_length = len(self.sp_model.encode(str(self.unk_token)))
        return result

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False):
        if _is_int(ids):
            return self._id_to_token(int(ids))
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)):
            raise TypeError(f"ids must be an int or a list of ints, got {type(ids).__name__}")
        skip = self._skipped_ids() if skip_special_tokens else set()
        out = []
        for i, index in enumerate(ids):
            if not _is_int(index):
                raise TypeError(f"ids[{i}] must be an int, got {type(index).__name__} ({index!r})")
            if int(index) not in skip:
                out.append(self._id_to_token(int(index)))
        return out

    def _skipped_ids(self) -> set[int]:
        """The ids decode(skip_special_tokens=True) leaves out."""
        return set(self.all_special_ids)

    def _id_to_token(self, index: int) -> str:
        token = self._id_to_added.get(index)
        if token is not None:
            return token
        if not 0 <= index < self.vocab_size:
            raise ValueError(f"token id {index} is out of range: the vocabulary has ids 0..{self.vocab_size - 1}"
                             + (f" and added ids {sorted(self._id_to_added)}" if self._id_to_added else ""))
        return self.sp_model.id_to_piece(index)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]):
        if isinstance(tokens, str):
            return self._added[tokens] if tokens in self._added else self.sp_model.piece_to_id(tokens)
        if not isinstance(tokens, (list, tuple)):
            raise TypeError(f"tokens must be a str or a list of str, got {type(tokens).__name__}")
        for i, t in enumerate(tokens):
            if not isinstance(t, str):
                raise TypeError(f"tokens[{i}] must be a str, got {type(t).__name__}")
        return [self.convert_tokens_to_ids(t) for t in tokens]

    # -- normalisation and text -> pieces ---------------------------------------------------------------------

    def canonicalize_text(self, text: str) -> str:
        """Lowercase (if do_lower_case), drop ASCII punctuation, collapse whitespace, strip (big_vision's rule)."""
        if self.do_lower_case:
            text = text.lower()
        return _WHITESPACE.sub(" ", text.translate(_PUNCTUATION)).strip()

    def _split_encode(self, texts: Sequence[str], out_type: type = int, prefix: str = "", drop: int = 0):
        """Split each text on the added tokens and sentencepiece-encode every other chunk, canonicalised and prefixed
        with `prefix` (its first `drop` pieces dropped again), in one call for the whole batch.
        -> (tokens per text, plans, chunks, encoded chunks); a plan lists ("chunk", index) / ("token", token)."""
        plans, chunks = [], []  # per text: ("chunk", index into chunks) or ("token", an added/special token)
        canonicalize = self.canonicalize_text
        for text in texts:
            parts = self._split.split(text) if self._split is not None else [text]
            plan = []
            for i, part in enumerate(parts):
                if i % 2 == 1:
                    plan.append(("token", part))
                elif part:
                    plan.append(("chunk", len(chunks)))
                    chunks.append(prefix + canonicalize(part))
            plans.append(plan)
        encoded = self.sp_model.encode(chunks, out_type=out_type) if chunks else []
        if drop:
            encoded = [e[drop:] if len(e) >= drop else e for e in encoded]
        out = []
        for plan in plans:
            tokens: list = []
            for kind, value in plan:
                if kind == "token":
                    tokens.append(self._added[value] if out_type is int else value)
                else:
                    tokens.extend(encoded[value])
            out.append(tokens)
        return out, plans, chunks, encoded
