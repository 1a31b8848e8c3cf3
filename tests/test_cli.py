"""The command line (`python -m siglip_fast bench|embed|classify`) on a tiny checkpoint saved by the test: a random
SiglipModel plus a SiglipProcessor whose sentencepiece model is trained here. Commands run in-process via main()."""

import io
import json
import os
import random
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import sentencepiece as spm
import torch

from siglip_fast import SiglipConfig, SiglipModel
from siglip_fast import ops as siglip_ops
from siglip_fast.cli import main
from siglip_fast.image_processing import SiglipImageProcessor, load_image
from siglip_fast.processing import SiglipProcessor
from siglip_fast.tokenization import SiglipTokenizer
from tests._tiny import randomize_

MAX_LEN = 12
WORDS = ["cat", "dog", "bird", "photo", "of", "a", "the", "this", "is", "small", "large", "red", "blue", "car",
         "tree", "house", "running", "sitting", "on", "grass"]


def _spiece_proto() -> bytes:
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(500)]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buffer, model_type="unigram", vocab_size=60, pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """config.json + model.safetensors + processor files of a tiny random SigLIP (image 32, patch 8)."""
    directory = tmp_path_factory.mktemp("tiny-siglip")
    tokenizer = SiglipTokenizer(model_proto=_spiece_proto(), model_max_length=MAX_LEN)
    processor = SiglipProcessor(SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    processor.save_pretrained(directory)
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=MAX_LEN),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
    )
    torch.manual_seed(1234)
    randomize_(SiglipModel(config, backend="eager")).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    """A folder: PNG and JPEG images of odd sizes (one grayscale, one in a subfolder), a corrupt .png and a text
    file that the directory walk must ignore."""
    directory = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(directory / "a.png")
    PIL.Image.fromarray(rng.integers(0, 256, (21, 50, 3), dtype=np.uint8)).save(directory / "b.jpg", quality=90)
    (directory / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    PIL.Image.fromarray(rng.integers(0, 256, (33, 33), dtype=np.uint8), mode="L").save(directory / "d_gray.png")
    (directory / "sub").mkdir()
    PIL.Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(directory / "sub" / "e.jpeg")
    (directory / "notes.txt").write_text("not an image")
    return str(directory)


def _reference(checkpoint):
    return SiglipModel.from_pretrained(checkpoint, backend="eager"), SiglipProcessor.from_pretrained(checkpoint)


def _normalize(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).numpy()


def test_embed_images_skips_corrupt_files_and_matches_the_model(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    # batch 2 over 4 readable images with a corrupt one in the middle: a full batch, a skip, a remainder batch
    code = main(["embed", images, "--model", checkpoint, "--out", str(out), "--batch", "2", "--workers", "2",
                 "--backend", "eager", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0
    assert "skipped 2 unreadable or unusable input(s)" in err and "c_broken.png" in err and "notes.txt" in err
    emb = np.load(out)
    listing = json.loads((tmp_path / "emb.json").read_text())
    expected_paths = [os.path.join(images, n) for n in ("a.png", "b.jpg", "d_gray.png")] + [
        os.path.join(images, "sub", "e.jpeg")]
    assert [r["source"] for r in listing["rows"]] == expected_paths
    assert all(r["type"] == "image" for r in listing["rows"])
    # the corrupt image and the text file found in the folder: both reported with their reason
    assert [s["source"] for s in listing["skipped"]] == [os.path.join(images, n) for n in ("c_broken.png",
                                                                                            "notes.txt")]
    assert "could not be decoded" in listing["skipped"][0]["reason"]
    assert "not an image or .tar file" in listing["skipped"][1]["reason"]
    assert not os.path.exists(str(out) + ".parts")  # the working shards are gone once the file is assembled
    assert emb.dtype == np.float32 and emb.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=0, atol=1e-6)

    model, processor = _reference(checkpoint)
    pixels = processor(images=[load_image(p) for p in expected_paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = _normalize(model.get_image_features(pixel_values=pixels).pooler_output)
    # the CLI feeds uint8 pixels (normalised inside the patch embedding), the reference float ones: fp32 rounding
    np.testing.assert_allclose(emb, want, rtol=0, atol=1e-5)


def test_embed_texts_matches_the_model(checkpoint, tmp_path, capsys):
    texts = ["a photo of a cat", "", "This is a RED car!", " ".join(["dog sitting on grass"] * 10)]  # long: truncated
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "texts.npy"
    code = main(["embed", "--texts", str(texts_file), "--model", checkpoint, "--out", str(out), "--batch", "2",
                 "--backend", "eager", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    kept = [t for t in texts if t.strip()]  # blank lines are not texts
    emb = np.load(out)
    listing = json.loads((tmp_path / "texts.json").read_text())
    assert [r["source"] for r in listing["rows"]] == kept and all(r["type"] == "text" for r in listing["rows"])
    assert emb.shape == (3, 32)
    model, processor = _reference(checkpoint)
    enc = processor(text=kept, padding="max_length", truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape == (3, MAX_LEN)
    with torch.no_grad():
        want = _normalize(model.get_text_features(**enc).pooler_output)
    np.testing.assert_allclose(emb, want, rtol=0, atol=1e-6)


def test_embed_images_and_texts_in_one_matrix(checkpoint, images, tmp_path, capsys):
    texts_file = tmp_path / "t.txt"
    texts_file.write_text("a dog\n", encoding="utf-8")
    out = tmp_path / "both.npy"
    code = main(["embed", os.path.join(images, "a.png"), "--texts", str(texts_file), "--model", checkpoint,
                 "--out", str(out), "--backend", "eager", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "both.json").read_text())["rows"]
    assert [r["type"] for r in rows] == ["image", "text"]
    assert np.load(tmp_path / "both.npy").shape == (2, 32)


def test_classify_prints_sigmoid_probabilities_sorted(checkpoint, images, capsys):
    image = os.path.join(images, "b.jpg")
    labels = ["a cat", "a dog", "a red car", "a tree"]
    code = main(["classify", image, "--model", checkpoint, "--labels", "a cat, a dog,a red car,,a tree",
                 "--template", "a photo of {}", "--backend", "eager", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    printed = [line.rsplit(None, 1) for line in out.strip().splitlines()]
    got = {label.strip(): float(p) for label, p in printed}
    assert sorted(got) == sorted(labels)
    probs = [float(p) for _, p in printed]
    assert probs == sorted(probs, reverse=True)

    model, processor = _reference(checkpoint)
    enc = processor(text=[f"a photo of {label}" for label in labels], images=[load_image(image)],
                    padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        want = torch.sigmoid(model(**enc).logits_per_image[0])
    assert len(set(want.tolist())) == len(labels)  # distinct, so the order is meaningful
    for label, p in zip(labels, want.tolist(), strict=True):
        assert abs(got[label] - p) <= 6e-7  # printed with 6 decimals


def test_bench_tiny_checkpoint(checkpoint, capsys):
    code = main(["bench", "--model", checkpoint, "--batch", "2", "--backends", "sdpa,eager", "--device", "cpu",
                 "--reps", "1"])
    out = capsys.readouterr().out
    assert code == 0
    rows = {tuple(line.split()[:2]): line.split() for line in out.splitlines()
            if line.startswith(("vision ", "text "))}
    for tower in ("vision", "text"):
        for impl in ("eager", "sdpa", "transformers-sdpa"):
            assert (tower, impl) in rows
            cells = rows[(tower, impl)]
            assert "Error" not in " ".join(cells)
            max_diff = float(cells[-1])
            assert max_diff <= 1e-5  # checked against the eager reference on the same weights
    assert "Triton kernels need a GPU" not in out  # triton was not asked for


def test_bench_reports_a_failing_backend_and_carries_on(checkpoint, capsys, monkeypatch):
    real_patch_embed, real_layer_norm = siglip_ops.patch_embed, siglip_ops.layer_norm

    def broken(real):
        def op(*args, backend, **kwargs):
            if backend == "sdpa":
                raise RuntimeError("kernel exploded\nsecond line of the error")
            return real(*args, backend=backend, **kwargs)
        return op

    monkeypatch.setattr(siglip_ops, "patch_embed", broken(real_patch_embed))
    monkeypatch.setattr(siglip_ops, "layer_norm", broken(real_layer_norm))
    code = main(["bench", "--model", checkpoint, "--batch", "2", "--backends", "sdpa,eager", "--reps", "1",
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith(("vision ", "text "))]
    sdpa = [line for line in lines if line.split()[1] == "sdpa"]
    eager = [line for line in lines if line.split()[1] == "eager"]
    assert len(sdpa) == 2 and all("RuntimeError: kernel exploded" in line for line in sdpa)
    assert "second line" not in out
    assert len(eager) == 2 and not any("Error" in line for line in eager)


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the Triton kernels need CUDA or the Triton interpreter (TRITON_INTERPRET=1)")
def test_bench_runs_the_fused_path_and_checks_it(checkpoint, capsys):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    code = main(["bench", "--model", checkpoint, "--batch", "1", "--backends", "triton,eager", "--tower", "text",
                 "--reps", "1", "--device", device, "--dtype", "fp32"])
    out = capsys.readouterr().out
    assert code == 0
    row = next(line.split() for line in out.splitlines() if line.split()[:2] == ["text", "triton"])
    assert "Error" not in " ".join(row)
    assert float(row[-1]) <= 1e-4  # fp32 through the kernels vs the eager reference (design.md)


def test_bench_without_triton_interpreter_says_why(checkpoint, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code = main(["bench", "--model", checkpoint, "--batch", "1", "--backends", "triton,eager", "--tower", "text",
                 "--reps", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Triton kernels need a GPU" in out
    assert not any(line.startswith("vision") for line in out.splitlines())
    assert any(line.split()[:2] == ["text", "eager"] for line in out.splitlines())


@pytest.mark.parametrize("argv, message", [
    (["embed", "{missing}", "--model", "{ckpt}", "--out", "{tmp}/e.npy"], "no such file or directory"),
    (["embed", "{images}", "--model", "{tmp}/no-such-checkpoint", "--out", "{tmp}/e.npy"], "does not exist"),
    (["embed", "{images}", "--model", "{ckpt}", "--out", "{tmp}/no/such/dir/e.npy"], "does not exist"),
    (["embed", "--texts", "{missing}", "--model", "{ckpt}", "--out", "{tmp}/e.npy"], "--texts"),
    (["embed", "--model", "{ckpt}", "--out", "{tmp}/e.npy"], "nothing to embed"),
    (["embed", "{images}/sub", "--model", "{ckpt}", "--out", "{images}/a.png"], "is a file"),
    (["embed", "{images}/sub", "--model", "{ckpt}", "--out", "{tmp}/e.npy", "--shard-size", "0"], "--shard-size"),
    (["embed", "{images}/sub", "--model", "{ckpt}", "--out", "{tmp}/e.npy", "--field", "jpg"], "image extension"),
    (["embed", "--files", "{images}", "--model", "{ckpt}", "--out", "{tmp}/e.npy"], "is a directory"),
    (["classify", "{images}", "--model", "{ckpt}", "--labels", "a,b"], "is a directory"),
    (["classify", "{images}/a.png", "--model", "{ckpt}", "--labels", "a", "--template", "{{}}{{"],
     "not a valid format"),
    (["classify", "{missing}", "--model", "{ckpt}", "--labels", "a,b"], "no such file"),
    (["classify", "{images}/c_broken.png", "--model", "{ckpt}", "--labels", "a,b"], "could not be decoded"),
    (["classify", "{images}/a.png", "--model", "{ckpt}", "--labels", " , "], "--labels"),
    (["bench", "--model", "so400m-patch14"], "known shapes: base-patch16-224"),
    (["classify", "{images}/a.png", "--model", "{ckpt}", "--labels", "a", "--template", "no slot"], "--template"),
    (["bench", "--dtype", "fp64"], "invalid choice"),
    (["bench", "--backends", "triton,flash"], "--backends"),
    (["embed", "{images}", "--model", "{ckpt}", "--out", "{tmp}/e.npy", "--device", "tpu"], "--device"),
])
def test_usage_errors_exit_2_with_a_message(argv, message, checkpoint, images, tmp_path, capsys):
    subs = {"missing": str(tmp_path / "missing.png"), "ckpt": checkpoint, "images": images, "tmp": str(tmp_path)}
    code = main([a.format(**subs) for a in argv])
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_module_help_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "siglip_fast", "--help"], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    for command in ("bench", "embed", "classify"):
        assert command in result.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 error budget and determinism of the fused path: GPU")
def test_embed_on_gpu_error_budget_and_determinism(checkpoint, images, tmp_path, capsys):
    """bf16 through the kernels: error vs an fp64 reference <= 2x the eager bf16 path's; reruns bitwise equal."""
    def embed(backend, name):
        out = tmp_path / f"{name}.npy"
        code = main(["embed", images, "--model", checkpoint, "--out", str(out), "--backend", backend,
                     "--device", "cuda", "--dtype", "bf16"])
        assert code == 0, capsys.readouterr().err
        return np.load(out)

    triton_a, triton_b, eager = embed("triton", "t1"), embed("triton", "t2"), embed("eager", "e")
    rows = json.loads((tmp_path / "t1.json").read_text())["rows"]
    model = SiglipModel.from_pretrained(checkpoint, backend="eager", dtype=torch.float64)
    processor = SiglipProcessor.from_pretrained(checkpoint)
    pixels = processor(images=[load_image(r["source"]) for r in rows], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = _normalize(model.get_image_features(pixel_values=pixels.double()).pooler_output.double())
    err_triton, err_eager = np.abs(triton_a - want).max(), np.abs(eager - want).max()
    assert err_triton <= 2 * err_eager + 1e-6, (err_triton, err_eager)
    np.testing.assert_array_equal(triton_a, triton_b)


def test_triton_backend_on_cpu_without_interpreter_is_a_usage_error(checkpoint, images, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code = main(["classify", os.path.join(images, "a.png"), "--model", checkpoint, "--labels", "a,b", "--backend",
                 "triton", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2
    assert "--backend triton" in captured.err and "TRITON_INTERPRET=1" in captured.err
    assert "Traceback" not in captured.err


def test_bench_triton_graph_row_needs_a_gpu(checkpoint, capsys):
    if torch.cuda.is_available():
        pytest.skip("on a GPU the row runs (benchmarks/test_bench_model.py covers the runner's timing)")
    code = main(["bench", "--model", checkpoint, "--batch", "1", "--backends", "triton-graph,eager", "--tower", "text",
                 "--reps", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "triton-graph (the CUDA-graph runner, compile_for_inference) needs a GPU" in out
    assert not any(line.split()[:2] == ["text", "triton-graph"] for line in out.splitlines())


def test_embed_failure_leaves_earlier_outputs_untouched(checkpoint, images, tmp_path, capsys):
    """Every input unreadable: exit 1, and an existing OUT.npy / OUT.json keep their content (outputs are written
    to temporary names and renamed only on success); nothing else is left behind."""
    out = tmp_path / "emb.npy"
    np.save(out, np.arange(6, dtype=np.float32).reshape(2, 3))
    (tmp_path / "emb.json").write_text('{"rows": ["earlier"]}')
    before = sorted(os.listdir(tmp_path))
    code = main(["embed", os.path.join(images, "c_broken.png"), "--model", checkpoint, "--out", str(out),
                 "--backend", "eager", "--device", "cpu", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 1
    assert "no input could be embedded" in err and "c_broken.png" in err
    np.testing.assert_array_equal(np.load(out), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert (tmp_path / "emb.json").read_text() == '{"rows": ["earlier"]}'
    assert sorted(os.listdir(tmp_path)) == before


def test_version(capsys):
    assert main(["--version"]) == 0
    from siglip_fast import __version__

    assert __version__ in capsys.readouterr().out


def test_bench_flags_a_max_diff_over_the_budget_and_exits_nonzero(checkpoint, capsys, monkeypatch):
    """A backend whose output is wrong (here: sdpa's LayerNorm shifted by 0.5) is marked and the run exits 1."""
    real_layer_norm = siglip_ops.layer_norm

    def shifted(*args, backend, **kwargs):
        out = real_layer_norm(*args, backend=backend, **kwargs)
        if backend != "sdpa":
            return out
        return tuple(o + 0.5 for o in out) if isinstance(out, tuple) else out + 0.5

    monkeypatch.setattr(siglip_ops, "layer_norm", shifted)
    code = main(["bench", "--model", checkpoint, "--batch", "2", "--backends", "sdpa,eager", "--reps", "1",
                 "--device", "cpu", "--tower", "vision"])
    captured = capsys.readouterr()
    assert code == 1
    sdpa = next(line for line in captured.out.splitlines() if line.split()[:2] == ["vision", "sdpa"])
    eager = next(line for line in captured.out.splitlines() if line.split()[:2] == ["vision", "eager"])
    assert "OVER BUDGET" in sdpa and "OVER BUDGET" not in eager
    assert "over the float32 error budget" in captured.err and "vision sdpa" in captured.err


def test_bench_says_what_runs_streams_rows_and_warns_on_gpu_sized_cpu_runs(checkpoint, capsys, monkeypatch):
    import siglip_fast.cli as cli

    monkeypatch.setattr(cli, "CPU_WARN_FLOP", 1.0)  # the tiny model stands in for a GPU-sized one
    code = main(["bench", "--model", checkpoint, "--batch", "1", "--backends", "eager", "--reps", "1",
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0
    assert "warning: a GPU-sized run on CPU" in captured.out
    assert "running: vision, text x eager" in captured.out
    assert "... vision eager" in captured.err and "... text eager" in captured.err
    lines = captured.out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("tower"))
    rows = [line.split()[:2] for line in lines[header + 2:] if line.startswith(("vision ", "text "))]
    assert rows[0] == ["vision", "eager"] and ["text", "eager"] in rows
