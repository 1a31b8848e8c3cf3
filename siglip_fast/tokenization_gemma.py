"""The Gemma tokenizer of SigLIP 2: the same ids as transformers v5's `GemmaTokenizer` / `Siglip2Tokenizer`.

transformers v5 builds `GemmaTokenizer` from `tokenizer.model` as a `tokenizers` BPE (vocabulary and merges
extracted from the sentencepiece proto, byte fallback, spaces replaced by `▁`, no dummy prefix), with the proto's
control and user-defined pieces and the bos/eos/pad/unk/mask tokens as added tokens, matched in the raw text first.
`Siglip2Tokenizer` (what `AutoTokenizer` returns for model_type "siglip2") prepends a `Lowercase` normaliser:
SigLIP 2 was trained on lowercased text. For one text this is, here:
  1. split the text on the added tokens (longest first), which map to their ids;
  2. every other chunk (per-character lowercased for `Siglip2Tokenizer`) is sentencepiece-encoded as is (Gemma's
     proto has no normaliser and no dummy prefix, so sentencepiece's BPE gives the ids transformers' BPE gives);
  3. `<bos>` is prepended if `add_bos_token`, `<eos>` appended if `add_eos_token` (a pair: `<bos> A <eos> <bos> B
     <eos>`, token type 1 for B); truncation keeps room for them, so with add_eos_token the last id is always EOS
     (big_vision's "sticky" EOS);
  4. padding with `<pad>` (id 0) on `padding_side` (transformers' class default "left", the config's otherwise).
Expected layout: `<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3, byte fallback (Gemma's; 256k pieces in SigLIP 2).
Files: `tokenizer.model` and `tokenizer_config.json`; a directory saved by transformers 5 holds `tokenizer.json`
instead (no tokenizer.model), which is read with Hugging Face's `tokenizers` (an optional dependency, the
`tokenizers` extra; `TokenizerJsonModel`): its vocabulary, merges, added tokens and bos/eos template, with the
class's lowercasing, as transformers reads it. Where both files exist, tokenizer.model is read.

Both are `SiglipTokenizer` subclasses (siglip_fast.tokenization): calls, pairs, truncation, padding, `pad`,
`add_tokens` / `add_special_tokens`, special-token masks, decoding and files are its generic code; this module
says what differs (the model file's name, the text -> ids step, the bos/eos template, the defaults).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

from .tokenization import SiglipTokenizer, _read_json, read_tokenizer_config

GEMMA_VOCAB_FILE = "tokenizer.model"
GEMMA_JSON_FILE = "tokenizer.json"  # what transformers 5 saves (its Gemma classes are tokenizers-backed)
VERY_LARGE_INTEGER = int(1e30)  # transformers' model_max_length when none is set (Gemma's configs: "unlimited")
_CONTROL, _USER_DEFINED = 3, 4  # sentencepiece ModelProto.SentencePiece.Type


def _proto_added_tokens(proto: bytes) -> dict[int, dict]:
    """The proto's control and user-defined pieces as added_tokens_decoder entries (transformers makes them added
    tokens, the control ones special)."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    return {i: {"content": p.piece, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                "special": p.type == _CONTROL}
            for i, p in enumerate(model.pieces) if p.type in (_CONTROL, _USER_DEFINED)}


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError("reading tokenizer.json (what transformers 5 saves for SigLIP 2's Gemma tokenizer) needs "
                          "Hugging Face's tokenizers package: pip install 'siglip_fast[tokenizers]' (or pip install "
                          "tokenizers); a directory with tokenizer.model is read with sentencepiece instead") from None
    return tokenizers


