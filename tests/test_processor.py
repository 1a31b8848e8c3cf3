"""SiglipProcessor: transformers' SiglipProcessor when padding is explicit; max_length padding by default."""

import io
import json
import os
import pickle
import random

import numpy as np
import PIL.Image
import pytest
import sentencepiece as spm
import torch

from siglip_fast import image_processing, tokenization
from siglip_fast.processing import SiglipProcessor

# some parity cases tokenize a long text without truncation on purpose (the tokenizer tests check the warning)
pytestmark = pytest.mark.filterwarnings("ignore:Token indices sequence length is longer")

WORDS = ["a", "photo", "of", "the", "cat", "dog", "this", "is", "an", "image", "café", "zebra", "quick", "brown"]
TEXTS = ["a photo of a cat.", "This is a DOG!", "", "zebra " * 30, "café </s> cat"]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A v4/hub-style processor directory: spiece.model, tokenizer_config.json, preprocessor_config.json."""
    rng = random.Random(1)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))) for _ in range(1500)]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buffer, model_type="unigram",
                                   vocab_size=60, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
                                   minloglevel=2)
    directory = tmp_path_factory.mktemp("siglip-processor")
    (directory / "spiece.model").write_bytes(buffer.getvalue())
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "model_input_names": ["input_ids"], "model_max_length": 16, "tokenizer_class": "SiglipTokenizer",
        "processor_class": "SiglipProcessor", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5],
        "processor_class": "SiglipProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
        "size": {"height": 32, "width": 32}}))
    return directory


@pytest.fixture(scope="module")
def hf_processor_cls():
    pytest.importorskip("google.protobuf", reason="transformers' SiglipTokenizer needs protobuf")
    transformers = pytest.importorskip("transformers", reason="transformers is the parity peer")
    return transformers.SiglipProcessor, transformers.SiglipImageProcessorPil


def _hf(hf_processor_cls, directory):
    processor_cls, pil_cls = hf_processor_cls
    processor = processor_cls.from_pretrained(str(directory))
    # pin the PIL backend: transformers picks torchvision when it is installed
    processor.image_processor = pil_cls.from_pretrained(str(directory))
    return processor


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    arrays = [torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy() for h, w in ((37, 51), (64, 23))]
    return [PIL.Image.fromarray(a) for a in arrays]


def _same(a, b):
    assert set(a) == set(b)
    for key in a:
        assert isinstance(a[key], torch.Tensor) and a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("text_kwargs", [
    {"padding": "max_length", "truncation": True},
    {"padding": True},
    {"padding": "max_length", "max_length": 20, "truncation": True},
])
def test_matches_transformers_with_explicit_padding(checkpoint_dir, hf_processor_cls, images, text_kwargs):
    ours, theirs = SiglipProcessor.from_pretrained(checkpoint_dir), _hf(hf_processor_cls, checkpoint_dir)
    texts = TEXTS[:3]
    _same(ours(images=images, text=texts, return_tensors="pt", **text_kwargs),
          theirs(images=images, text=texts, return_tensors="pt", **text_kwargs))
    _same(ours(text=TEXTS[3:], return_tensors="pt", **text_kwargs),
          theirs(text=TEXTS[3:], return_tensors="pt", **text_kwargs))
    got = ours(images=images[0], return_tensors="pt")
    assert list(got) == ["pixel_values"] and got.pixel_values.shape == (1, 3, 32, 32)
    _same(got, theirs(images=images[0], return_tensors="pt"))


def test_default_pads_to_max_length(checkpoint_dir, hf_processor_cls, images):
    ours, theirs = SiglipProcessor.from_pretrained(checkpoint_dir), _hf(hf_processor_cls, checkpoint_dir)
    got = ours(images=images, text=TEXTS, return_tensors="pt")
    assert got.input_ids.shape == (len(TEXTS), 16)  # model_max_length from tokenizer_config.json, not 64
    assert "attention_mask" not in got  # model_input_names = ["input_ids"]
    _same(got, theirs(images=images, text=TEXTS, padding="max_length", truncation=True, return_tensors="pt"))
    assert ours(text=TEXTS)["input_ids"] == [row.tolist() for row in got.input_ids]  # lists without return_tensors
    ragged = ours(text=TEXTS[:2], padding=False)["input_ids"]  # explicit padding=False: as transformers, unpadded
    assert ragged == theirs(text=TEXTS[:2])["input_ids"] and len(ragged[0]) != len(ragged[1])


def test_kwargs_routing(checkpoint_dir, images):
    ours = SiglipProcessor.from_pretrained(checkpoint_dir)
    out = ours(images=images, text=TEXTS[:2], return_tensors="np", size={"height": 9, "width": 13}, max_length=5)
    assert out["pixel_values"].shape == (2, 3, 9, 13) and out["input_ids"].shape == (2, 5)
    out = ours(images=images, text="a cat", return_tensors="pt", images_kwargs={"return_uint8": True},
               text_kwargs={"return_attention_mask": True})
    assert out.pixel_values.dtype == torch.uint8 and out.attention_mask.shape == out.input_ids.shape == (1, 16)
    with pytest.raises(TypeError, match="unexpected option 'resize_to'"):
        ours(images=images, resize_to=3)
    with pytest.raises(ValueError, match="text=, images="):
        ours()
    with pytest.raises(TypeError, match="tokenizer must be a SiglipTokenizer"):
        SiglipProcessor(ours.image_processor, "tokenizer")


@pytest.mark.parametrize("modality,twice", [
    ("text_kwargs", {"max_length": 5}), ("text_kwargs", {"padding": "max_length"}),
    ("text_kwargs", {"truncation": True}), ("images_kwargs", {"size": {"height": 9, "width": 13}}),
    ("images_kwargs", {"do_normalize": False}),
])
def test_option_passed_twice_raises_like_transformers(checkpoint_dir, hf_processor_cls, images, modality, twice):
    ours, theirs = SiglipProcessor.from_pretrained(checkpoint_dir), _hf(hf_processor_cls, checkpoint_dir)
    call = {"images": images, "text": TEXTS[:2], modality: dict(twice), **twice}
    with pytest.raises(ValueError) as expected:
        theirs(**call)
    with pytest.raises(ValueError) as got:
        ours(**call)
    assert str(got.value) == str(expected.value)
    assert f"in a dictionary for {modality}" in str(got.value)
    other = "images_kwargs" if modality == "text_kwargs" else "text_kwargs"  # only the same part's dict clashes
    kwargs = {"images": images, "text": TEXTS[:2], "return_tensors": "pt", modality: dict(twice)}
    _same(ours(**kwargs, **{other: {}}), ours(**kwargs))


def test_save_load_round_trip(checkpoint_dir, hf_processor_cls, images, tmp_path):
    ours = SiglipProcessor.from_pretrained(checkpoint_dir)
    ours.save_pretrained(tmp_path / "ours")
    files = sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert files == ["processor_config.json", "spiece.model", "tokenizer_config.json"]  # what v5 writes
    nested = json.loads((tmp_path / "ours" / "processor_config.json").read_text())
    assert nested["processor_class"] == "SiglipProcessor" and nested["image_processor"]["size"]["height"] == 32
    theirs = _hf(hf_processor_cls, tmp_path / "ours")
    kwargs = {"padding": "max_length", "truncation": True, "return_tensors": "pt"}
    _same(ours(images=images, text=TEXTS, **kwargs), theirs(images=images, text=TEXTS, **kwargs))
    theirs.save_pretrained(str(tmp_path / "theirs"))
    again = SiglipProcessor.from_pretrained(tmp_path / "theirs")
    assert again.image_processor.to_dict() == ours.image_processor.to_dict()
    assert again.tokenizer.model_max_length == 16 and again.tokenizer.model_input_names == ["input_ids"]
    _same(again(images=images, text=TEXTS, **kwargs), ours(images=images, text=TEXTS, **kwargs))


def test_to_dict_json_and_saved_files_match_transformers(checkpoint_dir, hf_processor_cls, tmp_path):
    ours, theirs = SiglipProcessor.from_pretrained(checkpoint_dir), _hf(hf_processor_cls, checkpoint_dir)
    # same keys ("image_processor", "processor_class") and values, image_mean/std as tuples in both
    assert list(ours.to_dict()) == list(theirs.to_dict()) == ["image_processor", "processor_class"]
    assert ours.to_dict() == theirs.to_dict()
    assert type(ours.to_dict()["image_processor"]["image_mean"]) is type(theirs.to_dict()["image_processor"][
        "image_mean"])
    assert ours.to_json_string() == theirs.to_json_string()
    ours.to_json_file(tmp_path / "ours.json")
    theirs.to_json_file(str(tmp_path / "theirs.json"))
    assert (tmp_path / "ours.json").read_text() == (tmp_path / "theirs.json").read_text()
    written, expected = ours.save_pretrained(tmp_path / "o"), theirs.save_pretrained(str(tmp_path / "t"))
    # transformers returns [processor_config.json]; ours lists it first, then the tokenizer's files
    assert [os.path.basename(p) for p in expected] == ["processor_config.json"]
    assert os.path.basename(written[0]) == "processor_config.json"
    assert sorted(os.path.basename(p) for p in written) == sorted(p.name for p in (tmp_path / "o").iterdir())
    assert open(written[0]).read() == open(expected[0]).read() == ours.to_json_string()
    with pytest.raises(TypeError, match="json_file_path must be a path"):
        ours.to_json_file(None)


@pytest.mark.parametrize("defaults", [
    {"max_length": 20, "padding": "max_length"},
    {"max_length": 3, "padding": "max_length", "truncation": True},
    {"padding": "longest"},
])
def test_tokenizer_call_defaults_from_pretrained_like_transformers(checkpoint_dir, hf_processor_cls, images,
                                                                  tmp_path, defaults):
    ours = SiglipProcessor.from_pretrained(checkpoint_dir, **defaults)
    theirs = hf_processor_cls[0].from_pretrained(str(checkpoint_dir), **defaults)
    theirs.image_processor = hf_processor_cls[1].from_pretrained(str(checkpoint_dir))  # the PIL backend, as _hf
    assert theirs.tokenizer.init_kwargs["padding"] == defaults["padding"]
    texts = ["a cat", "zebra " * 8]
    _same(ours(images=images, text=texts, return_tensors="pt"), theirs(images=images, text=texts, return_tensors="pt"))
    for call in ({"padding": "longest"}, {"max_length": 5, "truncation": True}):  # the call's own options win
        _same(ours(text=texts, return_tensors="pt", **call), theirs(text=texts, return_tensors="pt", **call))
    # saved in tokenizer_config.json: each side's reload applies them again
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(str(tmp_path / "theirs"))
    again, back = SiglipProcessor.from_pretrained(tmp_path / "theirs"), _hf(hf_processor_cls, tmp_path / "ours")
    _same(again(text=texts, return_tensors="pt"), theirs(text=texts, return_tensors="pt"))
    _same(back(text=texts, return_tensors="pt"), theirs(text=texts, return_tensors="pt"))


def test_round_trip_without_transformers(checkpoint_dir, tmp_path, images):
    ours = SiglipProcessor.from_pretrained(checkpoint_dir)
    ours.save_pretrained(tmp_path)
    again = SiglipProcessor.from_pretrained(tmp_path)
    assert isinstance(again.tokenizer, tokenization.SiglipTokenizer)
    assert isinstance(again.image_processor, image_processing.SiglipImageProcessor)
    a, b = ours(images=images, text=TEXTS, return_tensors="np"), again(images=images, text=TEXTS, return_tensors="np")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert ours.decode(a["input_ids"][0], skip_special_tokens=True) == "a photo of a cat"


# ---------------------------------------------------------------------------------------------------------------
# Issue 14: the processor surface (model_input_names, decode, pairs, overrides); issue 13: clear errors
# ---------------------------------------------------------------------------------------------------------------


def test_surface_matches_transformers(checkpoint_dir, hf_processor_cls, images):
    ours, theirs = SiglipProcessor.from_pretrained(checkpoint_dir), _hf(hf_processor_cls, checkpoint_dir)
    assert ours.model_input_names == theirs.model_input_names == ["pixel_values", "input_ids"]
    assert isinstance(ours.tokenizer, tokenization.SiglipTokenizer)
    assert isinstance(ours.image_processor, image_processing.SiglipImageProcessor)
    assert ours.attributes == ["image_processor", "tokenizer"]
    ids = theirs(text=TEXTS, padding="max_length", truncation=True)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == theirs.batch_decode(ids, skip_special_tokens=skip)
        assert ours.decode(ids[1], skip_special_tokens=skip) == theirs.decode(ids[1], skip_special_tokens=skip)
    assert ours.batch_decode(torch.tensor(ids)) == theirs.batch_decode(ids)
    # text pairs and the tokenizer's extra outputs go through, as in transformers
    kwargs = {"padding": "max_length", "truncation": True, "return_tensors": "pt", "return_token_type_ids": True,
              "return_special_tokens_mask": True}
    _same(ours(text=["a cat", "zebra " * 9], text_pair=["a dog", "café"], images=images, **kwargs),
          theirs(text=["a cat", "zebra " * 9], text_pair=["a dog", "café"], images=images, **kwargs))
    # from_pretrained overrides reach the part that has them
    for cls in (SiglipProcessor, hf_processor_cls[0]):
        loaded = cls.from_pretrained(str(checkpoint_dir), model_max_length=9, size={"height": 20, "width": 24})
        assert loaded.tokenizer.model_max_length == 9 and loaded.image_processor.size["height"] == 20
    again = SiglipProcessor.from_pretrained(checkpoint_dir, model_max_length=9, size={"height": 20, "width": 24})
    out = again(images=images, text=TEXTS, return_tensors="pt")
    assert out.input_ids.shape == (len(TEXTS), 9) and out.pixel_values.shape == (2, 3, 20, 24)


def test_bad_input_is_named(checkpoint_dir, images, tmp_path):
    ours = SiglipProcessor.from_pretrained(checkpoint_dir)
    cases = [
        (lambda: ours(text=["a", "b"], text_pair=["c"]), ValueError, "same batch size, got 2 texts and 1 pairs"),
        (lambda: ours(text_pair="a dog", images=images), ValueError, "text_pair needs text="),
        (lambda: ours(text=[]), ValueError, "text: got an empty list"),
        (lambda: ours(images=[]), ValueError, "images: got an empty list"),
        (lambda: ours(text=["a", None]), TypeError, r"text\[1\] must be a str"),
        (lambda: ours(text="a", max_length=-2), ValueError, "max_length must be a positive int or None, got -2"),
        (lambda: ours(text="a", text_kwargs=["padding"]), TypeError, "text_kwargs must be a dict, got list"),
        (lambda: ours(text="a", text_kwargs={"sizee": 3}), TypeError, "text_kwargs: unexpected option 'sizee'"),
        (lambda: ours(images=images, images_kwargs={"max_length": 3}), TypeError,
         "images_kwargs: unexpected option 'max_length'"),
        (lambda: ours(images=images, do_resize="yes"), TypeError, "do_resize must be a bool, got str"),
        (lambda: ours(text="a", return_tensors="tf"), ValueError, "return_tensors must be 'pt', 'np' or None"),
        (lambda: SiglipProcessor.from_pretrained(checkpoint_dir, max_lenght=3), TypeError,
         "unexpected option 'max_lenght'"),
        (lambda: SiglipProcessor(ours.tokenizer, ours.image_processor), TypeError,
         "image_processor must be a SiglipImageProcessor, got SiglipTokenizer"),
        (lambda: ours.save_pretrained(3), TypeError, "save_directory must be a str or os.PathLike, got int"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    (tmp_path / "spiece.model").write_bytes(b"")
    (tmp_path / "preprocessor_config.json").write_text((checkpoint_dir / "preprocessor_config.json").read_text())
    with pytest.raises(ValueError, match=r"spiece\.model' is empty"):
        SiglipProcessor.from_pretrained(tmp_path)


def test_round_trips_with_added_tokens_and_pickle(checkpoint_dir, hf_processor_cls, images, tmp_path):
    """A processor whose tokenizer has added tokens and whose image processor is customised: saved here and loaded
    by transformers, saved there and loaded here, and pickled (DataLoader workers) — the same outputs each time."""
    ours = SiglipProcessor.from_pretrained(checkpoint_dir, size={"height": 24, "width": 20}, model_max_length=12)
    ours.tokenizer.add_tokens(["newtok"])
    ours.tokenizer.add_special_tokens({"extra_special_tokens": ["<sp>"]})
    texts = ["a newtok cat <sp> dog", "café newtok", "<sp>"]
    kwargs = {"padding": "max_length", "truncation": True, "return_tensors": "pt"}
    expected = ours(images=images, text=texts, **kwargs)
    ours.save_pretrained(tmp_path / "ours")
    processor_cls, pil_cls = hf_processor_cls
    theirs = processor_cls.from_pretrained(str(tmp_path / "ours"))
    theirs.image_processor = pil_cls.from_dict(json.loads(
        (tmp_path / "ours" / "processor_config.json").read_text())["image_processor"])
    _same(theirs(images=images, text=texts, **kwargs), expected)
    assert len(theirs.tokenizer) == len(ours.tokenizer)
    theirs.save_pretrained(str(tmp_path / "theirs"))
    _same(SiglipProcessor.from_pretrained(tmp_path / "theirs")(images=images, text=texts, **kwargs), expected)
    _same(pickle.loads(pickle.dumps(ours))(images=images, text=texts, **kwargs), expected)


def test_subclass_extension_points(checkpoint_dir, images, tmp_path):
    """What a SigLIP 2-style processor built on this one sets (tokenizer_class, image_processor_classes,
    processor_class, text_defaults) and overrides (_tokenizer_class_for); the call, option routing, files and
    from_pretrained then follow. (Siglip2Processor is such a subclass.)"""

    class Short(SiglipProcessor):
        processor_class = "ShortProcessor"
        text_defaults = {"padding": "max_length", "truncation": True, "max_length": 8}

        @classmethod
        def _tokenizer_class_for(cls, directory, lowercase):
            return tokenization.SiglipTokenizer

    proc = Short.from_pretrained(checkpoint_dir)
    out = proc(text=TEXTS, images=images, return_tensors="pt")
    assert out["input_ids"].shape == (len(TEXTS), 8) and out["pixel_values"].shape == (2, 3, 32, 32)
    assert all(len(r) == 4 for r in proc(text=TEXTS, max_length=4)["input_ids"])
    with pytest.raises(TypeError, match="Short got an unexpected option 'colour'"):
        proc(text=TEXTS, colour="red")
    with pytest.raises(TypeError, match="Short.from_pretrained got an unexpected option"):
        Short.from_pretrained(checkpoint_dir, colour="red")
    proc.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "ShortProcessor"
    assert "Short(" in repr(Short.from_pretrained(tmp_path))
    with pytest.raises(ValueError, match="lowercase= picks a Gemma tokenizer"):
        SiglipProcessor.from_pretrained(checkpoint_dir, lowercase=True)
