"""The transformers PreTrainedModel surface that real call sites use (issue 14): config-level output flags, input
embeddings and resizing, gradient checkpointing switches, parameter counts, class attributes, config-time vs
build-time validation, the meta-device → to_empty → init_weights path, and the CPU default backend."""

from __future__ import annotations

import inspect
import re

import pytest
import torch

import siglip_fast as sf
from siglip_fast import ops
from tests._tiny import TINY_CONFIGS, hf_config, inputs, randomize_

transformers = pytest.importorskip("transformers")

CLASSES = ["SiglipModel", "SiglipTextModel", "SiglipVisionModel", "SiglipForImageClassification"]


def _sub(config, cls: str):
    if cls == "SiglipTextModel":
        return config.text_config
    return config.vision_config if cls == "SiglipVisionModel" else config


def _pair(cls: str, tmp_path, name="base", **hf_kwargs):
    """(ours, theirs) with the same random weights, through a transformers checkpoint."""
    theirs = randomize_(getattr(transformers, cls)(_sub(hf_config(name, **hf_kwargs), cls))).eval()
    theirs.save_pretrained(tmp_path)
    return getattr(sf, cls).from_pretrained(tmp_path, backend="eager"), theirs


def _ours(cls: str, name="base", backend="eager", **kwargs):
    text, vision = TINY_CONFIGS[name]
    config = sf.SiglipConfig(text_config=dict(text), vision_config=dict(vision), **kwargs)
    return getattr(sf, cls)(_sub(config, cls), backend=backend)


def test_config_level_output_flags_and_return_dict():
    """None per call takes the config's value (the top config's, as transformers v4, or each tower config's, as v5);
    an explicit per-call flag wins."""
    model = _ours("SiglipModel")
    ids, pixels = inputs(model.config, batch=2)
    with torch.no_grad():
        assert model(input_ids=ids, pixel_values=pixels).vision_model_output.hidden_states is None
        model.config.output_hidden_states = True
        out = model(input_ids=ids, pixel_values=pixels)
        assert len(out.vision_model_output.hidden_states) == 3 and len(out.text_model_output.hidden_states) == 3
        assert model(input_ids=ids, pixel_values=pixels, output_hidden_states=False).text_model_output \
            .hidden_states is None
        model.config.output_hidden_states = None
        model.config.text_config.output_attentions = True  # a tower's own config (transformers v5)
        out = model(input_ids=ids, pixel_values=pixels)
        assert len(out.text_model_output.attentions) == 2 and out.vision_model_output.attentions is None
        model.config.return_dict = False
        assert isinstance(model(input_ids=ids, pixel_values=pixels), tuple)
        assert isinstance(model.get_text_features(input_ids=ids), tuple)
        assert isinstance(model(input_ids=ids, pixel_values=pixels, return_dict=True), sf.modeling.SiglipOutput)


@pytest.mark.parametrize("cls", ["SiglipTextModel", "SiglipVisionModel"])
def test_tower_config_flags_match_transformers(cls, tmp_path):
    ours, theirs = _pair(cls, tmp_path)
    ids, pixels = inputs(hf_config("base"), batch=2)
    kw = dict(input_ids=ids) if cls == "SiglipTextModel" else dict(pixel_values=pixels)
    for config in (ours.config, theirs.config):
        config.output_hidden_states, config.return_dict = True, False
    with torch.no_grad():
        o, t = ours(**kw), theirs(**kw)
    assert isinstance(o, tuple) and isinstance(t, tuple) and len(o) == len(t)
    for a, b in zip(o[2], t[2], strict=True):  # hidden_states
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("cls", CLASSES)
def test_pretrained_model_surface_matches_transformers(cls, tmp_path):
    ours, theirs = _pair(cls, tmp_path)
    assert ours.main_input_name == theirs.main_input_name
    assert ours.can_generate() is False and theirs.can_generate() is False
    assert ours.supports_gradient_checkpointing is True
    assert ours.get_output_embeddings() is None and theirs.get_output_embeddings() is None
    emb, their_emb = ours.get_input_embeddings(), theirs.get_input_embeddings()
    assert type(emb) is type(their_emb) and torch.equal(emb.weight, their_emb.weight)
    for only_trainable in (False, True):
        for exclude_embeddings in (False, True):
            kw = dict(only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)
            assert ours.num_parameters(**kw) == theirs.num_parameters(**kw), kw
    ours.get_input_embeddings().weight.requires_grad_(False)
    assert ours.num_parameters(only_trainable=True) == ours.num_parameters() - emb.weight.numel()
    new = type(emb)(*([emb.num_embeddings, emb.embedding_dim] if isinstance(emb, torch.nn.Embedding) else
                      [emb.in_channels, emb.out_channels, emb.kernel_size, emb.stride]))
    ours.set_input_embeddings(new)
    assert ours.get_input_embeddings() is new


