"""from_pretrained as transformers call sites use it (issue 14): loading info, state_dict, a given config, new
classification heads, device_map, hub options, config fields as keyword arguments — compared with transformers."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import siglip_fast as sf
from tests._tiny import hf_config, randomize_

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    model = randomize_(transformers.SiglipModel(hf_config("base"))).eval()
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory):
    torch.manual_seed(4)
    model = randomize_(transformers.SiglipForImageClassification(hf_config("base", num_labels=3))).eval()
    path = tmp_path_factory.mktemp("cls")
    model.save_pretrained(path)
    return model, path


def _copy_config(src, dst):
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f, open(os.path.join(dst, "config.json"), "w") as g:
        g.write(f.read())


def _equal_to(model, theirs, skip=()):
    ref = theirs.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith(skip):
            assert torch.equal(v, ref[k]), k


@pytest.mark.parametrize("cls", ["SiglipModel", "SiglipVisionModel", "SiglipTextModel",
                                 "SiglipForImageClassification"])
def test_loading_info_matches_transformers(checkpoint, cls):
    _, path = checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, info = getattr(sf, cls).from_pretrained(path, output_loading_info=True)
    _, theirs = getattr(transformers, cls).from_pretrained(path, output_loading_info=True)
    assert set(info) == {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
    assert {k: set(v) for k, v in info.items() if k != "error_msgs"} == \
        {k: set(v) for k, v in theirs.items() if k != "error_msgs"}
    assert info["error_msgs"] == []
    assert not ours.training


def test_loading_info_loads_leniently_and_strict_is_the_default(checkpoint, tmp_path):
    theirs, path = checkpoint
    state = load_file(os.path.join(path, "model.safetensors"))
    del state["text_model.head.bias"]
    state["vision_model.extra.weight"] = torch.randn(3)
    _copy_config(path, tmp_path)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \(1\): text_model.head.bias[\s\S]*output_loading_info=True"):
        sf.SiglipModel.from_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="text_model.head.bias not loaded from the checkpoint"):
        model, info = sf.SiglipModel.from_pretrained(tmp_path, output_loading_info=True)
    _, hf_info = transformers.SiglipModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set(hf_info["missing_keys"]) == {"text_model.head.bias"}
    assert info["unexpected_keys"] == set(hf_info["unexpected_keys"]) == {"vision_model.extra.weight"}
    assert torch.equal(model.text_model.head.bias, torch.zeros_like(model.text_model.head.bias))  # init: zeros
    _equal_to(model, theirs, skip=("text_model.head.bias",))
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))


def test_missing_weights_get_the_model_initialisation(checkpoint, tmp_path):
    """A missing weight gets the model's own initialisation (here xavier-uniform bounds), not zeros or garbage."""
    _, path = checkpoint
    state = load_file(os.path.join(path, "model.safetensors"))
    del state["vision_model.encoder.layers.0.self_attn.q_proj.weight"]
    _copy_config(path, tmp_path)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.warns(UserWarning):
        model, info = sf.SiglipModel.from_pretrained(tmp_path, output_loading_info=True, dtype=torch.float64)
    w = model.vision_model.encoder.layers[0].self_attn.q_proj.weight
    assert w.dtype == torch.float64 and w.std() > 0 and w.abs().max() <= (6 / (w.shape[0] + w.shape[1])) ** 0.5
    assert info["missing_keys"] == {"vision_model.encoder.layers.0.self_attn.q_proj.weight"}


