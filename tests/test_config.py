"""Configs: transformers' fields, defaults and config.json, both ways; validation errors."""

from __future__ import annotations

import json

import pytest
import torch

import siglip_fast as sf

transformers = pytest.importorskip("transformers")

HUB_SO400M = {
    "architectures": ["SiglipModel"], "initializer_factor": 1.0, "model_type": "siglip",
    "text_config": {"hidden_size": 1152, "intermediate_size": 4304, "model_type": "siglip_text_model",
                    "num_attention_heads": 16, "num_hidden_layers": 27},
    "torch_dtype": "float32",
    "vision_config": {"hidden_size": 1152, "image_size": 384, "intermediate_size": 4304,
                      "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                      "patch_size": 14},
}


@pytest.mark.parametrize("cls", ["SiglipTextConfig", "SiglipVisionConfig"])
def test_defaults_match_transformers(cls):
    ours = getattr(sf, cls)().to_dict()
    theirs = getattr(transformers, cls)().to_dict()
    for key, value in ours.items():
        if key != "dtype":
            assert theirs[key] == value, key
    declared = set(getattr(sf, cls)._defaults)
    assert declared <= set(theirs)


def test_hub_config_fills_defaults_and_keeps_dtype(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(HUB_SO400M))
    config = sf.SiglipConfig.from_pretrained(tmp_path)
    assert config.vision_config.patch_size == 14 and config.vision_config.head_dim == 72
    assert config.text_config.max_position_embeddings == 64 and config.text_config.projection_size == 1152
    assert config.dtype == torch.float32 == transformers.SiglipConfig.from_pretrained(tmp_path).dtype
    assert config.architectures == ["SiglipModel"]
    vision = sf.SiglipVisionConfig.from_pretrained(tmp_path)  # a tower config out of a full config
    assert vision.image_size == 384 and vision.num_patches == 27 * 27


def test_round_trip_with_transformers(tmp_path):
    theirs = transformers.SiglipConfig(
        text_config=dict(hidden_size=64, num_attention_heads=4, vocab_size=300, max_position_embeddings=16),
        vision_config=dict(hidden_size=48, num_attention_heads=4, image_size=30, patch_size=7, vision_use_head=False),
    )
    theirs.save_pretrained(tmp_path / "hf")
    ours = sf.SiglipConfig.from_pretrained(tmp_path / "hf")
    assert ours.vision_config.vision_use_head is False and ours.text_config.max_position_embeddings == 16
    ours.custom_field = 3  # not saved: only declared fields and keys read from a file are
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.SiglipConfig.from_pretrained(tmp_path / "ours")
    for tower in ("text_config", "vision_config"):
        a, b = getattr(theirs, tower).to_dict(), getattr(back, tower).to_dict()
        for key in getattr(sf, "SiglipTextConfig" if tower == "text_config" else "SiglipVisionConfig")._defaults:
            assert a[key] == b[key], (tower, key)


def test_unknown_keys_are_kept(tmp_path):
    data = dict(HUB_SO400M, my_key={"a": 1})
    data["vision_config"] = dict(data["vision_config"], extra_vision_key=5)
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = sf.SiglipConfig.from_pretrained(tmp_path)
    assert config.my_key == {"a": 1} and config.vision_config.extra_vision_key == 5
    saved = config.to_dict()
    assert saved["my_key"] == {"a": 1} and saved["vision_config"]["extra_vision_key"] == 5


def test_sub_config_objects_and_alias():
    t = sf.SiglipTextConfig(hidden_size=64, num_attention_heads=2)
    v = sf.SiglipVisionConfig(hidden_size=64, num_attention_heads=2, image_size=32)
    a = sf.SiglipConfig(text_config=t, vision_config=v)
    b = sf.SiglipConfig.from_text_vision_configs(t, v)
    assert a == b and a.text_config.hidden_size == 64 and a.vision_config.image_size == 32


def test_projection_must_match_vision_width():
    config = sf.SiglipConfig(text_config=dict(projection_size=100))  # accepted, as transformers does
    with pytest.raises(ValueError, match="projection_size"):
        config.validate_for_model()


def test_labels():
    config = sf.SiglipConfig(num_labels=3)
    assert config.num_labels == 3 and config.id2label[2] == "LABEL_2"
    config = sf.SiglipConfig(id2label={"0": "cat", "1": "dog"})
    assert config.label2id == {"cat": 0, "dog": 1} and config.to_dict()["id2label"] == {0: "cat", 1: "dog"}
    assert config.to_dict()["id2label"] == transformers.SiglipConfig(id2label={"0": "cat", "1": "dog"}).id2label
    assert json.loads(config.to_json_string())["id2label"] == {"0": "cat", "1": "dog"}


@pytest.mark.parametrize(
    "cls, kwargs, error, match",
    [
        ("SiglipVisionConfig", dict(hidden_size=100, num_attention_heads=3), ValueError, "divisible"),
        ("SiglipTextConfig", dict(hidden_size=0), ValueError, "hidden_size must be positive"),
        ("SiglipTextConfig", dict(num_hidden_layers=-1), ValueError, "num_hidden_layers"),
        ("SiglipVisionConfig", dict(image_size=8, patch_size=16), ValueError, "smaller than patch_size"),
        ("SiglipVisionConfig", dict(hidden_size="768"), TypeError, "hidden_size must be an int"),
        ("SiglipTextConfig", dict(hidden_act="tanhshrink"), ValueError, "hidden_act"),
        ("SiglipTextConfig", dict(layer_norm_eps=0.0), ValueError, "layer_norm_eps"),
    ],
)
def test_bad_configs(cls, kwargs, error, match):
    """A wrong type fails at construction (as transformers' strict configs); a bad value is accepted there, as
    transformers accepts it, and fails when a model is built from the config (validate_for_model)."""
    if error is TypeError:
        with pytest.raises(error, match=match):
            getattr(sf, cls)(**kwargs)
        return
    config = getattr(sf, cls)(**kwargs)
    getattr(transformers, cls)(**kwargs)
    with pytest.raises(error, match=match):
        config.validate_for_model()


def test_bad_config_files(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        sf.SiglipConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        sf.SiglipConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="model_type 'siglip'"):
        sf.SiglipConfig.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match="text_config"):
        sf.SiglipConfig(text_config=3)


