"""Issue 21, tokenizers: what transformers v5's tokenization tests and the code around them rely on.

`backend`, pre-tokenised input (`is_split_into_words=True`), `return_overflowing_tokens` / `stride`,
`sequence_ids()`, and the maximum-length behaviour on pairs (truncation longest_first / only_first /
only_second, from `max_length` or `model_max_length`) — each against transformers on random texts, for
`SiglipTokenizer` and SigLIP 2's Gemma tokenizers. And issue 23's lone surrogate: a clear error naming the text.
"""

import json
import random
import warnings

import pytest
import torch

import siglip_fast as sf
from tests.test_siglip2_processing import SIGLIP2_TOKENIZER_CONFIG, gemma_model  # noqa: F401 (a fixture)
from tests.test_tokenizer import WORDS, train_spiece

transformers = pytest.importorskip("transformers", reason="transformers is the parity peer")
pytest.importorskip("google.protobuf", reason="transformers' SiglipTokenizer needs protobuf")

pytestmark = [pytest.mark.filterwarnings("ignore:Token indices sequence length is longer"),
              pytest.mark.filterwarnings("ignore:This sequence already has")]


@pytest.fixture(scope="module", autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()  # its pair-truncation notices would flood the output
    yield
    transformers.logging.set_verbosity_warning()


@pytest.fixture
def rng():
    return random.Random(int(torch.randint(0, 2**31, ()).item()))  # follows the per-test seed


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    directory = tmp_path_factory.mktemp("spiece")
    train_spiece(directory / "spiece.model", "bpe", 420, byte_fallback=True)
    return directory


@pytest.fixture(scope="module", params=["siglip", "gemma", "siglip2"])
def kind(request, spiece, gemma_model, tmp_path_factory):  # noqa: F811 (gemma_model: the imported fixture)
    """(directory, our class, transformers' class) for SigLIP's tokenizer and SigLIP 2's two Gemma classes."""
    if request.param == "siglip":
        return spiece, sf.SiglipTokenizer, transformers.SiglipTokenizer
    directory = tmp_path_factory.mktemp(request.param)
    (directory / "tokenizer.model").write_bytes(gemma_model)
    (directory / "tokenizer_config.json").write_text(json.dumps(SIGLIP2_TOKENIZER_CONFIG))
    if request.param == "gemma":
        return directory, sf.GemmaTokenizer, transformers.GemmaTokenizer
    return directory, sf.Siglip2Tokenizer, transformers.Siglip2Tokenizer


@pytest.fixture(scope="module")
def pair(kind):
    """(ours, theirs): the same tokenizer directory loaded by siglip_fast and by transformers."""
    directory, ours_cls, theirs_cls = kind
    return ours_cls.from_pretrained(directory), theirs_cls.from_pretrained(directory)


def _words(rng, low=1, high=10) -> list[str]:
    # (no literal "</s>": where one ends a text, SiglipTokenizer's masks and token types differ from transformers'
    # on purpose, README and test_tokenizer.py)
    extra = ["A", "Photo", "CAT.", "it's", "x-ray", "Ünïcode", "<eos>", "3.5"]
    return [rng.choice(WORDS + extra) for _ in range(rng.randint(low, high))]


def _text(rng, low=1, high=12) -> str:
    return " ".join(_words(rng, low, high))


def _same(ours, theirs, what=""):
    assert dict(ours) == dict(theirs), what


def _same_or_both_refuse(call, ours, theirs, what):
    """The same output, or — where transformers' tokenizers-backed class raises (only_first / only_second cannot
    fit the pair) — a ValueError here."""
    try:
        expected = call(theirs)
    except Exception as e:  # noqa: BLE001 - tokenizers' own exception type
        assert theirs.backend == "tokenizers" and "Truncation error" in str(e), what
        with pytest.raises(ValueError, match="cannot fit the text in the maximum length"):
            call(ours)
        return
    _same(call(ours), expected, what)


def test_backend(pair):
    ours, theirs = pair
    assert ours.backend == theirs.backend == ("tokenizers" if isinstance(ours, sf.GemmaTokenizer) else
                                              "sentencepiece")
    assert hasattr(ours, "add_prefix_space") == hasattr(theirs, "add_prefix_space")
    if hasattr(theirs, "add_prefix_space"):
        assert ours.add_prefix_space is theirs.add_prefix_space is False


def test_pretokenized_input_matches_transformers(pair, rng):
    """is_split_into_words=True: each word encoded on its own, the ids concatenated — one text, a batch, pairs
    (text_pair= or (words, words) tuples), with and without special tokens, truncated and padded."""
    ours, theirs = pair
    one, other = _words(rng), _words(rng)
    batch = [_words(rng) for _ in range(4)]
    pairs = [_words(rng) for _ in range(4)]
    for kwargs in ({}, {"add_special_tokens": False}, {"padding": True, "return_token_type_ids": True},
                   {"truncation": True, "max_length": 9, "padding": "max_length",
                    "return_special_tokens_mask": True}):
        _same(ours(one, is_split_into_words=True, **kwargs), theirs(one, is_split_into_words=True, **kwargs), kwargs)
        _same(ours(one, other, is_split_into_words=True, **kwargs),
              theirs(one, other, is_split_into_words=True, **kwargs), kwargs)
        _same(ours(batch, is_split_into_words=True, **kwargs), theirs(batch, is_split_into_words=True, **kwargs),
              kwargs)
        _same(ours(batch, pairs, is_split_into_words=True, **kwargs),
              theirs(batch, pairs, is_split_into_words=True, **kwargs), kwargs)
        tuples = [tuple(p) for p in zip(batch, pairs, strict=True)]
        _same(ours(tuples, is_split_into_words=True, **kwargs), theirs(tuples, is_split_into_words=True, **kwargs),
              kwargs)
    assert ours.encode(one, is_split_into_words=True) == theirs.encode(one, is_split_into_words=True)
    tensors = ours(batch, is_split_into_words=True, padding=True, return_tensors="pt")
    assert torch.equal(tensors["input_ids"], theirs(batch, is_split_into_words=True, padding=True,
                                                    return_tensors="pt")["input_ids"])
    with pytest.raises(TypeError, match=r"text\[1\]\[0\] must be a word"):
        ours([["a"], [3]], is_split_into_words=True)
    with pytest.raises(ValueError, match="text_pair must be a list of 2 word lists"):
        ours([["a"], ["b"]], [["c"]], is_split_into_words=True)


@pytest.mark.parametrize("side", ["right", "left"])
def test_overflowing_tokens_match_transformers(spiece, rng, side):
    """transformers' python SiglipTokenizer: the ids cut off plus `stride` before them, and how many were cut."""
    ours = sf.SiglipTokenizer.from_pretrained(spiece, truncation_side=side)
    theirs = transformers.SiglipTokenizer.from_pretrained(spiece, truncation_side=side)
    for _ in range(6):
        first, second = _text(rng, 4, 14), _text(rng, 4, 14)
        n_first = len(ours.encode(first, add_special_tokens=False))
        n_both = len(ours.encode(first, second, add_special_tokens=False))
        stride = rng.choice([0, 1, 2, 5])
        for special in (False, True):
            kw = dict(add_special_tokens=special, return_overflowing_tokens=True, stride=stride)
            for truncation in ("longest_first", "only_first", True):
                max_length = rng.randint(1, max(1, n_first))
                _same(ours(first, truncation=truncation, max_length=max_length, **kw),
                      theirs(first, truncation=truncation, max_length=max_length, **kw), (first, max_length, kw))
            for truncation in ("only_first", "only_second"):
                max_length = rng.randint(max(1, n_both // 2), n_both + 2)
                _same(ours(first, second, truncation=truncation, max_length=max_length, **kw),
                      theirs(first, second, truncation=truncation, max_length=max_length, **kw),
                      (first, second, truncation, max_length, kw))
            for call in (ours, theirs):  # pairs with longest_first: refused, with transformers' words
                with pytest.raises(ValueError, match="Not possible to return overflowing tokens for pair of "
                                                     "sequences with the `longest_first`"):
                    call(first, second, truncation="longest_first", max_length=3, **kw)
    # a batch whose rows are all cut: what transformers returns
    texts = [_text(rng, 8, 14) for _ in range(4)]
    kw = dict(truncation=True, max_length=6, return_overflowing_tokens=True, stride=1)
    _same(ours(texts, **kw), theirs(texts, **kw))
    # a batch where some rows are not cut: one entry per row here ([] and 0 for those), where transformers' pad
    # fails on its lists of the cut rows only
    mixed = ours([texts[0], "a cat", texts[1]], **kw)
    single = [ours(t, **kw) for t in (texts[0], texts[1])]
    assert mixed["overflowing_tokens"] == [single[0]["overflowing_tokens"], [], single[1]["overflowing_tokens"]]
    assert mixed["num_truncated_tokens"] == [single[0]["num_truncated_tokens"], 0, single[1]["num_truncated_tokens"]]
    assert "overflowing_tokens" not in ours("a cat", **kw)  # one text: only when some were cut, as transformers
    with pytest.raises(ValueError, match="stride=2 only applies to the overflowing tokens"):
        ours(texts[0], stride=2)
    with pytest.raises(ValueError, match="ragged lists"):
        ours(texts, return_overflowing_tokens=True, return_tensors="pt", **{k: kw[k] for k in ("truncation",
                                                                                                "max_length")})


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("class_name", ["GemmaTokenizer", "Siglip2Tokenizer"])
def test_gemma_overflow_rows_match_transformers(gemma_model, tmp_path, rng, side, class_name):  # noqa: F811
    """transformers' Gemma classes are tokenizers-backed: the overflow comes back as more rows of input_ids (windows
    overlapping by `stride`; for pairs tokenizers' combinations) with overflow_to_sample_mapping. Random texts,
    lengths, strides, strategies, batches; where tokenizers refuses (a stride too large for the room, a text too
    short for only_first / only_second) a ValueError here."""
    (tmp_path / "tokenizer.model").write_bytes(gemma_model)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(SIGLIP2_TOKENIZER_CONFIG))
    ours = getattr(sf, class_name).from_pretrained(tmp_path, truncation_side=side)
    theirs = getattr(transformers, class_name).from_pretrained(tmp_path, truncation_side=side)
    compared = 0
    for _ in range(120):
        first, second = _text(rng, 0, 10), _text(rng, 0, 10)  # (empty ones too)
        pair = rng.random() < 0.6
        overflow = rng.random() < 0.8
        kw = dict(truncation=rng.choice([True, "longest_first", "only_first", "only_second"] if pair else
                                        [True, "only_first"]),
                  max_length=rng.randint(1, 25), stride=rng.randint(0, 4) if overflow else 0,
                  add_special_tokens=rng.random() < 0.7, return_overflowing_tokens=overflow,
                  return_special_tokens_mask=rng.random() < 0.5, return_token_type_ids=rng.random() < 0.3)
        args = ((first, second) if pair else (first,)) if rng.random() < 0.5 else \
            (([first, second], [second, first]) if pair else ([first, second],))
        try:
            expected = theirs(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - tokenizers raises Exception, or panics (PanicException)
            if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                raise
            with pytest.raises(ValueError, match="stride=|cannot fit the text|needs a text_pair"):
                ours(*args, **kw)
            continue
        got = ours(*args, **kw)
        assert dict(got) == dict(expected), (args, kw)
        rows = len(expected["input_ids"]) if expected["input_ids"] and isinstance(expected["input_ids"][0], list) \
            else 0
        assert [got.sequence_ids(i) for i in range(rows)] == [expected.sequence_ids(i) for i in range(rows)]
        compared += 1
    assert compared > 60
    texts = [_text(rng, 6, 12) for _ in range(3)]
    kw = dict(truncation=True, max_length=5, stride=1, return_overflowing_tokens=True, padding=True,
              return_tensors="pt")
    a, b = ours(texts, **kw), theirs(texts, **kw)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in b)


def test_sequence_ids(pair, rng):
    """0 for the first text's tokens, 1 for the pair's, None for added special tokens and padding. transformers'
    tokenizers-backed classes (Gemma) give them, compared here; its python SiglipTokenizer raises instead, so ours
    is checked against its special-tokens mask and the lengths of the two texts."""
    ours, theirs = pair
    texts, pairs = [_text(rng) for _ in range(3)], [_text(rng) for _ in range(3)]
    for kwargs in ({}, {"padding": True}, {"padding": True, "padding_side": "left"},
                   {"truncation": True, "max_length": 10, "padding": "max_length"},
                   {"add_special_tokens": False}):
        for args in ((texts[0],), (texts[0], pairs[0]), (texts,), (texts, pairs)):
            enc = ours(*args, **kwargs)
            rows = range(len(args[0])) if isinstance(args[0], list) else [0]
            if theirs.backend == "tokenizers":
                ref = theirs(*args, **kwargs)
                assert [enc.sequence_ids(i) for i in rows] == [ref.sequence_ids(i) for i in rows], (args, kwargs)
                continue
            with pytest.raises(ValueError, match="not available when using Python based tokenizers"):
                theirs(*args, **kwargs).sequence_ids()
            ref = theirs(*args, **kwargs, return_special_tokens_mask=True, return_attention_mask=True)
            for i in rows:
                ids = ref["input_ids"][i] if len(rows) > 1 or isinstance(args[0], list) else ref["input_ids"]
                special = (ref["special_tokens_mask"][i] if isinstance(args[0], list) else
                           ref["special_tokens_mask"])
                attention = ref["attention_mask"][i] if isinstance(args[0], list) else ref["attention_mask"]
                seq = enc.sequence_ids(i)
                assert len(seq) == len(ids)
                assert [s is None for s in seq] == [bool(m) or not a for m, a in zip(special, attention, strict=True)]
                real = [s for s in seq if s is not None]
                assert real == sorted(real) and (1 not in real or len(args) == 2)
                if "truncation" not in kwargs:  # every id of each text is there, with its sequence's number
                    parts = [a[i] if isinstance(a, list) else a for a in args]
                    assert [real.count(k) for k in range(len(parts))] == [
                        len(theirs.encode(p, add_special_tokens=False)) for p in parts], (args, kwargs)
    with pytest.raises(ValueError, match="sequence_ids.. is available on what a tokenizer call returns"):
        ours.pad({"input_ids": [[5, 6]]}).sequence_ids()
    with pytest.raises(IndexError, match="batch_index"):
        ours(texts).sequence_ids(7)


@pytest.mark.parametrize("side", ["right", "left"])
def test_maximum_length_on_pairs_matches_transformers(kind, rng, side):
    """The limit from `max_length` or from the tokenizer's `model_max_length`, every truncation strategy and
    padding mode, single pairs and batches (transformers' test_maximum_encoding_length_* on random texts). The Gemma
    classes split the room between a pair's texts as `tokenizers` does, which differs from SiglipTokenizer's."""
    directory, ours_cls, theirs_cls = kind
    model_max_length = rng.randint(12, 40)
    ours = ours_cls.from_pretrained(directory, model_max_length=model_max_length, truncation_side=side)
    theirs = theirs_cls.from_pretrained(directory, model_max_length=model_max_length, truncation_side=side)
    long, short = _text(rng, 30, 60), _text(rng, 1, 5)
    for padding in (False, True, "longest", "max_length"):
        for truncation in (True, "longest_first", "only_first", "only_second", False):
            for first, second in ((long, short), (short, long), (long, long)):
                for max_length in (None, rng.randint(4, model_max_length)):
                    kw = dict(padding=padding, truncation=truncation, max_length=max_length)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        _same_or_both_refuse(lambda t, a=first, b=second, kw=kw: t(a, b, **kw), ours, theirs, kw)
                        _same_or_both_refuse(lambda t, a=first, b=second, kw=kw: t([a, short], [b, long], **kw),
                                             ours, theirs, kw)
    # the lengths transformers' test asserts: truncation to model_max_length, whichever side is long (when the
    # short text leaves room for some of the long one, as its test texts do)
    if len(ours(short, short)["input_ids"]) < model_max_length:
        for truncation in (True, "longest_first", "only_first"):
            assert len(ours(long * 3, short, truncation=truncation)["input_ids"]) == model_max_length
        assert len(ours(short, long * 3, truncation="only_second")["input_ids"]) == model_max_length
    with pytest.warns(UserWarning, match="Token indices sequence length is longer than the specified maximum"):
        assert len(ours(short, long * 3, truncation=False)["input_ids"]) > model_max_length


def test_lone_surrogate_is_a_clear_error(pair, rng):
    """Issue 23: a str holding a lone surrogate (not Unicode text) gave sentencepiece's RuntimeError or tokenizers'
    TypeError; it is a ValueError naming the text, the code point and its position."""
    ours, _ = pair
    text = _text(rng)
    position = rng.randint(0, len(text))
    bad = text[:position] + "\udc9f" + text[position:]
    cases = [
        (lambda: ours(bad), rf"^text holds a lone surrogate U\+DC9F at position {position}"),
        (lambda: ours([text, bad]), r"^text\[1\] holds a lone surrogate"),
        (lambda: ours(text, bad), r"^text_pair holds"),
        (lambda: ours([text], [bad]), r"^text_pair\[0\] holds"),
        (lambda: ours([[text, bad]], is_split_into_words=True), r"^text\[0\]\[1\] holds"),
        (lambda: ours.tokenize(bad), r"^text holds"),
        (lambda: ours.encode(text, bad), r"^text_pair holds"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    assert ours(text)["input_ids"] == pair[1](text)["input_ids"]  # valid text is unaffected
