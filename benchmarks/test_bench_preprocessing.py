"""Preprocessing throughput: siglip_fast's tokenizer and image processor vs transformers' (CPU work, no GPU).

- tokenizer: a batch of 1024 captions, padding="max_length" + truncation, return_tensors="pt" -> texts/s;
- image processor: 64 RGB images 640x480 -> 224x224 pixel_values -> img/s (also the uint8 output).
`--bench-size small` uses 256 texts and 16 images. The outputs are checked equal to transformers' (the serial and
uint8 image outputs to the default one) before anything is timed.
"""

import io
import random

import numpy as np
import PIL.Image
import pytest
import sentencepiece as spm
import torch

from benchmarks._common import time_ms
from siglip_fast.image_processing import SiglipImageProcessor
from siglip_fast.tokenization import SiglipTokenizer

SUITE = "preprocessing"
WORDS = ("a photo of the cat dog this is an image small large red blue green on in with two three people man woman "
         "car street tree house beach sunset mountain river city night bird flying over water sitting standing "
         "table food plate bowl pizza cake close-up view black-and-white painting drawing, vintage! it's").split()


def _transformers():
    try:
        import transformers
        from google import protobuf  # noqa: F401 - transformers' SiglipTokenizer needs it
    except ImportError:
        return None
    return transformers


def _timing(bench_size):
    return {"warmup": 1, "rep": 3} if bench_size == "small" else {"warmup": 2, "rep": 10}


@pytest.fixture(scope="module")
def spiece_file(tmp_path_factory):
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) for _ in range(5000)]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buffer, model_type="unigram",
                                   vocab_size=400, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
                                   minloglevel=2)
    path = tmp_path_factory.mktemp("bench-spiece") / "spiece.model"
    path.write_bytes(buffer.getvalue())
    return str(path)


def test_bench_tokenizer(benchmark, bench_size, report, spiece_file):
    n = 256 if bench_size == "small" else 1024
    rng = random.Random(1)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))).capitalize() + "." for _ in range(n)]
    kwargs = {"padding": "max_length", "truncation": True, "return_tensors": "pt"}
    ours = SiglipTokenizer(spiece_file)
    run = lambda: ours(texts, **kwargs)
    ids = run()["input_ids"]  # checked before anything is timed
    assert ids.shape == (n, 64)
    transformers = _transformers()
    theirs = None if transformers is None else transformers.SiglipTokenizer(spiece_file)
    if theirs is not None:
        assert torch.equal(theirs(texts, **kwargs)["input_ids"], ids)
    benchmark.extra_info.update(impl="siglip_fast")
    benchmark(run)
    case = f"tokenize {n} texts (max_length 64)"
    cpu = torch.device("cpu")
    ms = time_ms(run, cpu, **_timing(bench_size))
    if theirs is None:
        report(SUITE, case, "siglip_fast", ms=ms, texts_per_s=n / ms * 1e3)
        pytest.skip("transformers (with protobuf) not installed: no baseline")
    ref_ms = time_ms(lambda: theirs(texts, **kwargs), cpu, **_timing(bench_size))
    report(SUITE, case, "transformers", ms=ref_ms, texts_per_s=n / ref_ms * 1e3, ratio=1.0)
    report(SUITE, case, "siglip_fast", ms=ms, texts_per_s=n / ms * 1e3, ratio=ref_ms / ms)

def test_bench_image_processor(benchmark, bench_size, report):
    n = 16 if bench_size == "small" else 64
    g = np.random.default_rng(2)
    images = [PIL.Image.fromarray(g.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]
    ours = SiglipImageProcessor()
    run = lambda: ours(images, return_tensors="pt")
    pixels = run()["pixel_values"]  # checked before anything is timed
    assert pixels.shape == (n, 3, 224, 224)
    transformers = _transformers()
    theirs = None if transformers is None else transformers.SiglipImageProcessorPil()
    if theirs is not None:
        assert torch.equal(theirs(images, return_tensors="pt")["pixel_values"], pixels)
    serial = ours(images, return_tensors="pt", num_workers=1)["pixel_values"]
    raw = ours(images, return_tensors="pt", return_uint8=True)["pixel_values"]
    assert torch.equal(serial, pixels)
    # SigLIP's normalisation of the uint8 pixels (rescale then normalise: within fp32 rounding of (x - 127.5) / 127.5)
    assert ((raw.float() - 127.5) / 127.5 - pixels).abs().max().item() <= 1e-6
    benchmark.extra_info.update(impl="siglip_fast")
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    case = f"{n} images 640x480 -> 224"
    cpu = torch.device("cpu")
    timing = _timing(bench_size)
    ms = time_ms(run, cpu, **timing)
    ms_serial = time_ms(lambda: ours(images, return_tensors="pt", num_workers=1), cpu, **timing)
    ms_u8 = time_ms(lambda: ours(images, return_tensors="pt", return_uint8=True), cpu, **timing)
    ref_ms = None
    if theirs is not None:
        ref_ms = time_ms(lambda: theirs(images, return_tensors="pt"), cpu, **timing)
        report(SUITE, case, "transformers (PIL backend)", ms=ref_ms, img_per_s=n / ref_ms * 1e3, ratio=1.0)
    for impl, t in (("siglip_fast", ms), ("siglip_fast 1 thread", ms_serial), ("siglip_fast uint8", ms_u8)):
        report(SUITE, case, impl, ms=t, img_per_s=n / t * 1e3, ratio=None if ref_ms is None else ref_ms / t)
    if theirs is None:
        pytest.skip("transformers not installed: no baseline")
