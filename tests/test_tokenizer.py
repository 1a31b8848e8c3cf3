"""SiglipTokenizer: id-for-id parity with transformers' SiglipTokenizer on small trained sentencepiece models.

The sentencepiece models are trained here (no download): pad 0, EOS `</s>` 1, unk `<unk>` 2, no BOS, the
layout of SigLIP's c4_en model that transformers' SiglipTokenizer expects.
"""

import io
import json
import random
import sys
import warnings

import numpy as np
import pytest
import sentencepiece as spm
import torch

from siglip_fast.tokenization import BatchEncoding, SiglipTokenizer

WORDS = ["a", "photo", "of", "the", "cat", "dog", "this", "is", "an", "image", "café", "naïve", "über", "日本",
         "東京", "straße", "hello", "world", "colour", "zebra", "quick", "brown", "fox", "jumps", "over", "lazy",
         "🙂", "x-ray", "e-mail", "résumé", "Ελλάδα", "москва", "12", "3.5", "100%"]

TEXTS = [
    "", " ", "   \t\n ", "!!!", "A Photo of a CAT.", "a photo of a cat", "it's a dog's life!!!",
    "a photo </s> of a cat", "<unk> cat", "</s>", "cat</s>", "</s> cat", "  </s>cat", "</s></s>", "a</s>b<unk>c",
    "</S> <UNK> <pad>", "\u2581cat \u2581", "\u2581", "\u2581</s>", "x <pad> y", "café… naïve — “quoted” ¿qué?",
    "hello\tworld\n\nagain", "\u00a0nbsp\u2003em\u3000ideographic", "ÀÉÎ ǅ İ ß", "日本 東京 🙂 zebra", "3.5 100% x-ray",
    "The quick brown fox jumps over the lazy dog " * 12, "dog " * 70 + "</s>",
]

PADDINGS = [
    {},
    {"padding": True},
    {"padding": "longest", "padding_side": "left"},
    {"padding": "max_length"},
    {"padding": "max_length", "truncation": True},
    {"padding": "max_length", "truncation": True, "max_length": 9},
    {"truncation": True},
    {"truncation": True, "max_length": 1},
    {"max_length": 7},
    {"padding": True, "truncation": True, "max_length": 12, "pad_to_multiple_of": 4},
    {"padding": True, "pad_to_multiple_of": 5, "return_attention_mask": False},
    {"add_special_tokens": False, "padding": True},
]


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))).lower() for _ in range(3000)]


def train_spiece(path, model_type: str, vocab_size: int, byte_fallback: bool = False) -> str:
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(0)), model_writer=buffer, model_type=model_type, vocab_size=vocab_size,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=0.995, byte_fallback=byte_fallback,
        hard_vocab_limit=False, minloglevel=2)
    path.write_bytes(buffer.getvalue())
    return str(path)


@pytest.fixture(scope="session", params=["unigram", "bpe-bytes"])
def spiece_dir(request, tmp_path_factory):
    """A directory with spiece.model (no tokenizer_config.json): class defaults on both sides."""
    directory = tmp_path_factory.mktemp(f"spiece-{request.param}")
    if request.param == "unigram":
        train_spiece(directory / "spiece.model", "unigram", 160)
    else:
        train_spiece(directory / "spiece.model", "bpe", 420, byte_fallback=True)
    return directory


@pytest.fixture(scope="session")
def hf_tokenizer_cls():
    pytest.importorskip("google.protobuf", reason="transformers' SiglipTokenizer needs protobuf")
    transformers = pytest.importorskip("transformers", reason="transformers is the parity peer")
    transformers.logging.set_verbosity_error()  # its pair-truncation notices would flood the output
    return transformers.SiglipTokenizer


def _plain(enc) -> dict:
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in dict(enc).items()}


@pytest.fixture(autouse=True)
def _quiet_eos_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This sequence already has")
        warnings.filterwarnings("ignore", message="Token indices sequence length is longer")
        yield


def test_too_long_warning(spiece_dir):
    tok = SiglipTokenizer(spiece_dir / "spiece.model", model_max_length=8)
    with pytest.warns(UserWarning, match=r"sequence length is longer .* \(\d+ > 8\).*pass truncation=True"):
        tok(["a cat", "dog " * 20])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok(["a cat", "dog " * 20], truncation=True)
        tok(["a cat", "dog " * 20], verbose=False)
        tok(["a cat", "dog " * 20], padding="max_length", max_length=40)


def test_ids_match_transformers(spiece_dir, hf_tokenizer_cls):
    ours = SiglipTokenizer(spiece_dir / "spiece.model")
    theirs = hf_tokenizer_cls(str(spiece_dir / "spiece.model"))
    assert ours(TEXTS)["input_ids"] == theirs(TEXTS)["input_ids"]
    for text in TEXTS:  # one at a time too: the unbatched path returns flat lists
        assert _plain(ours(text)) == _plain(theirs(text)), text
        assert ours.tokenize(text) == [t for t in theirs.tokenize(text)], text
    assert ours(TEXTS)["input_ids"][0] == [1]  # "" -> EOS only