@pytest.mark.parametrize("cls", ["SiglipModel", "SiglipTextModel"])
@pytest.mark.parametrize("mean_resizing", [True, False])
def test_resize_token_embeddings(cls, mean_resizing, tmp_path):
    """As transformers: old rows kept, the text config's vocab_size follows, pad_to_multiple_of rounds up; new rows
    from N(mean, 1e-9 cov) of the old ones (mean_resizing) or N(0, 1/D)."""
    ours, theirs = _pair(cls, tmp_path)
    old = ours.get_input_embeddings().weight.detach().clone()  # (99, 32)
    emb = ours.resize_token_embeddings(1000, pad_to_multiple_of=64, mean_resizing=mean_resizing)
    theirs.resize_token_embeddings(1000, pad_to_multiple_of=64, mean_resizing=mean_resizing)
    text_config = ours.config.text_config if cls == "SiglipModel" else ours.config
    assert emb is ours.get_input_embeddings() and emb.weight.shape == (1024, 32) and emb.num_embeddings == 1024
    assert text_config.vocab_size == 1024 == theirs.get_input_embeddings().num_embeddings
    assert torch.equal(emb.weight[:99], old)
    new = emb.weight[99:]
    if mean_resizing:
        assert (new - old.mean(0)).abs().max().item() <= 1e-3
        their_new = theirs.get_input_embeddings().weight[99:]
        assert (new - their_new).abs().max().item() <= 2e-3
    else:
        assert abs(new.std().item() * 32**0.5 - 1) < 0.1 and abs(new.mean().item()) < 0.02
    ids = torch.randint(0, 1024, (2, 11))
    text = ours if cls == "SiglipTextModel" else ours.text_model
    assert text(input_ids=ids).pooler_output.isfinite().all()  # the new ids are in range now
    ours.resize_token_embeddings(40)
    assert emb.weight.shape == (40, 32) and text_config.vocab_size == 40 and torch.equal(emb.weight, old[:40])
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 40\)"):
        text(input_ids=torch.full((1, 11), 40))
    with pytest.raises(TypeError, match="no token embedding"):
        _ours("SiglipVisionModel").resize_token_embeddings(10)


@pytest.mark.parametrize("kwargs", [None, {"use_reentrant": True}, {"use_reentrant": False}])
def test_gradient_checkpointing_switches(kwargs):
    model = _ours("SiglipModel").train()
    randomize_(model)
    ids, pixels = inputs(model.config, batch=2)
    model(input_ids=ids, pixel_values=pixels, return_loss=True).loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    assert not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    assert model.is_gradient_checkpointing and model.text_model.is_gradient_checkpointing
    calls = []
    model.vision_model.encoder.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    model(input_ids=ids, pixel_values=pixels, return_loss=True).loss.backward()
    assert len(calls) == 2  # recomputed in the backward
    for name, p in model.named_parameters():
        assert (p.grad - expected[name]).abs().max().item() <= 1e-6, name
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


def test_attn_implementation_names_the_backend():
    model = _ours("SiglipModel", backend="eager")
    assert model.config._attn_implementation == "eager" == model.config.vision_config._attn_implementation
    model.set_backend("sdpa")
    assert model.config._attn_implementation == "sdpa" == model.text_model.config._attn_implementation
    model.set_backend("triton")
    assert model.config._attn_implementation == "siglip_fast_triton"
    model.set_backend("auto")  # on CPU the sdpa path (below); on CUDA the kernels
    assert model.config._attn_implementation == ("siglip_fast_triton" if torch.cuda.is_available() else "sdpa")
    assert "_attn_implementation" not in model.config.to_dict()


