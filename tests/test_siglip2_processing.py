"""SigLIP 2 preprocessing against transformers 5.24: the Gemma tokenizer (a sentencepiece model trained here in
Gemma's layout), the NaFlex image processor (images of several aspect ratios), the processor, a fixed-resolution
SigLIP 2 directory loading into SiglipModel, the named SigLIP 2 shapes and the model_type dispatch."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import PIL.Image
import pytest
import sentencepiece as spm
import torch

import siglip_fast as sf
from siglip_fast.variants import SIGLIP2_VARIANTS, config_for, naflex_vision_flops
from tests._tiny import randomize_

transformers = pytest.importorskip("transformers")

CORPUS = ["A photo of a cat.", "Two dogs playing in the snow!", "the quick brown fox jumps over the lazy dog 12345",
          "Café au lait, naïve résumé — 東京 tower", "a  double  space\tand tab", "UPPER lower MiXeD 2025",
          "an image of a red car parked near the river", "Ein Foto von einem Hund"]
TEXTS = ["A photo of a cat.", "  leading spaces", "trailing  ", "Café 東京 🙂 x", "hello <mask> world", "12345 abc", "",
         "<eos> inside", "a\nb", "▁literal", "<bos>x", "x<pad><pad>y<unk>", "ΣΑΣ İstanbul ẞ", "ÀÉÎ ÕÜ", "A" * 80,
         "a much longer text that goes on and on and on for quite a while, longer than the max length"]
# SigLIP 2's tokenizer_config.json settings (no BOS, EOS appended, right padding, 64 tokens)
SIGLIP2_TOKENIZER_CONFIG = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": True,
                            "padding_side": "right", "model_max_length": 64}
TOKENIZER_CONFIGS = {"siglip2": SIGLIP2_TOKENIZER_CONFIG, "class_defaults": {"tokenizer_class": "GemmaTokenizer"},
                     "bos_and_eos": {"add_bos_token": True, "add_eos_token": True, "model_max_length": 16}}


def assert_same_text_encoding(ours, theirs, texts) -> None:
    """Each text: the same ids, tokens and decoding (with and without special tokens) as transformers'."""
    for text in texts:
        assert ours(text)["input_ids"] == theirs(text)["input_ids"], text
        assert ours.tokenize(text) == theirs.tokenize(text), text
        ids = theirs(text)["input_ids"]
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), text