@pytest.mark.parametrize("return_tensors", [None, "pt", "np"])
def test_padding_truncation_match_transformers(spiece_dir, hf_tokenizer_cls, return_tensors):
    ours = SiglipTokenizer(spiece_dir / "spiece.model", model_max_length=16)
    theirs = hf_tokenizer_cls(str(spiece_dir / "spiece.model"), model_max_length=16)
    compared = 0
    for kwargs in PADDINGS:
        for batch in (TEXTS, TEXTS[4], TEXTS[-2:]):
            lists = theirs(batch, **kwargs)["input_ids"]
            if return_tensors is not None and isinstance(batch, list) and len({len(r) for r in lists}) > 1:
                # a ragged batch: transformers fails ('pt') or builds an object array ('np'); we refuse clearly
                with pytest.raises(ValueError, match="different lengths"):
                    ours(batch, return_tensors=return_tensors, **kwargs)
                continue
            expected = theirs(batch, return_tensors=return_tensors, **kwargs)
            got = ours(batch, return_tensors=return_tensors, **kwargs)
            assert _plain(got) == _plain(expected), (kwargs, batch)
            for key, value in got.items():
                assert type(value) is type(expected[key]), key
                if return_tensors is not None:
                    assert value.dtype == expected[key].dtype and tuple(value.shape) == tuple(expected[key].shape)
            compared += 1
    assert compared >= 2 * len(PADDINGS)


def test_sticky_eos_and_pad_id(spiece_dir):
    tok = SiglipTokenizer(spiece_dir / "spiece.model", model_max_length=8)
    long_ids = tok("dog " * 30)["input_ids"]
    enc = tok(["dog " * 30, "cat"], padding="max_length", truncation=True, return_tensors="pt")
    ids = enc["input_ids"]
    assert ids.shape == (2, 8) and ids.dtype == torch.long
    assert ids[0].tolist() == long_ids[:7] + [1]  # first max_length-1 ids, then EOS
    cat = tok("cat")["input_ids"]
    assert ids[1].tolist() == cat + [1] * (8 - len(cat))  # pad id == EOS id == 1
    assert tok.pad_token_id == tok.eos_token_id == 1 and tok.unk_token_id == 2
    assert tok("A Photo, of a CAT!")["input_ids"] == tok("a photo of a cat")["input_ids"]
    assert tok("<unk> cat")["input_ids"][0] == 2
    assert tok("a </s> cat")["input_ids"].count(1) == 2


def test_model_input_names_from_config(spiece_dir, tmp_path):
    (tmp_path / "spiece.model").write_bytes((spiece_dir / "spiece.model").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"model_input_names": ["input_ids"], "model_max_length": 16, "tokenizer_class": "SiglipTokenizer"}))
    tok = SiglipTokenizer.from_pretrained(tmp_path)
    enc = tok(["a cat", "a photo of a dog"], padding="max_length", return_tensors="pt")
    assert list(enc) == ["input_ids"] and enc.input_ids.shape == (2, 16)
    assert "attention_mask" in SiglipTokenizer(tmp_path / "spiece.model")("a cat")
    assert "attention_mask" in tok("a cat", return_attention_mask=True)


def test_decode_matches_transformers(spiece_dir, hf_tokenizer_cls):
    ours = SiglipTokenizer(spiece_dir / "spiece.model")
    theirs = hf_tokenizer_cls(str(spiece_dir / "spiece.model"))
    ids = theirs(TEXTS, padding=True)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == theirs.batch_decode(ids, skip_special_tokens=skip)
        assert ours.decode(torch.tensor(ids[7]), skip_special_tokens=skip) == theirs.decode(ids[7],
                                                                                         skip_special_tokens=skip)
    assert ours.decode(np.array(ids)) == theirs.decode(ids)
    assert ours.decode(ours("a photo of a cat")["input_ids"], skip_special_tokens=True) == "a photo of a cat"


def test_save_here_load_in_transformers(spiece_dir, hf_tokenizer_cls, tmp_path):
    ours = SiglipTokenizer(spiece_dir / "spiece.model", model_max_length=16, model_input_names=["input_ids"])
    ours.save_pretrained(tmp_path)
    theirs = hf_tokenizer_cls.from_pretrained(str(tmp_path))
    assert theirs.model_max_length == 16 and theirs.model_input_names == ["input_ids"]
    kwargs = {"padding": "max_length", "truncation": True, "return_tensors": "pt"}
    assert torch.equal(theirs(TEXTS, **kwargs)["input_ids"], ours(TEXTS, **kwargs)["input_ids"])
    assert "attention_mask" not in theirs(TEXTS, **kwargs)
    again = SiglipTokenizer.from_pretrained(tmp_path)
    assert again.to_config() == ours.to_config()


