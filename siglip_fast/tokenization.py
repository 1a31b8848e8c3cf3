"""SigLIP's sentencepiece tokenizer: the same ids as transformers' `SiglipTokenizer`, encoded in batches.

The algorithm (transformers v4 == v5, reference/hf-siglip.md §3.2) for one text:
  1. replace every `▁` with a space and prepend `▁`;
  2. split on the special/added token strings (`</s>`, `<unk>`): a literal `</s>` becomes id 1;
  3. every other chunk is canonicalised (lowercase, ASCII punctuation removed, whitespace collapsed and stripped)
     and sentencepiece-encoded as `"<unk>" + chunk` with the pieces of `"<unk>"` dropped again (so sentencepiece
     adds no dummy prefix of its own);
  4. truncation keeps the first `max_length - 1` ids, then EOS (1) is appended unless the ids already end with it;
  5. padding appends the pad id (1, the same as EOS) on the right.

Every chunk of a batch goes through one call of sentencepiece's batch encoder.
Files: `spiece.model` and `tokenizer_config.json` (also `special_tokens_map.json` when present), as transformers.
"""

from __future__ import annotations

import json
import os
import re
import string
import warnings
from collections.abc import Mapping
from typing import Any, Iterable, Sequence

import numpy as np
import sentencepiece as spm
import torch

from .checkpoint import resolve_pretrained_dir

SPIECE_UNDERLINE = "\u2581"
VOCAB_FILE = "spiece.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
LARGE_INTEGER = int(1e20)  # transformers' marker for "no model_max_length"

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")


# ----------------------------------------------------------------------------------------------------------------
# Output container and directory resolution (shared with the image processor and the processor)
# ----------------------------------------------------------------------------------------------------------------


