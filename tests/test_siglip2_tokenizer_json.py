"""Issue 21: SigLIP 2 tokenizers saved by transformers 5 carry only tokenizer.json (its Gemma classes are
tokenizers-backed); siglip_fast reads them with Hugging Face's `tokenizers` and gives transformers' ids.

The tokenizer is built here by transformers from a sentencepiece model trained in Gemma's layout, saved (only
tokenizer.json + tokenizer_config.json), and loaded by both; ids, pieces and decoding are compared on random texts.
"""

import json
import random
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import siglip_fast as sf
from tests.test_siglip2_processing import (  # noqa: F401 (gemma_model: a fixture)
    CORPUS,
    SIGLIP2_TOKENIZER_CONFIG,
    TEXTS,
    assert_same_text_encoding,
    gemma_model,
)

transformers = pytest.importorskip("transformers", reason="transformers is the parity peer")
pytest.importorskip("tokenizers", reason="tokenizer.json is read with tokenizers")
pytestmark = pytest.mark.filterwarnings("ignore:Token indices sequence length is longer")

CLASSES = {"GemmaTokenizer": (sf.GemmaTokenizer, transformers.GemmaTokenizer),
           "Siglip2Tokenizer": (sf.Siglip2Tokenizer, transformers.Siglip2Tokenizer)}
CONFIGS = {"siglip2": SIGLIP2_TOKENIZER_CONFIG,
           "bos_and_eos": {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": True,
                           "padding_side": "left", "model_max_length": 16},
           "class_defaults": {"tokenizer_class": "GemmaTokenizer"}}


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity_warning()


@pytest.fixture
def rng():
    return random.Random(int(torch.randint(0, 2**31, ()).item()))  # follows the per-test seed


def _random_texts(rng, n=12) -> list[str]:
    words = " ".join(CORPUS + TEXTS).split() + ["<mask>", "<eos>", "<bos>", "<start_of_turn>", "ẞ", "İ", "🙂", "\t"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(0, 14))) for _ in range(n)]