def test_new_classification_head_with_ignore_mismatched_sizes(classifier_checkpoint):
    theirs, path = classifier_checkpoint
    with pytest.raises(ValueError, match=r"classifier.weight: checkpoint \(3, 32\), model \(5, 32\)[\s\S]*"
                                         r"ignore_mismatched_sizes=True"):
        sf.SiglipForImageClassification.from_pretrained(path, num_labels=5)
    with pytest.raises(ValueError, match="shape mismatches"):  # loading info alone does not hide a mismatch
        sf.SiglipForImageClassification.from_pretrained(path, num_labels=5, output_loading_info=True)
    with pytest.warns(UserWarning, match=r"classifier.weight \(Reinit due to size mismatch - ckpt: \(3, 32\) vs "
                                         r"model: \(5, 32\)\)"):
        ours, info = sf.SiglipForImageClassification.from_pretrained(
            path, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True)
    _, hf_info = transformers.SiglipForImageClassification.from_pretrained(
        path, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True)
    assert info["mismatched_keys"] == set(hf_info["mismatched_keys"]) == {
        ("classifier.weight", torch.Size([3, 32]), torch.Size([5, 32])),
        ("classifier.bias", torch.Size([3]), torch.Size([5]))}
    assert info["missing_keys"] == info["unexpected_keys"] == set()
    assert ours.classifier.weight.shape == (5, 32) and ours.config.num_labels == 5
    assert torch.equal(ours.classifier.bias, torch.zeros(5)) and ours.classifier.weight.std() > 0
    _equal_to(ours, theirs, skip=("classifier.",))
    # The same with a config built by the caller (not changed by loading), strict otherwise.
    cfg = sf.SiglipConfig.from_pretrained(path)
    cfg.num_labels = 7
    before = cfg.to_dict()
    with pytest.warns(UserWarning):
        ours = sf.SiglipForImageClassification.from_pretrained(path, config=cfg, ignore_mismatched_sizes=True)
    assert ours.classifier.out_features == 7 and cfg.to_dict() == before and ours.config is not cfg


def test_state_dict_config_and_keyword_path(checkpoint):
    theirs, path = checkpoint
    config = sf.SiglipConfig.from_pretrained(path)
    state = load_file(os.path.join(path, "model.safetensors"))
    model = sf.SiglipModel.from_pretrained(None, config=config, state_dict=state)
    _equal_to(model, theirs)
    _equal_to(sf.SiglipModel.from_pretrained(pretrained_model_name_or_path=path), theirs)
    _equal_to(sf.SiglipModel.from_pretrained(path_or_id=path), theirs)  # design.md's name
    _equal_to(sf.SiglipModel.from_pretrained(path, config=config), theirs)
    _equal_to(sf.SiglipModel.from_pretrained(path, config=str(path)), theirs)
    vision = sf.SiglipVisionModel.from_pretrained(None, config=config.vision_config, state_dict=state)
    assert torch.equal(vision.head.probe, theirs.vision_model.head.probe)
    with pytest.raises(ValueError, match="not both"):
        sf.SiglipModel.from_pretrained(path, state_dict=state)
    with pytest.raises(ValueError, match="needs config="):
        sf.SiglipModel.from_pretrained(None, state_dict=state)
    with pytest.raises(ValueError, match="needs a checkpoint directory"):
        sf.SiglipModel.from_pretrained(None, config=config)
    with pytest.raises(TypeError, match="config must be a SiglipTextConfig"):
        sf.SiglipTextModel.from_pretrained(path, config=config)
    broken = dict(state)
    del broken["logit_bias"]
    with pytest.raises(ValueError, match=r"cannot load the state_dict into SiglipModel:\n  missing keys \(1\)"):
        sf.SiglipModel.from_pretrained(None, config=config, state_dict=broken)