@pytest.mark.parametrize("legacy", [None, True, False])
def test_legacy_matches_transformers(spiece_dir, hf_tokenizer_cls, tmp_path, legacy):
    given = {} if legacy is None else {"legacy": legacy}
    ours = SiglipTokenizer(spiece_dir / "spiece.model", **given)
    theirs = hf_tokenizer_cls(str(spiece_dir / "spiece.model"), **given)
    assert ours.legacy == theirs.legacy == (legacy is not False)
    assert ours._unk_length == theirs.unk_token_length  # legacy=False: the model without add_dummy_prefix
    texts = [*TEXTS, "cat</s>dog", "a<unk>b c", "x </s>y"]
    assert ours(texts)["input_ids"] == theirs(texts)["input_ids"]
    for text in texts:
        assert ours.tokenize(text) == list(theirs.tokenize(text)), text
    # saved as transformers saves it (only when given), the model file unchanged; each side reads the other's
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(str(tmp_path / "theirs"))
    saved = {d: json.loads((tmp_path / d / "tokenizer_config.json").read_text()) for d in ("ours", "theirs")}
    assert saved["ours"].get("legacy") == saved["theirs"].get("legacy") == legacy
    assert (tmp_path / "ours" / "spiece.model").read_bytes() == (spiece_dir / "spiece.model").read_bytes()
    back = hf_tokenizer_cls.from_pretrained(str(tmp_path / "ours"))
    again = SiglipTokenizer.from_pretrained(tmp_path / "theirs")
    assert back.legacy == again.legacy == ours.legacy
    assert again(texts)["input_ids"] == back(texts)["input_ids"] == theirs(texts)["input_ids"]
    with pytest.raises(TypeError, match="legacy must be a bool or None"):
        SiglipTokenizer(spiece_dir / "spiece.model", legacy="no")
    with pytest.raises(TypeError, match="unexpected keyword argument 'extra_ids'"):
        SiglipTokenizer(spiece_dir / "spiece.model", extra_ids=100)  # T5's, not SiglipTokenizer's signature


def test_call_defaults_at_init_kept_and_saved_like_transformers(spiece_dir, hf_tokenizer_cls, tmp_path):
    defaults = {"max_length": 17, "padding": "max_length", "truncation": True}
    ours = SiglipTokenizer.from_pretrained(spiece_dir, **defaults)
    theirs = hf_tokenizer_cls.from_pretrained(str(spiece_dir), **defaults)
    assert ours.call_defaults == {k: theirs.init_kwargs[k] for k in defaults}
    # as in transformers, the tokenizer's own call does not apply them (SiglipProcessor does)
    text = "a photo of a cat " * 6
    assert _plain(ours(text)) == _plain(theirs(text)) and len(ours(text)["input_ids"]) > 17
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(str(tmp_path / "theirs"))
    for d in ("ours", "theirs"):
        saved = json.loads((tmp_path / d / "tokenizer_config.json").read_text())
        assert {k: saved.get(k) for k in defaults} == defaults, d
    assert SiglipTokenizer.from_pretrained(tmp_path / "theirs").call_defaults == defaults
    back = hf_tokenizer_cls.from_pretrained(str(tmp_path / "ours"))
    assert {k: back.init_kwargs.get(k) for k in defaults} == defaults
    assert SiglipTokenizer(spiece_dir / "spiece.model", max_length=9).to_config()["max_length"] == 9
    with pytest.raises(TypeError, match="unexpected keyword argument 'text_pair'"):
        SiglipTokenizer(spiece_dir / "spiece.model", text_pair="x")


def test_save_in_transformers_load_here(spiece_dir, hf_tokenizer_cls, tmp_path):
    theirs = hf_tokenizer_cls(str(spiece_dir / "spiece.model"), model_max_length=16, model_input_names=["input_ids"])
    theirs.save_pretrained(str(tmp_path))
    # v4 also wrote special_tokens_map.json with AddedToken dicts; it must be read when present
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": {"content": "</s>", "lstrip": True, "normalized": False, "rstrip": True, "single_word": False},
         "pad_token": "</s>", "unk_token": "<unk>"}))
    ours = SiglipTokenizer.from_pretrained(tmp_path)
    assert ours.model_max_length == 16 and ours.model_input_names == ["input_ids"]
    assert _plain(ours(TEXTS, padding="max_length", truncation=True)) == _plain(
        theirs(TEXTS, padding="max_length", truncation=True))


def test_batch_encoding_access_and_to(spiece_dir):
    tok = SiglipTokenizer(spiece_dir / "spiece.model")
    enc = tok(["a cat", "a dog"], padding=True, return_tensors="pt")
    assert isinstance(enc, BatchEncoding) and isinstance(enc, dict)
    assert enc.input_ids is enc["input_ids"]
    moved = enc.to("cpu", torch.bfloat16)
    assert moved is enc and enc.input_ids.dtype == torch.long  # ids are never cast
    with pytest.raises(AttributeError, match="pixel_values"):
        _ = enc.pixel_values


def test_bad_input(spiece_dir, tmp_path, monkeypatch):
    tok = SiglipTokenizer(spiece_dir / "spiece.model")
    with pytest.raises(TypeError, match=r"text\[1\] must be a str"):
        tok(["ok", 3])
    with pytest.raises(TypeError, match="text must be a str"):
        tok(42)
    with pytest.raises(ValueError, match="padding must be"):
        tok("a", padding="sideways")
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        tok("a", max_length=0)
    with pytest.raises(ValueError, match="return_tensors"):
        tok("a", return_tensors="tf")
    with pytest.raises(ValueError, match="different lengths"):
        tok(["a", "a photo of a cat"], return_tensors="pt")
    with pytest.raises(FileNotFoundError, match="vocab_file"):
        SiglipTokenizer(tmp_path / "missing.model")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        SiglipTokenizer.from_pretrained(tmp_path / "no" / "such" / "dir")
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        SiglipTokenizer.from_pretrained(tmp_path)  # exists but holds no vocab
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(OSError, match="huggingface_hub.*not installed"):
        SiglipTokenizer.from_pretrained("google/siglip-base-patch16-224")