@pytest.mark.parametrize("kwargs", [{}, {"decoder": False}, {"decoder": True}, {"decoder": None},
                                    {"encoder": True}, {"encoder": False}, {"decoder": True, "encoder": True}])
def test_get_text_config_matches_transformers(kwargs):
    for name in ("SiglipConfig", "SiglipTextConfig", "SiglipVisionConfig"):
        ours, theirs = getattr(sf, name)(), getattr(transformers, name)()
        got, expected = ours.get_text_config(**kwargs), theirs.get_text_config(**kwargs)
        if expected is theirs:
            assert got is ours, name
        else:
            assert expected is theirs.text_config and got is ours.text_config, name
    assert sf.SiglipConfig().get_text_config().to_dict() == sf.SiglipTextConfig().to_dict()


@pytest.mark.parametrize("use_diff", [True, False])
def test_to_json_file_reads_back_in_both(tmp_path, use_diff):
    for name in ("SiglipConfig", "SiglipTextConfig", "SiglipVisionConfig"):
        ours = getattr(sf, name)(hidden_size=64) if name != "SiglipConfig" else sf.SiglipConfig(
            vision_config={"image_size": 64})
        path = tmp_path / f"{name}.json"
        ours.to_json_file(path, use_diff=use_diff)
        assert path.read_text() == ours.to_json_string(use_diff=use_diff)
        assert getattr(sf, name).from_json_file(path) == ours
        theirs = getattr(transformers, name).from_json_file(str(path))
        for key, value in json.loads(path.read_text()).items():
            if key not in ("dtype", "text_config", "vision_config"):
                got = getattr(theirs, key)
                got = {str(k): v for k, v in got.items()} if key == "id2label" else got  # JSON keys are strings
                assert got == value, (name, key)
        if name == "SiglipConfig":
            assert theirs.vision_config.image_size == 64