def test_attn_implementation_follows_from_pretrained_and_to(tmp_path, monkeypatch):
    """"auto" names what runs on the model's device: after from_pretrained (weights assigned to their device) and
    after .to() (meta stands in for another device here: only CUDA changes the name, so CUDA is faked)."""
    ours, _ = _pair("SiglipModel", tmp_path)
    model = sf.SiglipModel.from_pretrained(tmp_path, backend="auto")
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(ops, "attention_implementation",
                        lambda backend, param: f"{backend}@{getattr(param, 'device', None)}")
    model.to("meta")
    assert model.config._attn_implementation == "auto@meta" == model.config.text_config._attn_implementation
    model = sf.SiglipModel.from_pretrained(tmp_path, backend="auto")
    assert model.config._attn_implementation == "auto@cpu"


def test_meta_build_to_empty_init_weights():
    """The FSDP / accelerate path: build on meta, materialise with to_empty, initialise: every buffer is rebuilt."""
    text, vision = TINY_CONFIGS["base"]
    config = sf.SiglipConfig(text_config=dict(text), vision_config=dict(vision))
    with torch.device("meta"):
        model = sf.SiglipModel(config, backend="eager")
    model.to_empty(device="cpu")
    for buf in (model.text_model.embeddings.position_ids, model.vision_model.embeddings.position_ids):
        buf.fill_(1 << 40)  # what uninitialised memory may hold
    model.init_weights()
    assert torch.equal(model.text_model.embeddings.position_ids, torch.arange(11)[None])
    assert torch.equal(model.vision_model.embeddings.position_ids, torch.arange(16)[None])
    ids, pixels = inputs(config, batch=2)
    with torch.no_grad():
        out = model.eval()(input_ids=ids, pixel_values=pixels)
    assert out.logits_per_image.isfinite().all()
    reference = sf.SiglipModel(config, backend="eager").eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(reference(input_ids=ids, pixel_values=pixels).logits_per_image, out.logits_per_image)