class TokenizerJsonModel:
    """Gemma's BPE from a `tokenizer.json`, run by Hugging Face `tokenizers`, behind the part of sentencepiece's
    processor API the tokenizer uses (`get_piece_size`, `piece_to_id`, `id_to_piece`, `encode`, `decode`).

    The file gives the vocabulary, merges, byte fallback, added tokens and the special-token template
    (`template_flags`); lowercasing is the class's, as in transformers (a `Lowercase` normaliser is put first for
    `Siglip2Tokenizer` and removed for `GemmaTokenizer`, whatever the file says). `encode` takes whole texts: the
    added tokens are split out by `tokenizers` itself; the special tokens around a text are the tokenizer's.
    """

    def __init__(self, path: str | os.PathLike, lowercase: bool):
        tokenizers = _import_tokenizers()
        self.path = os.fspath(path)
        what = f"tokenizer_file {self.path!r}"
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{what} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{what} is not valid JSON: {e}") from None
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE" or not model.get("byte_fallback"):
            kind = model.get("type") if isinstance(model, dict) else type(model).__name__
            raise ValueError(f"{what} is not a Gemma tokenizer: expected a BPE model with byte_fallback, got "
                             f"{kind!r}")
        self.post_processor = data.get("post_processor")
        self.added_tokens = [t for t in data.get("added_tokens") or [] if isinstance(t, dict)]
        normalizer = data.get("normalizer")
        parts = (normalizer.get("normalizers", []) if isinstance(normalizer, dict) and normalizer.get("type") ==
                 "Sequence" else [normalizer] if normalizer else [])
        parts = [p for p in parts if not (isinstance(p, dict) and p.get("type") == "Lowercase")]
        if lowercase:
            parts = [{"type": "Lowercase"}, *parts]
        data = {**data, "normalizer": {"type": "Sequence", "normalizers": parts} if parts else None,
                "post_processor": None, "truncation": None, "padding": None}  # special tokens: the tokenizer's
        try:
            self.tokenizer = tokenizers.Tokenizer.from_str(json.dumps(data))
        except Exception as e:  # noqa: BLE001 - tokenizers' own exception types
            raise ValueError(f"{what} cannot be read by tokenizers {tokenizers.__version__}: {e}") from None
        self._size = self.tokenizer.get_vocab_size(with_added_tokens=False)
        unk = model.get("unk_token")
        self._unk_id = self.tokenizer.token_to_id(unk) if isinstance(unk, str) else None

    def template_flags(self, bos_token: str | None, eos_token: str) -> tuple[bool, bool]:
        """(add_bos_token, add_eos_token) from the file's TemplateProcessing `[<bos>] $A [<eos>]` (none: no special
        tokens); another template is refused, naming it."""
        post = self.post_processor
        if post is None:
            return False, False
        single = post.get("single") if isinstance(post, dict) and post.get("type") == "TemplateProcessing" else None
        parts = [("special", x["SpecialToken"].get("id")) if isinstance(x, dict) and "SpecialToken" in x else
                 ("text", None) if isinstance(x, dict) and "Sequence" in x else ("?", x) for x in single or []]
        bos = bool(parts) and parts[0] == ("special", bos_token)
        eos = len(parts) > 1 and parts[-1] == ("special", eos_token)
        if parts[bos:len(parts) - eos] != [("text", None)]:
            raise ValueError(f"tokenizer_file {self.path!r}: its post_processor is not Gemma's template "
                             f"[{bos_token}] $A [{eos_token}]: {json.dumps(post)[:200]}")
        return bos, eos

    def write(self, path: str, template: dict | None) -> None:
        """Save as tokenizer.json, with `template` as its post_processor."""
        data = json.loads(self.tokenizer.to_str())
        data["post_processor"] = template
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")

    def sync(self, added: dict[str, int], special: set[str], flags: dict[str, dict]) -> None:
        """Register with tokenizers (which then splits them out of texts) the added tokens it does not know yet, at
        the tokenizer's ids: `added` content -> id, `special` the special ones, `flags` their AddedToken flags."""
        from tokenizers import AddedToken

        known = {t.content for t in self.tokenizer.get_added_tokens_decoder().values()}
        for content, index in sorted(added.items(), key=lambda kv: kv[1]):
            if content in known:
                continue
            is_special, f = content in special, flags.get(content, {})
            token = AddedToken(content, special=is_special, normalized=bool(f.get("normalized", not is_special)),
                               lstrip=bool(f.get("lstrip", False)), rstrip=bool(f.get("rstrip", False)),
                               single_word=bool(f.get("single_word", False)))
            (self.tokenizer.add_special_tokens if is_special else self.tokenizer.add_tokens)([token])
            got = self.tokenizer.token_to_id(content)
            if got != index:
                raise ValueError(f"tokenizer_file {self.path!r}: the added token {content!r} has id {index} here but "
                                 f"{got} in tokenizers (the file's vocabulary and added tokens disagree)")

    # -- the sentencepiece processor's API, as the tokenizer uses it --------------------------------------------

    def get_piece_size(self) -> int:
        return self._size

    def piece_to_id(self, piece: str) -> int:
        index = self.tokenizer.token_to_id(piece)
        return (self._unk_id if self._unk_id is not None else 0) if index is None else index

    def id_to_piece(self, index: int) -> str:
        return self.tokenizer.id_to_token(index)

    def encode(self, texts: str | Sequence[str], out_type: type = int):
        """Ids (or tokens, out_type=str) of a text or of each text of a list, without special tokens."""
        if isinstance(texts, str):
            return self.encode([texts], out_type)[0]
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids if out_type is int else e.tokens for e in encodings]

    def decode(self, pieces: Sequence[str]) -> str:
        return self.tokenizer.decoder.decode(list(pieces)) if pieces else ""