@pytest.mark.parametrize("name", ["SiglipTextConfig", "SiglipVisionConfig", "SiglipConfig"])
def test_label_fields_on_every_config(tmp_path, name):
    """num_labels / id2label / label2id on the tower configs too, as transformers' PreTrainedConfig: the same values,
    written to config.json and read back by both libraries."""
    ours_cls, theirs_cls = getattr(sf, name), getattr(transformers, name)
    assert ours_cls().num_labels == theirs_cls().num_labels == 2
    assert ours_cls().id2label == theirs_cls().id2label and ours_cls().label2id == theirs_cls().label2id
    # the default labels are not written (transformers' diff leaves them out too)
    assert "id2label" not in ours_cls().to_diff_dict() and "id2label" not in theirs_cls().to_diff_dict()
    ours, theirs = ours_cls(num_labels=3), theirs_cls(num_labels=3)
    assert (ours.num_labels, ours.id2label, ours.label2id) == (theirs.num_labels, theirs.id2label, theirs.label2id)
    labels = {"id2label": {"0": "cat", "1": "dog"}, "label2id": {"cat": 0, "dog": 1}}
    ours, theirs = ours_cls(**labels), theirs_cls(**labels)
    assert (ours.num_labels, ours.id2label, ours.label2id) == (theirs.num_labels, theirs.id2label, theirs.label2id)
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["id2label"] == {"0": "cat", "1": "dog"} and saved["label2id"] == {"cat": 0, "dog": 1}
    back, hf_back = ours_cls.from_pretrained(tmp_path), theirs_cls.from_pretrained(tmp_path)
    assert back == ours and back.id2label == hf_back.id2label == {0: "cat", 1: "dog"}
    assert back.label2id == hf_back.label2id and back.num_labels == hf_back.num_labels == 2
    theirs.save_pretrained(tmp_path / "hf")
    assert ours_cls.from_pretrained(tmp_path / "hf").id2label == {0: "cat", 1: "dog"}
    with pytest.raises(ValueError, match="num_labels"):
        ours_cls(num_labels=3, id2label={0: "a"})


def test_from_pretrained_hub_options(tmp_path, monkeypatch):
    """subfolder / revision / cache_dir / token / local_files_only locate the file (as transformers) and are not set
    as config fields."""
    sf.SiglipConfig(vision_config={"image_size": 64}).save_pretrained(tmp_path / "sub")
    hub = dict(revision="v1", cache_dir=str(tmp_path / "cache"), token="hf_x", local_files_only=True)
    ours = sf.SiglipConfig.from_pretrained(tmp_path, subfolder="sub", **hub)
    theirs = transformers.SiglipConfig.from_pretrained(tmp_path, subfolder="sub", **hub)
    assert ours.vision_config.image_size == theirs.vision_config.image_size == 64
    for key in ("subfolder", *hub):
        assert key not in ours.to_dict() and key not in theirs.to_dict() and not hasattr(ours, key), key
    vision = sf.SiglipVisionConfig.from_pretrained(tmp_path, subfolder="sub", **hub)
    assert vision.image_size == transformers.SiglipVisionConfig.from_pretrained(tmp_path, subfolder="sub").image_size
    with pytest.raises(ValueError, match="no subfolder 'nope'"):
        sf.SiglipConfig.from_pretrained(tmp_path, subfolder="nope")

    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert sf.SiglipConfig.from_pretrained("org/siglip-test", subfolder="sub", **hub) == ours
    repo_id, kwargs = calls[0]
    assert repo_id == "org/siglip-test" and kwargs["allow_patterns"] == ["sub/config.json"]
    assert {k: kwargs[k] for k in hub} == hub


# --- PreTrainedConfig surface (issue 21) -------------------------------------------------------------------------

CONFIG_NAMES = ["SiglipConfig", "SiglipTextConfig", "SiglipVisionConfig"]
# transformers' ConfigTester values for the common fields (none equal to a default)
COMMON_KWARGS = {"return_dict": False, "output_hidden_states": True, "output_attentions": True,
                 "chunk_size_feed_forward": 5, "architectures": ["SiglipModel"], "problem_type": "regression",
                 "id2label": {0: "label"}, "label2id": {"label": 0}}


def _theirs_dict(config, diff: bool) -> dict:
    """transformers' to_dict / to_diff_dict without its bookkeeping keys (version, name, dtype as a torch dtype)."""
    out = config.to_diff_dict() if diff else config.to_dict()
    for key in ("transformers_version", "_name_or_path"):
        out.pop(key, None)
    for sub in ("text_config", "vision_config"):
        if isinstance(out.get(sub), dict):
            out[sub].pop("transformers_version", None)
            out[sub].pop("_name_or_path", None)
    return out


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_sub_configs_on_class_and_instance(name):
    ours, theirs = getattr(sf, name), getattr(transformers, name)
    assert {k: v.__name__ for k, v in ours.sub_configs.items()} == {k: v.__name__ for k, v in
                                                                     theirs.sub_configs.items()}
    assert ours().sub_configs == ours.sub_configs
    for key, cls in ours().sub_configs.items():
        assert isinstance(getattr(ours(), key), cls)
    assert ours.is_encoder_decoder is False and ours().is_encoder_decoder is theirs().is_encoder_decoder is False