@pytest.fixture(scope="module")
def gemma_model(tmp_path_factory) -> bytes:
    """A sentencepiece BPE model in Gemma's layout: <pad>=0, <eos>=1, <bos>=2, <unk>=3, byte fallback, no dummy
    prefix, no normalisation, digits split, user-defined pieces."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 40), model_writer=buf, vocab_size=400, model_type="bpe", pad_id=0, eos_id=1,
        bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        byte_fallback=True, add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, allow_whitespace_only_pieces=True, user_defined_symbols=["<mask>", "<start_of_turn>"],
        minloglevel=2)
    return buf.getvalue()


def _tokenizer_dir(path, model: bytes, config: dict):
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.model").write_bytes(model)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("config_name", sorted(TOKENIZER_CONFIGS))
@pytest.mark.parametrize("lower", [False, True], ids=["GemmaTokenizer", "Siglip2Tokenizer"])

def test_tokenizer_ids_match_transformers(gemma_model, tmp_path, config_name, lower):
    d = _tokenizer_dir(tmp_path, gemma_model, TOKENIZER_CONFIGS[config_name])
    theirs = (transformers.Siglip2Tokenizer if lower else transformers.GemmaTokenizer).from_pretrained(d)
    ours = (sf.Siglip2Tokenizer if lower else sf.GemmaTokenizer).from_pretrained(d)
    assert ours.padding_side == theirs.padding_side
    for kw in [{}, dict(padding="max_length", max_length=12, truncation=True), dict(padding=True),
               dict(padding="longest", truncation=True, max_length=5, padding_side="left")]:
        a, b = theirs(TEXTS, **kw), ours(TEXTS, **kw)
        assert b["input_ids"] == a["input_ids"], kw
        assert b["attention_mask"] == a["attention_mask"], kw
    assert_same_text_encoding(ours, theirs, TEXTS)
    enc = ours(TEXTS[:3], padding="max_length", max_length=10, truncation=True, return_tensors="pt")
    assert enc.input_ids.shape == (3, 10) and enc.input_ids.dtype == torch.long


def test_lowercasing_is_per_character_like_tokenizers(gemma_model, tmp_path):
    d = _tokenizer_dir(tmp_path, gemma_model, SIGLIP2_TOKENIZER_CONFIG)
    ours = sf.Siglip2Tokenizer.from_pretrained(d)
    assert ours("ΣΑΣ")["input_ids"] != sf.Siglip2Tokenizer.from_pretrained(d)("σας")["input_ids"]  # no final sigma
    assert ours("A Photo")["input_ids"] == ours("a photo")["input_ids"]
    assert sf.GemmaTokenizer.from_pretrained(d)("A Photo")["input_ids"] != ours("a photo")["input_ids"]


def test_known_difference_uppercase_spelling_of_an_added_token(gemma_model, tmp_path):
    """Documented: transformers' Siglip2Tokenizer BPE-encodes "<START_OF_TURN>" lowercased character by character,
    while sentencepiece matches the lowercased user-defined piece. Text never contains such strings in practice."""
    d = _tokenizer_dir(tmp_path, gemma_model, SIGLIP2_TOKENIZER_CONFIG)
    text = "<START_OF_TURN>"
    assert sf.Siglip2Tokenizer.from_pretrained(d)(text)["input_ids"] != \
        transformers.Siglip2Tokenizer.from_pretrained(d)(text)["input_ids"]


def test_tokenizer_save_here_load_in_transformers(gemma_model, tmp_path):
    src = _tokenizer_dir(tmp_path / "src", gemma_model, SIGLIP2_TOKENIZER_CONFIG)
    ours = sf.Siglip2Tokenizer.from_pretrained(src)
    ours.save_pretrained(tmp_path / "out")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert type(theirs).__name__ == "Siglip2Tokenizer"
    kw = dict(padding="max_length", max_length=64, truncation=True)
    assert theirs(TEXTS, **kw)["input_ids"] == ours(TEXTS, **kw)["input_ids"]
    again = sf.Siglip2Tokenizer.from_pretrained(tmp_path / "out")
    assert again(TEXTS, **kw)["input_ids"] == ours(TEXTS, **kw)["input_ids"]


def test_tokenizer_bad_input(gemma_model, tmp_path):
    d = _tokenizer_dir(tmp_path, gemma_model, SIGLIP2_TOKENIZER_CONFIG)
    tok = sf.GemmaTokenizer.from_pretrained(d)
    with pytest.raises(TypeError, match="text\\[1\\] must be a str"):
        tok(["a", 3])
    with pytest.raises(ValueError, match="padding must be"):
        tok("a", padding="sideways")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer.model"):
        sf.GemmaTokenizer.from_pretrained(tmp_path / "empty")


# -- images ---------------------------------------------------------------------------------------------------------

SIZES = [(37, 91), (200, 50), (64, 64), (13, 300), (500, 333), (16, 16), (1, 1)]


def _images(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


@pytest.mark.parametrize("options", [{}, dict(max_num_patches=64, patch_size=8), dict(max_num_patches=1024),
                                     dict(resample=3, max_num_patches=50, patch_size=14)])
def test_image_processor_bitwise_equal_to_transformers(options):
    images = _images()
    theirs = transformers.Siglip2ImageProcessorPil(**options)(images, return_tensors="pt")
    ours = sf.Siglip2ImageProcessor(**options)(images, return_tensors="pt")
    assert set(ours) == set(theirs) == {"pixel_values", "pixel_attention_mask", "spatial_shapes"}
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
    arrays = [np.asarray(im) for im in images[:-1]]  # numpy HWC input (a 1 x 1 x 3 array reads as CHW, as there)
    ours_np = sf.Siglip2ImageProcessor(**options)(arrays, return_tensors="np")
    assert np.array_equal(ours_np["pixel_values"], theirs["pixel_values"][:-1].numpy())
    listed = sf.Siglip2ImageProcessor(**options)(images)
    assert listed["spatial_shapes"] == [tuple(s) for s in theirs["spatial_shapes"].tolist()]
    assert np.array_equal(listed["pixel_values"][0], theirs["pixel_values"][0].numpy())


def test_image_processor_files_round_trip(tmp_path):
    ours = sf.Siglip2ImageProcessor(max_num_patches=100, patch_size=8)
    ours.save_pretrained(tmp_path)
    theirs = transformers.Siglip2ImageProcessorPil.from_pretrained(tmp_path)
    assert theirs.max_num_patches == 100 and theirs.patch_size == 8
    images = _images(1)
    assert torch.equal(theirs(images, return_tensors="pt")["pixel_values"],
                       sf.Siglip2ImageProcessor.from_pretrained(tmp_path)(images, return_tensors="pt")["pixel_values"])
    hub = {"do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5] * 3,
           "image_processor_type": "Siglip2ImageProcessorFast", "image_std": [0.5] * 3, "max_num_patches": 256,
           "patch_size": 16, "processor_class": "Siglip2Processor", "resample": 2,
           "rescale_factor": 0.00392156862745098, "default_to_square": True, "do_pad": None}
    assert sf.Siglip2ImageProcessor.from_dict(hub).max_num_patches == 256
    with pytest.raises(ValueError, match="not a SigLIP 2"):
        sf.Siglip2ImageProcessor.from_dict({"image_processor_type": "SiglipImageProcessor"})


def test_image_processor_bad_input():
    proc = sf.Siglip2ImageProcessor()
    with pytest.raises(ValueError, match="max_num_patches must be a positive int"):
        proc(_images()[:1], max_num_patches=0)
    with pytest.raises(ValueError, match="multiples of patch_size"):
        proc(_images()[:1], do_resize=False)
    with pytest.raises(TypeError, match="per-call size=.*does not change"):
        proc(_images()[:1], size={"height": 4, "width": 4})


# -- processor ------------------------------------------------------------------------------------------------------

def test_processor_matches_transformers(gemma_model, tmp_path):
    d = _tokenizer_dir(tmp_path / "tok", gemma_model, SIGLIP2_TOKENIZER_CONFIG)
    theirs = transformers.Siglip2Processor(image_processor=transformers.Siglip2ImageProcessorPil(),
                                           tokenizer=transformers.Siglip2Tokenizer.from_pretrained(d))
    ours = sf.Siglip2Processor(sf.Siglip2ImageProcessor(), sf.Siglip2Tokenizer.from_pretrained(d))
    images = _images()[:3]
    a = theirs(text=TEXTS, images=images, return_tensors="pt")
    b = ours(text=TEXTS, images=images, return_tensors="pt")
    assert set(a) == set(b)
    assert a["input_ids"].shape == (len(TEXTS), 64)  # the 64-token max_length padding with truncation default
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ours.save_pretrained(tmp_path / "saved")
    again = sf.Siglip2Processor.from_pretrained(tmp_path / "saved")
    assert isinstance(again.image_processor, sf.Siglip2ImageProcessor)
    assert isinstance(again.tokenizer, sf.Siglip2Tokenizer)
    c = again(text=TEXTS, images=images, return_tensors="pt")
    for key in a:
        assert torch.equal(a[key], c[key]), key
    d16 = ours(text=TEXTS, max_length=16, return_tensors="pt")
    assert d16["input_ids"].shape == (len(TEXTS), 16)


def test_fixed_resolution_siglip2_directory(gemma_model, tmp_path):
    """A fixed-resolution SigLIP 2 checkpoint (model_type "siglip", Gemma tokenizer files) loads into SiglipModel
    with a working processor; ids, pixels and logits as transformers' pipeline on the same directory."""
    torch.manual_seed(0)
    config = transformers.SiglipConfig(
        text_config=dict(vocab_size=400, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                           image_size=20, patch_size=5))
    hf_model = randomize_(transformers.SiglipModel(config)).eval()
    hf_model.save_pretrained(tmp_path)
    _tokenizer_dir(tmp_path, gemma_model, SIGLIP2_TOKENIZER_CONFIG)
    transformers.SiglipImageProcessorPil(size={"height": 20, "width": 20}).save_pretrained(tmp_path)

    model = sf.load_model(tmp_path, backend="eager")
    assert type(model) is sf.SiglipModel
    processor = sf.load_processor(tmp_path)
    assert isinstance(processor, sf.Siglip2Processor)
    assert type(processor.tokenizer) is sf.GemmaTokenizer  # as transformers' AutoTokenizer: no lowercasing here
    assert type(processor.image_processor) is sf.SiglipImageProcessor
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(hf_tok).__name__ == "GemmaTokenizer"
    hf_images = transformers.SiglipImageProcessorPil.from_pretrained(tmp_path)

    texts, images = [t.lower() for t in TEXTS[:4]], _images()[:4]
    ours = processor(text=texts, images=images, return_tensors="pt")
    ids = hf_tok(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    pixels = hf_images(images, return_tensors="pt")["pixel_values"]
    assert torch.equal(ours["input_ids"], ids["input_ids"]) and torch.equal(ours["pixel_values"], pixels)
    with torch.no_grad():
        o = model(input_ids=ours["input_ids"], pixel_values=ours["pixel_values"])
        t = hf_model(input_ids=ids["input_ids"], pixel_values=pixels)
    assert (o.logits_per_image - t.logits_per_image).abs().max().item() <= 1e-5
    lowered = sf.Siglip2Processor.from_pretrained(tmp_path, lowercase=True)
    assert lowered(text=["A Cat"])["input_ids"] == processor(text=["a cat"])["input_ids"]


def test_load_model_and_processor_dispatch(gemma_model, tmp_path):
    config = transformers.Siglip2Config(
        text_config=dict(vocab_size=400, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                           num_patches=16, patch_size=4))
    transformers.Siglip2Model(config).save_pretrained(tmp_path)
    _tokenizer_dir(tmp_path, gemma_model, {"tokenizer_class": "GemmaTokenizer", "add_eos_token": True})
    sf.Siglip2ImageProcessor(patch_size=4, max_num_patches=16).save_pretrained(tmp_path)
    assert type(sf.load_model(tmp_path)) is sf.Siglip2Model
    processor = sf.load_processor(tmp_path)
    assert type(processor.tokenizer) is sf.Siglip2Tokenizer  # model_type siglip2 overrides the hub class name
    assert isinstance(processor.image_processor, sf.Siglip2ImageProcessor)
    out = processor(text=["a cat"], images=_images()[:2], return_tensors="pt")
    with torch.no_grad():
        sf.load_model(tmp_path, backend="eager")(**out)
    shutil.rmtree(tmp_path / "sub", ignore_errors=True)
    with pytest.raises(ValueError, match="model_type"):
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "config.json").write_text(json.dumps({"model_type": "bert"}))
        sf.load_model(tmp_path / "sub")


