"""Configs: transformers' fields, defaults and config.json, both ways; validation errors."""

from __future__ import annotations

import json

import pytest

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
    assert config.dtype == "float32"
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
    assert config.label2id == {"cat": 0, "dog": 1} and config.to_dict()["id2label"] == {"0": "cat", "1": "dog"}


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
        assert path.read_text() == ours.to_json_string()
        assert getattr(sf, name).from_json_file(path) == ours
        theirs = getattr(transformers, name).from_json_file(str(path))
        for key, value in json.loads(path.read_text()).items():
            if key not in ("dtype", "text_config", "vision_config"):
                assert getattr(theirs, key) == value, (name, key)
        if name == "SiglipConfig":
            assert theirs.vision_config.image_size == 64


@pytest.mark.parametrize("name", ["SiglipTextConfig", "SiglipVisionConfig", "SiglipConfig"])
def test_label_fields_on_every_config(tmp_path, name):
    """num_labels / id2label / label2id on the tower configs too, as transformers' PreTrainedConfig: the same values,
    written to config.json and read back by both libraries."""
    ours_cls, theirs_cls = getattr(sf, name), getattr(transformers, name)
    assert ours_cls().num_labels == theirs_cls().num_labels == 2
    assert ours_cls().id2label == theirs_cls().id2label and ours_cls().label2id == theirs_cls().label2id
    assert "id2label" not in ours_cls().to_dict()  # not set: not written (transformers' diff leaves it out too)
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