def _pair_room(len_ids: int, len_pair: int, room: int) -> tuple[int, int]:
    """How many ids of each text of a pair `longest_first` keeps in `room`, as tokenizers splits it: the shorter
    text keeps all its ids if it fits in half, else both get half, the extra id going to the longer one."""
    short, long = sorted((len_ids, len_pair))
    long = short if short > room else max(short, room - short)
    if short + long > room:
        short, long = room // 2, room // 2 + room % 2
    return (long, short) if len_ids > len_pair else (short, long)


class GemmaTokenizer(SiglipTokenizer):
    """Gemma's sentencepiece tokenizer, id-for-id transformers v5's `GemmaTokenizer` built from `tokenizer.model`.

    Call it like the transformers one: `tok(texts, padding="max_length", max_length=64, truncation=True,
    return_tensors="pt")`, pairs `tok(a, b)`, `tok.pad(...)`, `tok.add_tokens(...)`... (the `SiglipTokenizer`
    surface). `do_lower_case=True` is `Siglip2Tokenizer` (SigLIP 2 was trained on lowercased text).
    """

    vocab_files_names = {"vocab_file": GEMMA_VOCAB_FILE}
    padding_side = "left"
    default_lower_case = False
    # lowercasing is the class's (as in transformers, where GemmaTokenizer ignores a do_lower_case in the config)
    # (and SiglipTokenizer's `legacy` is not read from Gemma configs: their loading stays as it was)
    config_init_keys = (*(k for k in SiglipTokenizer.config_init_keys if k not in ("do_lower_case", "legacy")),
                        "add_bos_token", "add_eos_token")

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        *,
        model_proto: bytes | None = None,
        tokenizer_file: str | os.PathLike | None = None,
        bos_token: str | None = "<bos>",
        eos_token: str = "<eos>",
        unk_token: str = "<unk>",
        pad_token: str | None = "<pad>",
        mask_token: str | None = "<mask>",
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        additional_special_tokens: Iterable[str] | None = None,
        extra_special_tokens: Iterable[str] | dict | None = None,
        added_tokens_decoder: dict | None = None,
        do_lower_case: bool | None = None,
        model_max_length: int = VERY_LARGE_INTEGER,
        **kwargs: Any,
    ):
        for name, value in (("add_bos_token", add_bos_token), ("add_eos_token", add_eos_token)):
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
        lower = self.default_lower_case if do_lower_case is None else do_lower_case
        self._json = None
        if tokenizer_file is not None:  # transformers 5's tokenizer.json, run by tokenizers
            if vocab_file is not None or model_proto is not None:
                raise ValueError(f"{type(self).__name__} needs exactly one of vocab_file (tokenizer.model), "
                                 "model_proto or tokenizer_file (tokenizer.json)")
            if not isinstance(tokenizer_file, (str, os.PathLike)):
                raise TypeError(f"tokenizer_file must be a path, got {type(tokenizer_file).__name__}")
            if not isinstance(lower, bool):
                raise TypeError(f"do_lower_case must be a bool, got {type(lower).__name__} ({lower!r})")
            self._json = TokenizerJsonModel(tokenizer_file, lowercase=lower)
            bos, eos = self._json.template_flags(bos_token, eos_token)
            add_bos_token = bos if add_bos_token is None else add_bos_token
            add_eos_token = eos if add_eos_token is None else add_eos_token
        self.add_bos_token, self.add_eos_token = bool(add_bos_token), bool(add_eos_token)
        named = {k: v for k, v in (("bos_token", bos_token), ("mask_token", mask_token)) if v is not None}
        if isinstance(extra_special_tokens, dict):
            named.update(extra_special_tokens)
        elif extra_special_tokens is not None:
            additional_special_tokens = [*(additional_special_tokens or []), *extra_special_tokens]
        decoder: dict = {}
        if self._json is not None:  # the file's added tokens, with their flags
            decoder.update({t["id"]: {k: v for k, v in t.items() if k != "id"} for t in self._json.added_tokens})
            if additional_special_tokens is None:  # as the proto's control and user-defined pieces: all but unk
                additional_special_tokens = [t["content"] for _, t in sorted(decoder.items()) if t["content"] !=
                                             unk_token]
        if additional_special_tokens is None:
            # transformers' default extra special tokens: the proto's control and user-defined pieces (added tokens,
            # special for control ones); a config that lists its own leaves the other pieces to the model
            proto = model_proto
            if proto is None and isinstance(vocab_file, (str, os.PathLike)) and os.path.isfile(vocab_file):
                with open(vocab_file, "rb") as f:
                    proto = f.read()
            if isinstance(proto, (bytes, bytearray)) and proto:
                try:
                    decoder.update(_proto_added_tokens(bytes(proto)))
                except Exception:  # noqa: BLE001 - not a proto: SiglipTokenizer says so, with the details
                    pass
            additional_special_tokens = [t["content"] for _, t in sorted(decoder.items())]
        if isinstance(added_tokens_decoder, dict):
            decoder.update(added_tokens_decoder)  # the config's entries last: they win
        elif added_tokens_decoder is not None:
            decoder = added_tokens_decoder  # refused, with its type, by SiglipTokenizer
        super().__init__(
            vocab_file, model_proto=model_proto, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token,
            additional_special_tokens=additional_special_tokens, extra_special_tokens=named,
            added_tokens_decoder=decoder, model_max_length=model_max_length, do_lower_case=lower, **kwargs)

    # -- the model: tokenizer.model (sentencepiece) or tokenizer.json (tokenizers) -----------------------------

    def _load_model(self, vocab_file, model_proto, sp_model_kwargs, legacy) -> None:
        if self._json is None:
            return super()._load_model(vocab_file, model_proto, sp_model_kwargs, legacy)
        if sp_model_kwargs:
            raise ValueError(f"sp_model_kwargs={sp_model_kwargs!r} apply to a sentencepiece model, not to "
                             f"tokenizer_file {self._json.path!r}")
        self.sp_model, self.sp_model_kwargs, self._proto = self._json, {}, None
        self._legacy_given, self.legacy, self.vocab_file = None, True, None
        self.tokenizer_file = self._json.path

    def _add(self, tokens: Sequence[Any], special: bool) -> int:
        added = super()._add(tokens, special)
        if self._json is not None:  # tokenizers splits the added tokens out of the text: it must know them all
            self._json.sync(self._added, self._special, self._added_flags)
        return added

    @classmethod
    def _model_file_names(cls) -> list[str]:
        return [GEMMA_VOCAB_FILE, GEMMA_JSON_FILE]

    @classmethod
    def _model_files(cls, directory: str, path_or_id: str | os.PathLike) -> dict[str, str]:
        """tokenizer.model (sentencepiece) when the directory has it, else tokenizer.json (what transformers 5
        saves; read with tokenizers)."""
        for name, key in ((GEMMA_VOCAB_FILE, "vocab_file"), (GEMMA_JSON_FILE, "tokenizer_file")):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return {key: path}
        raise FileNotFoundError(f"{cls.__name__}.from_pretrained: no {GEMMA_VOCAB_FILE} nor {GEMMA_JSON_FILE} in "
                                f"{os.fspath(path_or_id)!r}")

    def _write_model_files(self, save_directory: str) -> list[str]:
        if self._json is None:
            return super()._write_model_files(save_directory)
        path = os.path.join(save_directory, GEMMA_JSON_FILE)
        self._json.write(path, self._template_json())
        return [path]

    def _template_json(self) -> dict | None:
        """The tokenizers TemplateProcessing of `_template` (None without bos/eos)."""
        specials = {name: getattr(self, f"{name}_token") for name, on in (("bos", self.add_bos_token and
                                                                             self.bos_token is not None),
                                                                            ("eos", self.add_eos_token)) if on}
        if not specials:
            return None

        def template(pair: bool) -> list[dict]:
            return [{"SpecialToken": {"id": specials[part], "type_id": type_id}} if part in specials else
                    {"Sequence": {"id": part, "type_id": type_id}} for part, type_id in self._template(0, pair)]

        return {"type": "TemplateProcessing", "single": template(False), "pair": template(True),
                "special_tokens": {t: {"id": t, "ids": [self._added[t]], "tokens": [t]} for t in specials.values()}}

    @property
    def backend(self) -> str:
        """"tokenizers": transformers v5's GemmaTokenizer / Siglip2Tokenizer are `tokenizers`-backed, and code that
        reads `backend` expects that class's behaviour (e.g. `sequence_ids()`, which works here too)."""
        return "tokenizers"

    @property
    def add_prefix_space(self) -> bool:
        """False, as transformers' Gemma classes say: no space is put before the text (Gemma's model has no dummy
        prefix), nor before each word with is_split_into_words=True."""
        return False

    @staticmethod
    def _texts(text: Any, text_pair: Any, is_split_into_words: bool = False) -> tuple[bool, list, list | None]:
        batched, firsts, seconds = SiglipTokenizer._texts(text, text_pair, is_split_into_words)
        if not batched and seconds == [""]:  # transformers' tokenizers-backed call drops an empty pair of one text
            seconds = None
        return batched, firsts, seconds

    # -- overflow as tokenizers returns it: more rows -----------------------------------------------------------

    overflow_as_rows = True

    def _encode_rows(self, texts: list, pairs: list | None, *, add_special_tokens: bool, truncate: str | None,
                     max_length: int | None, return_special_tokens_mask: bool, return_token_type_ids: bool,
                     return_overflowing_tokens: bool = False, stride: int = 0) -> dict[str, list]:
        """As `SiglipTokenizer._encode_rows`; with return_overflowing_tokens=True the ids cut off become rows of
        their own, as transformers' tokenizers-backed classes return them: windows of the room left by the special
        tokens, overlapping by `stride`, and "overflow_to_sample_mapping" (each row's text)."""
        if not return_overflowing_tokens:
            return super()._encode_rows(
                texts, pairs, add_special_tokens=add_special_tokens, truncate=truncate, max_length=max_length,
                return_special_tokens_mask=return_special_tokens_mask, return_token_type_ids=return_token_type_ids)
        firsts = self._encode_sequences(texts)
        seconds = self._encode_sequences(pairs) if pairs is not None else [None] * len(firsts)
        room = None
        if truncate and max_length:
            if stride >= max_length:  # tokenizers' own check
                raise ValueError(f"stride={stride} must be smaller than max_length={max_length}, as tokenizers "
                                 "requires")
            room = max_length - (self.num_special_tokens_to_add(pairs is not None) if add_special_tokens else 0)
            room = None if room < 0 else room  # fewer than the special tokens: tokenizers cuts nothing
        columns: dict[str, list] = {"input_ids": [], "_sequence_ids": [], "overflow_to_sample_mapping": []}
        if return_token_type_ids:
            columns["token_type_ids"] = []
        if return_special_tokens_mask:
            columns["special_tokens_mask"] = []
        for index, (ids, pair_ids) in enumerate(zip(firsts, seconds, strict=True)):
            parts = [(ids, pair_ids)] if room is None else self._overflow_parts(ids, pair_ids, room, truncate, stride)
            for a, b in parts:
                sequence = self.build_inputs_with_special_tokens(a, b) if add_special_tokens else a + (b or [])
                columns["input_ids"].append(sequence)
                columns["_sequence_ids"].append(self._sequence_ids(a, b, add_special_tokens))
                columns["overflow_to_sample_mapping"].append(index)
                if return_token_type_ids:
                    columns["token_type_ids"].append(self._token_type_ids(a, b, add_special_tokens))
                if return_special_tokens_mask:
                    columns["special_tokens_mask"].append(self.get_special_tokens_mask(a, b) if add_special_tokens
                                                          else [0] * len(sequence))
        return columns

    def _windows(self, ids: list[int], size: int, stride: int) -> list[list[int]]:
        """tokenizers' truncation with overflow: the kept window first, then the others, `size` ids each (the last
        shorter), consecutive ones sharing `stride` ids; from the end when truncation_side is "left"."""
        n = len(ids)
        if size >= n:
            return [ids]
        if size == 0:
            return [[], ids]
        if stride >= size:
            raise ValueError(f"stride={stride} must be smaller than the room each text has with this max_length "
                             f"({size} ids, the special tokens left out), as tokenizers requires")
        step, parts = size - stride, []
        if self.truncation_side == "left":
            stop = n
            while True:
                start = max(0, stop - size)
                parts.append(ids[start:stop])
                if start == 0:
                    return parts
                stop -= step
        start = 0
        while True:
            stop = min(start + size, n)
            parts.append(ids[start:stop])
            if stop == n:
                return parts
            start += step

    def _overflow_parts(self, ids: list[int], pair_ids: list[int] | None, room: int, strategy: str,
                        stride: int) -> list[tuple[list[int], list[int] | None]]:
        """The (first, pair) parts of each row, in tokenizers' order: the kept ones, then each overflow of the
        first text with the kept pair and with each overflow of the pair, then the kept first text with each
        overflow of the pair."""
        total = len(ids) + len(pair_ids or [])
        if total <= room:
            return [(ids, pair_ids)]
        cut = total - room
        if pair_ids is None:
            self.truncate_sequences(ids, None, cut, strategy)  # refuses what tokenizers refuses
            return [(w, None) for w in self._windows(ids, room, stride)]
        if room == 0:  # tokenizers keeps nothing of either text, whatever the strategy
            n_ids = n_pair = 0
        elif strategy in ("only_first", "only_second"):
            self.truncate_sequences(ids, pair_ids, cut, strategy)  # refuses what tokenizers refuses
            n_ids, n_pair = (len(ids) - cut, len(pair_ids)) if strategy == "only_first" else (len(ids),
                                                                                              len(pair_ids) - cut)
        else:
            n_ids, n_pair = _pair_room(len(ids), len(pair_ids), room)
        firsts, seconds = self._windows(ids, n_ids, stride), self._windows(pair_ids, n_pair, stride)
        rows = [(firsts[0], seconds[0])]
        for first in firsts[1:]:
            rows += [(first, second) for second in seconds]
        return rows + [(firsts[0], second) for second in seconds[1:]]

    # -- text -> ids ------------------------------------------------------------------------------------------

    def canonicalize_text(self, text: str) -> str:
        # tokenizers' Lowercase maps each character on its own: str.lower() but for its final-sigma rule
        if not self.do_lower_case:
            return text
        return text.lower() if "\u03a3" not in text else "".join(c.lower() for c in text)

    def _encode_batch(self, texts: Sequence[str], out_type: type = int) -> list[list]:
        """Ids (or pieces) of each text without bos/eos; every chunk of the batch in one sentencepiece call (with
        tokenizer.json: the whole texts in one tokenizers call, which splits out the added tokens itself)."""
        if self._json is not None:
            return self._json.encode(texts, out_type) if texts else []
        return self._split_encode(texts, out_type)[0]

    def _template(self, n: int, pair: bool) -> list[tuple[str, int]]:
        """transformers' TemplateProcessing: `[<bos>] A [<eos>]`, then `[<bos>] B [<eos>]` for a pair, as (part,
        token type) with part "bos" / "eos" / "A" / "B"."""
        out = []
        for part, type_id in (("A", 0), ("B", 1))[:2 if pair else 1]:
            out += [("bos", type_id)] if self.add_bos_token and self.bos_token is not None else []
            out += [(part, type_id)]
            out += [("eos", type_id)] if self.add_eos_token else []
        return out

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        """`[<bos>] X [<eos>]` and `[<bos>] A [<eos>] [<bos>] B [<eos>]` (add_bos_token / add_eos_token)."""
        bos = [self.bos_token_id] if self.add_bos_token and self.bos_token is not None else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        out = [*bos, *token_ids_0, *eos]
        return out if token_ids_1 is None else [*out, *bos, *token_ids_1, *eos]

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 for the bos/eos `build_inputs_with_special_tokens` adds, 0 for the text's own ids."""
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, True)
        lengths = {"A": len(token_ids_0), "B": len(token_ids_1 or [])}
        return [m for part, _ in self._template(0, token_ids_1 is not None)
                for m in ([0] * lengths[part] if part in lengths else [1])]

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        """0 for the first text and its bos/eos, 1 for the pair's (transformers' template)."""
        lengths = {"A": len(token_ids_0), "B": len(token_ids_1 or [])}
        return [t for part, t in self._template(0, token_ids_1 is not None) for _ in range(lengths.get(part, 1))]

    def truncate_sequences(self, ids: list[int], pair_ids: list[int] | None = None, num_tokens_to_remove: int = 0,
                           truncation_strategy: str = "longest_first",
                           stride: int = 0) -> tuple[list[int], list[int] | None, list[int]]:
        """As `SiglipTokenizer.truncate_sequences`, but `longest_first` on a pair splits the room as `tokenizers`
        does (transformers' Gemma classes are tokenizers-backed): the shorter text keeps all its ids if it fits in
        half, else both get half, the extra id going to the longer one."""
        if num_tokens_to_remove > len(ids) + len(pair_ids or []):  # max_length below the special tokens
            return ids, pair_ids, []  # tokenizers cuts nothing then
        if num_tokens_to_remove > 0 and num_tokens_to_remove == len(ids) + len(pair_ids or []):
            return [], None if pair_ids is None else [], []  # no room: tokenizers keeps nothing of either text
        if num_tokens_to_remove > 0 and truncation_strategy in ("only_first", "only_second"):
            # tokenizers refuses these (transformers' Gemma classes raise): the text to cut must keep an id
            if truncation_strategy == "only_second" and pair_ids is None:
                raise ValueError("truncation='only_second' needs a text_pair to cut, and this text is longer than "
                                 "the maximum length; use truncation=True")
            name, seq = ("first", ids) if truncation_strategy == "only_first" else ("second", pair_ids)
            if num_tokens_to_remove >= len(seq):
                raise ValueError(f"truncation={truncation_strategy!r} cannot fit the text in the maximum length: "
                                 f"{num_tokens_to_remove} ids must go but the {name} text has {len(seq)}; use "
                                 "truncation='longest_first' or a larger max_length")
        if truncation_strategy != "longest_first" or pair_ids is None or num_tokens_to_remove <= 0:
            return super().truncate_sequences(ids, pair_ids, num_tokens_to_remove, truncation_strategy, stride)
        n_ids, n_pair = _pair_room(len(ids), len(pair_ids), max(0, len(ids) + len(pair_ids) - num_tokens_to_remove))
        if self.truncation_side == "left":
            return ids[len(ids) - n_ids:], pair_ids[len(pair_ids) - n_pair:], []
        return ids[:n_ids], pair_ids[:n_pair], []

    def _token_type_ids(self, ids: list[int], pair_ids: list[int] | None, add_special_tokens: bool) -> list[int]:
        if add_special_tokens:
            return self.create_token_type_ids_from_sequences(ids, pair_ids)
        return [0] * len(ids) + [1] * len(pair_ids or [])

    # -- ids -> text ------------------------------------------------------------------------------------------

    def _skipped_ids(self) -> set[int]:
        # tokenizers skips the named special tokens and every added token marked special (the proto's control
        # pieces, not its user-defined ones, though those are listed in extra_special_tokens)
        return {*(self._added[t] for t in self.special_tokens_map.values()),
                *(self._added[t] for t in self._special if t in self._added)}

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Pieces -> text: byte-fallback pieces fused, `▁` -> space, added tokens as their text (no spaces added)."""
        out, run = [], []
        for token in tokens:
            if token in self._added:
                out.append(self.sp_model.decode(run))
                out.append(token)
                run = []
            else:
                run.append(token)
        out.append(self.sp_model.decode(run))
        return "".join(out)

    # -- files ------------------------------------------------------------------------------------------------

    def to_config(self) -> dict:
        """tokenizer_config.json as transformers v5 reads it."""
        config = super().to_config()
        config.pop("backend", None)  # transformers' Gemma tokenizers are `tokenizers`-backed
        config.pop("do_lower_case", None)  # the class says it: tokenizer_class
        config.update(add_bos_token=self.add_bos_token, add_eos_token=self.add_eos_token,
                      padding_side=self.padding_side, truncation_side=self.truncation_side)
        return config

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, add_bos_token={self.add_bos_token}, "
                f"add_eos_token={self.add_eos_token}, do_lower_case={self.do_lower_case}, "
                f"padding_side={self.padding_side!r}, model_max_length={self.model_max_length})")


class Siglip2Tokenizer(GemmaTokenizer):
    """`GemmaTokenizer` lowercasing its input, as transformers v5's `Siglip2Tokenizer` (which `AutoTokenizer` picks for
    model_type "siglip2"): SigLIP 2 was trained on lowercased text."""

    default_lower_case = True


def _model_type(directory: str) -> str | None:
    path = os.path.join(directory, "config.json")
    return _read_json(path).get("model_type") if os.path.isfile(path) else None


def gemma_tokenizer_class(directory: str, lowercase: bool | None = None) -> type[GemmaTokenizer]:
    """The class transformers' `AutoTokenizer` gives a directory with Gemma's `tokenizer.model`: `Siglip2Tokenizer`
    (lowercasing) for model_type "siglip2" or when tokenizer_config.json names it, `GemmaTokenizer` otherwise;
    `lowercase` decides instead when given."""
    if lowercase is not None:
        return Siglip2Tokenizer if lowercase else GemmaTokenizer
    declared = str(read_tokenizer_config(directory).get("tokenizer_class") or "").removesuffix("Fast")
    # transformers lists siglip2 among the models whose hub tokenizer_class is wrong: model_type wins there
    if _model_type(directory) == "siglip2" or declared == "Siglip2Tokenizer":
        return Siglip2Tokenizer
    return GemmaTokenizer

