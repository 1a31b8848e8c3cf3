"""Checkpoint loading: file formats, key layouts, dtype/device, strict errors, bad inputs, memory."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import siglip_fast as sf
from tests._tiny import hf_config, inputs, randomize_

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    model = randomize_(transformers.SiglipModel(hf_config("base"))).eval()
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path)
    return model, path


def _copy_config(src, dst):
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f, open(os.path.join(dst, "config.json"), "w") as g:
        g.write(f.read())


def _assert_same_weights(ours, theirs):
    theirs_sd = theirs.state_dict()
    for k, v in ours.state_dict().items():
        assert torch.equal(v, theirs_sd[k].to(v.dtype)), k


def test_sharded_safetensors_and_torch_bin(checkpoint, tmp_path):
    theirs, path = checkpoint
    state = load_file(os.path.join(path, "model.safetensors"))
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    sharded = tmp_path / "sharded"
    _copy_config(path, sharded)
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, sharded / name)
        weight_map.update({k: name for k in ks})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _assert_same_weights(sf.SiglipModel.from_pretrained(sharded), theirs)

    binary = tmp_path / "bin"
    _copy_config(path, binary)
    torch.save(state, binary / "pytorch_model.bin")
    _assert_same_weights(sf.SiglipModel.from_pretrained(binary), theirs)


def test_v4_prefixed_tower_keys(checkpoint, tmp_path):
    theirs, path = checkpoint
    state = load_file(os.path.join(path, "model.safetensors"))
    vision = {k: v for k, v in state.items() if k.startswith("vision_model.")}  # v4 SiglipVisionModel layout
    _copy_config(path, tmp_path)
    save_file(vision, tmp_path / "model.safetensors")
    model = sf.SiglipVisionModel.from_pretrained(tmp_path)
    assert torch.equal(model.head.probe, theirs.vision_model.head.probe)


def test_dtype_and_device(checkpoint):
    theirs, path = checkpoint
    model = sf.SiglipModel.from_pretrained(path, dtype=torch.bfloat16, device="cpu")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.text_model.embeddings.position_ids.dtype == torch.long
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert sf.SiglipModel.from_pretrained(path, torch_dtype="float16").dtype == torch.float16
    assert sf.SiglipModel.from_pretrained(path, attn_implementation="sdpa").backend == "sdpa"
    with pytest.raises(ValueError, match="attn_implementation"):
        sf.SiglipModel.from_pretrained(path, attn_implementation="flash_attention_2")
    assert not model.training
    ids, pixels = inputs(theirs.config, batch=1)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels.bfloat16())
    assert out.logits_per_image.dtype == torch.bfloat16 and out.logits_per_image.isfinite().all()


def test_missing_unexpected_and_mismatched_keys_are_listed(checkpoint, tmp_path):
    theirs, path = checkpoint
    state = load_file(os.path.join(path, "model.safetensors"))
    _copy_config(path, tmp_path)
    broken = dict(state)
    del broken["text_model.head.bias"]
    broken["vision_model.extra.weight"] = torch.randn(3)
    broken["logit_bias"] = torch.randn(2)
    save_file(broken, tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as e:
        sf.SiglipModel.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing keys (1): text_model.head.bias" in msg
    assert "unexpected keys (1): vision_model.extra.weight" in msg
    assert "logit_bias: checkpoint (2,), model (1,)" in msg


def test_bad_paths_and_arguments(checkpoint, tmp_path, monkeypatch):
    _, path = checkpoint
    with pytest.raises(ValueError, match="no such directory"):
        sf.SiglipModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="no config.json"):
        sf.SiglipModel.from_pretrained(tmp_path)
    _copy_config(path, tmp_path / "noweights")
    with pytest.raises(ValueError, match="no weights"):
        sf.SiglipModel.from_pretrained(tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not read"):
        sf.SiglipModel.from_pretrained(tmp_path / "noweights")
    with pytest.raises(ValueError, match="dtype"):
        sf.SiglipModel.from_pretrained(path, dtype="int8")
    with pytest.raises(ValueError, match="backend"):
        sf.SiglipModel.from_pretrained(path, backend="cuda")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ValueError, match="huggingface_hub"):
        sf.SiglipModel.from_pretrained("google/siglip-base-patch16-224")


def test_meta_init_never_holds_two_copies(checkpoint):
    """Loading assigns the tensors read from the file: no parameter is a copy of a freshly initialised one."""
    _, path = checkpoint
    model = sf.SiglipModel.from_pretrained(path)
    state = load_file(os.path.join(path, "model.safetensors"))
    for name, p in model.named_parameters():
        assert torch.equal(p, state[name])


def test_bad_model_inputs(checkpoint):
    theirs, path = checkpoint
    model = sf.SiglipModel.from_pretrained(path)
    ids, pixels = inputs(theirs.config, batch=2)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.get_text_features(input_ids=torch.randint(0, 10, (2, 12)))
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(B, 3, H, W\)"):
        model.get_image_features(pixel_values=torch.randn(2, 4, 20, 20))
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        model.get_text_features(input_ids=torch.randn(2, 5))
    with pytest.raises(ValueError, match="as many texts as images"):
        model(input_ids=ids, pixel_values=pixels[:1], return_loss=True)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model.get_text_features(input_ids=ids, attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError):  # another size without interpolate_pos_encoding (transformers: RuntimeError)
        model.get_image_features(pixel_values=torch.randn(1, 3, 25, 25))
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("fast")


@pytest.mark.parametrize("umask", [0o022, 0o002])
@pytest.mark.parametrize("safe_serialization", [True, False])
def test_saved_files_get_the_mode_of_a_plain_write(tmp_path, umask, safe_serialization):
    """Checkpoints are shared: the weights get the mode a plain write gets under the umask (safetensors alone would
    create them 0600), the same as config.json."""
    model = sf.SiglipVisionModel(sf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                       num_attention_heads=2, image_size=28, patch_size=14))
    old = os.umask(umask)
    try:
        model.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    finally:
        os.umask(old)
    weights = "model.safetensors" if safe_serialization else "pytorch_model.bin"
    modes = {name: os.stat(tmp_path / name).st_mode & 0o777 for name in (weights, "config.json")}
    assert modes == {weights: 0o666 & ~umask, "config.json": 0o666 & ~umask}
