"""The corpus job (siglip_fast.corpus.embed_corpus, `siglip_fast embed`): sharded resumable output, two ranks under
torchrun, resuming after a lost shard or a killed run, refusing a changed job, WebDataset tars and file lists as
inputs, corrupt inputs listed, memory flat as the input grows. Tiny random checkpoint, eager backend, CPU (gloo)."""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc

import numpy as np
import PIL.Image
import pytest
import torch

import siglip_fast
from siglip_fast import SiglipConfig, SiglipModel, corpus, embed_corpus, load_embeddings
from siglip_fast.corpus import CorpusError, ShardedEmbeddings
from siglip_fast.image_processing import SiglipImageProcessor, load_image
from siglip_fast.processing import SiglipProcessor
from siglip_fast.tokenization import SiglipTokenizer
from tests._tiny import randomize_
from tests.test_cli import MAX_LEN, _spiece_proto
from tests.test_cli import checkpoint as checkpoint  # noqa: F401 (the shared tiny checkpoint fixture)
from tests.test_cli import naflex_checkpoint as naflex_checkpoint  # noqa: F401 (tiny NaFlex SigLIP 2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = dict(device="cpu", backend="eager", progress=False)


def _png(rng, h, w) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> str:
    """22 readable images of odd sizes in nested folders, 2 corrupt ones and a text file among them."""
    directory = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(7)
    for i in range(22):
        sub = directory / f"part{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"img{i:02d}.png").write_bytes(_png(rng, int(rng.integers(9, 60)), int(rng.integers(9, 60))))
    (directory / "part1" / "img05b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (directory / "part2" / "img99_broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (directory / "part0" / "readme.txt").write_text("not an image")
    return str(directory)


@pytest.fixture(scope="module")
def reference(checkpoint, corpus_dir, tmp_path_factory):  # noqa: F811
    """A single-process run into one .npy: the rows every other run must reproduce."""
    out = str(tmp_path_factory.mktemp("reference") / "ref.npy")
    result = embed_corpus([corpus_dir], out, model=checkpoint, batch_size=4, workers=0, **RUN)
    assert result.rows == 22 and result.skipped == 3
    array, rows = load_embeddings(out)
    return np.asarray(array), list(rows)


def _same(a, b, rows_a, rows_b):
    assert list(rows_a) == list(rows_b)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_single_file_matches_the_model_and_lists_every_row(checkpoint, corpus_dir, reference):  # noqa: F811
    emb, rows = reference
    assert emb.shape == (22, 32) and emb.dtype == np.float32
    paths = [r["source"] for r in rows]
    assert paths == sorted(paths) and all(r["type"] == "image" for r in rows)  # the walk is sorted, rows in order
    assert [r["index"] for r in rows] == sorted(r["index"] for r in rows)
    model = SiglipModel.from_pretrained(checkpoint, backend="eager")
    processor = SiglipProcessor.from_pretrained(checkpoint)
    pixels = processor(images=[load_image(p) for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    np.testing.assert_allclose(emb, want.numpy(), rtol=0, atol=1e-5)


def test_sharded_directory_equals_the_single_file(checkpoint, corpus_dir, reference, tmp_path):  # noqa: F811
    out = tmp_path / "emb"
    result = embed_corpus([corpus_dir], str(out), model=checkpoint, shard_size=5, batch_size=3, workers=2, **RUN)
    # 25 items (22 images, 2 corrupt, 1 text file) -> 5 shards of 5
    assert result.shards == 5 and result.shards_written == [0, 1, 2, 3, 4] and result.shards_reused == []
    assert result.rows == 22 and result.skipped == 3
    names = sorted(os.listdir(out))
    assert names == sorted(["manifest.json", "skipped.jsonl"] + [f"shard-{k:05d}.{e}" for k in range(5)
                                                                  for e in ("json", "npy")])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 22 and sum(manifest["shard_rows"]) == 22
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(os.path.basename(s["source"]) for s in skipped) == ["img05b_broken.png", "img99_broken.jpg",
                                                                       "readme.txt"]
    assert all(s["reason"] for s in skipped)
    array, rows = load_embeddings(out)
    assert isinstance(array, ShardedEmbeddings) and array.shape == (22, 32) and len(rows) == 22
    _same(array, reference[0], rows, reference[1])
    full = np.concatenate([np.load(os.path.join(out, f"shard-{k:05d}.npy")) for k in range(5)])
    np.testing.assert_array_equal(np.asarray(array), full)  # indexing reads only the shards it touches
    np.testing.assert_array_equal(array[3], full[3])
    np.testing.assert_array_equal(array[-1], full[-1])
    np.testing.assert_array_equal(array[4:13:2], full[4:13:2])
    np.testing.assert_array_equal(array[[21, 0, 7]], full[[21, 0, 7]])
    np.testing.assert_array_equal(array[2:6, :5], full[2:6, :5])
    assert rows[-1] == reference[1][-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_under_torchrun_equal_a_single_process_run(checkpoint, corpus_dir, reference, tmp_path):  # noqa: F811
    out = tmp_path / "emb2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "siglip_fast", "embed", corpus_dir, "--model", checkpoint,
           "--out", str(out), "--shard-size", "4", "--batch", "3", "--workers", "1", "--device", "cpu",
           "--backend", "eager"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):  # a progress line (rows/s, ETA) and a summary per rank
        lines = [line for line in result.stderr.splitlines() if line.startswith(f"[rank {rank}/2]")]
        assert any("rows/s" in line and "ETA" in line for line in lines), result.stderr[-2000:]
        assert any("done:" in line and "shard(s) written" in line for line in lines)
    # shards 0, 2, 4, 6 from rank 0 and 1, 3, 5 from rank 1; the result reads as one run in input order
    array, rows = load_embeddings(out)
    _same(array, reference[0], rows, reference[1])


def test_a_lost_shard_is_the_only_one_rewritten(checkpoint, corpus_dir, reference, tmp_path):  # noqa: F811
    out = str(tmp_path / "emb")
    embed_corpus([corpus_dir], out, model=checkpoint, shard_size=6, batch_size=4, workers=0, **RUN)
    os.remove(os.path.join(out, "shard-00002.npy"))
    stamps = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out) if n.startswith("shard-")}
    with pytest.raises(ValueError, match="incomplete"):
        load_embeddings(out)  # a lost shard is noticed when reading
    result = embed_corpus([corpus_dir], out, model=checkpoint, shard_size=6, batch_size=4, workers=0, **RUN)
    assert result.shards_written == [2] and result.shards_reused == [0, 1, 3, 4]
    for name, stamp in stamps.items():
        if not name.startswith("shard-00002"):
            assert os.stat(os.path.join(out, name)).st_mtime_ns == stamp, name
    _same(*load_embeddings(out)[:1], reference[0], load_embeddings(out)[1], reference[1])


def test_a_killed_run_resumes_with_only_the_missing_shards(checkpoint, corpus_dir, reference, tmp_path):  # noqa: F811
    """A real SIGKILL in the middle of writing shard 2 (its .npy renamed, its .json still a temporary file); the
    rerun cleans the temporary, keeps shards 0 and 1 and writes the rest; the result equals a clean run."""
    out = str(tmp_path / "emb")
    script = textwrap.dedent(f"""
        import os, signal, sys
        import siglip_fast.corpus as c
        real = c._atomic_json
        def dying(path, obj):
            if path.endswith("shard-00002.json"):
                open(path + ".tmp." + str(os.getpid()), "w").write('{{"half": ')
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, obj)
        c._atomic_json = dying
        c.embed_corpus([{corpus_dir!r}], {out!r}, model={checkpoint!r}, shard_size=5, batch_size=4, workers=1,
                       device="cpu", backend="eager", progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": REPO}
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                            check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    names = set(os.listdir(out))
    assert {"shard-00000.json", "shard-00001.json", "shard-00002.npy"} <= names and "shard-00002.json" not in names
    assert any(".tmp." in n for n in names)
    result = embed_corpus([corpus_dir], out, model=checkpoint, shard_size=5, batch_size=4, workers=0, **RUN)
    assert result.shards_reused == [0, 1] and result.shards_written == [2, 3, 4]
    assert not any(".tmp." in n for n in os.listdir(out))
    array, rows = load_embeddings(out)
    _same(array, reference[0], rows, reference[1])


def test_a_changed_job_is_refused_not_mixed(checkpoint, corpus_dir, tmp_path):  # noqa: F811
    out = str(tmp_path / "emb")
    embed_corpus([os.path.join(corpus_dir, "part0")], out, model=checkpoint, shard_size=4, workers=0, **RUN)
    before = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)}
    with pytest.raises(CorpusError, match="input listing"):
        embed_corpus([os.path.join(corpus_dir, "part0"), os.path.join(corpus_dir, "part1")], out, model=checkpoint,
                     shard_size=4, workers=0, **RUN)
    with pytest.raises(CorpusError, match="shard size"):
        embed_corpus([os.path.join(corpus_dir, "part0")], out, model=checkpoint, shard_size=3, workers=0, **RUN)
    with pytest.raises(CorpusError, match="settings"):
        embed_corpus([os.path.join(corpus_dir, "part0")], out, model=checkpoint, shard_size=4, workers=0,
                     dtype="bf16", **RUN)
    other = tmp_path / "other-checkpoint"  # same shape, other weights
    shutil.copytree(checkpoint, other)
    torch.manual_seed(99)
    randomize_(SiglipModel(SiglipConfig.from_pretrained(checkpoint), backend="eager")).save_pretrained(other)
    with pytest.raises(CorpusError, match="the model"):
        embed_corpus([os.path.join(corpus_dir, "part0")], out, model=str(other), shard_size=4, workers=0, **RUN)
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)} == before
    stranger = tmp_path / "not-embeddings"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    with pytest.raises(CorpusError, match="not empty"):
        embed_corpus([os.path.join(corpus_dir, "part0")], str(stranger), model=checkpoint, workers=0, **RUN)


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_webdataset_tars_with_captions_and_a_file_list(checkpoint, tmp_path, capsys):  # noqa: F811
    from siglip_fast.cli import main

    rng = np.random.default_rng(3)
    img = {k: _png(rng, 20 + 3 * i, 31 - 2 * i) for i, k in enumerate(("s/000", "s/001", "s/004"))}
    _tar(tmp_path / "shard-0.tar", {
        "s/000.png": img["s/000"], "s/000.txt": b"a red car", "s/000.json": b"{}",
        "s/001.png": img["s/001"], "s/001.txt": "ein Hund \u00fcber Gras".encode(),
        "s/002.txt": b"a caption without its image",
        "s/003.jpg": b"\xff\xd8 broken", "s/003.txt": b"a tree",
    })
    _tar(tmp_path / "shard-1.data", {"s/004.png": img["s/004"]})  # no .tar extension: --tar says it is one
    (tmp_path / "truncated.tar").write_bytes((tmp_path / "shard-0.tar").read_bytes()[:700])
    loose = tmp_path / "loose.png"
    loose.write_bytes(_png(rng, 17, 23))
    listing = tmp_path / "list.txt"
    listing.write_text("shard-0.tar\nshard-1.data\nmissing.png\n" + str(loose) + "\ntruncated.tar\n")
    out = tmp_path / "wds"
    code = main(["embed", "--files", str(listing), "--tar", "--field", "image,txt", "--model", checkpoint,
                 "--out", str(out), "--shard-size", "3", "--batch", "2", "--workers", "1", "--device", "cpu",
                 "--backend", "eager"])
    err = capsys.readouterr().err
    # --tar makes every listed file a tar: the loose png is then an unreadable tar, reported like the others
    assert code == 0, err
    array, rows = load_embeddings(out)
    got = [(r["type"], os.path.basename(r["source"]), r.get("member")) for r in rows]
    assert got == [("image", "shard-0.tar", "s/000.png"), ("image", "shard-0.tar", "s/001.png"),
                   ("image", "shard-1.data", "s/004.png"),
                   ("text", "shard-0.tar", "s/000.txt"), ("text", "shard-0.tar", "s/001.txt"),
                   ("text", "shard-0.tar", "s/002.txt"), ("text", "shard-0.tar", "s/003.txt")]
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    reasons = {(os.path.basename(s["source"]), s.get("member")): s["reason"] for s in skipped}
    assert "no image member" in reasons[("shard-0.tar", "s/002")]
    assert "could not be decoded" in reasons[("shard-0.tar", "s/003.jpg")]
    assert "no such file" in reasons[("missing.png", None)]
    assert "not a readable tar" in reasons[("loose.png", None)]
    assert any(k[0] == "truncated.tar" for k in reasons)
    assert "skipped" in err and "s/002" in err

    model = SiglipModel.from_pretrained(checkpoint, backend="eager")
    processor = SiglipProcessor.from_pretrained(checkpoint)
    pixels = processor(images=[PIL.Image.open(io.BytesIO(img[k])).convert("RGB") for k in ("s/000", "s/001",
                                                                                            "s/004")],
                       return_tensors="pt")["pixel_values"]
    enc = processor(text=["a red car", "ein Hund \u00fcber Gras", "a caption without its image", "a tree"],
                    padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        want = torch.cat([model.get_image_features(pixel_values=pixels).pooler_output,
                          model.get_text_features(**enc).pooler_output])
    np.testing.assert_allclose(np.asarray(array), torch.nn.functional.normalize(want, dim=-1).numpy(), rtol=0,
                               atol=1e-5)


def test_a_tar_found_in_a_folder_and_a_gzipped_tar_is_reported(checkpoint, tmp_path):  # noqa: F811
    rng = np.random.default_rng(4)
    folder = tmp_path / "in"
    folder.mkdir()
    _tar(folder / "a.tar", {"x/1.png": _png(rng, 12, 12), "x/2.png": _png(rng, 13, 9)})
    with tarfile.open(folder / "b.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("y/1.png")
        data = _png(rng, 10, 10)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    out = str(tmp_path / "out.npy")
    result = embed_corpus([str(folder)], out, model=checkpoint, workers=0, **RUN)
    assert result.rows == 2 and result.skipped == 1
    listing = json.loads((tmp_path / "out.json").read_text())
    assert [r["member"] for r in listing["rows"]] == ["x/1.png", "x/2.png"]
    assert "gzip-compressed" in listing["skipped"][0]["reason"]


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory) -> str:
    """A text tower with 512-wide embeddings (one layer), so holding every row would show in the memory test."""
    directory = tmp_path_factory.mktemp("wide-siglip")
    tokenizer = SiglipTokenizer(model_proto=_spiece_proto(), model_max_length=MAX_LEN)
    SiglipProcessor(SiglipImageProcessor(size={"height": 16, "width": 16}), tokenizer).save_pretrained(directory)
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=8, max_position_embeddings=MAX_LEN),
        vision_config=dict(hidden_size=512, intermediate_size=32, num_hidden_layers=1, num_attention_heads=8,
                           image_size=16, patch_size=8))
    randomize_(SiglipModel(config, backend="eager")).save_pretrained(directory)
    return str(directory)


def test_memory_stays_flat_as_the_input_grows(wide_checkpoint, tmp_path):
    """Peak traced memory of the whole job for 40 and 200 texts: the growth is far below what holding the extra
    rows would cost (160 x 512 float32 = 330 kB); what grows is the input listing (one small record per item)."""
    words = ["cat", "dog", "red", "car", "tree", "house", "on", "grass", "a", "photo"]

    def peak(n: int) -> int:
        texts = tmp_path / f"t{n}.txt"
        rng = np.random.default_rng(n)
        texts.write_text("\n".join(" ".join(rng.choice(words, 5)) + f" {i}" for i in range(n)) + "\n")
        tracemalloc.start()
        try:
            embed_corpus(texts=[str(texts)], out=str(tmp_path / f"out{n}"), model=wide_checkpoint, shard_size=20,
                         batch_size=20, workers=0, **RUN)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(10)  # first-call allocations (imports, caches) out of the comparison
    small, large = peak(40), peak(200)
    held_rows = (200 - 40) * 512 * 4
    assert large - small < 0.5 * held_rows, (small, large)
    array, rows = load_embeddings(tmp_path / "out200")
    assert array.shape == (200, 512) and rows[199]["source"].endswith(" 199")


def test_package_exports_the_job():
    assert siglip_fast.embed_corpus is corpus.embed_corpus and siglip_fast.load_embeddings is corpus.load_embeddings


def test_the_static_batch_runners_give_the_same_rows(checkpoint, corpus_dir, reference, tmp_path):  # noqa: F811
    """cuda_graph=True routes both towers through compile_for_inference (the GPU path; on CPU the same static-batch
    runner without a graph): chunking, padding of the last batch, uint8 pixels and the text runner."""
    texts = tmp_path / "t.txt"
    texts.write_text("a cat\na red car on the grass\nthe dog\n")
    out = str(tmp_path / "runner.npy")
    result = embed_corpus([corpus_dir], out, texts=[str(texts)], model=checkpoint, batch_size=4, workers=0,
                          cuda_graph=True, **RUN)
    assert result.rows == 25
    array, rows = load_embeddings(out)
    _same(array[:22], reference[0], rows[:22], reference[1])
    plain = str(tmp_path / "plain.npy")
    embed_corpus(texts=[str(texts)], out=plain, model=checkpoint, batch_size=4, workers=0, **RUN)
    np.testing.assert_allclose(np.asarray(array[22:]), np.load(plain), rtol=0, atol=1e-6)
    assert [r["source"] for r in rows[22:]] == ["a cat", "a red car on the grass", "the dog"]


# -- SigLIP 2 NaFlex ------------------------------------------------------------------------------------------------

def test_naflex_patches_normalised_on_the_device_are_the_processors_pixel_values(tmp_path):
    """The decode workers send uint8 patches (no rescale/normalise); NaflexNormalizer's table lookup gives bitwise
    the image processor's float32 pixel_values (with a non-SigLIP mean/std too), zero padding included."""
    from siglip_fast.image_processing_siglip2 import Siglip2ImageProcessor

    rng = np.random.default_rng(3)
    paths = []
    for i, (h, w) in enumerate(((13, 40), (37, 9), (20, 20), (5, 3))):
        paths.append(str(tmp_path / f"{i}.png"))
        with open(paths[-1], "wb") as f:
            f.write(_png(rng, h, w))
    positions = [(i, corpus.Item("image", p)) for i, p in enumerate(paths)]
    for processor in (Siglip2ImageProcessor(patch_size=4, max_num_patches=12),
                      Siglip2ImageProcessor(patch_size=3, max_num_patches=20, image_mean=[0.48, 0.45, 0.4],
                                            image_std=[0.26, 0.26, 0.27], rescale_factor=1 / 256)):
        loader = corpus.decode_loader(positions, [[0, 1, 2, 3]], processor, workers=0, uint8=False,
                                      max_num_patches=processor.max_num_patches)
        (batch,) = list(loader)
        assert batch["pixels"].dtype == torch.uint8 and not batch["failed"]
        want = processor([load_image(p) for p in paths], return_tensors="pt")
        got = corpus.NaflexNormalizer(processor, torch.device("cpu"))(batch["pixels"], batch["pixel_attention_mask"])
        assert got.dtype == torch.float32 and torch.equal(got, want["pixel_values"])
        assert torch.equal(batch["pixel_attention_mask"], want["pixel_attention_mask"])
        assert torch.equal(batch["spatial_shapes"], want["spatial_shapes"])
        assert int(want["pixel_attention_mask"].sum()) < want["pixel_attention_mask"].numel()  # padding present


def test_naflex_webdataset_tar_images_and_captions(naflex_checkpoint, tmp_path):  # noqa: F811
    """A NaFlex SigLIP 2 checkpoint over a tar of images and captions (--field image,txt): image rows as the model on
    the image processor's outputs, caption rows as the model on the processor's (lowercasing) ids."""
    rng = np.random.default_rng(4)
    pngs = {f"s{i}": _png(rng, h, w) for i, (h, w) in enumerate(((30, 50), (44, 17), (16, 16)))}
    captions = {"s0": "A Red Car", "s1": "two dogs", "s2": "a photo of a cat"}
    members = {}
    for key in pngs:
        members[f"{key}.png"] = pngs[key]
        members[f"{key}.txt"] = captions[key].encode()
    _tar(tmp_path / "data.tar", members)
    out = tmp_path / "out.npy"
    result = embed_corpus([str(tmp_path / "data.tar")], str(out), model=naflex_checkpoint, fields="image,txt",
                          batch_size=2, workers=0, max_num_patches=10, **RUN)
    assert result.rows == 6
    emb = np.load(out)
    model, processor = siglip_fast.load_model(naflex_checkpoint, backend="eager"), \
        siglip_fast.load_processor(naflex_checkpoint)
    enc = processor(text=list(captions.values()), images=[load_image(b) for b in pngs.values()], max_num_patches=10,
                    return_tensors="pt")
    with torch.no_grad():
        images = model.get_image_features(pixel_values=enc["pixel_values"],
                                          pixel_attention_mask=enc["pixel_attention_mask"],
                                          spatial_shapes=enc["spatial_shapes"]).pooler_output
        texts = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output
    want = torch.nn.functional.normalize(torch.cat([images, texts]), dim=-1).numpy()
    np.testing.assert_allclose(emb, want, rtol=0, atol=1e-5)
