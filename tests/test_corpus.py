"""The corpus job (siglip_fast.corpus.embed_corpus, `siglip_fast embed`): units of work by input shard, the per-unit
output layout and its reader, resuming (damaged units redone), refusing a changed job or a second job, WebDataset
tars and file lists as inputs, bad inputs reported (named pipes, non-UTF-8 names, link loops, truncated tars,
duplicate members), numpy's indexing semantics, memory flat as the input grows. Tiny random checkpoint, eager
backend, CPU. The torchrun runs (two agents, a killed rank) are in test_corpus_distributed.py."""

import io
import json
import os
import resource
import shutil
import signal
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
# fp32 explicitly: the CPU default is bf16 on CPUs with native bf16
RUN = dict(device="cpu", dtype="fp32", backend="eager", progress=False)

# embed at fp32 where its output is compared at fp32 precision (the CPU default is bf16 where native)
EMBED = ["embed", "--dtype", "fp32"]


def _png(rng, h, w) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _tar(path, members) -> None:
    """members: {name: bytes} or a list of (name, bytes) (a name may repeat)."""
    with tarfile.open(path, "w") as tf:
        for name, data in (members.items() if isinstance(members, dict) else members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


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


def _same(a, b, rows_a, rows_b, exact=False):
    """Same rows in the same order; the same numbers (bitwise with `exact`: the same batches; else within fp32
    rounding, as another batching gives)."""
    strip = lambda rows: [{k: v for k, v in r.items() if k != "unit"} for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)
    if exact:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def _stamps(out) -> dict:
    return {os.path.join(d, n): os.stat(os.path.join(out, d, n)).st_mtime_ns
            for d in ("img_emb", "text_emb", "metadata", "stats") if os.path.isdir(os.path.join(out, d))
            for n in os.listdir(os.path.join(out, d))}


def test_single_file_matches_the_model_and_lists_every_row(checkpoint, corpus_dir, reference):  # noqa: F811
    emb, rows = reference
    assert emb.shape == (22, 32) and emb.dtype == np.float32
    paths = [r["source"] for r in rows]
    assert paths == sorted(paths) and all(r["type"] == "image" for r in rows)  # the walk is sorted, rows in order
    model = SiglipModel.from_pretrained(checkpoint, backend="eager")
    processor = SiglipProcessor.from_pretrained(checkpoint)
    pixels = processor(images=[load_image(p) for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    np.testing.assert_allclose(emb, want.numpy(), rtol=0, atol=1e-5)


def test_the_per_unit_layout_equals_the_single_file(checkpoint, corpus_dir, reference, tmp_path):  # noqa: F811
    out = tmp_path / "emb"
    result = embed_corpus([corpus_dir], str(out), model=checkpoint, shard_size=5, batch_size=3, workers=2, **RUN)
    # 25 files found (22 images, 2 corrupt, 1 text file) -> 5 units of 5 plain files
    assert result.units == 5 and result.units_written == [0, 1, 2, 3, 4] and result.units_reused == []
    assert result.rows == 22 and result.skipped == 3
    assert sorted(os.listdir(out)) == ["img_emb", "manifest.json", "metadata", "skipped.jsonl", "stats"]
    assert sorted(os.listdir(out / "img_emb")) == [f"img_emb_{k}.npy" for k in range(5)]
    assert sorted(os.listdir(out / "metadata")) == [f"metadata_{k}.jsonl" for k in range(5)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == {"image": 22, "text": 0}
    assert sum(manifest["table"]["image_rows"]) == 22 and len(manifest["table"]["files"]) == 5
    assert manifest["job"]["shard_size"] == 5 and manifest["identity"]["dtype"] == "float32"
    stats = json.loads((out / "stats" / "stats_0.json").read_text())
    assert stats["files"]["image"]["sha256"] == manifest["table"]["files"][0]["image"]["sha256"]
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(os.path.basename(s["source"]) for s in skipped) == ["img05b_broken.png", "img99_broken.jpg",
                                                                       "readme.txt"]
    assert all(s["reason"] for s in skipped)
    array, rows = load_embeddings(out)
    assert isinstance(array, ShardedEmbeddings) and array.shape == (22, 32) and len(rows) == 22
    _same(array, reference[0], rows, reference[1])
    # the metadata rows are the img_emb rows, unit by unit (what a retrieval index joins on)
    first = [json.loads(line) for line in (out / "metadata" / "metadata_0.jsonl").read_text().splitlines()]
    assert len(first) == len(np.load(out / "img_emb" / "img_emb_0.npy")) == stats["image_rows"]
    full = np.concatenate([np.load(out / "img_emb" / f"img_emb_{k}.npy") for k in range(5)])
    np.testing.assert_array_equal(np.asarray(array), full)
    assert rows[-1]["source"] == reference[1][-1]["source"]


def test_indexing_follows_numpy_exactly(checkpoint, corpus_dir, tmp_path):  # noqa: F811
    out = tmp_path / "emb"
    embed_corpus([corpus_dir], str(out), model=checkpoint, shard_size=4, workers=0, **RUN)
    array, _ = load_embeddings(out)
    full = np.asarray(array)
    n = len(full)
    mask = np.zeros(n, bool)
    mask[[0, 5, 21]] = True
    keys = [3, -1, np.int64(7), slice(4, 13, 2), slice(None, None, -3), [21, 0, 7], np.array([[1, 2], [20, 3]]),
            (slice(2, 6), slice(None, 5)), (5, 3), (-2, -1), (slice(None), 0), None, Ellipsis, (Ellipsis, 1),
            (None, 3), mask, (mask, slice(1, 3)), ([1, 2], [3, 4]), np.zeros((n, 32), bool), [], (4, None),
            # refused by numpy: every one must be refused here too, with numpy's exception type
            n, -n - 1, 2.0, np.array([1.5]), np.zeros(n - 1, bool), np.zeros(n + 1, bool), (1, 2, 3), "a",
            (slice(None), 32), [[True]]]
    for key in keys:
        try:
            want = full[key]
        except Exception as e:  # noqa: BLE001
            with pytest.raises(type(e)):
                array[key]
            continue
        got = array[key]
        assert np.shape(got) == np.shape(want), key
        np.testing.assert_array_equal(got, want)


def test_a_changed_job_is_refused_not_mixed(checkpoint, corpus_dir, tmp_path):  # noqa: F811
    out = str(tmp_path / "emb")
    part0 = os.path.join(corpus_dir, "part0")
    embed_corpus([part0], out, model=checkpoint, shard_size=4, workers=0, **RUN)
    before = _stamps(out)
    with pytest.raises(CorpusError, match="input listing"):
        embed_corpus([part0, os.path.join(corpus_dir, "part1")], out, model=checkpoint, shard_size=4, workers=0,
                     **RUN)
    with pytest.raises(CorpusError, match="shard_size"):
        embed_corpus([part0], out, model=checkpoint, shard_size=3, workers=0, **RUN)
    with pytest.raises(CorpusError, match="dtype"):
        embed_corpus([part0], out, model=checkpoint, shard_size=4, workers=0, **{**RUN, "dtype": "bf16"})
    with pytest.raises(CorpusError, match="draft"):
        embed_corpus([part0], out, model=checkpoint, shard_size=4, workers=0, draft=False, **RUN)
    other = tmp_path / "other-checkpoint"  # same shape, other weights
    shutil.copytree(checkpoint, other)
    torch.manual_seed(99)
    randomize_(SiglipModel(SiglipConfig.from_pretrained(checkpoint), backend="eager")).save_pretrained(other)
    with pytest.raises(CorpusError, match="the model"):
        embed_corpus([part0], out, model=str(other), shard_size=4, workers=0, **RUN)
    assert _stamps(out) == before
    stranger = tmp_path / "not-embeddings"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    with pytest.raises(CorpusError, match="not empty"):
        embed_corpus([part0], str(stranger), model=checkpoint, workers=0, **RUN)


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
    code = main([*EMBED, "--files", str(listing), "--tar", "--field", "image,txt", "--model", checkpoint,
                 "--out", str(out), "--batch", "2", "--workers", "1", "--device", "cpu", "--backend", "eager"])
    err = capsys.readouterr().err
    # --tar makes every listed file a tar: the loose png is then an unreadable tar, reported like the others
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["table"]["name"][0].endswith("shard-0.tar") and len(manifest["table"]["name"]) == 5
    array, rows = load_embeddings(out)
    got = [(r["type"], os.path.basename(r["source"]), r.get("member")) for r in rows]
    assert got == [("image", "shard-0.tar", "s/000.png"), ("image", "shard-0.tar", "s/001.png"),
                   ("image", "shard-1.data", "s/004.png"),
                   ("text", "shard-0.tar", "s/000.txt"), ("text", "shard-0.tar", "s/001.txt"),
                   ("text", "shard-0.tar", "s/002.txt"), ("text", "shard-0.tar", "s/003.txt")]
    assert rows[0]["caption"] == "a red car" and rows[0]["key"] == "s/000"  # image rows carry the sample's caption
    assert load_embeddings(out, "text")[0].shape == (4, 32) and load_embeddings(out, "image")[0].shape == (3, 32)
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    reasons = {(os.path.basename(s["source"]), s.get("key")): s["reason"] for s in skipped}
    assert "no image member" in reasons[("shard-0.tar", "s/002")]
    assert "could not be decoded" in reasons[("shard-0.tar", "s/003")]
    assert "no such file" in reasons[("missing.png", None)]
    assert "not a tar" in reasons[("loose.png", None)]
    assert "truncated" in reasons[("truncated.tar", None)]
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
    assert result.rows == 2 and result.skipped == 1 and result.units == 2
    listing = json.loads((tmp_path / "out.json").read_text())
    assert [r["member"] for r in listing["rows"]] == ["x/1.png", "x/2.png"]
    assert "gzip-compressed" in listing["skipped"][0]["reason"]


def test_brace_patterns_name_tars_without_opening_them(checkpoint, tmp_path):  # noqa: F811
    rng = np.random.default_rng(5)
    for t in range(4):
        _tar(tmp_path / f"data-{t:03d}.tar", {f"k{t}/{i}.png": _png(rng, 12 + i, 15) for i in range(3)})
    assert corpus.expand_braces("d-{008..011}-{a,b}.tar")[:3] == ["d-008-a.tar", "d-008-b.tar", "d-009-a.tar"]
    with pytest.raises(CorpusError, match="range"):
        corpus.expand_braces("d-{9..1}.tar")
    job = corpus.Job.create([str(tmp_path / "data-{000..399999}.tar")], str(tmp_path / "x"), model="m")
    units = corpus.list_units(job)  # 400k shards named in a moment: no file is opened or even looked up
    assert len(units) == 400_000 and units[-1].source.endswith("data-399999.tar")
    out = tmp_path / "out"
    result = embed_corpus([str(tmp_path / "data-{000..004}.tar")], str(out), model=checkpoint, workers=0, **RUN)
    assert result.units == 5 and result.rows == 12 and result.skipped == 1  # data-004.tar does not exist
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert skipped[0]["source"].endswith("data-004.tar") and "no such file" in skipped[0]["reason"]
    whole = tmp_path / "whole"
    embed_corpus([str(tmp_path / f"data-{t:03d}.tar") for t in range(4)], str(whole), model=checkpoint, workers=0,
                 **RUN)
    _same(load_embeddings(out)[0], load_embeddings(whole)[0], load_embeddings(out)[1], load_embeddings(whole)[1])


def test_texts_files_in_byte_chunks_equal_one_chunk(checkpoint, tmp_path):  # noqa: F811
    texts = tmp_path / "t.txt"
    lines = [f"a photo of a cat number {i}" if i % 7 else "" for i in range(40)]
    texts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    whole = embed_corpus(texts=[str(texts)], out=str(tmp_path / "one"), model=str(checkpoint), workers=0, **RUN)
    assert whole.units == 1 and whole.rows == 34
    parts = embed_corpus(texts=[str(texts)], out=str(tmp_path / "many"), model=str(checkpoint), text_chunk_bytes=50,
                         batch_size=3, workers=0, **RUN)
    assert parts.units > 10 and parts.rows == 34
    a, rows_a = load_embeddings(tmp_path / "one")
    b, rows_b = load_embeddings(tmp_path / "many")
    assert [r["caption"] for r in rows_b] == [t for t in lines if t]
    assert [r["caption"] for r in rows_a] == [r["caption"] for r in rows_b]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)  # batches differ: fp32 rounding


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
    """Peak traced memory of the whole job for 40 and 400 texts (in units of ~20 texts): the growth is far below
    what holding the extra rows would cost (360 x 512 float32 = 737 kB) — nor is any per-item listing held."""
    words = ["cat", "dog", "red", "car", "tree", "house", "on", "grass", "a", "photo"]

    def peak(n: int) -> int:
        texts = tmp_path / f"t{n}.txt"
        rng = np.random.default_rng(n)
        texts.write_text("\n".join(" ".join(rng.choice(words) for _ in range(5)) + f" {i:03d}" for i in range(n))
                         + "\n")
        tracemalloc.start()
        try:
            embed_corpus(texts=[str(texts)], out=str(tmp_path / f"out{n}"), model=wide_checkpoint,
                         text_chunk_bytes=600, batch_size=20, workers=0, **RUN)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(10)  # first-call allocations (imports, caches) out of the comparison
    small, large = peak(40), peak(400)
    held_rows = (400 - 40) * 512 * 4
    assert large - small < 0.25 * held_rows, (small, large)
    array, rows = load_embeddings(tmp_path / "out400")
    assert array.shape == (400, 512) and rows[399]["caption"].endswith(" 399")


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
    np.testing.assert_allclose(np.asarray(array[:22]), reference[0], rtol=0, atol=1e-6)
    assert [r["source"] for r in rows[:22]] == [r["source"] for r in reference[1]]
    plain = str(tmp_path / "plain.npy")
    embed_corpus(texts=[str(texts)], out=plain, model=checkpoint, batch_size=4, workers=0, **RUN)
    np.testing.assert_allclose(np.asarray(array[22:]), np.load(plain), rtol=0, atol=1e-6)
    assert [r["caption"] for r in rows[22:]] == ["a cat", "a red car on the grass", "the dog"]


# -- bad input and faults -----------------------------------------------------------------------------------------

def test_bad_arguments_are_refused_naming_them(checkpoint, corpus_dir, tmp_path):  # noqa: F811
    with pytest.raises(CorpusError, match=r"inputs: expected a list of paths, got the single str 'dir'"):
        embed_corpus("dir", str(tmp_path / "o"), model=checkpoint, **RUN)
    with pytest.raises(CorpusError, match="texts: expected a list"):
        embed_corpus(texts="t.txt", out=str(tmp_path / "o"), model=checkpoint, **RUN)
    with pytest.raises(CorpusError, match="inputs: expected paths"):
        embed_corpus([3], str(tmp_path / "o"), model=checkpoint, **RUN)
    with pytest.raises(CorpusError, match="--batch-size must be an int >= 1, got 0"):
        embed_corpus([corpus_dir], str(tmp_path / "o"), model=checkpoint, batch_size=0, **RUN)
    with pytest.raises(CorpusError, match="draft: expected True or False"):
        embed_corpus([corpus_dir], str(tmp_path / "o"), model=checkpoint, draft="no", **RUN)
    # --field txt names members of tar samples: on plain images it would embed nothing asked for
    with pytest.raises(CorpusError, match="--field txt.*plain image files"):
        embed_corpus([corpus_dir], str(tmp_path / "o"), model=checkpoint, fields="txt", **RUN)
    assert not os.path.exists(tmp_path / "o")


def test_named_pipes_links_loops_and_non_utf8_names(checkpoint, tmp_path):  # noqa: F811
    """A FIFO in a folder (it used to hang the job) is skipped with its reason; a linked folder is followed, a link
    back up is not (a loop); a file name that is not UTF-8 is embedded and recorded losslessly."""
    rng = np.random.default_rng(6)
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "a" / "1.png").write_bytes(_png(rng, 14, 14))
    os.mkfifo(root / "a" / "2.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "3.png").write_bytes(_png(rng, 15, 11))
    os.symlink(elsewhere, root / "b")
    os.symlink(root, root / "a" / "up")  # a loop
    odd = os.fsencode(str(root / "a")) + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    with open(odd, "wb") as f:
        f.write(_png(rng, 12, 19))
    out = tmp_path / "out"
    result = embed_corpus([str(root)], str(out), model=checkpoint, workers=0, **RUN)
    assert result.rows == 3 and result.skipped == 2
    array, rows = load_embeddings(out)
    sources = [os.fsencode(r["source"]) for r in rows]
    assert odd in sources and os.fsencode(str(root / "b" / "3.png")) in sources
    skipped = {os.path.basename(s["source"]): s["reason"] for s in
               (json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines())}
    assert "named pipe" in skipped["2.png"] and "loop" in skipped["up"]


def test_truncated_tars_are_reported_as_truncated(checkpoint, tmp_path):  # noqa: F811
    rng = np.random.default_rng(8)
    _tar(tmp_path / "full.tar", {f"s/{i}.png": _png(rng, 12, 12 + i) for i in range(4)})
    data = (tmp_path / "full.tar").read_bytes()
    members, broken = corpus.scan_tar(str(tmp_path / "full.tar"))
    assert broken is None and len(members) == 4
    third = members[2].offset - 512  # the third member's header
    (tmp_path / "cut-in-header.tar").write_bytes(data[: third + 100])
    (tmp_path / "cut-in-data.tar").write_bytes(data[: members[2].offset + 10])
    (tmp_path / "cut-at-member.tar").write_bytes(data[: third])
    for name, n in (("cut-in-header.tar", 2), ("cut-in-data.tar", 2), ("cut-at-member.tar", 2)):
        members, broken = corpus.scan_tar(str(tmp_path / name))
        assert len(members) == n and broken is not None and "truncated" in broken, (name, broken)
    out = tmp_path / "out"
    result = embed_corpus([str(tmp_path / "cut-in-header.tar")], str(out), model=checkpoint, workers=0, **RUN)
    assert result.rows == 2 and result.skipped == 1
    (entry,) = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert "truncated" in entry["reason"] and entry["source"].endswith("cut-in-header.tar")


def test_duplicate_members_and_two_image_members_are_reported(checkpoint, tmp_path):  # noqa: F811
    rng = np.random.default_rng(9)
    _tar(tmp_path / "d.tar", [("a.png", _png(rng, 12, 12)), ("a.png", _png(rng, 13, 13)), ("b.jpg", _png(rng, 9, 9)),
                              ("b.png", _png(rng, 10, 10)), ("c.png", _png(rng, 11, 14))])
    out = tmp_path / "out"
    result = embed_corpus([str(tmp_path / "d.tar")], str(out), model=checkpoint, workers=0, **RUN)
    assert result.rows == 1 and result.skipped == 2
    reasons = {s["key"]: s["reason"] for s in
               (json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines())}
    assert "'a.png' appears 2 times" in reasons["a"] and "2 image members" in reasons["b"]
    assert load_embeddings(out)[1][0]["member"] == "c.png"


@pytest.mark.parametrize("damage", ["zeros", "rows", "truncated", "metadata", "stats"])
def test_a_damaged_finished_unit_is_refused_by_the_reader_and_redone(checkpoint, corpus_dir, tmp_path,  # noqa: F811
                                                                    damage):
    out = tmp_path / "emb"
    embed_corpus([corpus_dir], str(out), model=checkpoint, shard_size=6, batch_size=4, workers=0, **RUN)
    clean = np.asarray(load_embeddings(out)[0])
    npy, meta = out / "img_emb" / "img_emb_2.npy", out / "metadata" / "metadata_2.jsonl"
    if damage == "zeros":  # same size, same header, rows zeroed
        data = bytearray(npy.read_bytes())
        data[200:] = bytes(len(data) - 200)
        npy.write_bytes(bytes(data))
    elif damage == "rows":
        np.save(npy, np.load(npy)[:-1])
    elif damage == "truncated":
        npy.write_bytes(npy.read_bytes()[:-64])
    elif damage == "metadata":
        meta.write_text(meta.read_text().replace('"type"', '"typo"', 1))
    else:
        (out / "stats" / "stats_2.json").write_text('{"unit": 2, "fi')
    if damage != "stats":  # (a damaged record: the manifest still verifies the files, which are intact)
        array, rows = load_embeddings(out)
        with pytest.raises(corpus.DamagedOutputError, match="unit '.*'"):
            np.asarray(array) if damage != "metadata" else [rows[i] for i in range(len(rows))]
        array[:2]  # units that are intact stay readable
    stamps = _stamps(out)
    result = embed_corpus([corpus_dir], str(out), model=checkpoint, shard_size=6, batch_size=4, workers=0, **RUN)
    assert result.units_written == [2] and result.units_reused == [0, 1, 3, 4]
    for name, stamp in stamps.items():
        if "_2." not in name:
            assert _stamps(out)[name] == stamp, name
    np.testing.assert_array_equal(np.asarray(load_embeddings(out)[0]), clean)


def test_a_second_job_on_one_output_is_refused_by_its_lock(checkpoint, corpus_dir, tmp_path):  # noqa: F811
    out = tmp_path / "emb"
    part0 = os.path.join(corpus_dir, "part0")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        out.mkdir()
        (out / "lock").write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid, "started": 0}))
        with pytest.raises(CorpusError, match=rf"another job \(host {os.uname().nodename}, pid {holder.pid}"):
            embed_corpus([part0], str(out), model=checkpoint, workers=0, **RUN)
        assert os.listdir(out) == ["lock"]
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over; the job's own lock is gone when it ends
    result = embed_corpus([part0], str(out), model=checkpoint, workers=0, **RUN)
    assert result.rows > 0 and not (out / "lock").exists()