def _saved_by_transformers(tmp_path, gemma_model, class_name, config) -> tuple:  # noqa: F811
    """A directory transformers' class saved (tokenizer.json, no tokenizer.model), and that class reloaded."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.model").write_bytes(gemma_model)
    (src / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": class_name}))
    out = tmp_path / "saved"
    CLASSES[class_name][1].from_pretrained(src).save_pretrained(out)
    assert (out / "tokenizer.json").is_file() and not (out / "tokenizer.model").exists()
    return out, CLASSES[class_name][1].from_pretrained(out)


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("saved_by", sorted(CLASSES))
@pytest.mark.parametrize("loaded_as", sorted(CLASSES))
def test_tokenizer_json_gives_transformers_ids(tmp_path, gemma_model, rng, config_name, saved_by,  # noqa: F811
                                               loaded_as):
    directory, _ = _saved_by_transformers(tmp_path, gemma_model, saved_by, CONFIGS[config_name])
    ours, theirs = CLASSES[loaded_as][0].from_pretrained(directory), CLASSES[loaded_as][1].from_pretrained(directory)
    assert ours.tokenizer_file == str(directory / "tokenizer.json") and ours.backend == "tokenizers"
    assert (ours.padding_side, ours.model_max_length) == (theirs.padding_side, theirs.model_max_length)
    texts = TEXTS + _random_texts(rng)
    assert_same_text_encoding(ours, theirs, texts)
    for kw in ({}, dict(padding="max_length", max_length=12, truncation=True), dict(padding=True),
               dict(padding="longest", truncation=True, max_length=5, padding_side="right"),
               dict(return_token_type_ids=True, return_special_tokens_mask=True)):
        assert dict(ours(texts, **kw)) == dict(theirs(texts, **kw)), kw
        assert dict(ours(texts[:6], texts[6:12], **kw)) == dict(theirs(texts[:6], texts[6:12], **kw)), kw
    assert ours.get_vocab() == theirs.get_vocab() and len(ours) == len(theirs)
    # tokens added afterwards are split out of the text by tokenizers, at the same ids as transformers'
    for tok in (ours, theirs):
        tok.add_tokens(["<new_word>", "zebrafish"])
        tok.add_special_tokens({"extra_special_tokens": ["<img>"]})
    probe = "a <new_word> and a zebrafish <img> x<img>y"
    assert ours(probe)["input_ids"] == theirs(probe)["input_ids"]
    assert ours.convert_tokens_to_ids(["<img>", "<new_word>"]) == theirs.convert_tokens_to_ids(["<img>", "<new_word>"])


@pytest.mark.parametrize("class_name", sorted(CLASSES))
def test_tokenizer_json_round_trip_with_transformers(tmp_path, gemma_model, rng, class_name):  # noqa: F811
    directory, theirs = _saved_by_transformers(tmp_path, gemma_model, class_name, CONFIGS["bos_and_eos"])
    ours = CLASSES[class_name][0].from_pretrained(directory)
    assert (ours.add_bos_token, ours.add_eos_token) == (True, True)  # from the file's template
    ours.save_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours" / "tokenizer.json").is_file()
    again_theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
    again_ours = CLASSES[class_name][0].from_pretrained(tmp_path / "ours")
    assert type(again_theirs).__name__ == class_name
    texts = _random_texts(rng)
    kw = dict(padding="max_length", max_length=16, truncation=True)
    expected = theirs(texts, **kw)["input_ids"]
    assert again_theirs(texts, **kw)["input_ids"] == expected
    assert again_ours(texts, **kw)["input_ids"] == expected
    assert ours(texts[0], texts[1])["input_ids"] == theirs(texts[0], texts[1])["input_ids"]  # <bos> A <eos> <bos> B


def test_processor_from_a_directory_saved_by_transformers(tmp_path, gemma_model, rng):  # noqa: F811
    """A NaFlex directory written by transformers 5's Siglip2Processor (tokenizer.json only): load_processor and
    Siglip2Processor give transformers' inputs."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.model").write_bytes(gemma_model)
    (src / "tokenizer_config.json").write_text(json.dumps(SIGLIP2_TOKENIZER_CONFIG))
    processor = transformers.Siglip2Processor(
        # (the defaults: transformers' Siglip2Processor applies max_num_patches=256, patch_size=16 over its image
        # processor's own values, a difference this test is not about)
        image_processor=transformers.Siglip2ImageProcessorPil(),
        tokenizer=transformers.Siglip2Tokenizer.from_pretrained(src))
    processor.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "tokenizer.model").exists()
    ours = sf.load_processor(tmp_path / "saved")
    assert type(ours) is sf.Siglip2Processor and type(ours.tokenizer) is sf.Siglip2Tokenizer
    theirs = transformers.AutoProcessor.from_pretrained(tmp_path / "saved", backend="pil")  # PIL: the pixels we match
    assert type(theirs.image_processor).__name__ == "Siglip2ImageProcessorPil"
    images = [PIL.Image.fromarray(np.random.default_rng(rng.randrange(2**31)).integers(
        0, 256, (rng.randint(9, 60), rng.randint(9, 60), 3), dtype=np.uint8)) for _ in range(2)]
    texts = _random_texts(rng, 2)
    a = ours(text=texts, images=images, return_tensors="pt")
    b = theirs(text=texts, images=images, return_tensors="pt")
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tokenizer_json_errors(tmp_path, gemma_model, monkeypatch):  # noqa: F811
    directory, _ = _saved_by_transformers(tmp_path, gemma_model, "Siglip2Tokenizer", CONFIGS["siglip2"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.* is not valid JSON"):
        sf.GemmaTokenizer(tokenizer_file=bad)
    data = json.loads((directory / "tokenizer.json").read_text())
    bad.write_text(json.dumps({**data, "model": {**data["model"], "type": "WordPiece"}}))
    with pytest.raises(ValueError, match="is not a Gemma tokenizer: expected a BPE model with byte_fallback"):
        sf.GemmaTokenizer(tokenizer_file=bad)
    post = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<mask>", "type_id": 0}},
                                                     {"Sequence": {"id": "A", "type_id": 0}}], "pair": [],
            "special_tokens": {}}
    bad.write_text(json.dumps({**data, "post_processor": post}))
    with pytest.raises(ValueError, match="not Gemma's template"):
        sf.GemmaTokenizer(tokenizer_file=bad)
    with pytest.raises(ValueError, match="exactly one of vocab_file"):
        sf.GemmaTokenizer(directory / "tokenizer.json", tokenizer_file=directory / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sf.GemmaTokenizer(tokenizer_file=tmp_path / "missing.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer.model nor tokenizer.json"):
        sf.GemmaTokenizer.from_pretrained(tmp_path / "empty")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"needs Hugging Face's tokenizers package: pip install 'siglip_fast\["):
        sf.Siglip2Tokenizer.from_pretrained(directory)