# ---------------------------------------------------------------------------------------------------------------
# The transformers surface (issue 14): vocab, properties, pairs, masks, added tokens, pad
# ---------------------------------------------------------------------------------------------------------------

# no literal </s>: when one ends a (truncated) sequence, transformers' masks are one entry too long (see below)
PAIR_TEXTS = [t for t in TEXTS if "</s>" not in t]


def _properties(tok) -> dict:
    return {name: getattr(tok, name) for name in (
        "vocab_size", "all_special_tokens", "all_special_ids", "pad_token_id", "eos_token_id", "unk_token_id",
        "bos_token_id", "pad_token", "eos_token", "unk_token", "bos_token", "model_max_length", "padding_side",
        "truncation_side", "special_tokens_map", "model_input_names", "extra_special_tokens")} | {
        "len": len(tok), "vocab": tok.get_vocab()}


@pytest.mark.parametrize("kwargs", [
    {},
    {"model_max_length": 16, "additional_special_tokens": ["<a>", "<bb>"]},
    {"extra_special_tokens": {"image_token": "<img>"}, "padding_side": "left"},
])
def test_vocab_and_properties_match_transformers(spiece_dir, hf_tokenizer_cls, kwargs):
    ours = SiglipTokenizer(spiece_dir / "spiece.model", **kwargs)
    theirs = hf_tokenizer_cls(str(spiece_dir / "spiece.model"), **kwargs)
    assert _properties(ours) == _properties(theirs)
    assert len(ours) == len(ours.get_vocab()) >= ours.vocab_size
    tokens = ["</s>", "<unk>", "<pad>", "\u2581a", "\u2581photo", "no-such-piece", *ours.all_special_tokens]
    assert ours.convert_tokens_to_ids(tokens) == theirs.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids("</s>") == theirs.convert_tokens_to_ids("</s>") == 1
    ids = list(range(len(theirs)))
    assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == theirs.convert_ids_to_tokens(
        ids, skip_special_tokens=True)
    assert ours.convert_ids_to_tokens(2) == theirs.convert_ids_to_tokens(2) == "<unk>"
    assert ours(TEXTS + ["a <a> cat <img><bb>"])["input_ids"] == theirs(TEXTS + ["a <a> cat <img><bb>"])["input_ids"]
    if "extra_special_tokens" in kwargs:
        assert (ours.image_token, ours.image_token_id) == (theirs.image_token, theirs.image_token_id)


PAIR_KWARGS = [
    {},
    {"padding": True, "return_token_type_ids": True, "return_special_tokens_mask": True},
    {"padding": "max_length", "truncation": True, "return_length": True},
    {"truncation": True, "max_length": 9, "return_special_tokens_mask": True},
    {"truncation": "only_first", "max_length": 7, "padding": "max_length", "return_token_type_ids": True},
    {"truncation": "only_second", "max_length": 8, "padding": True, "padding_side": "left"},
    {"truncation": "longest_first", "max_length": 6, "return_length": True, "return_attention_mask": False},
    {"add_special_tokens": False, "padding": True, "return_special_tokens_mask": True},
]


@pytest.mark.parametrize("kwargs", PAIR_KWARGS)
def test_pairs_and_masks_match_transformers(spiece_dir, hf_tokenizer_cls, kwargs):
    ours = SiglipTokenizer(spiece_dir / "spiece.model", model_max_length=12)
    theirs = hf_tokenizer_cls(str(spiece_dir / "spiece.model"), model_max_length=12)
    firsts, seconds = PAIR_TEXTS, PAIR_TEXTS[::-1]
    for a, b in zip(firsts, seconds, strict=True):  # one pair at a time: flat lists
        assert _plain(ours(a, b, **kwargs)) == _plain(theirs(a, b, **kwargs)), (a, b)
        assert _plain(ours(a, **kwargs)) == _plain(theirs(a, **kwargs)), a
    assert _plain(ours(firsts, seconds, **kwargs)) == _plain(theirs(firsts, seconds, **kwargs))
    as_tuples = list(zip(firsts, seconds, strict=True))
    assert _plain(ours(as_tuples, **kwargs)) == _plain(theirs(as_tuples, **kwargs))
    assert _plain(ours(firsts, **kwargs)) == _plain(theirs(firsts, **kwargs))
    for side in ("left",):  # truncation side is honoured for pairs too
        ours.truncation_side = theirs.truncation_side = side
        assert _plain(ours(firsts, seconds, **kwargs)) == _plain(theirs(firsts, seconds, **kwargs))


def test_pairs_to_tensors_match_transformers(spiece_dir, hf_tokenizer_cls):
    ours = SiglipTokenizer(spiece_dir / "spiece.model", model_max_length=10)
    theirs = hf_tokenizer_cls(str(spiece_dir / "spiece.model"), model_max_length=10)
    kwargs = {"padding": "max_length", "truncation": True, "return_token_type_ids": True,
              "return_special_tokens_mask": True, "return_length": True}
    for return_tensors in ("pt", "np"):
        got = ours(PAIR_TEXTS, PAIR_TEXTS[::-1], return_tensors=return_tensors, **kwargs)
        expected = theirs(PAIR_TEXTS, PAIR_TEXTS[::-1], return_tensors=return_tensors, **kwargs)
        assert _plain(got) == _plain(expected)
        assert all(type(got[k]) is type(expected[k]) and got[k].dtype == expected[k].dtype for k in got)
        single = ours("a cat", "a dog", return_tensors=return_tensors, **kwargs)
        assert _plain(single) == _plain(theirs("a cat", "a dog", return_tensors=return_tensors, **kwargs))