def test_a_full_disk_names_the_file_and_leaves_the_output_consistent(checkpoint, corpus_dir, tmp_path):  # noqa: F811
    """The job under a file size limit (RLIMIT_FSIZE: writes past it fail as on a full disk): the error names the
    file it could not write; the finished units stay, no temporary is left; a rerun without the limit finishes."""
    out = str(tmp_path / "emb")
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from siglip_fast import corpus
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))
        try:
            corpus.embed_corpus([{corpus_dir!r}], {out!r}, model={checkpoint!r}, shard_size=3, workers=0,
                                device="cpu", dtype="fp32", backend="eager", progress=False)
        except corpus.CorpusError as e:
            print(e)
            sys.exit(3)
    """)
    env = {**os.environ, "PYTHONPATH": REPO}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                         check=False)
    assert run.returncode == 3, run.stderr[-3000:]
    assert "cannot write " + out in run.stdout and "File too large" in run.stdout, run.stdout
    names = [n for d in ("img_emb", "metadata", "stats") for n in os.listdir(os.path.join(out, d))]
    assert not any(".tmp." in n for n in names)
    finished = sorted(os.listdir(os.path.join(out, "stats")))
    result = embed_corpus([corpus_dir], out, model=checkpoint, shard_size=3, workers=0, **RUN)
    assert len(result.units_reused) == len(finished) and result.rows == 22
    assert resource.getrlimit(resource.RLIMIT_FSIZE)  # (the limit was the child's only)


def test_reduced_size_jpeg_decoding_is_close_and_can_be_turned_off(checkpoint, tmp_path):  # noqa: F811
    """Image.draft on 640x480 JPEGs for a 32x32 model (decoded at 1/4 scale, 160x120: the smallest DCT scale keeping
    both sides >= 2 x 32; 1/8 would give 60 rows): embeddings within a
    cosine of 0.99 of full decoding; draft=False is the full decode, bitwise load_image's pixels."""
    g = np.random.default_rng(10)
    base = g.integers(0, 256, (480 // 16, 640 // 16, 3), dtype=np.uint8)
    for i in range(6):
        PIL.Image.fromarray(np.roll(base, 3 * i, axis=1)).resize((640, 480), PIL.Image.BILINEAR).save(
            tmp_path / f"{i}.jpg", quality=90)
    paths = [str(tmp_path / f"{i}.jpg") for i in range(6)]
    image = corpus.open_image(paths[0], corpus.decode.draft_side(SiglipImageProcessor(size={"height": 32,
                                                                                              "width": 32}), True))
    assert image.size == (160, 120)
    drafted = np.asarray(embed_corpus(paths, str(tmp_path / "d.npy"), model=checkpoint, workers=0, **RUN) and
                         np.load(tmp_path / "d.npy"))
    full = embed_corpus(paths, str(tmp_path / "f.npy"), model=checkpoint, workers=0, draft=False, **RUN)
    assert full.rows == 6
    full = np.load(tmp_path / "f.npy")
    cos = (drafted * full).sum(1)
    assert cos.min() > 0.99 and not np.array_equal(drafted, full), cos
    model = SiglipModel.from_pretrained(checkpoint, backend="eager")
    pixels = SiglipProcessor.from_pretrained(checkpoint)(images=[load_image(p) for p in paths],
                                                         return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    np.testing.assert_allclose(full, want.numpy(), rtol=0, atol=1e-5)


def test_a_killed_process_resumes_with_only_the_unfinished_units(checkpoint, corpus_dir, reference,  # noqa: F811
                                                                tmp_path):
    """SIGKILL once two units are finished (in a thread of the job's process, watching the stats folder): the rerun
    cleans the temporaries, keeps the finished units untouched, writes the rest; the rows equal a clean run."""
    out = str(tmp_path / "emb")
    script = textwrap.dedent(f"""
        import os, signal, threading, time
        from siglip_fast import corpus
        def watch():
            while True:
                stats = os.path.join({out!r}, "stats")
                if os.path.isdir(stats) and len([n for n in os.listdir(stats) if ".tmp." not in n]) >= 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.001)
        threading.Thread(target=watch, daemon=True).start()
        corpus.embed_corpus([{corpus_dir!r}], {out!r}, model={checkpoint!r}, shard_size=3, batch_size=4, workers=1,
                            device="cpu", dtype="fp32", backend="eager", progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": REPO}
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                            check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    finished = sorted(int(n.split("_")[1].split(".")[0]) for n in os.listdir(os.path.join(out, "stats"))
                      if ".tmp." not in n)
    assert 2 <= len(finished) < 9 and (tmp_path / "emb" / "lock").exists()
    stamps = _stamps(out)
    result = embed_corpus([corpus_dir], out, model=checkpoint, shard_size=3, batch_size=4, workers=0, **RUN)
    assert result.units_reused == finished and sorted(result.units_written + finished) == list(range(9))
    assert all(_stamps(out)[n] == s for n, s in stamps.items() if int(n.split("_")[-1].split(".")[0]) in finished)
    assert not any(".tmp." in n for n in _stamps(out))
    array, rows = load_embeddings(out)
    _same(array, reference[0], rows, reference[1])
    clean = str(tmp_path / "clean")
    embed_corpus([corpus_dir], clean, model=checkpoint, shard_size=3, batch_size=4, workers=0, **RUN)
    _same(array, load_embeddings(clean)[0], rows, load_embeddings(clean)[1], exact=True)


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
    items = [corpus.Item("image", p, 0) for p in paths]
    for processor in (Siglip2ImageProcessor(patch_size=4, max_num_patches=12),
                      Siglip2ImageProcessor(patch_size=3, max_num_patches=20, image_mean=[0.48, 0.45, 0.4],
                                            image_std=[0.26, 0.26, 0.27], rescale_factor=1 / 256)):
        loader = corpus.decode_loader([items], processor, workers=0, uint8=False,
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


def test_the_job_defaults_to_bf16_on_cpus_with_native_bf16(monkeypatch):
    """Issue 24: without --dtype, a CPU job runs bf16 where the CPU computes it natively, else fp32; asked for, fp32."""
    from siglip_fast import cpu
    from siglip_fast.corpus.job import choose_device_dtype

    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda native=native: native)
        assert choose_device_dtype("cpu", None, 0, 1) == (torch.device("cpu"), want)
        assert choose_device_dtype("cpu", "fp32", 0, 1) == (torch.device("cpu"), torch.float32)
