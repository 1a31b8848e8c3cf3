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
from siglip_fast.cli import main, pooled
from siglip_fast.image_processing import SiglipImageProcessor, load_image
from siglip_fast.processing import SiglipProcessor
from siglip_fast.tokenization import SiglipTokenizer
from tests._tiny import randomize_

MAX_LEN = 12
WORDS = ["cat", "dog", "bird", "photo", "of", "a", "the", "this", "is", "small", "large", "red", "blue", "car",
         "tree", "house", "running", "sitting", "on", "grass"]

# embed at fp32 where its output is compared at fp32 precision (the CPU default is bf16 where native)
EMBED = ["embed", "--dtype", "fp32"]


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
    code = main([*EMBED, images, "--model", checkpoint, "--out", str(out), "--batch", "2", "--workers", "2",
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
    code = main([*EMBED, "--texts", str(texts_file), "--model", checkpoint, "--out", str(out), "--batch", "2",
                 "--backend", "eager", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    kept = [t for t in texts if t.strip()]  # blank lines are not texts
    emb = np.load(out)
    listing = json.loads((tmp_path / "texts.json").read_text())
    assert [r["caption"] for r in listing["rows"]] == kept and all(r["type"] == "text" for r in listing["rows"])
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
    code = main([*EMBED, os.path.join(images, "a.png"), "--texts", str(texts_file), "--model", checkpoint,
                 "--out", str(out), "--backend", "eager", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "both.json").read_text())["rows"]
    assert [r["type"] for r in rows] == ["image", "text"]
    assert np.load(tmp_path / "both.npy").shape == (2, 32)


def test_classify_prints_sigmoid_probabilities_sorted(checkpoint, images, capsys):
    image = os.path.join(images, "b.jpg")
    labels = ["a cat", "a dog", "a red car", "a tree"]
    code = main(["classify", image, "--model", checkpoint, "--labels", "a cat, a dog,a red car,,a tree",
                 "--template", "a photo of {}", "--backend", "eager", "--device", "cpu", "--dtype", "fp32"])
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
    captured = capsys.readouterr()
    out = captured.out
    assert code == 1  # a requested row that could not be measured fails the run, after the others ran
    assert "error: 2 row(s) could not be measured: vision sdpa: RuntimeError: kernel exploded" in captured.err
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
    (["embed", "{images}", "--model", "{tmp}/no-such-checkpoint", "--out", "{tmp}/e.npy"], "no such directory"),
    (["embed", "{images}", "--model", "no-such-checkpoint", "--out", "{tmp}/e.npy"],
     "no such directory: 'no-such-checkpoint'"),
    (["embed", "{images}", "--model", "base-patch16-224", "--out", "{tmp}/e.npy"], "which only `bench` takes"),
    (["classify", "{images}/a.png", "--model", "so400m-patch14-384", "--labels", "a,b"], "which only `bench` takes"),
    (["classify", "{images}/a.png", "--model", "{tmp}/typo", "--labels", "a,b"], "no such directory"),
    (["embed", "{images}", "--model", "{ckpt}", "--out", "{tmp}/no/such/dir/e.npy"], "does not exist"),
    (["embed", "--texts", "{missing}", "--model", "{ckpt}", "--out", "{tmp}/e.npy"], "--texts"),
    (["embed", "--model", "{ckpt}", "--out", "{tmp}/e.npy"], "nothing to embed"),
    (["embed", "{images}/sub", "--model", "{ckpt}", "--out", "{images}/a.png"], "is a file"),
    (["embed", "{images}/sub", "--model", "{ckpt}", "--out", "{tmp}/e.npy", "--shard-size", "0"], "--shard-size"),
    (["embed", "{images}/sub", "--model", "{ckpt}", "--out", "{tmp}/e.npy", "--field", "jpg"], "image extension"),
    (["embed", "{images}/sub", "--model", "{ckpt}", "--out", "{tmp}/e.npy", "--text-chunk-bytes", "0"],
     "--text-chunk-bytes must be an int >= 1, got 0"),
    (["embed", "{images}", "--model", "{ckpt}", "--out", "{tmp}/e", "--field", "txt"], "plain image files"),
    (["embed", "{tmp}/data-{{9..1}}.tar", "--model", "{ckpt}", "--out", "{tmp}/e"], "range 9..1 is empty"),
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


def test_bench_transformers_row_that_cannot_be_built_fails_the_run(checkpoint, capsys, monkeypatch):
    """An installed transformers that fails to import or to build the model (as transformers 5.25 did when the
    checkout's kernels/ shadowed Hugging Face's `kernels`) is a failed row and a non-zero exit, not a table cell."""
    import siglip_fast.cli as cli

    def twin(model, attn_implementation="sdpa"):
        raise ImportError("cannot import name 'CUDAProperties' from 'kernels'")

    monkeypatch.setattr(cli, "transformers_twin", twin)
    code = main(["bench", "--model", checkpoint, "--batch", "1", "--backends", "eager", "--tower", "text",
                 "--reps", "1", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    row = next(line for line in captured.out.splitlines() if line.split()[:2] == ["text", "transformers-sdpa"])
    assert "ImportError: cannot import name 'CUDAProperties'" in row
    assert "error: 1 row(s) could not be measured: text transformers-sdpa: ImportError" in captured.err


def test_classify_defaults_to_bf16_on_cpus_with_native_bf16(checkpoint, images, capsys, monkeypatch):
    """embed / classify without --dtype on CPU: bf16 where the CPU computes it natively, else fp32 (bench: fp32)."""
    from siglip_fast import cpu
    from siglip_fast.cli import pick_dtype

    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda native=native: native)
        assert pick_dtype(None, torch.device("cpu"), cpu_native_bf16=True) == want
        assert pick_dtype(None, torch.device("cpu")) == torch.float32
        assert pick_dtype("fp32", torch.device("cpu"), cpu_native_bf16=True) == torch.float32
    monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda: True)
    args = [os.path.join(images, "b.jpg"), "--model", checkpoint, "--labels", "a cat,a dog", "--device", "cpu"]
    assert main(["classify", *args]) == 0
    bf16 = dict(line.rsplit(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert main(["classify", *args, "--dtype", "fp32"]) == 0
    fp32 = dict(line.rsplit(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert bf16.keys() == fp32.keys() and bf16 != fp32  # the bf16 run is not the fp32 one ...
    for label in fp32:
        assert abs(float(bf16[label]) - float(fp32[label])) <= 2e-2  # ... but within bf16's rounding of it


def test_backend_help_says_what_auto_runs_on_cpu(capsys):
    """--help's "auto" is what the model reports (config._attn_implementation) on CPU: sdpa."""
    from siglip_fast import ops

    assert main(["embed", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Triton kernels on CUDA, sdpa on CPU" in out
    assert ops.attention_implementation("auto", torch.empty(1)) == "sdpa"


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
        code = main([*EMBED, images, "--model", checkpoint, "--out", str(out), "--backend", backend,
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
    code = main([*EMBED, os.path.join(images, "c_broken.png"), "--model", checkpoint, "--out", str(out),
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


# -------------------------------------------------------------------------------------------------------------------
# SigLIP 2: NaFlex (Siglip2Model + Siglip2ImageProcessor) and fixed resolution (SiglipModel + the Gemma tokenizer)
# -------------------------------------------------------------------------------------------------------------------

GEMMA_CORPUS = ["A photo of a cat.", "Two dogs playing in the snow!", "the quick brown fox jumps over the lazy dog",
                "a red car parked near the river", "this is a photo of a small bird sitting on the grass"]
NAFLEX_PATCHES = 12  # below the tiny processor's default (16): the CLI's --max-num-patches must reach the workers


def _gemma_proto() -> bytes:
    """A sentencepiece BPE model in Gemma's layout (<pad>=0, <eos>=1, <bos>=2, <unk>=3, byte fallback)."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(GEMMA_CORPUS * 40), model_writer=buffer, vocab_size=300, model_type="bpe", pad_id=0,
        eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        byte_fallback=True, add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, minloglevel=2)
    return buffer.getvalue()


def _gemma_tokenizer():
    from siglip_fast import GemmaTokenizer

    # SigLIP 2's tokenizer_config.json settings: no BOS, EOS appended, right padding, 64 tokens
    return GemmaTokenizer(model_proto=_gemma_proto(), add_eos_token=True, padding_side="right", model_max_length=64)


_TINY_TEXT = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=64)
_TINY_TOWER = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="module")
def naflex_checkpoint(tmp_path_factory) -> str:
    """A tiny random NaFlex SigLIP 2 directory: Siglip2Model (4 x 4 position table, patch 4), Siglip2ImageProcessor
    (max_num_patches 16), the Gemma tokenizer files; model_type "siglip2"."""
    from siglip_fast import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor

    directory = tmp_path_factory.mktemp("tiny-siglip2-naflex")
    tokenizer = _gemma_tokenizer()
    Siglip2Processor(Siglip2ImageProcessor(patch_size=4, max_num_patches=16), tokenizer).save_pretrained(directory)
    config = Siglip2Config(text_config=dict(_TINY_TEXT, vocab_size=len(tokenizer)),
                           vision_config=dict(_TINY_TOWER, num_patches=16, patch_size=4))
    torch.manual_seed(2025)
    randomize_(Siglip2Model(config, backend="eager")).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def fixed_siglip2_checkpoint(tmp_path_factory) -> str:
    """A tiny fixed-resolution SigLIP 2 directory: SiglipModel (model_type "siglip") with the Gemma tokenizer files
    and a SiglipImageProcessor, as google/siglip2-base-patch16-224 is laid out."""
    from siglip_fast import Siglip2Processor

    directory = tmp_path_factory.mktemp("tiny-siglip2-fixed")
    tokenizer = _gemma_tokenizer()
    Siglip2Processor(SiglipImageProcessor(size={"height": 20, "width": 20}), tokenizer).save_pretrained(directory)
    config = SiglipConfig(text_config=dict(_TINY_TEXT, vocab_size=len(tokenizer)),
                          vision_config=dict(_TINY_TOWER, image_size=20, patch_size=5))
    torch.manual_seed(2026)
    randomize_(SiglipModel(config, backend="eager")).save_pretrained(directory)
    return str(directory)


def _readable(images: str) -> list[str]:
    return [os.path.join(images, n) for n in ("a.png", "b.jpg", "d_gray.png")] + [os.path.join(images, "sub", "e.jpeg")]


def _naflex_reference(checkpoint, paths, max_num_patches):
    """(normalised rows, the processor's inputs) of Siglip2Model.get_image_features on Siglip2ImageProcessor's
    outputs, the eager reference."""
    import siglip_fast as sf

    model = sf.load_model(checkpoint, backend="eager")
    assert type(model) is sf.Siglip2Model
    inputs = sf.Siglip2ImageProcessor.from_pretrained(checkpoint)(
        [load_image(p) for p in paths], max_num_patches=max_num_patches, return_tensors="pt")
    with torch.no_grad():
        return _normalize(model.get_image_features(**inputs).pooler_output), inputs


def test_embed_naflex_siglip2_images_match_the_model_and_transformers(naflex_checkpoint, images, tmp_path, capsys):
    from siglip_fast import load_embeddings

    out = tmp_path / "emb"
    # a worker process runs Siglip2ImageProcessor; batch 2 over 4 readable images around a corrupt one
    code = main([*EMBED, images, "--model", naflex_checkpoint, "--out", str(out), "--batch", "2", "--workers", "1",
                 "--max-num-patches", str(NAFLEX_PATCHES), "--backend", "eager", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "skipped 2 unreadable or unusable input(s)" in err
    emb, rows = load_embeddings(out)
    paths = _readable(images)
    assert [r["source"] for r in rows] == paths
    emb = np.asarray(emb)
    assert emb.shape == (4, 32)

    want, inputs = _naflex_reference(naflex_checkpoint, paths, NAFLEX_PATCHES)
    # the images really are NaFlex inputs: several patch grids, padding patches in every image but a full one
    assert inputs["pixel_values"].shape == (4, NAFLEX_PATCHES, 3 * 4 * 4)
    assert len({tuple(s) for s in inputs["spatial_shapes"].tolist()}) >= 3
    assert int(inputs["pixel_attention_mask"].sum()) < 4 * NAFLEX_PATCHES
    np.testing.assert_allclose(emb, want, rtol=0, atol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity"]["max_num_patches"] == NAFLEX_PATCHES

    transformers = pytest.importorskip("transformers")
    hf = transformers.Siglip2Model.from_pretrained(naflex_checkpoint).eval()
    with torch.no_grad():
        theirs = _normalize(pooled(hf.get_image_features(**inputs)))
    np.testing.assert_allclose(emb, theirs, rtol=0, atol=1e-5)

    # another max_num_patches gives other embeddings: the same --out refuses to mix them
    code = main([*EMBED, images, "--model", naflex_checkpoint, "--out", str(out), "--max-num-patches", "16",
                 "--backend", "eager", "--device", "cpu", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "different job" in err and "max_num_patches" in err


def test_embed_naflex_default_patches_and_the_inference_runner(naflex_checkpoint, images, tmp_path):
    """Without --max-num-patches: the processor's (16). cuda_graph=True on CPU runs the compile_for_inference
    runner (static batch 3, the last batch of 1 padded with one-patch images) without a graph: same rows."""
    from siglip_fast import embed_corpus

    paths = _readable(images)
    want, _ = _naflex_reference(naflex_checkpoint, paths, 16)
    for cuda_graph in (False, True):
        out = tmp_path / f"graph{cuda_graph}.npy"
        result = embed_corpus(paths, str(out), model=naflex_checkpoint, batch_size=3, workers=0, device="cpu",
                              dtype="fp32", backend="eager", cuda_graph=cuda_graph, progress=False)
        assert result.rows == 4
        np.testing.assert_allclose(np.load(out), want, rtol=0, atol=1e-5)


def test_embed_siglip2_texts_with_the_gemma_tokenizer(naflex_checkpoint, tmp_path, capsys):
    """NaFlex checkpoints' Siglip2Tokenizer lowercases (SigLIP 2's training text); texts padded to 64 with
    truncation, as the processor's defaults; the rows are get_text_features on the processor's ids."""
    import siglip_fast as sf

    texts = ["a photo of a cat", "A PHOTO OF A CAT", "Two dogs playing in the snow!",
             " ".join(["the quick brown fox"] * 30)]  # longer than 64 tokens: truncated
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "texts.npy"
    code = main([*EMBED, "--texts", str(texts_file), "--model", naflex_checkpoint, "--out", str(out), "--batch", "3",
                 "--backend", "eager", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    emb = np.load(out)
    assert emb.shape == (4, 32)
    np.testing.assert_array_equal(emb[0], emb[1])  # lowercased by the tokenizer
    processor = sf.load_processor(naflex_checkpoint)
    assert type(processor.tokenizer) is sf.Siglip2Tokenizer
    enc = processor(text=texts, return_tensors="pt")
    assert enc["input_ids"].shape == (4, 64) and int(enc["attention_mask"][3].sum()) == 64
    model = sf.load_model(naflex_checkpoint, backend="eager")
    with torch.no_grad():
        want = _normalize(model.get_text_features(**enc).pooler_output)
    np.testing.assert_allclose(emb, want, rtol=0, atol=1e-6)

    transformers = pytest.importorskip("transformers")
    hf = transformers.Siglip2Model.from_pretrained(naflex_checkpoint).eval()
    with torch.no_grad():
        theirs = _normalize(pooled(hf.get_text_features(**enc)))
    np.testing.assert_allclose(emb, theirs, rtol=0, atol=1e-5)


def test_classify_naflex_siglip2(naflex_checkpoint, images, capsys):
    import siglip_fast as sf

    image = os.path.join(images, "sub", "e.jpeg")
    labels = ["a cat", "a dog", "a red car", "a tree"]
    code = main(["classify", image, "--model", naflex_checkpoint, "--labels", ",".join(labels), "--template",
                 "a photo of {}", "--max-num-patches", str(NAFLEX_PATCHES), "--backend", "eager", "--device", "cpu",
                 "--dtype", "fp32"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    got = {label.strip(): float(p) for label, p in (line.rsplit(None, 1) for line in captured.out.strip().splitlines())}
    assert sorted(got) == sorted(labels)

    model, processor = sf.load_model(naflex_checkpoint, backend="eager"), sf.load_processor(naflex_checkpoint)
    enc = processor(text=[f"a photo of {label}" for label in labels], images=[load_image(image)],
                    max_num_patches=NAFLEX_PATCHES, return_tensors="pt")
    assert enc["pixel_values"].shape[1] == NAFLEX_PATCHES
    with torch.no_grad():
        want = torch.sigmoid(model(**enc).logits_per_image[0])
    assert len({round(p, 6) for p in want.tolist()}) == len(labels)
    for label, p in zip(labels, want.tolist(), strict=True):
        assert abs(got[label] - p) <= 6e-7


def test_fixed_resolution_siglip2_embed_and_classify(fixed_siglip2_checkpoint, images, tmp_path, capsys):
    """SiglipModel with the Gemma tokenizer: images (uint8 path, SigLIP's processor) and texts (padded to 64, not
    lowercased: GemmaTokenizer, as transformers) as the model on the processor's outputs; --max-num-patches refused."""
    import siglip_fast as sf

    texts_file = tmp_path / "t.txt"
    texts_file.write_text("a dog\nA Dog\n", encoding="utf-8")
    out = tmp_path / "fixed.npy"
    code = main([*EMBED, images, "--texts", str(texts_file), "--model", fixed_siglip2_checkpoint, "--out", str(out),
                 "--batch", "3", "--workers", "0", "--backend", "eager", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    emb = np.load(out)
    assert emb.shape == (6, 32)
    model, processor = sf.load_model(fixed_siglip2_checkpoint, backend="eager"), \
        sf.load_processor(fixed_siglip2_checkpoint)
    assert type(model) is sf.SiglipModel and isinstance(processor, sf.Siglip2Processor)
    assert type(processor.tokenizer) is sf.GemmaTokenizer
    enc = processor(text=["a dog", "A Dog"], images=[load_image(p) for p in _readable(images)], return_tensors="pt")
    assert enc["input_ids"].shape == (2, 64)
    with torch.no_grad():
        want_images = _normalize(model.get_image_features(pixel_values=enc["pixel_values"]).pooler_output)
        want_texts = _normalize(model.get_text_features(input_ids=enc["input_ids"],
                                                        attention_mask=enc["attention_mask"]).pooler_output)
    np.testing.assert_allclose(emb[:4], want_images, rtol=0, atol=1e-5)
    np.testing.assert_allclose(emb[4:], want_texts, rtol=0, atol=1e-6)
    assert not np.array_equal(emb[4], emb[5])  # GemmaTokenizer does not lowercase

    code = main(["classify", os.path.join(images, "a.png"), "--model", fixed_siglip2_checkpoint, "--labels", "a,b",
                 "--backend", "eager", "--device", "cpu"])
    assert code == 0 and len(capsys.readouterr().out.strip().splitlines()) == 2
    code = main([*EMBED, images, "--model", fixed_siglip2_checkpoint, "--out", str(tmp_path / "x.npy"),
                 "--max-num-patches", "64", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2 and "--max-num-patches applies to NaFlex" in captured.err


def _bench_rows(out: str) -> dict:
    return {tuple(line.split()[:2]): line.split() for line in out.splitlines()
            if line.startswith(("vision ", "text "))}


def test_bench_naflex_siglip2_checkpoint(naflex_checkpoint, capsys):
    """Siglip2Model vs its transformers twin (transformers.Siglip2Model) on NaFlex inputs at --max-num-patches, the
    TFLOP/s from matmul_flops(num_patches=N)."""
    import siglip_fast as sf
    from siglip_fast.variants import matmul_flops

    code = main(["bench", "--model", naflex_checkpoint, "--batch", "2", "--backends", "sdpa,eager", "--device", "cpu",
                 "--reps", "1", "--max-num-patches", str(NAFLEX_PATCHES)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"NaFlex at max_num_patches {NAFLEX_PATCHES}" in captured.out
    rows = _bench_rows(captured.out)
    impls = ("eager", "sdpa") + (("transformers-sdpa",) if "transformers-sdpa" in captured.out else ())
    for tower in ("vision", "text"):
        for impl in impls:
            cells = rows[(tower, impl)]
            assert "Error" not in " ".join(cells), cells
            assert float(cells[-1]) <= 1e-5
    config = sf.load_model(naflex_checkpoint).config
    ms, tflops = float(rows[("vision", "eager")][2]), float(rows[("vision", "eager")][4])
    want = matmul_flops(config, images=2, num_patches=NAFLEX_PATCHES) / ms / 1e9
    assert abs(tflops - want) <= 0.06 * want  # printed to 2-3 significant digits; 16 patches would be 33% more


def test_bench_siglip2_names(capsys, monkeypatch):
    """SigLIP 2 names: a NaFlex one builds a Siglip2Model with NaFlex inputs, a fixed-resolution one a SiglipModel
    (config_for's shapes shrunk here to keep CPU time small; the name -> config table is tested in variants)."""
    import siglip_fast.cli as cli
    from siglip_fast import Siglip2Config

    asked, built = [], []
    real_config_for, real_random_model = cli.config_for, cli.random_model

    def tiny_config_for(name):
        asked.append(name)
        config = real_config_for(name)
        text = dict(_TINY_TEXT, vocab_size=97)
        if isinstance(config, Siglip2Config):
            return Siglip2Config(text_config=text, vision_config=dict(_TINY_TOWER, patch_size=16, num_patches=16))
        return SiglipConfig(text_config=text, vision_config=dict(_TINY_TOWER, patch_size=16, image_size=32))

    def recording_random_model(*args, **kwargs):
        built.append(real_random_model(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(cli, "config_for", tiny_config_for)
    monkeypatch.setattr(cli, "random_model", recording_random_model)
    code = main(["bench", "--model", "google/siglip2-so400m-patch16-naflex", "--batch", "2", "--backends", "eager",
                 "--device", "cpu", "--reps", "1", "--max-num-patches", "24"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert asked == ["siglip2-so400m-patch16-naflex"] and type(built[-1]).__name__ == "Siglip2Model"
    assert "siglip2-so400m-patch16-naflex (random weights), NaFlex at max_num_patches 24" in captured.out
    rows = _bench_rows(captured.out)
    assert ("vision", "eager") in rows and ("text", "eager") in rows
    assert not any("Error" in " ".join(cells) for cells in rows.values()), captured.out
    if ("vision", "transformers-sdpa") in rows:
        assert float(rows[("vision", "transformers-sdpa")][-1]) <= 1e-5

    code = main(["bench", "--model", "siglip2-base-patch16-224", "--batch", "2", "--backends", "eager", "--device",
                 "cpu", "--reps", "1", "--tower", "vision"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert asked[-1] == "siglip2-base-patch16-224" and type(built[-1]).__name__ == "SiglipModel"
    assert "NaFlex" not in captured.out and ("vision", "eager") in _bench_rows(captured.out)


@pytest.mark.parametrize("argv, message", [
    (["embed", "{images}", "--model", "{naflex}", "--out", "{tmp}/e.npy", "--max-num-patches", "0"],
     "--max-num-patches must be"),
    (["embed", "{images}", "--model", "{ckpt}", "--out", "{tmp}/e.npy", "--max-num-patches", "16"],
     "--max-num-patches applies to NaFlex"),
    (["classify", "{images}/a.png", "--model", "{ckpt}", "--labels", "a", "--max-num-patches", "16"],
     "--max-num-patches applies to NaFlex"),
    (["bench", "--model", "{ckpt}", "--max-num-patches", "16", "--device", "cpu"], "--max-num-patches applies"),
    (["bench", "--model", "{naflex}", "--max-num-patches", "-1", "--device", "cpu"], "--max-num-patches must be"),
])
def test_max_num_patches_usage_errors(argv, message, checkpoint, naflex_checkpoint, images, tmp_path, capsys):
    subs = {"ckpt": checkpoint, "naflex": naflex_checkpoint, "images": images, "tmp": str(tmp_path)}
    code = main([a.format(**subs) for a in argv])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert message in captured.err and "Traceback" not in captured.err


def test_help_says_siglip2_was_trained_on_lowercased_text(capsys):
    for command in ("embed", "classify"):
        assert main([command, "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "SigLIP 2 was trained on lowercased text" in out and "--max-num-patches" in out


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the Triton kernels need CUDA or the Triton interpreter (TRITON_INTERPRET=1)")
def test_naflex_through_the_fused_kernels(naflex_checkpoint, images, tmp_path, capsys):
    """embed (the static-batch runner, masked padding patches in the fused attention) and bench's triton row on a
    NaFlex checkpoint: fp32 within the kernel budget (1e-4) of the eager reference."""
    from siglip_fast import embed_corpus

    device = "cuda" if torch.cuda.is_available() else "cpu"
    paths = _readable(images)[:3]
    want, _ = _naflex_reference(naflex_checkpoint, paths, NAFLEX_PATCHES)
    out = tmp_path / "triton.npy"
    embed_corpus(paths, str(out), model=naflex_checkpoint, batch_size=2, workers=0, device=device, dtype="fp32",
                 backend="triton", cuda_graph=True, max_num_patches=NAFLEX_PATCHES, progress=False)
    np.testing.assert_allclose(np.load(out), want, rtol=0, atol=1e-4)

    code = main(["bench", "--model", naflex_checkpoint, "--batch", "2", "--backends", "triton,eager", "--tower",
                 "vision", "--reps", "1", "--device", device, "--dtype", "fp32", "--max-num-patches", "20"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    row = _bench_rows(captured.out)[("vision", "triton")]
    assert "Error" not in " ".join(row) and float(row[-1]) <= 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 NaFlex through the CUDA-graph runner: GPU")
def test_embed_naflex_on_gpu_error_budget_and_determinism(naflex_checkpoint, images, tmp_path, capsys):
    """bf16 through the kernels and the CUDA graph at --max-num-patches: error vs an fp64 reference <= 2x the eager
    bf16 path's; reruns bitwise equal."""
    import siglip_fast as sf

    def embed(backend, name):
        out = tmp_path / f"{name}.npy"
        code = main([*EMBED, images, "--model", naflex_checkpoint, "--out", str(out), "--backend", backend,
                     "--device", "cuda", "--dtype", "bf16", "--max-num-patches", str(NAFLEX_PATCHES)])
        assert code == 0, capsys.readouterr().err
        return np.load(out)

    triton_a, triton_b, eager = embed("triton", "t1"), embed("triton", "t2"), embed("eager", "e")
    rows = json.loads((tmp_path / "t1.json").read_text())["rows"]
    model = sf.load_model(naflex_checkpoint, backend="eager", dtype=torch.float64)
    inputs = sf.load_processor(naflex_checkpoint).image_processor(
        [load_image(r["source"]) for r in rows], max_num_patches=NAFLEX_PATCHES, return_tensors="pt")
    with torch.no_grad():
        want = _normalize(model.get_image_features(
            pixel_values=inputs["pixel_values"].double(), pixel_attention_mask=inputs["pixel_attention_mask"],
            spatial_shapes=inputs["spatial_shapes"]).pooler_output.double())
    err_triton, err_eager = np.abs(triton_a - want).max(), np.abs(eager - want).max()
    assert err_triton <= 2 * err_eager + 1e-6, (err_triton, err_eager)
    np.testing.assert_array_equal(triton_a, triton_b)
