"""Encoding: texts -> ids with the special tokens, truncated, as transformers' `SiglipTokenizer` builds them.

`Encoding` is the part of `SiglipTokenizer` between the vocabulary (`vocabulary.py`: the pieces of each text) and
padding (`padding.py`):
  - what the call accepts as text (`_texts`: a str, a batch, pairs as `text_pair=` or `(a, b)` tuples);
  - the ids of each text without special tokens (`_encode_batch`, `tokenize`);
  - the special tokens around one text or a pair (`build_inputs_with_special_tokens`: `X </s>`, `A </s> B </s>`),
    their mask and the token type ids;
  - truncation (`truncate_sequences`, strategies longest_first / only_first / only_second, either side);
  - `_encode_rows`: all of it for a batch, one row per text or pair.
A subclass with another template (SigLIP 2's Gemma tokenizer) overrides the special-token methods.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

from .config import SPIECE_UNDERLINE


def _check_unicode(name: str, text: str) -> None:
    """A ValueError naming the text when it holds a lone surrogate (a str that is not Unicode text: no UTF-8
    encoding, which sentencepiece and tokenizers need; e.g. bytes decoded with errors="surrogateescape")."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        char = text[e.start]
        raise ValueError(f"{name} holds a lone surrogate U+{ord(char):04X} at position {e.start}, which is not valid "
                         "Unicode text and cannot be tokenized; remove it, or decode the source bytes with "
                         "errors='replace'") from None