def test_masks_have_the_ids_length_with_a_literal_eos(spiece_dir, hf_tokenizer_cls):
    """A text ending in a literal </s> gets no second EOS; transformers' token_type_ids/special_tokens_mask are then
    one entry longer than the ids (a bug); ours always have the ids' length, the literal </s> counting as text."""
    ours = SiglipTokenizer(spiece_dir / "spiece.model")
    theirs = hf_tokenizer_cls(str(spiece_dir / "spiece.model"))
    kwargs = {"return_special_tokens_mask": True, "return_token_type_ids": True}
    got, expected = ours("a cat </s>", "dog", **kwargs), theirs("a cat </s>", "dog", **kwargs)
    assert got["input_ids"] == expected["input_ids"] and got["input_ids"].count(1) == 2
    assert len(expected["special_tokens_mask"]) == len(got["input_ids"]) + 1  # transformers' off-by-one
    assert got["special_tokens_mask"] == [0] * (len(got["input_ids"]) - 1) + [1]
    assert got["token_type_ids"] == [0] * len(got["input_ids"])


def test_add_tokens_match_transformers(spiece_dir, hf_tokenizer_cls, tmp_path):
    ours = SiglipTokenizer(spiece_dir / "spiece.model")
    theirs = hf_tokenizer_cls(str(spiece_dir / "spiece.model"))
    before = len(ours)
    for tok in (ours, theirs):
        assert tok.add_tokens(["newtok", "Cat Dog", "newtok", "", "\u2581a"]) == 2  # ▁a is a piece already
        assert tok.add_tokens("<sp1>", special_tokens=True) == 1
        assert tok.add_special_tokens({"extra_special_tokens": ["<sp1>", "<sp2>"]}) == 1
    assert len(ours) == len(theirs) == before + 4
    assert _properties(ours) == _properties(theirs)
    assert ours.get_added_vocab() == dict(theirs.get_added_vocab())
    texts = TEXTS + ["a newtok cat", "NEWTOK cat dog", "xnewtoky <sp1>cat dog<sp2> </s>", "\u2581a \u2581a newtok"]
    enc = ours(texts, padding=True)
    assert _plain(enc) == _plain(theirs(texts, padding=True))
    for text in texts:
        assert ours.tokenize(text) == theirs.tokenize(text), text
    for skip in (False, True):
        assert ours.batch_decode(enc["input_ids"], skip_special_tokens=skip) == theirs.batch_decode(
            enc["input_ids"], skip_special_tokens=skip)
    # new ids survive a save in either direction
    ours.save_pretrained(tmp_path / "ours")
    reloaded = hf_tokenizer_cls.from_pretrained(str(tmp_path / "ours"))
    assert _plain(reloaded(texts)) == _plain(theirs(texts)) and len(reloaded) == len(ours)
    theirs.save_pretrained(str(tmp_path / "theirs"))
    again = SiglipTokenizer.from_pretrained(tmp_path / "theirs")
    assert _plain(again(texts)) == _plain(theirs(texts)) and _properties(again) == _properties(theirs)


def test_add_special_tokens_named_matches_transformers(spiece_dir, hf_tokenizer_cls):
    ours = SiglipTokenizer(spiece_dir / "spiece.model")
    theirs = hf_tokenizer_cls(str(spiece_dir / "spiece.model"))
    for tok in (ours, theirs):
        assert tok.add_special_tokens({"pad_token": "<pad>", "mask_token": "<mask>"}) == 1  # <pad> is piece 0
    assert _properties(ours) == _properties(theirs)
    assert ours.pad_token_id == 0
    kwargs = {"padding": "max_length", "max_length": 20, "truncation": True}
    assert _plain(ours(TEXTS, **kwargs)) == _plain(theirs(TEXTS, **kwargs))
    with pytest.raises(ValueError, match="not a special token name"):
        ours.add_special_tokens({"image_tokn": "<img>"})


PAD_CASES = [
    {},
    {"padding": "max_length", "max_length": 9},
    {"padding": True, "pad_to_multiple_of": 4, "padding_side": "left"},
    {"padding": False},
    {"padding": "longest", "return_attention_mask": False},
    {"padding": "max_length"},
]


