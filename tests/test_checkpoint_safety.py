"""Checkpoint data safety (issue 13): saving over an older checkpoint, atomic saves, bad JSON, index entries that
point outside the checkpoint, devices checked before anything is read."""

from __future__ import annotations

import json
import os
import re

import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file, save_file

import siglip_fast as sf
from tests._tiny import hf_config, randomize_

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two different random SiglipModels of one shape, A saved by transformers, B built here."""
    torch.manual_seed(2)
    a = randomize_(transformers.SiglipModel(hf_config("base"))).eval()
    path = tmp_path_factory.mktemp("a")
    a.save_pretrained(path)
    b = sf.SiglipModel.from_pretrained(path)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p))
    return path, load_file(os.path.join(path, "model.safetensors")), b


def _write_sharded(directory, state, prefix="model", ext="safetensors"):
    keys = sorted(state)
    shards = {f"{prefix}-00001-of-00002.{ext}": keys[: len(keys) // 2],
              f"{prefix}-00002-of-00002.{ext}": keys[len(keys) // 2:]}
    weight_map = {}
    for name, ks in shards.items():
        part = {k: state[k] for k in ks}
        save_file(part, directory / name) if ext == "safetensors" else torch.save(part, directory / name)
        weight_map.update({k: name for k in ks})
    index = "model.safetensors.index.json" if ext == "safetensors" else "pytorch_model.bin.index.json"
    (directory / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _copy_config(src, dst):
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f, open(os.path.join(dst, "config.json"), "w") as g:
        g.write(f.read())


def _assert_weights(model, expected_model):
    ref = expected_model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_save_over_stale_checkpoint_files(two_models, tmp_path):
    """Sharded safetensors, sharded .bin and a single .bin of checkpoint A in a directory; B saved there: every loader
    reads B and the stale files are gone."""
    path_a, state_a, b = two_models
    _copy_config(path_a, tmp_path)
    _write_sharded(tmp_path, state_a)
    _write_sharded(tmp_path, state_a, prefix="pytorch_model", ext="bin")
    torch.save(state_a, tmp_path / "pytorch_model.bin")
    (tmp_path / "tokenizer_config.json").write_text("{}")  # not a weight file: kept
    b.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "tokenizer_config.json"]
    _assert_weights(sf.SiglipModel.from_pretrained(tmp_path), b)
    theirs = transformers.SiglipModel.from_pretrained(tmp_path)
    _assert_weights(theirs, b)


def test_single_file_wins_over_a_stale_index(two_models, tmp_path):
    """A stale index beside model.safetensors (e.g. written by another tool) never shadows the file, as in
    transformers."""
    path_a, state_a, b = two_models
    _copy_config(path_a, tmp_path)
    _write_sharded(tmp_path, state_a)
    save_file({k: v.contiguous() for k, v in b.state_dict().items()}, tmp_path / "model.safetensors")
    _assert_weights(sf.SiglipModel.from_pretrained(tmp_path), b)
    _assert_weights(transformers.SiglipModel.from_pretrained(tmp_path), b)


def test_failed_weight_write_leaves_the_old_checkpoint(two_models, tmp_path, monkeypatch):
    path_a, _, b = two_models
    b.save_pretrained(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}

    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    other = sf.SiglipModel.from_pretrained(path_a)
    with pytest.raises(OSError, match="No space left"):
        other.save_pretrained(tmp_path)
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before  # no temp file left
    _assert_weights(sf.SiglipModel.from_pretrained(tmp_path), b)


def test_save_replaces_weights_then_config_from_the_same_directory(two_models, tmp_path, monkeypatch):
    _, _, b = two_models
    calls = []
    real_replace = os.replace

    def recording_replace(src, dst):
        calls.append((os.path.dirname(src), os.path.basename(dst), os.path.isfile(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    b.save_pretrained(tmp_path)
    assert calls == [(str(tmp_path), "model.safetensors", True), (str(tmp_path), "config.json", True)]


def test_save_does_not_change_the_live_config(two_models, tmp_path):
    path_a, _, _ = two_models
    model = sf.SiglipModel.from_pretrained(path_a).to(torch.bfloat16)
    before = model.config.to_dict()
    model.save_pretrained(tmp_path)
    assert model.config.to_dict() == before
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["dtype"] == "bfloat16" and saved["architectures"] == ["SiglipModel"]
    model.text_model.save_pretrained(tmp_path / "text")
    assert model.config.to_dict() == before
    assert json.loads((tmp_path / "text" / "config.json").read_text())["architectures"] == ["SiglipTextModel"]


def test_config_save_is_atomic(tmp_path, monkeypatch):
    config = sf.SiglipConfig()
    config.save_pretrained(tmp_path)
    before = (tmp_path / "config.json").read_bytes()

    def failing_dumps(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(json, "dumps", failing_dumps)
    with pytest.raises(RuntimeError, match="interrupted"):
        sf.SiglipConfig(initializer_factor=3.0).save_pretrained(tmp_path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["config.json"] and (tmp_path / "config.json").read_bytes() == before


@pytest.mark.parametrize("content, match", [
    (b"\xff\xfe{\x00}", r"config file .*config\.json is not UTF-8"),
    (b"{not json", r"config file .*config\.json is not valid JSON"),
    (b"[1, 2]", r"config file .*config\.json must hold a JSON object, got a JSON list"),
    (b'{"model_type": "siglip", "vision_config": {"hidden_size": 30, "num_attention_heads": 4}}',
     r"config file .*config\.json: .*hidden_size \(30\) must be divisible"),
])
def test_bad_config_json_names_the_file(two_models, tmp_path, content, match):
    path_a, _, _ = two_models
    _copy_config(path_a, tmp_path)
    os.link(path_a / "model.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        sf.SiglipModel.from_pretrained(tmp_path)


def test_config_field_of_the_wrong_type_names_file_and_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip", "text_config": 5}))
    with pytest.raises(TypeError, match=r"config file .*config\.json: SiglipConfig\.text_config must be a dict"):
        sf.SiglipConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("content, match", [
    (b"\x80\x81", r"checkpoint index .*model\.safetensors\.index\.json is not UTF-8"),
    (b"{", r"checkpoint index .*model\.safetensors\.index\.json is not valid JSON"),
    (b'"weights"', r"must hold a JSON object, got a JSON str"),
    (b'{"metadata": {}}', r"index\.json has no 'weight_map' field"),
    (b'{"weight_map": ["model-00001-of-00002.safetensors"]}', r"field 'weight_map' must be a non-empty object"),
    (b'{"weight_map": {"logit_bias": 3}}', r"weight_map\['logit_bias'\] must be a shard file name"),
    (b'{"weight_map": {"logit_bias": "gone.safetensors"}}', r"names shard gone\.safetensors, which is not in"),
])
def test_bad_index_names_the_file_and_field(two_models, tmp_path, content, match):
    path_a, _, _ = two_models
    _copy_config(path_a, tmp_path)
    (tmp_path / "model.safetensors.index.json").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        sf.SiglipModel.from_pretrained(tmp_path)


def test_index_entries_outside_the_checkpoint_are_refused(two_models, tmp_path):
    path_a, state_a, _ = two_models
    save_file(state_a, tmp_path / "outside.safetensors")  # a readable file: without the check it would load
    ckpt = tmp_path / "ckpt"
    _copy_config(path_a, ckpt)
    for target in ["../outside.safetensors", str(tmp_path / "outside.safetensors"), "sub/../../outside.safetensors"]:
        (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(state_a, target)}))
        with pytest.raises(ValueError, match="resolves outside the checkpoint directory"):
            sf.SiglipModel.from_pretrained(ckpt)
    # Shards in a subdirectory of the checkpoint are fine.
    os.makedirs(ckpt / "shards")
    save_file(state_a, ckpt / "shards" / "all.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": dict.fromkeys(state_a, "shards/all.safetensors")}))
    model = sf.SiglipModel.from_pretrained(ckpt)
    assert torch.equal(model.logit_scale, state_a["logit_scale"])


def test_unavailable_device_fails_up_front(two_models, tmp_path, monkeypatch):
    """A device this machine lacks is named before any file is read (here the weights are garbage on purpose)."""
    path_a, _, _ = two_models
    _copy_config(path_a, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda': CUDA is not available on this machine"):
        sf.SiglipModel.from_pretrained(tmp_path, device="cuda")
    with pytest.raises(ValueError, match=r"device='cuda:1': CUDA is not available"):
        sf.SiglipModel.from_pretrained(tmp_path, device="cuda:1")
    with pytest.raises(ValueError, match=r"device='gpu' is not a valid device"):
        sf.SiglipModel.from_pretrained(tmp_path, device="gpu")
    with pytest.raises(ValueError, match=r"device='meta' holds no data"):
        sf.SiglipModel.from_pretrained(tmp_path, device="meta")
    with pytest.raises(TypeError, match="device must be a str, an int or a torch.device"):
        sf.SiglipModel.from_pretrained(tmp_path, device=1.5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device='cuda:3': this machine has 1 CUDA device"):
        sf.SiglipModel.from_pretrained(tmp_path, device="cuda:3")


def test_save_over_the_checkpoint_the_model_was_loaded_from(two_models, tmp_path):
    """Loading reads tensors from the files (safetensors / mmap'd .bin); saving back into the same directory replaces
    the files instead of writing into them, so neither the saved checkpoint nor the live model is corrupted."""
    path_a, state_a, _ = two_models
    _copy_config(path_a, tmp_path)
    torch.save(state_a, tmp_path / "pytorch_model.bin")  # read with mmap=True
    model = sf.SiglipModel.from_pretrained(tmp_path)
    with torch.no_grad():
        model.logit_bias.fill_(7.0)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    again = sf.SiglipModel.from_pretrained(tmp_path)
    _assert_weights(again, model)
    assert again.logit_bias.item() == 7.0
    for name, p in model.named_parameters():
        if name != "logit_bias":
            assert torch.equal(p, state_a[name]), name



# --- checkpoints that lie, and saves that cannot complete (issue 23) ---------------------------------------------

@pytest.fixture(scope="module")
def vision_checkpoint(tmp_path_factory):
    """A transformers SiglipVisionModel checkpoint (keys with the vision_model. prefix) and its state."""
    torch.manual_seed(5)
    theirs = randomize_(transformers.SiglipVisionModel(hf_config("base").vision_config)).eval()
    path = tmp_path_factory.mktemp("vision")
    theirs.save_pretrained(path)
    return path, load_file(os.path.join(path, "model.safetensors")), theirs


def test_a_weight_stored_with_and_without_the_prefix_must_agree(vision_checkpoint, tmp_path):
    """The same tower weight under `vision_model.x` and `x` with two values is refused, naming both keys (which one
    to load is a guess); the same value twice loads."""
    path, state, theirs = vision_checkpoint
    _copy_config(path, tmp_path)
    key = "post_layernorm.weight"  # transformers v5 writes tower keys without the prefix; v4 wrote them with it
    assert key in state
    lying = dict(state)
    lying["vision_model." + key] = state[key] + torch.rand_like(state[key]) + 0.1
    save_file(lying, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"stored twice, with and without the 'vision_model\.' prefix, with "
                                         r"different values \(1\): post_layernorm\.weight / "
                                         r"vision_model\.post_layernorm\.weight"):
        sf.SiglipVisionModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="stored twice"):  # lenient loading does not pick one either
        sf.SiglipVisionModel.from_pretrained(tmp_path, output_loading_info=True)
    lying["vision_model." + key] = state[key].clone()
    save_file(lying, tmp_path / "model.safetensors")
    _assert_weights(sf.SiglipVisionModel.from_pretrained(tmp_path), theirs)


@pytest.mark.parametrize("config_dtype", ["float32", "float16", None])
@pytest.mark.parametrize("first", ["fp16", "fp32"])
def test_mixed_precision_checkpoint_loads_in_one_dtype_as_transformers(vision_checkpoint, tmp_path, config_dtype,
                                                                      first):
    """dtype=None loads every floating tensor in one dtype, chosen as transformers v5's dtype="auto" chooses it: the
    config's `dtype`, else the checkpoint's first floating tensor's; the forward runs and equals transformers'."""
    path, state, _ = vision_checkpoint
    config = json.loads((path / "config.json").read_text())
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    if config_dtype is not None:
        config["dtype"] = config_dtype
    (tmp_path / "config.json").write_text(json.dumps(config))
    keys = sorted(state)  # the file's order: its first tensor is keys[0]
    mixed = {k: state[k].half() if (i % 2 == 0) == (first == "fp16") else state[k].float() for i, k in enumerate(keys)}
    save_file(mixed, tmp_path / "model.safetensors")
    ours = sf.SiglipVisionModel.from_pretrained(tmp_path, backend="eager")
    theirs = transformers.SiglipVisionModel.from_pretrained(tmp_path).eval()
    expected = getattr(torch, config_dtype) if config_dtype else (torch.float16 if first == "fp16" else torch.float32)
    assert {p.dtype for p in ours.parameters()} == {expected} == {p.dtype for p in theirs.parameters()}
    pixels = torch.randn(2, 3, 20, 20).to(expected)
    with torch.no_grad():
        a, b = ours(pixel_values=pixels).pooler_output, theirs(pixel_values=pixels).pooler_output
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-2}[expected]  # fp16: a few ulps of O(1) values
    assert a.dtype == expected and (a.float() - b.float()).abs().max().item() <= tolerance


@pytest.mark.parametrize("device", ["cpu:0", torch.device("cpu", 0), "cpu", torch.device("cpu")])
def test_cpu_with_an_index_is_the_cpu(vision_checkpoint, device):
    path, _, theirs = vision_checkpoint
    model = sf.SiglipVisionModel.from_pretrained(path, device=device)
    assert model.device == torch.device("cpu")
    _assert_weights(model, theirs)
    assert sf.SiglipVisionModel.from_pretrained(path, device_map={"": device}).device == torch.device("cpu")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_an_integer_tensor_for_a_weight_is_refused_naming_it(vision_checkpoint, tmp_path, dtype):
    path, state, _ = vision_checkpoint
    _copy_config(path, tmp_path)
    bad = dict(state)
    key = "head.probe"
    bad[key] = (state[key] * 10).to(dtype)
    save_file(bad, tmp_path / "model.safetensors")
    name = str(dtype).removeprefix("torch.")
    for kwargs in ({}, {"output_loading_info": True}, {"dtype": torch.float32}):
        with pytest.raises(ValueError, match=rf"must be floating point, of an integer/bool dtype \(1\): "
                                             rf"{re.escape(key)} \({name}\)"):
            sf.SiglipVisionModel.from_pretrained(tmp_path, **kwargs)


@pytest.mark.parametrize("content, match", [
    (b"{not json", r"config file .*config\.json is not valid JSON"),
    (b"[1, 2]", r"config file .*config\.json must hold a JSON object, got a JSON list"),
    (b"\xff\xfe", r"config file .*config\.json is not UTF-8"),
    (b'{"model_type": ["siglip"]}', r"config file .*config\.json: model_type \['siglip'\] is not a SigLIP"),
    (b'{"hidden_size": 32}', r"config file .*config\.json: model_type None is not a SigLIP"),
    (b'{"model_type": "siglip", "architectures": "SiglipModel"}',
     r"config file .*config\.json: architectures must be a list"),
])
def test_load_model_names_a_bad_config_file(two_models, tmp_path, content, match):
    """load_model (what the embed / classify jobs use) names the file, as from_pretrained does."""
    path_a, _, _ = two_models
    os.link(path_a / "model.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        sf.load_model(tmp_path)


def _failing(error):
    def save(*args, **kwargs):
        target = args[1] if len(args) > 1 else kwargs.get("filename", kwargs.get("f"))
        with open(target, "wb") as f:
            f.write(b"half a checkpoint")
        raise error
    return save


@pytest.mark.parametrize("safe_serialization", [True, False])
@pytest.mark.parametrize("reason, errno_", [("Permission denied (os error 13)", 13),
                                             ("No space left on device (os error 28)", 28)])
def test_a_save_that_cannot_be_written_is_an_os_error_naming_the_file(two_models, tmp_path, monkeypatch,
                                                                      safe_serialization, reason, errno_):
    """A read-only or full file system makes safetensors raise its SafetensorError (torch.save a RuntimeError),
    which is not an OSError: save_pretrained raises an OSError naming the file (and the errno safetensors reports),
    and the checkpoint already there stays whole. (Injected: the tests may run as root, for whom nothing is
    read-only, and on a disk with room.)"""
    from safetensors import SafetensorError

    _, _, b = two_models
    b.save_pretrained(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    if safe_serialization:
        error = SafetensorError(f'Error while serializing: I/O error: {reason} at path "{tmp_path}/.tmpXYZ"')
        monkeypatch.setattr(safetensors.torch, "save_file", _failing(error))
    else:
        error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        monkeypatch.setattr(torch, "save", _failing(error))
    name = "model.safetensors" if safe_serialization else "pytorch_model.bin"
    with pytest.raises(OSError, match=rf"could not write {re.escape(str(tmp_path / name))}") as info:
        b.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    assert info.value.errno == (errno_ if safe_serialization else None)
    assert info.value.__cause__ is error
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before  # no temp file left
    _assert_weights(sf.SiglipModel.from_pretrained(tmp_path), b)


def test_a_config_write_that_fails_names_the_file(tmp_path, monkeypatch):
    import builtins

    sf.SiglipConfig().save_pretrained(tmp_path)
    before = (tmp_path / "config.json").read_bytes()
    real_open = builtins.open

    def full_disk_open(file, mode="r", *args, **kwargs):
        if "w" in mode and os.fspath(file).startswith(str(tmp_path)):
            raise OSError(28, "No space left on device", os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk_open)
    with pytest.raises(OSError, match=rf"No space left on device: '{re.escape(str(tmp_path / 'config.json'))}'"):
        sf.SiglipConfig(initializer_factor=2.0).save_pretrained(tmp_path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["config.json"] and (tmp_path / "config.json").read_bytes() == before


@pytest.mark.parametrize("what", ["model", "config"])
def test_save_pretrained_into_a_file_or_nowhere_is_a_clear_error(two_models, tmp_path, what):
    _, _, b = two_models
    target = b if what == "model" else b.config
    existing = tmp_path / "a_file"
    existing.write_text("keep me")
    with pytest.raises(ValueError, match=rf"save_directory must be a directory, got '{re.escape(str(existing))}', "
                                         r"which is an existing file"):
        target.save_pretrained(existing)
    assert existing.read_text() == "keep me"
    with pytest.raises(ValueError, match=r"save_directory must be a directory path, got the empty string ''"):
        target.save_pretrained("")
    with pytest.raises(TypeError, match=r"save_directory must be a str or os.PathLike, got int"):
        target.save_pretrained(3)
    assert os.listdir(tmp_path) == ["a_file"]
