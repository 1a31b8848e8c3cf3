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
    return transformers.SiglipTokenizer


def _plain(enc) -> dict:
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in dict(enc).items()}


@pytest.fixture(autouse=True)
def _quiet_eos_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This sequence already has")
        yield


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
    with pytest.raises(FileNotFoundError, match="not a directory"):
        SiglipTokenizer.from_pretrained(tmp_path / "no" / "such" / "dir")
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        SiglipTokenizer.from_pretrained(tmp_path)  # exists but holds no vocab
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(OSError, match="huggingface_hub is not installed"):
        SiglipTokenizer.from_pretrained("google/siglip-base-patch16-224")