@pytest.mark.parametrize("kwargs", PAD_CASES)
def test_pad_matches_transformers(spiece_dir, hf_tokenizer_cls, kwargs):
    ours = SiglipTokenizer(spiece_dir / "spiece.model", model_max_length=16)
    theirs = hf_tokenizer_cls(str(spiece_dir / "spiece.model"), model_max_length=16)
    # (with return_attention_mask=False transformers leaves a given attention_mask unpadded, ragged; ours is
    # padded with the ids, see test_pad_keeps_rows_aligned: compare on inputs without one there)
    extra = {"return_special_tokens_mask": True, "return_token_type_ids": True,
             "return_attention_mask": kwargs.get("return_attention_mask")}
    examples = [theirs(t, **extra) for t in PAIR_TEXTS[:6]]  # a collate_fn gets a list of per-example dicts
    assert _plain(ours.pad([dict(e) for e in examples], **kwargs)) == _plain(
        theirs.pad([dict(e) for e in examples], **kwargs))
    batch = theirs(PAIR_TEXTS[:6], **extra)
    assert _plain(ours.pad(dict(batch), **kwargs)) == _plain(theirs.pad(dict(batch), **kwargs))
    assert _plain(ours.pad({"input_ids": batch["input_ids"][1]}, **kwargs)) == _plain(
        theirs.pad({"input_ids": batch["input_ids"][1]}, **kwargs))  # one row: flat lists
    with_labels = {"input_ids": batch["input_ids"], "labels": list(range(6))}  # other keys pass through
    assert _plain(ours.pad(with_labels, **kwargs)) == _plain(theirs.pad(dict(with_labels), **kwargs))
    tensors = [{"input_ids": torch.tensor(e["input_ids"])} for e in examples]
    if kwargs.get("padding", True) is not False:
        got = ours.pad(tensors, **kwargs)
        expected = theirs.pad([dict(t) for t in tensors], **kwargs)
        assert isinstance(got["input_ids"], torch.Tensor) and _plain(got) == _plain(expected)
        got = ours.pad(dict(batch), return_tensors="np", **kwargs)
        assert isinstance(got["input_ids"], np.ndarray)
        assert _plain(got) == _plain(theirs.pad(dict(batch), return_tensors="np", **kwargs))


def test_pad_keeps_rows_aligned(spiece_dir):
    tok = SiglipTokenizer(spiece_dir / "spiece.model", model_input_names=["input_ids"])
    batch = {"input_ids": [[5, 6, 7], [8]], "attention_mask": [[1, 1, 1], [1]], "special_tokens_mask": [[0, 0, 1], [1]]}
    out = tok.pad(batch, return_attention_mask=False)
    assert out == {"input_ids": [[5, 6, 7], [8, 1, 1]], "attention_mask": [[1, 1, 1], [1, 0, 0]],
                   "special_tokens_mask": [[0, 0, 1], [1, 1, 1]]}
    assert tok.pad({"input_ids": [[5, 6, 7], [8]]}, return_tensors="pt")["input_ids"].shape == (2, 3)
    assert list(tok.pad({"input_ids": [[5], [8, 9]]})) == ["input_ids"]  # no mask: model_input_names says so
    with pytest.raises(ValueError, match="different lengths"):  # padding=False cannot be stacked
        tok.pad({"input_ids": [[5, 6, 7], [8]]}, padding=False, return_tensors="pt")


def test_constructor_options_as_transformers(spiece_dir, hf_tokenizer_cls, tmp_path):
    # transformers v5 refuses add_special_tokens= in the constructor (it is a method); so do we, saying what to use
    with pytest.raises(AttributeError, match="conflicts with the method"):
        hf_tokenizer_cls(str(spiece_dir / "spiece.model"), add_special_tokens={"image_token": "<img>"})
    with pytest.raises(TypeError, match="extra_special_tokens"):
        SiglipTokenizer(spiece_dir / "spiece.model", add_special_tokens={"image_token": "<img>"})
    with pytest.raises(TypeError, match="not a constructor option"):
        SiglipTokenizer.from_pretrained(spiece_dir, add_special_tokens=True)
    # a dict of extra special tokens gives named tokens (tok.image_token), saved and reloaded both ways
    ours = SiglipTokenizer(spiece_dir / "spiece.model", extra_special_tokens={"image_token": "<img>"})
    ours.save_pretrained(tmp_path)
    theirs = hf_tokenizer_cls.from_pretrained(str(tmp_path))
    assert theirs.image_token == "<img>" and theirs.image_token_id == ours.image_token_id
    assert SiglipTokenizer.from_pretrained(tmp_path).image_token_id == ours.image_token_id
    assert ours.bos_token is None and ours.bos_token_id is None
    with pytest.raises(AttributeError, match="no attribute 'video_token'"):
        _ = ours.video_token