# -- named shapes ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SIGLIP2_VARIANTS))
def test_siglip2_named_shapes_build_the_same_model_as_transformers(name):
    config = config_for(name)
    assert config_for("google/" + name) == config
    naflex = name.endswith("-naflex")
    assert type(config) is (sf.Siglip2Config if naflex else sf.SiglipConfig)
    assert config.text_config.vocab_size == 256000 and config.text_config.max_position_embeddings == 64
    hf_config = (transformers.Siglip2Config if naflex else transformers.SiglipConfig)(
        text_config=config.text_config.to_dict(), vision_config=config.vision_config.to_dict())
    with torch.device("meta"):
        ours = (sf.Siglip2Model if naflex else sf.SiglipModel)(config)
        theirs = (transformers.Siglip2Model if naflex else transformers.SiglipModel)(hf_config)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items() if not k.endswith("position_ids")}


def test_siglip2_shape_details():
    g = config_for("siglip2-giant-opt-patch16-384")
    assert (g.vision_config.hidden_size, g.vision_config.num_hidden_layers, g.vision_config.intermediate_size) == \
        (1536, 40, 6144)
    assert (g.text_config.hidden_size, g.text_config.projection_size) == (1152, 1536)
    naflex = config_for("siglip2-so400m-patch16-naflex").vision_config
    assert (naflex.num_patches, naflex.patch_size, naflex.head_dim) == (256, 16, 72)
    assert config_for("siglip2-so400m-patch14-384").vision_config.image_size == 384
    n = 256
    d, mlp, layers = 1152, 4304, 27
    encoder = layers * (2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 4 * n * d * mlp)
    head = 2 * d * d + 4 * n * d * d + 4 * n * d + 2 * d * d + 4 * d * mlp
    assert naflex_vision_flops(naflex, n) == 2 * n * 768 * d + encoder + head