def test_configs_accept_what_transformers_accepts_and_models_refuse_it():
    """transformers' configs take any value of the right type and fail when the model is built: so do ours, with a
    ValueError naming the field."""
    cases = [
        (dict(hidden_size=100, num_attention_heads=3), "divisible"),
        (dict(hidden_size=0), "hidden_size must be positive"),
        (dict(num_hidden_layers=-1), "num_hidden_layers must be positive"),
        (dict(image_size=8, patch_size=16), "smaller than patch_size"),
        (dict(hidden_act="tanhshrink"), "hidden_act"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
        (dict(attention_dropout=1.5), "attention_dropout"),
    ]
    for kwargs, match in cases:
        transformers.SiglipVisionConfig(**kwargs)
        config = sf.SiglipVisionConfig(**kwargs)
        with pytest.raises(ValueError, match=match):
            sf.SiglipVisionModel(config)
    sf.SiglipTextConfig(vocab_size=0)
    with pytest.raises(ValueError, match="vocab_size must be positive"):
        sf.SiglipTextModel(sf.SiglipTextConfig(vocab_size=0))
    mismatched = sf.SiglipConfig(text_config=dict(projection_size=7))
    with pytest.raises(ValueError, match="projection_size"):
        sf.SiglipModel(mismatched)
    config = sf.SiglipConfig(text_config=dict(projection_size=7), vision_config=dict(
        hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=4))
    sf.SiglipForImageClassification(config)  # the text tower is not built: its projection does not matter
    with pytest.raises(TypeError, match="hidden_size must be an int"):
        sf.SiglipVisionConfig(hidden_size="768")  # a type error at construction, as transformers' strict configs


@pytest.mark.parametrize("act", ["gelu", "quick_gelu", "relu", "gelu_new"])
def test_other_activations_match_transformers(act, tmp_path):
    config = hf_config("base")
    config.text_config.hidden_act = config.vision_config.hidden_act = act
    theirs = randomize_(transformers.SiglipModel(config)).eval()
    theirs.save_pretrained(tmp_path)
    ours = sf.SiglipModel.from_pretrained(tmp_path, backend="eager")
    ids, pixels = inputs(config, batch=2)
    with torch.no_grad():
        o, t = ours(input_ids=ids, pixel_values=pixels), theirs(input_ids=ids, pixel_values=pixels)
    assert (o.logits_per_image - t.logits_per_image).abs().max().item() <= 1e-5


@pytest.mark.parametrize("fn", ["SiglipModel.forward", "SiglipModel.get_text_features",
                                "SiglipModel.get_image_features", "SiglipTextModel.forward",
                                "SiglipVisionModel.forward", "SiglipForImageClassification.forward"])
def test_public_forwards_document_their_arguments(fn):
    cls, name = fn.split(".")
    method = getattr(getattr(sf, cls), name)
    doc = inspect.getdoc(method)
    assert doc
    if name == "forward":
        for arg in inspect.signature(method).parameters:
            if arg != "self":
                assert re.search(rf"\b{arg}\b", doc), (fn, arg)


def test_auto_on_cpu_is_the_sdpa_path(tmp_path):
    """backend="auto" on CPU takes the fastest PyTorch path (benchmarks/test_bench_cpu_default.py measures it against
    transformers' default sdpa), and computes what transformers computes within the eager tolerance."""
    assert ops.resolve("auto", torch.empty(1)) == "sdpa"
    ours, theirs = _pair("SiglipModel", tmp_path)
    ours.set_backend("auto")
    ids, pixels = inputs(theirs.config, batch=3)
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    with torch.no_grad():
        o = ours(input_ids=ids, pixel_values=pixels, attention_mask=mask, output_hidden_states=True)
        t = theirs(input_ids=ids, pixel_values=pixels, attention_mask=mask, output_hidden_states=True)
    for key in ("logits_per_image", "text_embeds", "image_embeds"):
        assert (o[key] - t[key]).abs().max().item() <= 1e-5, key
    for tower in ("text_model_output", "vision_model_output"):
        for a, b in zip(o[tower].hidden_states, t[tower].hidden_states, strict=True):
            assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("cls", [sf.SiglipModel, sf.SiglipForImageClassification, sf.SiglipVisionModel,
                                 sf.SiglipTextModel])
def test_base_model_prefix_resolves_as_integrations_use_it(cls):
    """Integrations (PEFT, accelerate, transformers' own loaders) call getattr(model, model.base_model_prefix, model):
    a string prefix, naming a tower attribute only where the model is one tower's wrapper."""
    text, vision = TINY_CONFIGS["base"]
    config = sf.SiglipConfig(text_config=text, vision_config=vision)
    model = cls({sf.SiglipVisionModel: config.vision_config, sf.SiglipTextModel: config.text_config}.get(cls, config))
    assert isinstance(model.base_model_prefix, str)
    base = getattr(model, model.base_model_prefix, model)
    assert base is model or base is getattr(model, model.base_model_prefix)


# --- PreTrainedModel surface, round 3 (issue 21) ------------------------------------------------------------------

@pytest.mark.parametrize("cls", CLASSES)
def test_from_config_as_transformers(cls):
    """`_from_config(config, attn_implementation=..., dtype=...)`: a model of a copy of the config (the caller's is
    not changed), on the backend of that attention, in that dtype; anything else is a TypeError naming it."""
    config = _sub(sf.SiglipConfig(text_config=dict(TINY_CONFIGS["base"][0]),
                                  vision_config=dict(TINY_CONFIGS["base"][1])), cls)
    before = config.to_dict()
    model = getattr(sf, cls)._from_config(config, attn_implementation="eager", dtype=torch.float64)
    assert type(model).__name__ == cls and model.backend == "eager" and model.dtype == torch.float64
    assert model.config is not config and config.to_dict() == before
    assert model.config._attn_implementation == "eager" and config._attn_implementation is None
    assert getattr(sf, cls)._from_config(config).backend == "auto"
    assert getattr(sf, cls)._from_config(config, torch_dtype="bfloat16").dtype == torch.bfloat16
    theirs = getattr(transformers, cls)._from_config(
        _sub(hf_config("base"), cls), attn_implementation="eager", dtype=torch.float64)
    assert theirs.dtype == model.dtype and theirs.num_parameters() == model.num_parameters()
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) foo"):
        getattr(sf, cls)._from_config(config, foo=1)
    with pytest.raises(ValueError, match="flash_attention_2.*no siglip_fast equivalent"):
        getattr(sf, cls)._from_config(config, attn_implementation="flash_attention_2")