@pytest.mark.parametrize("name", CONFIG_NAMES)
@pytest.mark.parametrize("kwargs", [{}, COMMON_KWARGS], ids=["defaults", "common_fields"])
def test_to_dict_and_to_diff_dict_match_transformers(name, kwargs):
    """The same keys and values as transformers' to_dict() (every field) and to_diff_dict() (what config.json holds:
    the common fields only where they differ from PreTrainedConfig's defaults)."""
    ours, theirs = getattr(sf, name)(**kwargs), getattr(transformers, name)(**kwargs)
    for diff in (False, True):
        a = ours.to_diff_dict() if diff else ours.to_dict()
        b = _theirs_dict(theirs, diff)
        assert sorted(a) == sorted(b), (diff, set(a) ^ set(b))
        for key in a:
            if key in ("text_config", "vision_config"):
                assert a[key] == {k: v for k, v in b[key].items() if k in a[key]}, (diff, key)
                assert sorted(a[key]) == sorted(b[key]), (diff, key, set(a[key]) ^ set(b[key]))
            else:
                assert a[key] == b[key], (diff, key)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_iteration_and_in(name):
    """`for key in config` yields field names that getattr reads (as transformers' PreTrainedConfig iterates), and
    `in` tests them."""
    config = getattr(sf, name)(my_custom_key=3)
    keys = list(config)
    assert len(keys) == len(set(keys)) and "my_custom_key" in keys and "return_dict" in config
    assert "no_such_field" not in config and "_extra_keys" not in config
    for key in keys:
        getattr(config, key)
    theirs = set(getattr(transformers, name)(my_custom_key=3))
    public = {k for k in theirs if not k.startswith("_") and k != "transformers_version"}
    assert public <= set(keys) | {"output_attentions"}, public - set(keys)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_common_fields_survive_round_trips(name, tmp_path):
    """The common PreTrainedConfig fields given at construction or set afterwards are kept by to_dict/from_dict,
    to_json_file/from_json_file and save_pretrained/from_pretrained, and transformers reads them back from our
    file."""
    cls = getattr(sf, name)
    for config in (cls(**COMMON_KWARGS), _set_after(cls(), COMMON_KWARGS)):
        assert cls.from_dict(config.to_dict()) == config
        assert cls.from_dict(config.to_diff_dict()) == config
        config.save_pretrained(tmp_path)
        back = cls.from_pretrained(tmp_path)
        assert back == config
        saved = json.loads((tmp_path / "config.json").read_text())
        theirs = getattr(transformers, name).from_pretrained(tmp_path)
        for key, value in COMMON_KWARGS.items():
            assert getattr(back, key) == value, key
            if key == "id2label":
                assert saved[key] == {"0": "label"} and theirs.id2label == {0: "label"}
            else:
                assert saved[key] == value and getattr(theirs, key) == value, key


def _set_after(config, values):
    for key, value in values.items():
        setattr(config, key, value)
    return config