def test_matmul_flops_of_a_naflex_config():
    config = config_for("siglip2-base-patch16-naflex")
    vc = config.vision_config
    assert sf.variants.matmul_flops(vc, images=3) == 3 * naflex_vision_flops(vc, 256)
    dual = sf.variants.matmul_flops(config, images=2, texts=2, num_patches=1024, backward=True)
    text = sf.variants.text_flops(config.text_config)
    assert dual == 3 * (2 * naflex_vision_flops(vc, 1024) + 2 * text + 2 * 2 * 2 * 768)


# -- the SiglipTokenizer surface on the Gemma tokenizers (they are SiglipTokenizer subclasses) -----------------------

PAIRS = [("A photo of a cat.", "Two dogs"), ("hello <mask> world", "x<pad>y"), ("", "only the pair"),
         ("a much longer text that goes on and on and on for a while", "and a pair that is long as well, long")]


@pytest.mark.parametrize("config_name", ["siglip2", "bos_and_eos"])
@pytest.mark.parametrize("lower", [False, True], ids=["GemmaTokenizer", "Siglip2Tokenizer"])
def test_tokenizer_pairs_masks_and_pad_match_transformers(gemma_model, tmp_path, config_name, lower):
    d = _tokenizer_dir(tmp_path, gemma_model, TOKENIZER_CONFIGS[config_name])
    theirs = (transformers.Siglip2Tokenizer if lower else transformers.GemmaTokenizer).from_pretrained(d)
    ours = (sf.Siglip2Tokenizer if lower else sf.GemmaTokenizer).from_pretrained(d)
    assert isinstance(ours, sf.SiglipTokenizer)
    a_texts, b_texts = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    for kw in [{}, dict(return_token_type_ids=True, return_special_tokens_mask=True),
               dict(padding="max_length", max_length=14, truncation=True, return_token_type_ids=True),
               dict(padding=True, truncation="only_second", max_length=48),
               dict(padding="longest", truncation="longest_first", max_length=9, padding_side="left",
                    return_special_tokens_mask=True),
               dict(add_special_tokens=False, return_token_type_ids=True)]:
        a, b = theirs(a_texts, b_texts, **kw), ours(a_texts, b_texts, **kw)
        assert set(b) == set(a), kw
        for key in a:
            assert b[key] == a[key], (key, kw)
        assert ours(PAIRS, **kw)["input_ids"] == a["input_ids"], kw  # a batch of (text, pair) tuples
        one_a, one_b = theirs(*PAIRS[0], **kw), ours(*PAIRS[0], **kw)
        assert {k: one_b[k] for k in one_a} == dict(one_a), kw
    ids = theirs(TEXTS)["input_ids"]
    for kw in [dict(padding=True), dict(padding="max_length", max_length=70), dict(padding=True, pad_to_multiple_of=8),
               dict(padding=True, padding_side="left", return_tensors="pt")]:
        a = theirs.pad({"input_ids": ids}, **kw)
        b = ours.pad({"input_ids": ids}, **kw)
        for key in a:
            assert (torch.equal(b[key], a[key]) if kw.get("return_tensors") else b[key] == a[key]), (key, kw)
    for first, second in [(TEXTS[0], None), *PAIRS]:  # (transformers' Gemma implements these through its template)
        expected = theirs(first, second, return_special_tokens_mask=True)
        a, b = (None if t is None else theirs(t, add_special_tokens=False)["input_ids"] for t in (first, second))
        assert ours.build_inputs_with_special_tokens(a, b) == expected["input_ids"]
        assert ours.get_special_tokens_mask(a, b) == expected["special_tokens_mask"]
    for row in ids:
        assert ours.get_special_tokens_mask(row, already_has_special_tokens=True) == \
            theirs.get_special_tokens_mask(row, already_has_special_tokens=True)
    for pair in (False, True):
        assert ours.num_special_tokens_to_add(pair) == theirs.num_special_tokens_to_add(pair)
    assert len(ours) == len(theirs) and ours.get_vocab() == theirs.get_vocab()
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert ours.all_special_tokens == theirs.all_special_tokens and ours.all_special_ids == theirs.all_special_ids
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "mask_token_id"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.convert_ids_to_tokens(ids[3]) == theirs.convert_ids_to_tokens(ids[3])
    assert ours.convert_tokens_to_ids(theirs.convert_ids_to_tokens(ids[3])) == ids[3]
    assert ours.batch_decode(ids, skip_special_tokens=True) == theirs.batch_decode(ids, skip_special_tokens=True)
    assert ours.tokenize(*PAIRS[0]) == theirs.tokenize(*PAIRS[0])