class Encoding:
    """Texts -> rows of ids (a mixin of `SiglipTokenizer`; see the module docstring)."""

    @staticmethod
    def _texts(text: Any, text_pair: Any, is_split_into_words: bool = False) -> tuple[bool, list, list | None]:
        """-> (batched, sequences, pairs or None), checking types, batch sizes and that every text is valid Unicode.
        A sequence is a str, or with is_split_into_words=True a list of words (str): one text is then a list of
        words, a batch a list of such lists, and a pair in a batch a tuple of two of them (transformers' rule: lists
        are never pairs there)."""
        batched, firsts, seconds = Encoding._parse_texts(text, text_pair, is_split_into_words)
        for name, sequences in (("text", firsts), ("text_pair", seconds or ())):
            for i, sequence in enumerate(sequences):
                where = f"{name}[{i}]" if batched else name
                if isinstance(sequence, str):
                    _check_unicode(where, sequence)
                else:
                    for j, word in enumerate(sequence):
                        _check_unicode(f"{where}[{j}]", word)
        return batched, firsts, seconds

    @staticmethod
    def _parse_texts(text: Any, text_pair: Any, is_split_into_words: bool) -> tuple[bool, list, list | None]:
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
        if is_split_into_words:
            return Encoding._words(text, text_pair)
        if text_pair is None and all(isinstance(t, (list, tuple)) for t in text):  # a batch of (text, pair)
            for i, t in enumerate(text):
                if len(t) != 2 or not all(isinstance(s, str) for s in t):
                    raise TypeError(f"text[{i}] must be a str or a (text, text_pair) pair of str, got {t!r}")
            return True, [t[0] for t in text], [t[1] for t in text]
        for i, t in enumerate(text):
            if not isinstance(t, str):
                raise TypeError(f"text[{i}] must be a str, got {type(t).__name__} (pre-tokenised input needs "
                                "is_split_into_words=True; pairs go as text_pair= or as (text, pair) tuples)")
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

    @staticmethod
    def _words(text: list | tuple, text_pair: Any) -> tuple[bool, list, list | None]:
        """`_texts` for is_split_into_words=True (text is a non-empty list)."""
        def words(name: str, value: Any) -> list[str]:
            if not isinstance(value, (list, tuple)) or not value:
                raise TypeError(f"{name} must be a non-empty list of words (str) with is_split_into_words=True, got "
                                f"{value!r}")
            for i, w in enumerate(value):
                if not isinstance(w, str):
                    raise TypeError(f"{name}[{i}] must be a word (str), got {type(w).__name__}")
            return list(value)

        if all(isinstance(w, str) for w in text):  # one pre-tokenised text
            return False, [words("text", text)], None if text_pair is None else [words("text_pair", text_pair)]
        firsts, seconds = [], []
        for i, t in enumerate(text):
            if text_pair is None and isinstance(t, tuple) and len(t) == 2 and not all(isinstance(w, str) for w in t):
                firsts.append(words(f"text[{i}][0]", t[0]))  # a (words, pair words) tuple
                seconds.append(words(f"text[{i}][1]", t[1]))
            else:
                firsts.append(words(f"text[{i}]", t))
        if seconds and len(seconds) != len(firsts):
            raise TypeError("text: with is_split_into_words=True a batch must hold either all (words, pair words) "
                            "tuples or no tuples of two word lists")
        if text_pair is not None:
            if not isinstance(text_pair, (list, tuple)) or len(text_pair) != len(firsts):
                raise ValueError(f"text is a batch of {len(firsts)} word lists, so text_pair must be a list of "
                                 f"{len(firsts)} word lists, got {text_pair!r}")
            seconds = [words(f"text_pair[{i}]", t) for i, t in enumerate(text_pair)]
        return True, firsts, seconds or None

    def _encode_sequences(self, sequences: list) -> list[list[int]]:
        """Ids of each sequence without special tokens: a text, or a list of words, each word encoded on its own and
        the ids concatenated (transformers' is_split_into_words); every text and word in one batched call."""
        if all(isinstance(s, str) for s in sequences):
            return self._encode_batch(sequences)
        flat: list[str] = []
        spans = []
        for s in sequences:
            spans.append((len(flat), len(flat) + len(s)))
            flat.extend(s)
        ids = self._encode_batch(flat)
        return [[i for word in ids[a:b] for i in word] for a, b in spans]

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
        _check_unicode("text", text)
        if pair is not None:
            _check_unicode("pair", pair)
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
                           truncation_strategy: str = "longest_first",
                           stride: int = 0) -> tuple[list[int], list[int] | None, list[int]]:
        """transformers' truncate_sequences: remove `num_tokens_to_remove` ids -> (ids, pair_ids, overflowing).
        The overflowing tokens are the ids removed plus `stride` ids before them (from the truncated side); with
        longest_first on a pair there are none (ids leave both sequences), as in transformers."""
        if num_tokens_to_remove <= 0:
            return ids, pair_ids, []
        n, left = num_tokens_to_remove, self.truncation_side == "left"
        overflowing: list[int] = []
        if truncation_strategy == "only_first" or (truncation_strategy == "longest_first" and pair_ids is None):
            window = min(len(ids), stride + n)
            overflowing = ids[:window] if left else ids[-window:] if window else []
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
            window = min(len(pair_ids), stride + n)
            overflowing = pair_ids[:window] if left else pair_ids[-window:] if window else []
            pair_ids = pair_ids[n:] if left else pair_ids[:-n]
        return ids, pair_ids, overflowing

    def _sequence_ids(self, ids: list[int], pair_ids: list[int] | None, add_special_tokens: bool) -> list:
        """Per position of the built sequence: None for a special token the tokenizer added, 0 for the first
        text's ids, 1 for the pair's (what transformers' fast encodings give as `sequence_ids()`)."""
        if not add_special_tokens:
            return [0] * len(ids) + [1] * len(pair_ids or [])
        with warnings.catch_warnings():  # ("already has </s>": said once, when the row was built)
            warnings.simplefilter("ignore")
            first = len(self.build_inputs_with_special_tokens(ids))  # the pair's part follows the first's
        mask = self.get_special_tokens_mask(ids, pair_ids)
        return [None if m else (0 if i < first else 1) for i, m in enumerate(mask)]

    def _encode_rows(self, texts: list, pairs: list | None, *, add_special_tokens: bool, truncate: str | None,
                     max_length: int | None, return_special_tokens_mask: bool, return_token_type_ids: bool,
                     return_overflowing_tokens: bool = False, stride: int = 0) -> dict[str, list]:
        """One row per text or pair, truncated to `max_length` with the `truncate` strategy (None: none), as
        columns: "input_ids", "_sequence_ids" (see `_sequence_ids`; not a model input), and when asked
        "token_type_ids", "special_tokens_mask", "overflowing_tokens" and "num_truncated_tokens" (transformers'
        python tokenizers: the ids cut off plus `stride` before them, and how many were cut; [] and 0 for a row
        that was not truncated)."""
        if return_overflowing_tokens and truncate == "longest_first" and pairs is not None:
            raise ValueError(  # transformers' words, which its tests check
                "Not possible to return overflowing tokens for pair of sequences with the `longest_first`. Please "
                "select another truncation strategy than `longest_first`, for instance `only_second` or "
                "`only_first`.")
        firsts = self._encode_sequences(texts)
        seconds = self._encode_sequences(pairs) if pairs is not None else [None] * len(firsts)
        num_special = self.num_special_tokens_to_add(pairs is not None) if add_special_tokens else 0
        rows, type_ids, special_masks, sequence_ids, overflows, truncated = [], [], [], [], [], []
        if (pairs is None and add_special_tokens and not return_special_tokens_mask and not return_token_type_ids
                and not return_overflowing_tokens
                and type(self).build_inputs_with_special_tokens is Encoding.build_inputs_with_special_tokens):
            # the common case, inlined: one text per row, truncated, then EOS appended unless already there
            cuts = truncate in ("longest_first", "only_first") and max_length  # only_second: nothing to cut
            eos, cut = self.eos_token_id, (max_length - num_special if cuts else None)
            left = self.truncation_side == "left"
            for ids in firsts:
                if cut is not None and len(ids) > cut:
                    ids = ids[len(ids) - cut:] if left else ids[:cut]
                if ids and ids[-1] == eos:
                    ids = self._add_eos(ids)  # warns, as transformers
                    sequence_ids.append([0] * len(ids))  # the text's own </s> ends it
                else:
                    ids.append(eos)
                    sequence_ids.append([0] * (len(ids) - 1) + [None])
                rows.append(ids)
            firsts = ()
        for ids, pair_ids in zip(firsts, seconds if firsts else (), strict=True):
            total = len(ids) + (len(pair_ids) if pair_ids is not None else 0) + num_special
            overflow: list[int] = []
            if truncate and max_length and total > max_length:
                ids, pair_ids, overflow = self.truncate_sequences(ids, pair_ids, total - max_length, truncate,
                                                                  stride)
            overflows.append(overflow)
            truncated.append(total - max_length if overflow else 0)
            if add_special_tokens:
                sequence = self.build_inputs_with_special_tokens(ids, pair_ids)
                if return_special_tokens_mask:
                    special_masks.append(self.get_special_tokens_mask(ids, pair_ids))
            else:
                sequence = ids + (pair_ids or [])
                if return_special_tokens_mask:
                    special_masks.append([0] * len(sequence))
            rows.append(sequence)
            sequence_ids.append(self._sequence_ids(ids, pair_ids, add_special_tokens))
            if return_token_type_ids:
                type_ids.append(self._token_type_ids(ids, pair_ids, add_special_tokens))
        columns: dict[str, list] = {"input_ids": rows, "_sequence_ids": sequence_ids}
        if return_token_type_ids:
            columns["token_type_ids"] = type_ids
        if return_special_tokens_mask:
            columns["special_tokens_mask"] = special_masks
        if return_overflowing_tokens:
            columns["overflowing_tokens"], columns["num_truncated_tokens"] = overflows, truncated
        return columns