def test_attn_implementation_settable_and_propagated(tmp_path):
    """As transformers: `attn_implementation=` at construction, `config._attn_implementation = ...` on any config,
    set on the sub-configs too (a dict by key, "" for the config itself), and never written to config.json."""
    for name in CONFIG_NAMES:
        config = getattr(sf, name)(attn_implementation="eager")
        nested = [config, *(getattr(config, k) for k in config.sub_configs)]
        assert [c._attn_implementation for c in nested] == ["eager"] * len(nested)
        config._attn_implementation = "sdpa"
        assert [c._attn_implementation for c in nested] == ["sdpa"] * len(nested)
        config.save_pretrained(tmp_path)
        assert "attn_implementation" not in (tmp_path / "config.json").read_text()
        assert getattr(sf, name).from_pretrained(tmp_path)._attn_implementation is None
    config = sf.SiglipConfig()
    config._attn_implementation = {"": "eager", "text_config": "sdpa"}
    theirs = transformers.SiglipConfig()
    theirs._attn_implementation = {"": "eager", "text_config": "sdpa"}
    for c in (config, theirs):
        assert (c._attn_implementation, c.text_config._attn_implementation, c.vision_config._attn_implementation) \
            == ("eager", "sdpa", None)
    assert sf.SiglipConfig.from_dict(dict(sf.SiglipConfig().to_dict(), _attn_implementation="eager")) \
        ._attn_implementation is None  # a file's private key is not read, as transformers
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['audio_config'\]"):
        config._attn_implementation = {"audio_config": "eager"}
    with pytest.raises(TypeError, match="_attn_implementation must be a str"):
        config._attn_implementation = 3


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(layer_norm_eps="1e-6"), TypeError, r"layer_norm_eps must be a float or an int, got '1e-6' \(str\)"),
        (dict(layer_norm_eps=None), TypeError, r"layer_norm_eps must be a float or an int, got None \(None\)"),
        (dict(attention_dropout=None), TypeError, r"attention_dropout must be a float or an int, got None"),
        (dict(hidden_act=None), TypeError, r"hidden_act must be a str, got None"),
        (dict(pad_token_id="1"), TypeError, r"pad_token_id must be an int or None, got '1' \(str\)"),
        (dict(return_dict="yes"), TypeError, r"return_dict must be a bool or None, got 'yes' \(str\)"),
        (dict(id2label={"cat": "x"}), ValueError, r"id2label keys must be class indices .* got the key 'cat'"),
        (dict(id2label={"1.5": "x"}), ValueError, r"id2label keys must be class indices .* got the key '1.5'"),
        (dict(id2label=["a", "b"]), TypeError, r"id2label must be a dict .* got list"),
    ],
)
def test_deep_config_errors_name_the_field(kwargs, error, match, tmp_path):
    """Values transformers' strict configs refuse (or that fail deep inside it): refused at construction naming the
    field, the expected type and the value received; from a file, the file is named too."""
    for name in ("SiglipTextConfig", "SiglipVisionConfig") if "pad_token_id" not in kwargs else ("SiglipTextConfig",):
        with pytest.raises(error, match=match):
            getattr(sf, name)(**kwargs)
    (tmp_path / "config.json").write_text(json.dumps(dict(model_type="siglip_text_model", **kwargs)))
    with pytest.raises(error, match=r"config file .*config.json: .*" + match):
        sf.SiglipTextConfig.from_pretrained(tmp_path)
    config = sf.SiglipTextConfig()
    for key, value in kwargs.items():  # set after construction: refused when a model is built
        if key != "id2label":
            setattr(config, key, value)
            with pytest.raises(error, match=match):
                sf.SiglipTextModel(config)


def test_configuration_does_not_import_checkpoint():
    """configuration.py and configuration_siglip2.py build on siglip_fast.files only: imported on their own (the
    package's __init__ not run), they pull in neither siglip_fast.checkpoint nor torch."""
    import subprocess
    import sys
    from pathlib import Path

    package_dir = Path(sf.__file__).parent
    code = f"""
import importlib, sys, types
package = types.ModuleType("siglip_fast")
package.__path__ = [{str(package_dir)!r}]
sys.modules["siglip_fast"] = package
importlib.import_module("siglip_fast.configuration_siglip2")
loaded = sorted(m for m in sys.modules if m.startswith("siglip_fast."))
assert loaded == ["siglip_fast.configuration", "siglip_fast.configuration_siglip2", "siglip_fast.files"], loaded
assert "torch" not in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_from_pretrained_updates_a_sub_config_from_a_dict_and_reads_dtype_as_torch(tmp_path):
    """`from_pretrained(dir, text_config={"vocab_size": 20})` changes that field only, keeping the rest of the saved
    sub-config (as transformers' ConfigTester checks); a saved dtype name reads back as a torch.dtype."""
    saved = sf.SiglipConfig(text_config=dict(hidden_size=64, num_attention_heads=4, vocab_size=300), dtype="bfloat16")
    saved.save_pretrained(tmp_path)
    ours = sf.SiglipConfig.from_pretrained(tmp_path, text_config={"vocab_size": 20})
    theirs = transformers.SiglipConfig.from_pretrained(tmp_path, text_config={"vocab_size": 20})
    expected = dict(saved.text_config.to_dict(), vocab_size=20)
    assert ours.text_config.to_dict() == expected
    assert {k: v for k, v in theirs.text_config.to_dict().items() if k in expected} == expected
    assert saved.dtype == ours.dtype == theirs.dtype == torch.bfloat16
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