class BatchEncoding(dict):
    """A dict of model inputs with attribute access (`enc.input_ids`) and `.to(device)` for its tensors."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}; fields: {list(self)}") from None

    @property
    def data(self) -> dict:
        return dict(self)

    def to(self, *args, **kwargs) -> "BatchEncoding":
        """Move every tensor value in place, like `Tensor.to`. A dtype applies to floating-point tensors only, so
        `.to("cuda", torch.bfloat16)` moves the ids and casts the pixels. Lists and arrays are left as they are."""
        device = kwargs.get("device")
        for a in args:
            if isinstance(a, (str, torch.device, int)):
                device = a
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                self[key] = value.to(*args, **kwargs) if value.is_floating_point() else value.to(device=device)
        return self


def _to_tensors(data: dict, return_tensors: str | None, *, what: str) -> dict:
    """Stack the lists of `data` into 'pt' / 'np' tensors; None leaves them as lists."""
    if return_tensors is None:
        return data
    if return_tensors not in ("pt", "np"):
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
    out = {}
    for key, value in data.items():
        lengths = {len(v) for v in value} if value and isinstance(value[0], list) else None
        if lengths is not None and len(lengths) > 1:
            raise ValueError(
                f"cannot stack {key!r} into a tensor: the {what} have different lengths {sorted(lengths)}; pass "
                "padding=True or padding='max_length' (with truncation=True) to get equal lengths"
            )
        array = np.asarray(value, dtype=np.int64)
        out[key] = torch.from_numpy(array) if return_tensors == "pt" else array
    return out


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


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_str_list(name: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of str, got {type(value).__name__}")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(v).__name__}")
    return list(value)


class SiglipTokenizer:
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
    `_skipped_ids` (what decode(skip_special_tokens=True) drops), `convert_tokens_to_string`, `to_config`.
    `siglip_fast.tokenization_gemma.GemmaTokenizer` is such a subclass. A BOS goes in as a named token:
    `extra_special_tokens={"bos_token": "<bos>"}` gives `bos_token_id`. `__call__`, `pad`, truncation, padding,
    masks, tensors, files and decoding are generic.
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE}
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
        if (vocab_file is None) == (model_proto is None):
            raise ValueError("SiglipTokenizer needs exactly one of vocab_file (a spiece.model path) or model_proto")
        for key in call_defaults:
            if key not in CALL_DEFAULT_KEYS:
                raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword argument {key!r} "
                                f"(call options it keeps as defaults: {list(CALL_DEFAULT_KEYS)})")
        # as transformers: kept and saved; SiglipProcessor applies them as defaults of its text options (the
        # tokenizer's own __call__ does not, as transformers' does not)
        self.call_defaults = dict(call_defaults)
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

    # -- text -> ids ------------------------------------------------------------------------------------------

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

    def _encode_batch(self, texts: Sequence[str], out_type: type = int) -> list[list]:
        """Ids (or pieces, out_type=str) of each text, without EOS: transformers' tokenize(), batched."""
        texts = [SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ") for text in texts]
        n = self._unk_length
        out, plans, chunks, encoded = self._split_encode(texts, out_type, prefix=str(self.unk_token), drop=n)
        special = set(self.all_special_tokens)
        for tokens, plan in zip(out, plans, strict=True):
            # transformers drops a leading lone "▁" piece when a special token follows it
            if (len(plan) > 1 and plan[0][0] == "chunk" and plan[1][0] == "token" and plan[1][1] in special
                    and len(encoded[plan[0][1]]) == 1):
                piece = encoded[plan[0][1]][0]
                if out_type is int:
                    piece = self.sp_model.encode(chunks[plan[0][1]], out_type=str)[n:]
                    piece = piece[0] if len(piece) == 1 else None
                if piece == SPIECE_UNDERLINE:
                    del tokens[0]
        return out

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        """The sentencepiece pieces of `text` (special tokens as themselves), without EOS unless
        add_special_tokens=True."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if pair is not None and not isinstance(pair, str):
            raise TypeError(f"pair must be a str or None, got {type(pair).__name__}")
        if add_special_tokens:
            return self.convert_ids_to_tokens(self(text, pair, add_special_tokens=True)["input_ids"])
        tokens = self._encode_batch([text], out_type=str)[0]
        return tokens + (self._encode_batch([pair], out_type=str)[0] if pair is not None else [])

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return len(self.build_inputs_with_special_tokens([], [] if pair else None))

    def _add_eos(self, ids: list[int]) -> list[int]:
        if ids and ids[-1] == self.eos_token_id:
            warnings.warn(f"This sequence already has {self.eos_token}. In future versions this behavior may lead to "
                          "duplicated eos tokens being added.", stacklevel=4)
            return ids
        return ids + [self.eos_token_id]

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        """`X </s>` and `A </s> B </s>`; no second EOS when a sequence already ends with one (transformers)."""
        if token_ids_1 is None:
            return self._add_eos(list(token_ids_0))
        return self._add_eos(list(token_ids_0)) + self._add_eos(list(token_ids_1))

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 for the special tokens `build_inputs_with_special_tokens` adds, 0 for the text's own ids. (One
        deliberate difference: when a sequence already ends with a literal `</s>`, transformers' mask is one entry
        longer than the ids; here it always has the ids' length.)"""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("token_ids_1 must be None when already_has_special_tokens=True")
            special = set(self.all_special_ids)
            return [1 if int(t) in special else 0 for t in token_ids_0]
        eos = self.eos_token_id
        mask = [0] * len(token_ids_0) + ([] if token_ids_0 and token_ids_0[-1] == eos else [1])
        if token_ids_1 is not None:
            mask += [0] * len(token_ids_1) + ([] if token_ids_1 and token_ids_1[-1] == eos else [1])
        return mask

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        """All zeros (T5/SigLIP do not use token types), as long as the built sequence."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    def _token_type_ids(self, ids: list[int], pair_ids: list[int] | None, add_special_tokens: bool) -> list[int]:
        """The token type ids of one (truncated) text or pair, as the call returns them (all 0 for SigLIP)."""
        if add_special_tokens:
            return self.create_token_type_ids_from_sequences(ids, pair_ids)
        return [0] * (len(ids) + len(pair_ids or []))

    def truncate_sequences(self, ids: list[int], pair_ids: list[int] | None = None, num_tokens_to_remove: int = 0,
                           truncation_strategy: str = "longest_first") -> tuple[list[int], list[int] | None]:
        """transformers' truncate_sequences (without overflow): remove `num_tokens_to_remove` ids."""
        if num_tokens_to_remove <= 0:
            return ids, pair_ids
        n, left = num_tokens_to_remove, self.truncation_side == "left"
        if truncation_strategy == "only_first" or (truncation_strategy == "longest_first" and pair_ids is None):
            ids = ids[n:] if left else ids[:-n]
        elif truncation_strategy == "longest_first":
            len_ids, len_pair = len(ids), len(pair_ids)
            first = min(abs(len_pair - len_ids), n)
            second = n - first
            if len_ids > len_pair:
                from_ids, from_pair = first + second // 2, second - second // 2
            else:
                from_ids, from_pair = second // 2, first + second - second // 2
            if left:  # (transformers turns an empty pair into None here, so it loses its EOS: kept for parity)
                ids, pair_ids = ids[from_ids:], pair_ids[from_pair:] if pair_ids else None
            else:
                ids = ids[:-from_ids] if from_ids > 0 else ids
                pair_ids = pair_ids[:-from_pair] if pair_ids and from_pair > 0 else pair_ids
        elif truncation_strategy == "only_second" and pair_ids:
            pair_ids = pair_ids[n:] if left else pair_ids[:-n]
        return ids, pair_ids

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

    @staticmethod
    def _texts(text: Any, text_pair: Any) -> tuple[bool, list[str], list[str] | None]:
        """-> (batched, texts, pairs or None), checking types and batch sizes."""
        if text is None:
            raise ValueError("text must be a str or a list of str, got None")
        if isinstance(text, str):
            if text_pair is not None and not isinstance(text_pair, str):
                raise TypeError(f"text is a str, so text_pair must be a str too, got {type(text_pair).__name__}")
            return False, [text], None if text_pair is None else [text_pair]
        if not isinstance(text, (list, tuple)):
            raise TypeError(f"text must be a str or a list/tuple of str, got {type(text).__name__}")
        if not text:
            raise ValueError("text: got an empty list; expected at least one text")
        if text_pair is None and all(isinstance(t, (list, tuple)) for t in text):  # a batch of (text, pair)
            for i, t in enumerate(text):
                if len(t) != 2 or not all(isinstance(s, str) for s in t):
                    raise TypeError(f"text[{i}] must be a str or a (text, text_pair) pair of str, got {t!r}")
            return True, [t[0] for t in text], [t[1] for t in text]
        for i, t in enumerate(text):
            if not isinstance(t, str):
                raise TypeError(f"text[{i}] must be a str, got {type(t).__name__} (pre-tokenised input is not "
                                "supported; pairs go as text_pair= or as (text, pair) tuples)")
        if text_pair is None:
            return True, list(text), None
        if not isinstance(text_pair, (list, tuple)):
            raise TypeError(f"text is a batch of {len(text)}, so text_pair must be a list of {len(text)} str, got "
                            f"{type(text_pair).__name__}")
        if len(text_pair) != len(text):
            raise ValueError(f"text and text_pair must have the same batch size, got {len(text)} texts and "
                             f"{len(text_pair)} pairs")
        for i, t in enumerate(text_pair):
            if not isinstance(t, str):
                raise TypeError(f"text_pair[{i}] must be a str, got {type(t).__name__}")
        return True, list(text), list(text_pair)

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
        (`text_pair`, or a batch of (text, pair) tuples), as transformers does."""
        if is_split_into_words:
            raise ValueError("is_split_into_words=True (pre-tokenised input) is not supported by SiglipTokenizer; "
                             "join the words into a str")
        if return_overflowing_tokens or stride:
            raise ValueError(f"return_overflowing_tokens / stride are not supported (got return_overflowing_tokens="
                             f"{return_overflowing_tokens!r}, stride={stride!r})")
        if return_offsets_mapping:
            raise NotImplementedError("return_offset_mapping is not available for SiglipTokenizer (transformers' "
                                      "slow tokenizers do not offer it either)")
        for name, value in (("add_special_tokens", add_special_tokens), ("return_special_tokens_mask",
                            return_special_tokens_mask), ("return_length", return_length), ("verbose", verbose),
                            ("return_attention_mask", return_attention_mask),
                            ("return_token_type_ids", return_token_type_ids)):
            if not isinstance(value, bool) and not (value is None and name.startswith("return_") and
                                                    name.endswith(("mask", "ids"))):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
        batched, texts, pairs = self._texts(text, text_pair)
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

        firsts = self._encode_batch(texts)
        seconds = self._encode_batch(pairs) if pairs is not None else [None] * len(firsts)
        num_special = self.num_special_tokens_to_add(pairs is not None) if add_special_tokens else 0
        rows, type_ids, special_masks = [], [], []
        if (pairs is None and add_special_tokens and not return_special_tokens_mask and not return_token_type_ids
                and type(self).build_inputs_with_special_tokens is SiglipTokenizer.build_inputs_with_special_tokens):
            # the common case, inlined: one text per row, truncated, then EOS appended unless already there
            cuts = truncate in ("longest_first", "only_first") and max_length  # only_second: nothing to cut
            eos, cut = self.eos_token_id, (max_length - num_special if cuts else None)
            left = self.truncation_side == "left"
            for ids in firsts:
                if cut is not None and len(ids) > cut:
                    ids = ids[len(ids) - cut:] if left else ids[:cut]
                if ids and ids[-1] == eos:
                    ids = self._add_eos(ids)  # warns, as transformers
                else:
                    ids.append(eos)
                rows.append(ids)
            firsts = ()
        for ids, pair_ids in zip(firsts, seconds if firsts else (), strict=True):
            total = len(ids) + (len(pair_ids) if pair_ids is not None else 0) + num_special
            if truncate and max_length and total > max_length:
                ids, pair_ids = self.truncate_sequences(ids, pair_ids, total - max_length, truncate)
            if add_special_tokens:
                sequence = self.build_inputs_with_special_tokens(ids, pair_ids)
                if return_special_tokens_mask:
                    special_masks.append(self.get_special_tokens_mask(ids, pair_ids))
            else:
                sequence = ids + (pair_ids or [])
                if return_special_tokens_mask:
                    special_masks.append([0] * len(sequence))
            rows.append(sequence)
            if return_token_type_ids:
                type_ids.append(self._token_type_ids(ids, pair_ids, add_special_tokens))

        if verbose and max_length is None and rows:
            longest = max(len(r) for r in rows)
            if longest > self.model_max_length:  # transformers' (logged) warning; the model would fail later
                warnings.warn(f"Token indices sequence length is longer than the specified maximum sequence length "
                              f"for this model ({longest} > {self.model_max_length}). Running this sequence through "
                              "the model will result in indexing errors; pass truncation=True (SigLIP was trained "
                              "with padding='max_length', truncation=True).", UserWarning, stacklevel=2)
        data: dict[str, Any] = {"input_ids": rows}
        if return_token_type_ids:
            data["token_type_ids"] = type_ids
        if return_special_tokens_mask:
            data["special_tokens_mask"] = special_masks
        if return_length and batched:  # transformers: the unpadded lengths for a batch, the padded one for a text
            data["length"] = [len(r) for r in rows]
        self._pad_rows(data, pad, max_length, pad_to_multiple_of, padding_side, return_attention_mask)
        if return_length and not batched:
            data["length"] = [len(data["input_ids"][0])]
        if not batched:
            data = {k: v[0] if return_tensors is None else [v[0]] for k, v in data.items()}
        return BatchEncoding(_to_tensors(data, return_tensors, what="texts"))

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
                 "special_tokens_mask": 1}
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

    def encode(self, text: str, text_pair: str | None = None, **kwargs) -> list[int]:
        """The ids of one text (with EOS), or of a pair."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
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
        """Write spiece.model and tokenizer_config.json; returns the paths written."""
        if not isinstance(save_directory, (str, os.PathLike)):
            raise TypeError(f"save_directory must be a path, got {type(save_directory).__name__}")
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory: {save_directory!r} is a file, expected a directory")
        os.makedirs(save_directory, exist_ok=True)
        vocab_path = os.path.join(save_directory, self.vocab_files_names["vocab_file"])
        with open(vocab_path, "wb") as f:
            f.write(self._proto)
        config = self.to_config()
        if processor_class is not None:
            config["processor_class"] = processor_class
        config_path = os.path.join(save_directory, TOKENIZER_CONFIG_FILE)
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")
        return [vocab_path, config_path]

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, revision: str | None = None,
                        **overrides) -> "SiglipTokenizer":
        """Load from a directory with spiece.model (+ tokenizer_config.json), or a hub id (needs huggingface_hub).

        `overrides` (e.g. `model_max_length=16`) take precedence over the saved config."""
        vocab_name = cls.vocab_files_names["vocab_file"]
        directory = resolve_pretrained_dir(
            path_or_id, allow_patterns=[vocab_name, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE],
            what=f"{cls.__name__}.from_pretrained", revision=revision)
        vocab_file = os.path.join(directory, vocab_name)
        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"{cls.__name__}.from_pretrained: no {vocab_name} in {os.fspath(path_or_id)!r}")
        config = read_tokenizer_config(directory)
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
        kwargs.update(overrides)
        return cls(vocab_file, **kwargs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
                f"do_lower_case={self.do_lower_case}, model_input_names={self.model_input_names})")