@pytest.mark.parametrize("content", [b"", b"not a sentencepiece model at all", "truncated"])
def test_corrupt_spiece_model_names_the_file(spiece_dir, tmp_path, content):
    if content == "truncated":
        content = (spiece_dir / "spiece.model").read_bytes()[:-1]  # cut inside the last field
    path = tmp_path / "spiece.model"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"vocab_file '.*spiece\.model' is (empty|not a valid sentencepiece model)"):
        SiglipTokenizer(path)
    with pytest.raises(ValueError, match=r"spiece\.model' is (empty|not a valid sentencepiece model)"):
        SiglipTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_proto is (empty|not a valid)"):
        SiglipTokenizer(model_proto=content)
    (tmp_path / "spiece.model").write_bytes((spiece_dir / "spiece.model").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json' is not valid JSON"):
        SiglipTokenizer.from_pretrained(tmp_path)


def test_hostile_input(spiece_dir):
    tok = SiglipTokenizer(spiece_dir / "spiece.model")
    cases = [
        (lambda: tok(None), ValueError, "text must be a str or a list of str, got None"),
        (lambda: tok([]), ValueError, "text: got an empty list"),
        (lambda: tok(["a", None]), TypeError, r"text\[1\] must be a str, got NoneType"),
        (lambda: tok("a", ["b"]), TypeError, "text_pair must be a str too, got list"),
        (lambda: tok(["a", "b"], ["c"]), ValueError, "same batch size, got 2 texts and 1 pairs"),
        (lambda: tok(["a", "b"], "c"), TypeError, "text_pair must be a list of 2 str, got str"),
        (lambda: tok(["a"], [3]), TypeError, r"text_pair\[0\] must be a str, got int"),
        (lambda: tok([("a", "b", "c")]), TypeError, r"text\[0\] must be a str or a \(text, text_pair\) pair"),
        (lambda: tok("a", max_length=-1), ValueError, "max_length must be a positive int or None, got -1"),
        (lambda: tok("a", max_length=2.5), ValueError, "max_length must be a positive int or None, got 2.5"),
        (lambda: tok("a", truncation="sideways"), ValueError, "truncation must be"),
        (lambda: tok("a", padding_side="up"), ValueError, "padding_side must be 'left' or 'right', got 'up'"),
        (lambda: tok("a", pad_to_multiple_of=0), ValueError, "pad_to_multiple_of must be a positive int"),
        (lambda: tok([["a", 3]], is_split_into_words=True), TypeError, r"text\[0\]\[1\] must be a word \(str\)"),
        (lambda: tok([[]], is_split_into_words=True), TypeError, r"text\[0\] must be a non-empty list of words"),
        (lambda: tok("a", return_overflowing_tokens=True, return_tensors="pt"), ValueError, "ragged"),
        (lambda: tok("a", stride=-1, return_overflowing_tokens=True), ValueError, "stride must be an int >= 0"),
        (lambda: tok("a", stride=2), ValueError, "stride"),
        (lambda: tok.add_tokens([5]), TypeError, r"new_tokens\[0\] must be a str"),
        (lambda: tok.add_tokens(["ok", None]), TypeError, r"new_tokens\[1\] must be a str"),
        (lambda: tok.add_special_tokens(["<x>"]), TypeError, "special_tokens_dict must be a dict"),
        (lambda: tok.add_special_tokens({"pad_token": 3}), TypeError, r"special_tokens_dict\['pad_token'\]"),
        (lambda: tok.convert_tokens_to_ids(5), TypeError, "tokens must be a str or a list of str, got int"),
        (lambda: tok.convert_tokens_to_ids(["a", 5]), TypeError, r"tokens\[1\] must be a str"),
        (lambda: tok.convert_ids_to_tokens([1, "2"]), TypeError, r"ids\[1\] must be an int, got str"),
        (lambda: tok.decode([5000]), ValueError, r"token id 5000 is out of range: the vocabulary has ids 0\.\."),
        (lambda: tok.decode([-1]), ValueError, "token id -1 is out of range"),
        (lambda: tok.decode("a cat"), TypeError, "token_ids must be ints"),
        (lambda: tok.batch_decode([1, 2]), TypeError, r"sequences\[0\] must be a list of ids"),
        (lambda: tok.pad([]), ValueError, "encoded_inputs: got an empty list"),
        (lambda: tok.pad([{"input_ids": [1]}, {"input_ids": [1], "x": [2]}]), ValueError, r"encoded_inputs\[1\] has"),
        (lambda: tok.pad({"attention_mask": [[1]]}), ValueError, "must include 'input_ids'"),
        (lambda: tok.pad({"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1]]}), ValueError, "has 1 rows"),
        (lambda: tok.pad({"input_ids": [[1, 2], [3]], "attention_mask": [[1], [1]]}), ValueError,
         r"\['attention_mask'\]\[0\] has length 1 but 'input_ids'\[0\] has 2"),
        (lambda: tok.pad({"input_ids": [[1, "a"]]}), TypeError, r"\['input_ids'\]\[0\] must be a list of ints"),
        (lambda: tok.pad("ids"), TypeError, "encoded_inputs must be a dict"),
        (lambda: SiglipTokenizer(spiece_dir / "spiece.model", model_max_length=0), ValueError, "model_max_length"),
        (lambda: SiglipTokenizer(spiece_dir / "spiece.model", eos_token=None), ValueError, "eos_token must be a str"),
        (lambda: SiglipTokenizer(spiece_dir / "spiece.model", additional_special_tokens=[1]), TypeError,
         r"additional_special_tokens\[0\] must be a str"),
        (lambda: SiglipTokenizer(spiece_dir / "spiece.model", extra_special_tokens="<x>"), TypeError,
         "extra_special_tokens must be a list of str or a dict"),
        (lambda: SiglipTokenizer(spiece_dir / "spiece.model", model_input_names="input_ids"), TypeError,
         "model_input_names must be a list of str"),
        (lambda: SiglipTokenizer(3), TypeError, "vocab_file must be a path, got int"),
        (lambda: tok("a", truncation=1), ValueError, "truncation must be a bool, .* got 1"),
        (lambda: tok("a", add_special_tokens="no"), TypeError, r"add_special_tokens must be a bool, got str \('no'\)"),
        (lambda: tok("a", return_attention_mask="x"), TypeError, "return_attention_mask must be a bool"),
        (lambda: tok.decode(torch.zeros(2, 2, 2, dtype=torch.long)), TypeError, "nested lists"),
        (lambda: tok.decode(torch.tensor([1.0, 2.0])), TypeError, r"ids\[0\] must be an int, got float"),
        (lambda: SiglipTokenizer(spiece_dir / "spiece.model", do_lower_case="False"), TypeError,
         r"do_lower_case must be a bool, got str \('False'\)"),
        (lambda: SiglipTokenizer(spiece_dir / "spiece.model", sp_model_kwargs={"bogus": 1}), TypeError,
         "sp_model_kwargs .* are not SentencePieceProcessor options"),
        (lambda: SiglipTokenizer(spiece_dir / "spiece.model", sp_model_kwargs=[1]), TypeError,
         "sp_model_kwargs must be a dict, got list"),
        (lambda: SiglipTokenizer(spiece_dir / "spiece.model", added_tokens_decoder={"x": "<a>"}), ValueError,
         "added_tokens_decoder keys must be token ids, got 'x'"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    # nothing above changed the tokenizer
    assert tok(["a cat"], ["a dog"])["input_ids"] == [tok("a cat", "a dog")["input_ids"]]
    assert "ok" not in tok.get_vocab()


FUZZ_PIECES = ["a", "photo", "Cat", "DOG", " ", "  ", "\t", "\n", "\u00a0", "\u2003", "\u200b", "\u2581", "</s>",
               "<unk>", "<pad>", "</S>", "<", ">", "/", "s", "!", "'", ".", "...", "…", "—", "-", "_", "é", "e\u0301",
               "ß", "İ", "日本", "🙂", "Ⅻ", "ﬁ", "①", "x-ray", "100%", "\\", "{}", "newtok", "<sp1>"]


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_strings_match_transformers(spiece_dir, hf_tokenizer_cls, seed):
    """Random strings built from awkward pieces (whitespace kinds, ▁, special and added tokens glued to text,
    punctuation, NFKC-sensitive and combining characters): ids, pieces, pairs and decoding as transformers."""
    rng = random.Random(seed)
    texts = ["".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(0, 14))) for _ in range(250)]
    ours = SiglipTokenizer(spiece_dir / "spiece.model", model_max_length=24)
    theirs = hf_tokenizer_cls(str(spiece_dir / "spiece.model"), model_max_length=24)
    for tok in (ours, theirs):
        tok.add_tokens(["newtok"])
        tok.add_tokens(["<sp1>"], special_tokens=True)
    got = ours(texts)["input_ids"]
    assert got == theirs(texts)["input_ids"]
    for text in texts[:80]:
        assert ours.tokenize(text) == theirs.tokenize(text), repr(text)
    kwargs = {"padding": "max_length", "truncation": True}
    assert _plain(ours(texts, texts[::-1], **kwargs)) == _plain(theirs(texts, texts[::-1], **kwargs))
    for skip in (False, True):
        assert ours.batch_decode(got, skip_special_tokens=skip) == theirs.batch_decode(got, skip_special_tokens=skip)


def test_subclass_extension_points(spiece_dir, tmp_path):
    """What a SigLIP 2-style tokenizer built on this one overrides (vocab_files_names, padding_side, _encode_batch,
    build_inputs_with_special_tokens, get_special_tokens_mask): calls, truncation, padding, pad(), masks, files
    and decoding then follow from the generic code."""

    class BosTokenizer(SiglipTokenizer):
        vocab_files_names = {"vocab_file": "tokenizer.model"}
        padding_side = "left"

        def _encode_batch(self, texts, out_type=int):  # no canonicalisation: plain sentencepiece
            return [list(ids) for ids in self.sp_model.encode(list(texts), out_type=out_type)]

        def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
            out = [self.bos_token_id, *token_ids_0, self.eos_token_id]
            return out if token_ids_1 is None else [*out, *token_ids_1, self.eos_token_id]

        def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
            if already_has_special_tokens:
                return super().get_special_tokens_mask(token_ids_0, None, True)
            mask = [1, *[0] * len(token_ids_0), 1]
            return mask if token_ids_1 is None else [*mask, *[0] * len(token_ids_1), 1]

    (tmp_path / "tokenizer.model").write_bytes((spiece_dir / "spiece.model").read_bytes())
    tok = BosTokenizer(tmp_path / "tokenizer.model", extra_special_tokens={"bos_token": "<s>"}, model_max_length=8,
                       model_input_names=["input_ids"])
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert bos == len(tok) - 1 and tok.all_special_tokens[0] == "<s>" and tok.num_special_tokens_to_add() == 2
    plain = tok.sp_model.encode("a cat")
    enc = tok(["a cat", "dog " * 20], padding="max_length", truncation=True, return_special_tokens_mask=True)
    assert enc["input_ids"][0] == [eos] * (6 - len(plain)) + [bos, *plain, eos]  # left padding, pad id = eos
    assert enc["special_tokens_mask"][0] == [1] * (6 - len(plain)) + [1, *[0] * len(plain), 1]
    assert len(enc["input_ids"][1]) == 8 and enc["input_ids"][1][0] == bos and enc["input_ids"][1][-1] == eos
    pair = tok("a cat", "dog", return_special_tokens_mask=True)
    assert pair["input_ids"] == [bos, *plain, eos, *tok.sp_model.encode("dog"), eos]
    assert tok.pad({"input_ids": [[5, 6], [7]]}) == {"input_ids": [[5, 6], [eos, 7]]}
    assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == "a cat"
    tok.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BosTokenizer" and config["padding_side"] == "left"
    again = BosTokenizer.from_pretrained(tmp_path / "saved")
    assert again(["a cat", "dog " * 20], padding="max_length", truncation=True) == {"input_ids": enc["input_ids"]}