def test_config_fields_as_keyword_arguments(checkpoint):
    _, path = checkpoint
    kwargs = dict(output_hidden_states=True, initializer_factor=2.0, text_config={"layer_norm_eps": 1e-3})
    ours = sf.SiglipModel.from_pretrained(path, **kwargs).config
    theirs = transformers.SiglipModel.from_pretrained(path, **kwargs).config
    assert ours.output_hidden_states is theirs.output_hidden_states is True
    assert ours.initializer_factor == theirs.initializer_factor == 2.0
    assert ours.text_config.layer_norm_eps == theirs.text_config.layer_norm_eps == 1e-3
    assert ours.text_config.hidden_size == theirs.text_config.hidden_size == 32
    vision = sf.SiglipVisionModel.from_pretrained(path, layer_norm_eps=1e-4)
    assert vision.config.layer_norm_eps == 1e-4
    with pytest.warns(UserWarning, match="classifier"):
        cls = sf.SiglipForImageClassification.from_pretrained(path, num_labels=3, problem_type="regression")
    assert cls.classifier.out_features == 3 and cls.config.problem_type == "regression"
    # As transformers: with a config object, config fields go to the model's __init__, which refuses them.
    config = sf.SiglipConfig.from_pretrained(path)
    with pytest.raises(TypeError, match="num_labels"):
        transformers.SiglipModel.from_pretrained(path, config=transformers.SiglipConfig.from_pretrained(path),
                                                 num_labels=3)
    with pytest.raises(TypeError, match=r"config field\(s\) num_labels given together with config="):
        sf.SiglipModel.from_pretrained(path, config=config, num_labels=3)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) foo, unknown_flag; it accepts "
                                        r"pretrained_model_name_or_path, path_or_id, dtype, .*, and the "
                                        r"SiglipConfig fields"):
        sf.SiglipModel.from_pretrained(path, foo=1, unknown_flag=True)
    with pytest.raises(ValueError, match="divisible"):  # a config field that breaks the config is checked
        sf.SiglipVisionModel.from_pretrained(path, num_attention_heads=5)


def test_accepted_transformers_arguments(checkpoint, tmp_path):
    theirs, path = checkpoint
    model = sf.SiglipModel.from_pretrained(
        path, low_cpu_mem_usage=True, local_files_only=True, revision="main", cache_dir=str(tmp_path), token=None,
        trust_remote_code=False, use_safetensors=True, force_download=False)
    _equal_to(model, theirs)
    sub = tmp_path / "repo"
    theirs.save_pretrained(sub / "model")
    _equal_to(sf.SiglipModel.from_pretrained(sub, subfolder="model"), theirs)
    with pytest.raises(ValueError, match="has no subfolder 'nope'"):
        sf.SiglipModel.from_pretrained(sub, subfolder="nope")


def test_use_safetensors(checkpoint, tmp_path):
    theirs, path = checkpoint
    state = load_file(os.path.join(path, "model.safetensors"))
    other = {k: v + 1 for k, v in state.items()}
    _copy_config(path, tmp_path)
    torch.save(other, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"use_safetensors=True but .* has no model.safetensors .*pytorch_model.bin"):
        sf.SiglipModel.from_pretrained(tmp_path, use_safetensors=True)
    save_file(state, tmp_path / "model.safetensors")
    _equal_to(sf.SiglipModel.from_pretrained(tmp_path), theirs)  # safetensors first, as transformers
    from_bin = sf.SiglipModel.from_pretrained(tmp_path, use_safetensors=False)
    hf_from_bin = transformers.SiglipModel.from_pretrained(tmp_path, use_safetensors=False)
    _equal_to(from_bin, hf_from_bin)
    assert torch.equal(from_bin.logit_bias, state["logit_bias"] + 1)
    with pytest.raises(TypeError, match="use_safetensors"):
        sf.SiglipModel.from_pretrained(tmp_path, use_safetensors="yes")