@pytest.mark.parametrize("lower", [False, True], ids=["GemmaTokenizer", "Siglip2Tokenizer"])
def test_tokenizer_added_tokens_match_transformers(gemma_model, tmp_path, lower):
    d = _tokenizer_dir(tmp_path, gemma_model, SIGLIP2_TOKENIZER_CONFIG)
    theirs = (transformers.Siglip2Tokenizer if lower else transformers.GemmaTokenizer).from_pretrained(d)
    ours = (sf.Siglip2Tokenizer if lower else sf.GemmaTokenizer).from_pretrained(d)
    assert ours.add_tokens(["<new_one>", "zebra"]) == theirs.add_tokens(["<new_one>", "zebra"])
    assert ours.add_special_tokens({"extra_special_tokens": ["<img>"]}) == \
        theirs.add_special_tokens({"extra_special_tokens": ["<img>"]})
    assert len(ours) == len(theirs) and ours.get_added_vocab() == theirs.get_added_vocab()
    texts = ["a <new_one> and a zebra", "<img> the image", "plain text", "<img><new_one>"]
    kw = dict(padding="max_length", max_length=20, truncation=True)
    assert ours(texts, **kw)["input_ids"] == theirs(texts, **kw)["input_ids"]
    ids = theirs(texts)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == theirs.batch_decode(ids, skip_special_tokens=skip)
    assert ours.extra_special_tokens == theirs.extra_special_tokens == ["<img>"]
    ours.save_pretrained(tmp_path / "saved")
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert type(again).__name__ == type(theirs).__name__
    assert again(texts, **kw)["input_ids"] == theirs(texts, **kw)["input_ids"]
    assert type(ours).from_pretrained(tmp_path / "saved")(texts, **kw)["input_ids"] == theirs(texts, **kw)["input_ids"]