def test_set_attn_implementation():
    """`set_attn_implementation("eager")` switches the whole model (as set_backend); a dict switches the parts by
    config key, the others keeping theirs; config._attn_implementation follows each part."""
    model = _ours("SiglipModel", backend="sdpa")
    assert model.set_attn_implementation("eager") is model
    assert {m.backend for m in model.modules() if isinstance(m, sf.SiglipModel.__mro__[1])} == {"eager"}
    model.set_attn_implementation({"text_config": "sdpa"})
    assert (model.backend, model.text_model.backend, model.vision_model.backend) == ("eager", "sdpa", "eager")
    assert (model.config._attn_implementation, model.config.text_config._attn_implementation,
            model.config.vision_config._attn_implementation) == ("eager", "sdpa", "eager")
    model.to(torch.float64)  # moving the model re-derives the names, each part keeping its own
    assert model.config.text_config._attn_implementation == "sdpa" == model.text_model.config._attn_implementation
    assert model.config.vision_config._attn_implementation == "eager"
    model.set_attn_implementation({"": "sdpa", "vision_config": "siglip_fast_triton"})
    assert (model.backend, model.text_model.backend, model.vision_model.backend) == ("sdpa", "sdpa", "triton")
    ids, pixels = inputs(model.config, batch=2)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        reference = model(input_ids=ids, pixel_values=pixels.double()).logits_per_image
        model.set_attn_implementation({"text_config": "sdpa"})
        mixed = model(input_ids=ids, pixel_values=pixels.double()).logits_per_image
    assert (mixed - reference).abs().max().item() <= 1e-10  # fp64: the same function on either backend
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['audio_config'\]"):
        model.set_attn_implementation({"audio_config": "eager"})
    with pytest.raises(ValueError, match="flex_attention.*no siglip_fast equivalent"):
        model.set_attn_implementation("flex_attention")
    tower = _ours("SiglipVisionModel", backend="eager")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['text_config'\]"):
        tower.set_attn_implementation({"text_config": "sdpa"})
    assert tower.set_attn_implementation({"": "sdpa"}).backend == "sdpa"


@pytest.mark.parametrize("cls", CLASSES)
def test_is_activation_checkpointing(cls, tmp_path):
    ours, theirs = _pair(cls, tmp_path)
    for model in (ours, theirs):
        assert model.is_activation_checkpointing is False
        model.activation_checkpointing_enable()
        assert model.is_activation_checkpointing is True and model.is_gradient_checkpointing is True
        model.gradient_checkpointing_disable()
        assert model.is_activation_checkpointing is False


@pytest.mark.parametrize("cls", ["SiglipModel", "SiglipTextModel"])
def test_vocab_size_follows_resizing(cls, tmp_path):
    """`model.vocab_size`, which transformers sets in resize_token_embeddings and its callers read."""
    ours, theirs = _pair(cls, tmp_path)
    assert ours.vocab_size == 99
    for model in (ours, theirs):
        model.resize_token_embeddings(130)
    assert ours.vocab_size == theirs.vocab_size == 130 == ours.config.get_text_config().vocab_size
    ours.resize_token_embeddings(50, pad_to_multiple_of=64)
    assert ours.vocab_size == 64
    with pytest.raises(AttributeError, match="no attribute 'vocab_size'"):  # as transformers' vision models
        _ = _ours("SiglipVisionModel").vocab_size


@pytest.mark.parametrize("cls", CLASSES)
def test_keys_to_ignore_on_load(cls, tmp_path):
    """transformers' `_keys_to_ignore_on_load_missing` / `_unexpected` (None on SigLIP, as there) are honoured by a
    subclass that sets them: matching keys may be missing (initialised) or unexpected (skipped) in a strict load."""
    ours_cls, theirs_cls = getattr(sf, cls), getattr(transformers, cls)
    assert ours_cls._keys_to_ignore_on_load_missing is None is theirs_cls._keys_to_ignore_on_load_missing
    assert ours_cls._keys_to_ignore_on_load_unexpected is None is theirs_cls._keys_to_ignore_on_load_unexpected
    model = _ours(cls)
    state = model.state_dict()
    head = next(k for k in state if k.endswith("layer_norm1.weight"))
    del state[head]
    state["extra.buffer"] = torch.randn(3)
    with pytest.raises(ValueError, match=rf"missing keys \(1\): {re.escape(head)}[\s\S]*unexpected keys"):
        ours_cls.from_pretrained(None, config=model.config, state_dict=state)
    lenient = type("Lenient" + cls, (ours_cls,), {"_keys_to_ignore_on_load_missing": [r"layer_norm1\.weight$"],
                                                    "_keys_to_ignore_on_load_unexpected": [r"^extra\."]})
    with pytest.warns(UserWarning, match=re.escape(head)):
        loaded = lenient.from_pretrained(None, config=model.config, state_dict=state)
    assert torch.equal(loaded.state_dict()[head], torch.ones_like(model.state_dict()[head]))  # LayerNorm's init