def test_device_map(checkpoint, monkeypatch):
    theirs, path = checkpoint
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device_map in ["auto", "cpu", torch.device("cpu"), {"": "cpu"},
                       {"vision_model": "cpu", "text_model": torch.device("cpu"), "logit_scale": "cpu"}]:
        model = sf.SiglipModel.from_pretrained(path, device_map=device_map)
        assert model.device == torch.device("cpu")
    _equal_to(model, theirs)
    with pytest.raises(ValueError, match=r"splits the model across devices .*single-device placement"):
        sf.SiglipModel.from_pretrained(path, device_map={"vision_model": "cpu", "text_model": 0})
    with pytest.raises(ValueError, match=r"offloads to 'disk'"):
        sf.SiglipModel.from_pretrained(path, device_map={"vision_model": "cpu", "text_model": "disk"})
    with pytest.raises(ValueError, match=r"'sequential' spreads a model over devices"):
        sf.SiglipModel.from_pretrained(path, device_map="sequential")
    with pytest.raises(ValueError, match=r"device_map\[''\]=0: CUDA is not available"):
        sf.SiglipModel.from_pretrained(path, device_map={"": 0})
    with pytest.raises(ValueError, match="device_map='tpu9' is not a valid device"):
        sf.SiglipModel.from_pretrained(path, device_map="tpu9")
    with pytest.raises(ValueError, match="pass device or device_map, not both"):
        sf.SiglipModel.from_pretrained(path, device="cpu", device_map="cpu")


