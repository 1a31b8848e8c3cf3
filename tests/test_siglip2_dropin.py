"""The transformers surface of the SigLIP 2 classes (issue 21): from_pretrained's call forms (output_loading_info,
pretrained_model_name_or_path=None with config= and state_dict=), the input embeddings of the NaFlex vision tower,
and the PreTrainedConfig surface of the SigLIP 2 configs — each compared with transformers' Siglip2 classes."""

from __future__ import annotations

import json

import pytest
import torch

import siglip_fast as sf
from tests._tiny import randomize_

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=11)
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, num_patches=16,
              patch_size=4)
TOWERS = ["Siglip2VisionModel", "Siglip2TextModel", "Siglip2ForImageClassification"]
CLASSES = ["Siglip2Model", *TOWERS]


def _sub(config, cls: str):
    if cls == "Siglip2TextModel":
        return config.text_config
    return config.vision_config if cls == "Siglip2VisionModel" else config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A transformers Siglip2Model checkpoint with random weights."""
    torch.manual_seed(11)
    theirs = randomize_(transformers.Siglip2Model(transformers.Siglip2Config(text_config=TEXT,
                                                                              vision_config=VISION))).eval()
    path = tmp_path_factory.mktemp("siglip2")
    theirs.save_pretrained(path)
    return theirs, path


def _equal_weights(ours, theirs):
    ref = theirs.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref[key]), key


@pytest.mark.parametrize("cls", CLASSES)
def test_output_loading_info_returns_the_model_and_transformers_report(checkpoint, cls):
    """from_pretrained(..., output_loading_info=True) returns (model of the class, report), the report equal to
    transformers' for the same checkpoint."""
    _, path = checkpoint
    ours, info = getattr(sf, cls).from_pretrained(path, output_loading_info=True)
    theirs, their_info = getattr(transformers, cls).from_pretrained(path, output_loading_info=True)
    assert type(ours) is getattr(sf, cls)
    assert set(info) >= {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
    assert set(info["missing_keys"]) == set(their_info["missing_keys"])
    assert set(info["unexpected_keys"]) == set(their_info["unexpected_keys"])
    assert not info["mismatched_keys"] and not their_info["mismatched_keys"]
    loaded = [k for k in ours.state_dict() if k not in info["missing_keys"]]
    ref = theirs.state_dict()
    assert loaded and all(torch.equal(ours.state_dict()[k], ref[k]) for k in loaded)


@pytest.mark.parametrize("cls", CLASSES)
def test_from_pretrained_none_with_config_and_state_dict(checkpoint, cls):
    """`from_pretrained(pretrained_model_name_or_path=None, config=cfg, state_dict=sd)`, positionally or by name
    (the SigLIP classes' forms)."""
    theirs_dual, path = checkpoint
    theirs = getattr(transformers, cls).from_pretrained(path).eval()
    config = _sub(sf.Siglip2Config.from_pretrained(path), cls)
    if cls == "Siglip2ForImageClassification":
        config.num_labels = theirs.config.num_labels
    state = theirs.state_dict()
    for model in (getattr(sf, cls).from_pretrained(pretrained_model_name_or_path=None, config=config,
                                                   state_dict=state),
                  getattr(sf, cls).from_pretrained(None, config=config, state_dict=state)):
        assert type(model) is getattr(sf, cls)
        _equal_weights(model, theirs)
    with pytest.raises(ValueError, match="needs config="):
        getattr(sf, cls).from_pretrained(None, state_dict=state)


def test_vision_tower_input_embeddings(checkpoint):
    """Siglip2VisionModel.get_input_embeddings() is the patch-embedding Linear, as transformers'; set replaces it."""
    _, path = checkpoint
    ours = sf.Siglip2VisionModel.from_pretrained(path)
    theirs = transformers.Siglip2VisionModel.from_pretrained(path)
    for model in (ours, sf.Siglip2ForImageClassification.from_pretrained(path, output_loading_info=True)[0]):
        emb = model.get_input_embeddings()
        their_emb = theirs.get_input_embeddings()
        assert type(emb) is type(their_emb) is torch.nn.Linear and torch.equal(emb.weight, their_emb.weight)
        new = torch.nn.Linear(emb.in_features, emb.out_features)
        model.set_input_embeddings(new)
        assert model.get_input_embeddings() is new
    dual = sf.Siglip2Model.from_pretrained(path)
    assert dual.get_input_embeddings() is dual.text_model.embeddings.token_embedding


@pytest.mark.parametrize("name", ["Siglip2Config", "Siglip2TextConfig", "Siglip2VisionConfig"])
def test_siglip2_config_surface_matches_transformers(name, tmp_path):
    """sub_configs, is_encoder_decoder, to_dict / to_diff_dict keys, the common fields through save_pretrained, and
    _attn_implementation propagated to the sub-configs."""
    ours_cls, theirs_cls = getattr(sf, name), getattr(transformers, name)
    assert {k: v.__name__ for k, v in ours_cls.sub_configs.items()} == \
        {k: v.__name__ for k, v in theirs_cls.sub_configs.items()}
    kwargs = dict(output_hidden_states=True, return_dict=False, chunk_size_feed_forward=2)
    ours, theirs = ours_cls(**kwargs), theirs_cls(**kwargs)
    assert ours.is_encoder_decoder is theirs.is_encoder_decoder is False
    bookkeeping = {"transformers_version", "_name_or_path"}
    assert set(ours.to_dict()) == set(theirs.to_dict()) - bookkeeping
    assert set(ours.to_diff_dict()) == set(theirs.to_diff_dict()) - bookkeeping
    for key, value in kwargs.items():
        assert ours.to_diff_dict()[key] == theirs.to_diff_dict()[key] == value
    ours.save_pretrained(tmp_path)
    back, hf_back = ours_cls.from_pretrained(tmp_path), theirs_cls.from_pretrained(tmp_path)
    assert back == ours and all(getattr(hf_back, k) == v for k, v in kwargs.items())
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == theirs_cls.model_type
    ours._attn_implementation = "eager"
    assert all(getattr(ours, k)._attn_implementation == "eager" for k in ours.sub_configs)