def test_feature_outputs_are_mappings_rebuilt_as_transformers_outputs():
    """get_text_features / get_image_features return siglip_fast's BaseModelOutputWithPooling: transformers v5's
    fields, attribute / key / tuple access, a Mapping rebuilt from a dict of its fields (what accelerate's
    send_to_device and convert_to_fp32 do: type(out)({k: ...})), and the dict methods that would desynchronise
    keys and attributes refused — as transformers' output classes. It is not a subclass of transformers' classes
    (no runtime dependency; README "Drop-in usage")."""
    import collections.abc
    import copy
    import pickle

    model = _ours("SiglipModel")
    ids, pixels = inputs(model.config, batch=2)
    with torch.no_grad():
        text, image = model.get_text_features(input_ids=ids), model.get_image_features(pixel_values=pixels)
    theirs = transformers.modeling_outputs.BaseModelOutputWithPooling
    for out in (text, image):
        assert isinstance(out, collections.abc.Mapping) and isinstance(out, dict)
        assert list(out.keys()) == ["last_hidden_state", "pooler_output"]
        assert out[1] is out.pooler_output is out["pooler_output"]
        rebuilt = type(out)({k: v.double() for k, v in out.items()})  # accelerate's recursively_apply
        assert type(rebuilt) is type(out) and rebuilt.pooler_output.dtype == torch.float64
        positional = type(out)(out.last_hidden_state, out.pooler_output)
        their_positional = theirs(out.last_hidden_state, out.pooler_output)
        assert list(positional.keys()) == list(their_positional.keys())
        for clone in (copy.copy(out), copy.deepcopy(out), out.copy(), pickle.loads(pickle.dumps(out))):
            assert type(clone) is type(out) and torch.equal(clone.pooler_output, out.pooler_output)
        for method, args in (("pop", ("pooler_output",)), ("update", ({},)), ("setdefault", ("a", 1)),
                             ("__delitem__", ("pooler_output",))):
            with pytest.raises(TypeError, match="not supported"):
                getattr(out, method)(*args)
            with pytest.raises(Exception, match="cannot use"):
                getattr(theirs(**dict(out)), method)(*args)
        with pytest.raises(TypeError, match="not supported"):
            out.popitem()
        assert not isinstance(out, transformers.utils.ModelOutput)  # the documented difference
    with pytest.raises(TypeError, match="unexpected fields"):
        type(text)({"pooled": 1})


@pytest.mark.parametrize("cls", CLASSES)
def test_enable_input_require_grads_with_frozen_weights(cls):
    """PEFT's path: frozen weights, reentrant checkpointing, enable_input_require_grads(): a trainable layer inside a
    checkpointed encoder gets its gradient (without the call it gets none: the checkpoint's inputs need no grad);
    disable_input_require_grads() removes the hooks; no effect under no_grad."""
    model = randomize_(_ours(cls)).train()
    model.requires_grad_(False)
    towers = [m for m in (model, getattr(model, "text_model", None), getattr(model, "vision_model", None))
              if m is not None and hasattr(m, "encoder")]
    adapters = [t.encoder.layers[-1].self_attn.q_proj.weight for t in towers]
    for w in adapters:
        w.requires_grad_(True)
    model.gradient_checkpointing_enable({"use_reentrant": True})
    text, vision = TINY_CONFIGS["base"]
    ids, pixels = inputs(sf.SiglipConfig(text_config=dict(text), vision_config=dict(vision)), batch=2)
    kwargs = {"SiglipModel": dict(input_ids=ids, pixel_values=pixels), "SiglipTextModel": dict(input_ids=ids),
              "SiglipVisionModel": dict(pixel_values=pixels),
              "SiglipForImageClassification": dict(pixel_values=pixels)}[cls]

    def grads():
        for w in adapters:
            w.grad = None
        out = model(**kwargs)
        loss = out[0].float().square().mean() if not isinstance(out, sf.outputs.SiglipOutput) \
            else out.logits_per_image.square().mean()
        if loss.requires_grad:
            loss.backward()
        return [w.grad for w in adapters]

    with pytest.warns(UserWarning, match="None of the inputs have requires_grad=True"):
        assert all(g is None for g in grads())
    model.enable_input_require_grads()
    assert all(g is not None and g.abs().sum() > 0 and g.isfinite().all() for g in grads())
    with torch.no_grad():
        assert not model(**kwargs)[0].requires_grad
    model.disable_input_require_grads()
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad=True"):
        assert all(g is None for g in grads())