def test_hub_options_are_forwarded(checkpoint, tmp_path, monkeypatch):
    """revision, cache_dir, token, local_files_only, force_download and subfolder reach huggingface_hub."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    theirs, path = checkpoint
    snapshot = tmp_path / "snapshot"
    theirs.save_pretrained(snapshot / "sub")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = sf.SiglipModel.from_pretrained("org/siglip-test", subfolder="sub", revision="v1",
                                           cache_dir=str(tmp_path / "cache"), token="hf_x", local_files_only=True)
    _equal_to(model, theirs)
    repo_id, kwargs = calls[0]
    assert repo_id == "org/siglip-test"
    assert kwargs["revision"] == "v1" and kwargs["cache_dir"] == str(tmp_path / "cache")
    assert kwargs["token"] == "hf_x" and kwargs["local_files_only"] is True
    assert "sub/config.json" in kwargs["allow_patterns"] and "sub/*.safetensors" in kwargs["allow_patterns"]


def test_saved_config_keeps_keyword_fields(checkpoint, tmp_path):
    """Config fields set through from_pretrained are saved and read back by transformers."""
    _, path = checkpoint
    model = sf.SiglipModel.from_pretrained(path, output_hidden_states=True, initializer_factor=0.5)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["output_hidden_states"] is True and saved["initializer_factor"] == 0.5
    theirs = transformers.SiglipModel.from_pretrained(tmp_path)
    assert theirs.config.output_hidden_states is True and theirs.config.initializer_factor == 0.5


def test_labels_given_as_keywords(checkpoint):
    _, path_a = checkpoint
    with pytest.warns(UserWarning, match="classifier"):
        model = sf.SiglipForImageClassification.from_pretrained(
            path_a, label2id={"cat": 0, "dog": 1, "eel": 2}, id2label={0: "cat", 1: "dog", 2: "eel"})
    assert model.config.num_labels == 3 and model.config.label2id == {"cat": 0, "dog": 1, "eel": 2}


def test_hub_fetches_the_weights_of_one_format(checkpoint, tmp_path, monkeypatch):
    """From a hub repo holding both formats only safetensors are fetched; the .bin files only when there are no
    safetensors or use_safetensors=False (transformers' choice), so a checkpoint is not downloaded twice."""
    import fnmatch
    import shutil

    huggingface_hub = pytest.importorskip("huggingface_hub")
    theirs, path = checkpoint
    state = load_file(os.path.join(path, "model.safetensors"))
    repos = {"org/both": tmp_path / "both", "org/bin-only": tmp_path / "bin-only"}
    for repo in repos.values():
        _copy_config(path, repo)
        torch.save(state, repo / "pytorch_model.bin")
    save_file(state, repos["org/both"] / "model.safetensors")
    fetched = []

    def fake_snapshot_download(repo_id, allow_patterns, local_files_only=False, **kwargs):
        snapshot = tmp_path / "cache" / repo_id.replace("/", "--")
        os.makedirs(snapshot, exist_ok=True)
        for name in os.listdir(repos[repo_id]):
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                shutil.copy(repos[repo_id] / name, snapshot / name)
                fetched.append((repo_id, name))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    _equal_to(sf.SiglipModel.from_pretrained("org/both"), theirs)
    assert sorted(fetched) == [("org/both", "config.json"), ("org/both", "model.safetensors")]
    fetched.clear()
    _equal_to(sf.SiglipModel.from_pretrained("org/bin-only"), theirs)
    assert sorted(n for _, n in fetched) == ["config.json", "config.json", "pytorch_model.bin"]
    fetched.clear()
    with pytest.raises(ValueError, match="use_safetensors=True but"):
        sf.SiglipModel.from_pretrained("org/bin-only", use_safetensors=True)
    assert "pytorch_model.bin" not in [n for _, n in fetched]


def test_shape_mismatch_raises_runtime_error_as_transformers(classifier_checkpoint):
    """transformers raises RuntimeError for mis-shaped weights; ours is both that and a ValueError (same message)."""
    from siglip_fast.checkpoint import CheckpointShapeError

    _, path = classifier_checkpoint
    with pytest.raises(RuntimeError):
        transformers.SiglipForImageClassification.from_pretrained(path, num_labels=5)
    with pytest.raises(RuntimeError, match=r"classifier.weight: checkpoint \(3, 32\), model \(5, 32\)") as info:
        sf.SiglipForImageClassification.from_pretrained(path, num_labels=5)
    assert isinstance(info.value, ValueError) and type(info.value) is CheckpointShapeError


def test_save_pretrained_transformers_keywords(checkpoint, tmp_path):
    """save_pretrained's transformers keywords: safe_serialization=False writes pytorch_model.bin (v4's format,
    which transformers reads), replacing a model.safetensors there; is_main_process=False writes nothing (as
    transformers); max_shard_size is accepted (one file); push_to_hub=True and unknown keywords are refused."""
    theirs, path = checkpoint
    ours = sf.SiglipModel.from_pretrained(path)
    ours.save_pretrained(tmp_path)  # a safetensors checkpoint first: replaced by the .bin one
    ours.save_pretrained(tmp_path, safe_serialization=False)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "pytorch_model.bin"]
    _equal_to(transformers.SiglipModel.from_pretrained(tmp_path), theirs)
    _equal_to(sf.SiglipModel.from_pretrained(tmp_path), theirs)
    ours.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="1KB")
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    _equal_to(transformers.SiglipModel.from_pretrained(tmp_path), theirs)

    for model, where in ((ours, tmp_path / "ours"), (theirs, tmp_path / "theirs")):
        where.mkdir()
        model.save_pretrained(where, is_main_process=False)
        assert os.listdir(where) == [], where
    with pytest.raises(ValueError, match="push_to_hub"):
        ours.save_pretrained(tmp_path / "hub", push_to_hub=True)
    with pytest.raises(TypeError, match=r"bogus.*safe_serialization, is_main_process, max_shard_size, push_to_hub"):
        ours.save_pretrained(tmp_path / "bad", bogus=1)
    assert not (tmp_path / "hub").exists() and not (tmp_path / "bad").exists()


def test_from_pretrained_under_a_meta_device_context(checkpoint):
    """Inside `with torch.device("meta")` (where transformers refuses to load) the weights are still read to the
    asked device: a working model equal to the checkpoint, nothing left on meta."""
    theirs, path = checkpoint
    with torch.device("meta"):
        ours = sf.SiglipModel.from_pretrained(path, backend="eager")
    assert {t.device.type for t in [*ours.parameters(), *ours.buffers()]} == {"cpu"}
    _equal_to(ours, theirs)
    ids, pixels = torch.randint(0, 99, (2, 11)), torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        got = ours(input_ids=ids, pixel_values=pixels).logits_per_image
        expected = theirs(input_ids=ids, pixel_values=pixels).logits_per_image
    assert (got - expected).abs().max().item() <= 1e-5  # fp32, eager backend