def test_tokenizer_control_pieces_are_special_tokens(tmp_path):
    """The proto's control pieces are special added tokens (skipped by decode(skip_special_tokens=True)), its
    user-defined ones plain added tokens, as transformers converts them."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 40), model_writer=buf, vocab_size=400, model_type="bpe", pad_id=0, eos_id=1,
        bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        byte_fallback=True, add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        control_symbols=["<ctrl>"], user_defined_symbols=["<mask>", "<user>"], minloglevel=2)
    d = _tokenizer_dir(tmp_path, buf.getvalue(), SIGLIP2_TOKENIZER_CONFIG)
    theirs, ours = transformers.GemmaTokenizer.from_pretrained(d), sf.GemmaTokenizer.from_pretrained(d)
    texts = ["a <ctrl> b <user> c", "<ctrl><user>"]
    ids = theirs(texts)["input_ids"]
    assert ours(texts)["input_ids"] == ids
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == theirs.batch_decode(ids, skip_special_tokens=skip)


# -- the SiglipImageProcessor surface on Siglip2ImageProcessor ------------------------------------------------------

@pytest.mark.parametrize("options", [{}, dict(max_num_patches=64, patch_size=8, do_convert_rgb=True),
                                     dict(image_mean=[0.1, 0.2, 0.3], image_std=0.25, resample=3)])
def test_image_processor_dict_and_json_match_transformers(options, tmp_path):
    ours, theirs = sf.Siglip2ImageProcessor(**options), transformers.Siglip2ImageProcessorPil(**options)
    assert isinstance(ours, sf.SiglipImageProcessor)
    mine = ours.to_dict()
    their = {k: v for k, v in theirs.to_dict().items() if k in mine}
    assert {k: mine[k] for k in their} == their
    assert mine["image_processor_type"] == "Siglip2ImageProcessor"
    again = sf.Siglip2ImageProcessor.from_dict(json.loads(ours.to_json_string()))
    assert again.to_dict() == mine
    ours.to_json_file(tmp_path / "preprocessor_config.json")
    loaded = transformers.Siglip2ImageProcessorPil.from_pretrained(tmp_path)
    images = _images(2)
    a, b = loaded(images, return_tensors="pt"), sf.Siglip2ImageProcessor.from_pretrained(tmp_path)(images,
                                                                                                   return_tensors="pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    over = sf.Siglip2ImageProcessor.from_pretrained(tmp_path, max_num_patches=32)
    assert over.max_num_patches == 32 and over(images, return_tensors="pt")["pixel_values"].shape[1] == 32


def test_image_processor_uint8_patches_and_grayscale():
    """return_uint8 (the resized pixels, patchified) and RGB conversion come from SiglipImageProcessor."""
    images = _images(3)[:3]
    proc = sf.Siglip2ImageProcessor(max_num_patches=64, patch_size=8)
    raw = proc(images, return_uint8=True, return_tensors="np")
    full = proc(images, return_tensors="np")
    assert raw["pixel_values"].dtype == np.uint8
    mask = full["pixel_attention_mask"].astype(bool)
    expected = (raw["pixel_values"].astype(np.float64) / 255).astype(np.float32)
    assert np.allclose((expected[mask] - 0.5) / 0.5, full["pixel_values"][mask], atol=1e-6)
    gray = PIL.Image.fromarray(np.asarray(images[0])[..., 0])
    theirs = transformers.Siglip2ImageProcessorPil(max_num_patches=64, patch_size=8, do_convert_rgb=True)
    ours = sf.Siglip2ImageProcessor(max_num_patches=64, patch_size=8, do_convert_rgb=True)
    assert torch.equal(ours(gray, return_tensors="pt")["pixel_values"],
                       theirs(gray, return_tensors="pt")["pixel_values"])


# -- the SiglipProcessor surface on Siglip2Processor; SiglipProcessor on a fixed-resolution SigLIP 2 directory -------

def test_processor_surface_matches_transformers(gemma_model, tmp_path):
    d = _tokenizer_dir(tmp_path / "tok", gemma_model, SIGLIP2_TOKENIZER_CONFIG)
    theirs = transformers.Siglip2Processor(image_processor=transformers.Siglip2ImageProcessorPil(),
                                           tokenizer=transformers.Siglip2Tokenizer.from_pretrained(d))
    ours = sf.Siglip2Processor(sf.Siglip2ImageProcessor(), sf.Siglip2Tokenizer.from_pretrained(d))
    assert isinstance(ours, sf.SiglipProcessor)
    assert ours.model_input_names == theirs.model_input_names
    a_texts, b_texts = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    for kw in [{}, dict(padding=True), dict(max_length=10, return_token_type_ids=True),
               dict(text_kwargs=dict(padding="longest", truncation=False))]:
        a = theirs(text=a_texts, text_pair=b_texts, **kw)
        b = ours(text=a_texts, text_pair=b_texts, **kw)
        assert dict(b) == dict(a), kw
    ids = theirs(text=TEXTS)["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=True) == theirs.batch_decode(ids, skip_special_tokens=True)
    with pytest.raises(TypeError, match="Siglip2Processor got an unexpected option 'colour'"):
        ours(text=["a"], colour="red")
    ours.save_pretrained(tmp_path / "saved")
    loaded = transformers.AutoProcessor.from_pretrained(tmp_path / "saved")
    assert type(loaded).__name__ == "Siglip2Processor"
    images = _images()[:2]
    a, b = loaded(text=TEXTS, images=images, return_tensors="pt"), ours(text=TEXTS, images=images, return_tensors="pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    again = sf.Siglip2Processor.from_pretrained(tmp_path / "saved", max_num_patches=64, model_max_length=32)
    assert again.image_processor.max_num_patches == 64 and again.tokenizer.model_max_length == 32
    assert "Siglip2Processor(" in repr(again)


def _fixed_resolution_dir(path, gemma_model, tokenizer_config):
    _tokenizer_dir(path, gemma_model, {**tokenizer_config, "processor_class": "SiglipProcessor"})
    (path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    transformers.SiglipImageProcessorPil(size={"height": 20, "width": 20}).save_pretrained(path)
    return path


@pytest.mark.parametrize("model_max_length", [64, 1000000000000000019884624838656], ids=["64", "unlimited"])
def test_siglip_processor_on_fixed_resolution_siglip2_directory(gemma_model, tmp_path, model_max_length):
    """SiglipProcessor.from_pretrained on a fixed-resolution SigLIP 2 directory (model_type "siglip", Gemma's
    tokenizer.model, no spiece.model): the Gemma tokenizer and SigLIP's image processor, ids and pixels as
    transformers' SiglipProcessor / AutoProcessor there. One difference, as for SigLIP: with no padding argument
    texts are padded to 64 with truncation (transformers pads nothing)."""
    d = _fixed_resolution_dir(tmp_path, gemma_model, {**SIGLIP2_TOKENIZER_CONFIG, "model_max_length": model_max_length})
    ours = sf.SiglipProcessor.from_pretrained(d)
    assert type(ours.tokenizer) is sf.GemmaTokenizer and type(ours.image_processor) is sf.SiglipImageProcessor
    texts, images = [t.lower() for t in TEXTS], _images()[:3]
    for hf in (transformers.SiglipProcessor.from_pretrained(d), transformers.AutoProcessor.from_pretrained(d)):
        assert type(hf).__name__ == "SiglipProcessor" and type(hf.tokenizer).__name__ == "GemmaTokenizer"
        explicit = dict(padding="max_length", max_length=64, truncation=True)
        a = hf(text=texts, images=images, return_tensors="pt", **explicit)
        b = ours(text=texts, images=images, return_tensors="pt")  # the default: 64 tokens, truncated
        assert set(a) == set(b) and b["input_ids"].shape == (len(texts), 64)
        for key in a:
            assert torch.equal(a[key], b[key]), key
        assert ours(text=texts, padding=False)["input_ids"] == hf(text=texts)["input_ids"]
        assert dict(ours(text=texts, padding=True)) == dict(hf(text=texts, padding=True))
    assert sf.SiglipProcessor(sf.SiglipImageProcessor(), ours.tokenizer).tokenizer is ours.tokenizer
    lowered = sf.SiglipProcessor.from_pretrained(d, lowercase=True)
    assert type(lowered.tokenizer) is sf.Siglip2Tokenizer
    assert lowered(text=["A Cat"])["input_ids"] == ours(text=["a cat"])["input_ids"]
    assert type(sf.load_processor(d)) is sf.Siglip2Processor  # the dispatcher's choice for Gemma directories
    ours.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["processor_config.json", "tokenizer.model",
                                                                      "tokenizer_config.json"]
    again = transformers.AutoProcessor.from_pretrained(tmp_path / "saved")
    assert type(again).__name__ == "SiglipProcessor" and type(again.tokenizer).__name__ == "GemmaTokenizer"
    assert again(text=texts, **explicit)["input_ids"] == ours(text=texts)["input_ids"]


@pytest.mark.parametrize("extra", [{}, {"extra_special_tokens": {}}, {"additional_special_tokens": ["<start_of_turn>"]},
                                   {"additional_special_tokens": []}, {"extra_special_tokens": ["<mask>"]},
                                   {"added_tokens_decoder": {"5": {"content": "<start_of_turn>", "special": True}}}],
                         ids=["none", "empty_dict", "listed", "empty_list", "extra_list", "decoder"])
def test_tokenizer_extra_special_tokens_from_the_config_as_transformers(gemma_model, tmp_path, extra):
    """Without a list of extra special tokens in the config transformers takes the proto's control and user-defined
    pieces (added tokens; special: the control ones); with one, the others are not added tokens.

    Known difference: such a left-out user-defined piece is spelled out byte by byte by transformers' BPE, while
    sentencepiece always matches a user-defined piece (a config whose added_tokens_decoder lists the piece makes it an
    added token in both)."""
    d = _tokenizer_dir(tmp_path, gemma_model, {**SIGLIP2_TOKENIZER_CONFIG, **extra})
    theirs, ours = transformers.GemmaTokenizer.from_pretrained(d), sf.GemmaTokenizer.from_pretrained(d)
    assert ours.extra_special_tokens == theirs.extra_special_tokens
    assert ours.all_special_tokens == theirs.all_special_tokens
    texts = ["a <start_of_turn> <mask> b", "x<start_of_turn>y", "<bos>z<eos>"]
    if "<start_of_turn>" not in theirs.get_added_vocab():  # the known difference
        assert ours("<start_of_turn>")["input_ids"] != theirs("<start_of_turn>")["input_ids"]
        texts = ["a <mask> b", "<bos>z<eos>", "<mask><mask>"]
    ids = theirs(texts)["input_ids"]
    assert ours(texts)["input_ids"] == ids
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == theirs.batch_decode(ids, skip_special_tokens=skip)