def test_a_requested_attn_implementation_chooses_the_backend(tmp_path):
    """`config._attn_implementation = "eager"` (or attn_implementation= / a dict per part) before building a model
    chooses its backend, as in transformers, unless backend= is passed; what a model then writes there reports what
    runs and does not carry over to the next model built from a copy (on CPU "sdpa" is also what "auto" runs)."""
    import copy

    text, vision = TINY_CONFIGS["base"]
    config = sf.SiglipConfig(text_config=dict(text), vision_config=dict(vision))
    config._attn_implementation = "eager"
    model = sf.SiglipModel(copy.deepcopy(config))
    assert (model.backend, model.text_model.backend, model.vision_model.backend) == ("eager",) * 3
    assert sf.SiglipModel(copy.deepcopy(config), backend="sdpa").backend == "sdpa"
    assert sf.SiglipModel(copy.deepcopy(model.config)).backend == "auto"  # a report is no request
    config._attn_implementation = {"text_config": "sdpa"}
    model = sf.SiglipModel(copy.deepcopy(config))
    assert (model.backend, model.text_model.backend, model.vision_model.backend) == ("eager", "sdpa", "eager")
    assert sf.SiglipVisionModel(sf.SiglipVisionConfig(**vision, attn_implementation="eager")).backend == "eager"

    sf.SiglipModel(sf.SiglipConfig(text_config=dict(text), vision_config=dict(vision))).save_pretrained(tmp_path)
    model = sf.SiglipModel.from_pretrained(tmp_path, attn_implementation={"vision_config": "eager", "": "sdpa"})
    assert (model.backend, model.text_model.backend, model.vision_model.backend) == ("sdpa", "auto", "eager")
    theirs = transformers.SiglipModel.from_pretrained(tmp_path, attn_implementation={"vision_config": "eager",
                                                                                      "": "sdpa"})
    assert theirs.config.vision_config._attn_implementation == model.config.vision_config._attn_implementation
    with pytest.raises(ValueError, match=r"Specified `attn_implementation\['text_config'\]=\"flash_attention_2\"` is "
                                         r"not supported"):
        sf.SiglipModel.from_pretrained(tmp_path, attn_implementation={"text_config": "flash_attention_2"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['audio_config'\]"):
        sf.SiglipModel.from_pretrained(tmp_path, attn_implementation={"audio_config": "eager"})


def test_classifier_text_config_attn_implementation_as_transformers():
    """SiglipForImageClassification runs no text tower: its text_config keeps what it is given; a str given to
    set_attn_implementation is set on every nested config, as transformers' does."""
    text, vision = TINY_CONFIGS["base"]
    for lib in (sf, transformers):
        config = lib.SiglipConfig(text_config=dict(text), vision_config=dict(vision))
        config._attn_implementation = None
        config.text_config._attn_implementation = "eager"
        model = lib.SiglipForImageClassification(config)
        assert model.config.text_config._attn_implementation == "eager", lib
        model.set_attn_implementation("sdpa")
        nested = (model.config, model.config.text_config, model.config.vision_config)
        assert [c._attn_implementation for c in nested] == ["sdpa"] * 3, lib
        model.set_attn_implementation({"text_config": "eager"})
        assert model.config.text_config._attn_implementation == "eager", lib


@pytest.mark.parametrize("cls", CLASSES)
def test_capability_attributes_as_transformers(cls):
    """The PreTrainedModel attributes integrations read (accelerate's device maps, quantizers): the same kinds of
    values as transformers', saying what these classes support."""
    ours, theirs_cls = _ours(cls), getattr(transformers, cls)
    assert ours._supports_sdpa is theirs_cls._supports_sdpa is True
    assert ours._can_set_attn_implementation() is True and ours._can_set_experts_implementation() is False
    assert ours._keep_in_fp32_modules == set() == ours._keep_in_fp32_modules_strict
    assert set(theirs_cls._no_split_modules) <= set(ours._no_split_modules)
    module_names = {type(m).__name__ for m in ours.modules()}
    assert module_names & set(ours._no_split_modules)
