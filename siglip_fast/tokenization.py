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


def _token_content(token: Any) -> str | None:
    """A special token as written in tokenizer configs: a string or an AddedToken dict {"content": ...}."""
    if token is None or isinstance(token, str):
        return token
    if isinstance(token, dict) and "content" in token:
        return token["content"]
    raise TypeError(f"special token must be a string or a dict with 'content', got {token!r}")


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------------------------------------------


class SiglipTokenizer:
    """SigLIP's tokenizer, id-for-id equal to transformers' `SiglipTokenizer` (which has no fast version).

    Call it like the transformers one: `tok(texts, padding="max_length", truncation=True, return_tensors="pt")`.
    Note that, as in transformers, the tokenizer itself does not pad unless asked; SigLIP was trained on
    `padding="max_length"` (see `SiglipProcessor`, which pads that way by default).
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    padding_side = "right"
    truncation_side = "right"

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        *,
        model_proto: bytes | None = None,
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        pad_token: str = "</s>",
        additional_special_tokens: Iterable[str] | None = None,
        sp_model_kwargs: dict | None = None,
        model_max_length: int = 64,
        do_lower_case: bool = True,
        model_input_names: Sequence[str] | None = None,
        clean_up_tokenization_spaces: bool = False,
        padding_side: str = "right",
        truncation_side: str = "right",
        added_tokens_decoder: dict | None = None,
    ):
        if (vocab_file is None) == (model_proto is None):
            raise ValueError("SiglipTokenizer needs exactly one of vocab_file (a spiece.model path) or model_proto")
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
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
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        if not isinstance(model_max_length, int) or model_max_length < 1:
            raise ValueError(f"model_max_length must be a positive int, got {model_max_length!r}")
        self.model_max_length = model_max_length
        self.do_lower_case = bool(do_lower_case)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.model_input_names = list(model_input_names) if model_input_names is not None else [
            "input_ids", "attention_mask"]
        if not self.model_input_names or self.model_input_names[0] != "input_ids":
            raise ValueError(f"model_input_names must start with 'input_ids', got {self.model_input_names}")

        self.eos_token, self.unk_token, self.pad_token = eos_token, unk_token, pad_token
        self.additional_special_tokens = list(additional_special_tokens or [])

        # Added tokens: content -> id, as in transformers' added_tokens_decoder; special tokens are split out of
        # the text before sentencepiece sees it. Ids come from the sentencepiece vocab, or follow it when new.
        self._added: dict[str, int] = {}
        self._special: set[str] = set()
        for key, tok in (added_tokens_decoder or {}).items():
            content = _token_content(tok)
            self._added[content] = int(key)
            if not isinstance(tok, dict) or tok.get("special", True):
                self._special.add(content)
        for tok in [eos_token, unk_token, pad_token, *self.additional_special_tokens]:
            if tok is None:
                continue
            self._special.add(tok)
            if tok not in self._added:
                piece_id = self.sp_model.piece_to_id(tok)
                in_vocab = self.sp_model.id_to_piece(piece_id) == tok
                self._added[tok] = piece_id if in_vocab else max(len(self), *[i + 1 for i in self._added.values()])
        self._id_to_added = {i: t for t, i in self._added.items()}
        ordered = sorted(self._added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in ordered) + ")") if ordered else None
        self._unk_length = len(self.sp_model.encode(str(unk_token)))

    # -- vocabulary -------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size()

    def __len__(self) -> int:
        return max([self.vocab_size, *[i + 1 for i in getattr(self, "_added", {}).values()]])

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
    def all_special_tokens(self) -> list[str]:
        seen = []
        for tok in [self.eos_token, self.unk_token, self.pad_token, *self.additional_special_tokens]:
            if tok is not None and tok not in seen:
                seen.append(tok)
        return seen

    @property
    def all_special_ids(self) -> list[int]:
        return [self._added[t] for t in self.all_special_tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False):
        if isinstance(ids, (int, np.integer)):
            return self._id_to_added.get(int(ids)) or self.sp_model.id_to_piece(int(ids))
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.convert_ids_to_tokens(int(i)) for i in ids if int(i) not in skip]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]):
        if isinstance(tokens, str):
            return self._added[tokens] if tokens in self._added else self.sp_model.piece_to_id(tokens)
        return [self.convert_tokens_to_ids(t) for t in tokens]

    # -- text -> ids ------------------------------------------------------------------------------------------

    def canonicalize_text(self, text: str) -> str:
        """Lowercase (if do_lower_case), drop ASCII punctuation, collapse whitespace, strip (big_vision's rule)."""
        if self.do_lower_case:
            text = text.lower()
        return _WHITESPACE.sub(" ", text.translate(_PUNCTUATION)).strip()

    def _encode_batch(self, texts: Sequence[str], out_type: type = int) -> list[list]:
        """Ids (or pieces, out_type=str) of each text, without EOS: transformers' tokenize(), batched."""
        plans = []  # per text: ("chunk", index into chunks) or ("token", an added/special token)
        chunks = []
        for text in texts:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
            parts = self._split.split(text) if self._split is not None else [text]
            plan = []
            for i, part in enumerate(parts):
                if i % 2 == 1:
                    plan.append(("token", part))
                elif part:
                    plan.append(("chunk", len(chunks)))
                    chunks.append(str(self.unk_token) + self.canonicalize_text(part))
            plans.append(plan)
        encoded = self.sp_model.encode(chunks, out_type=out_type) if chunks else []
        n = self._unk_length
        encoded = [e[n:] if len(e) >= n else e for e in encoded]  # drop the pieces of the "<unk>" prefix
        out = []
        for plan in plans:
            tokens: list = []
            for kind, value in plan:
                if kind == "token":
                    tokens.append(self._added[value] if out_type is int else value)
                else:
                    tokens.extend(encoded[value])
            # transformers drops a leading lone "▁" piece when a special token follows it
            if (len(plan) > 1 and plan[0][0] == "chunk" and plan[1][0] == "token" and plan[1][1] in self._special
                    and len(encoded[plan[0][1]]) == 1):
                piece = encoded[plan[0][1]][0]
                if out_type is int:
                    piece = self.sp_model.encode(chunks[plan[0][1]], out_type=str)[n:]
                    piece = piece[0] if len(piece) == 1 else None
                if piece == SPIECE_UNDERLINE:
                    tokens = tokens[1:]
            out.append(tokens)
        return out

    def tokenize(self, text: str) -> list[str]:
        """The sentencepiece pieces of `text` (special tokens as themselves), without EOS."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._encode_batch([text], out_type=str)[0]

    def _resolve_lengths(self, padding, truncation, max_length, pad_to_multiple_of):
        """transformers' `_get_padding_truncation_strategies`: -> (pad mode None/'longest'/'max_length', truncate,
        max_length)."""
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
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
            if pad == "max_length":
                if self.model_max_length > LARGE_INTEGER:
                    pad = None
                else:
                    max_length = self.model_max_length
            if truncate:
                if self.model_max_length > LARGE_INTEGER:
                    truncate = False
                else:
                    max_length = self.model_max_length
        if pad is not None and self.pad_token_id is None:
            raise ValueError("asked to pad, but the tokenizer has no pad_token")
        if truncate and pad is not None and pad_to_multiple_of and max_length and max_length % pad_to_multiple_of:
            raise ValueError(f"truncation length ({max_length}) is not a multiple of pad_to_multiple_of "
                             f"({pad_to_multiple_of})")
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
        """Encode one text (flat lists, or a (1, L) tensor) or a batch of texts, as transformers does."""
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

        eos = self.eos_token_id
        rows = []
        for ids in self._encode_batch(texts):
            num_special = 1 if add_special_tokens else 0
            if truncate and max_length and len(ids) + num_special > max_length:
                remove = len(ids) + num_special - max_length
                ids = ids[remove:] if self.truncation_side == "left" else ids[:-remove]
            if add_special_tokens:
                if ids and ids[-1] == eos:
                    warnings.warn(f"This sequence already has {self.eos_token}. In future versions this behavior "
                                  "may lead to duplicated eos tokens being added.", stacklevel=2)
                else:
                    ids = ids + [eos]
            rows.append(ids)

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
        """The ids of one text (with EOS)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self(text, **kwargs)["input_ids"]

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

    def decode(self, token_ids, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str | list[str]:
        """Ids -> text; a batch (list of lists or a 2-D tensor/array) gives a list of texts."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        elif isinstance(token_ids, np.ndarray):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, (int, np.integer)):
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
        return [self.decode(list(s), skip_special_tokens, clean_up_tokenization_spaces) for s in sequences]

    # -- files ------------------------------------------------------------------------------------------------

    def to_config(self) -> dict:
        """The tokenizer_config.json transformers v5 writes (and v4 reads)."""
        added = {}
        for content, idx in sorted(self._added.items(), key=lambda kv: kv[1]):
            added[str(idx)] = {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                               "single_word": False, "special": content in self._special}
        config = {
            "added_tokens_decoder": added,
            "backend": "sentencepiece",
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "do_lower_case": self.do_lower_case,
            "eos_token": self.eos_token,
            "extra_special_tokens": list(self.additional_special_tokens),
            "model_input_names": list(self.model_input_names),
            "model_max_length": self.model_max_length,
            "pad_token": self.pad_token,
            "sp_model_kwargs": dict(self.sp_model_kwargs),
            "tokenizer_class": "SiglipTokenizer",
            "unk_token": self.unk_token,
        }
        if self.padding_side != "right":
            config["padding_side"] = self.padding_side
        if self.truncation_side != "right":
            config["truncation_side"] = self.truncation_side
        return config

    def save_pretrained(self, save_directory: str | os.PathLike, *, processor_class: str | None = None) -> list[str]:
        """Write spiece.model and tokenizer_config.json; returns the paths written."""
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory: {save_directory!r} is a file, expected a directory")
        os.makedirs(save_directory, exist_ok=True)
        vocab_path = os.path.join(save_directory, VOCAB_FILE)
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
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, revision: str | None = None,
                        **overrides) -> "SiglipTokenizer":
        """Load from a directory with spiece.model (+ tokenizer_config.json), or a hub id (needs huggingface_hub).

        `overrides` (e.g. `model_max_length=16`) take precedence over the saved config."""
        directory = resolve_pretrained_dir(
            path_or_id, allow_patterns=[VOCAB_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE],
            what="SiglipTokenizer.from_pretrained", revision=revision)
        vocab_file = os.path.join(directory, VOCAB_FILE)
        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"SiglipTokenizer.from_pretrained: no {VOCAB_FILE} in {os.fspath(path_or_id)!r}")
        config: dict = {}
        for name in (SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE):  # the tokenizer config wins
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    config.update(json.load(f))
        kwargs: dict[str, Any] = {}
        for key in ("eos_token", "unk_token", "pad_token"):
            if key in config:
                kwargs[key] = _token_content(config[key])
        extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
        if isinstance(extra, dict):  # transformers may save named extra tokens as a mapping
            extra = list(extra.values())
        kwargs["additional_special_tokens"] = [_token_content(t) for t in extra]
        for key in ("sp_model_kwargs", "do_lower_case", "model_input_names", "clean_up_tokenization_spaces",
                    "padding_side", "truncation_side", "added_tokens_decoder"):
            if config.get(key) is not None:
                kwargs[key] = config[key]
        if config.get("model_max_length") is not None:
            kwargs["model_max_length"] = int(config["model_max_length"])
        kwargs.update(overrides)
        return cls(vocab_file, **kwargs)

    def __repr__(self) -> str:
        return (f"SiglipTokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
                f"do_lower_case={self.do_lower_case}, model_input_names={self.model_input_names})")
