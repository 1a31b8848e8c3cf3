"""Issue 21, image processors: what transformers v5's image-processing tests and `AutoImageProcessor` rely on.

`from_dict(..., _from_auto=True)` and `return_unused_kwargs`, `to_dict()` holding what transformers' holds, configs
saved by one backend loaded by the other (ours <-> transformers' PIL classes), `valid_kwargs`, and
`Siglip2ImageProcessor(size=...)` — each against transformers, on random options.
"""

import json
import typing

import numpy as np
import PIL.Image
import pytest
import torch
from packaging.version import Version

import siglip_fast as sf

transformers = pytest.importorskip("transformers", reason="transformers is the parity peer")

PAIRS = [(sf.SiglipImageProcessor, transformers.SiglipImageProcessorPil),
         (sf.Siglip2ImageProcessor, transformers.Siglip2ImageProcessorPil)]


@pytest.fixture
def rng():
    return np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))  # follows the per-test seed


def _options(rng, ours_cls) -> dict:
    """Random constructor options both classes take."""
    options = {"resample": int(rng.choice([2, 3])), "do_normalize": bool(rng.integers(0, 2)),
               "image_mean": [round(float(x), 3) for x in rng.uniform(0.1, 0.9, 3)],
               "image_std": round(float(rng.uniform(0.1, 0.9)), 3), "rescale_factor": 1 / int(rng.integers(100, 300))}
    if ours_cls is sf.SiglipImageProcessor:
        options["size"] = {"height": int(rng.integers(8, 64)), "width": int(rng.integers(8, 64))}
    else:
        options.update(patch_size=int(rng.choice([4, 8])), max_num_patches=int(rng.integers(8, 40)))
    return options


def _images(rng, n=2):
    return [PIL.Image.fromarray(rng.integers(0, 256, (int(rng.integers(9, 50)), int(rng.integers(9, 50)), 3),
                                             dtype=np.uint8)) for _ in range(n)]


def _same_outputs(a, b):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


@pytest.mark.parametrize("ours_cls, theirs_cls", PAIRS, ids=["siglip", "siglip2"])
def test_from_dict_takes_what_auto_image_processor_passes(rng, ours_cls, theirs_cls):
    saved = json.loads(theirs_cls(**_options(rng, ours_cls)).to_json_string())
    plain = ours_cls.from_dict(saved)
    auto = ours_cls.from_dict(saved, _from_auto=True)  # AutoImageProcessor's marker: changes nothing
    assert auto.to_dict() == plain.to_dict() == theirs_cls.from_dict(saved).to_dict()
    # return_unused_kwargs: the options the class does not have come back, as transformers returns them
    ours, unused = ours_cls.from_dict(saved, return_unused_kwargs=True, do_normalize=False, not_an_option=3)
    theirs, their_unused = theirs_cls.from_dict(saved, return_unused_kwargs=True, do_normalize=False,
                                                not_an_option=3)
    assert unused == {"not_an_option": 3}
    if Version(transformers.__version__) >= Version("5.25"):  # 5.24 also returned the do_normalize it applied
        assert their_unused == unused
    assert ours.to_dict() == theirs.to_dict() and ours.do_normalize is False
    with pytest.raises(TypeError, match="unexpected option 'not_an_option'.*return_unused_kwargs=True"):
        ours_cls.from_dict(saved, not_an_option=3)
    with pytest.raises(TypeError, match="return_unused_kwargs must be a bool"):
        ours_cls.from_dict(saved, return_unused_kwargs="yes")


@pytest.mark.parametrize("ours_cls, theirs_cls", PAIRS, ids=["siglip", "siglip2"])
def test_to_dict_holds_what_transformers_holds(rng, ours_cls, theirs_cls):
    for options in ({}, _options(rng, ours_cls), {"image_mean": 0.25, "image_std": (0.1, 0.2, 0.3)}):
        ours, theirs = ours_cls(**options).to_dict(), theirs_cls(**options).to_dict()
        assert ours == theirs, options
        assert {k: type(v) for k, v in ours.items() if k != "resample"} == \
            {k: type(v) for k, v in theirs.items() if k != "resample"}, options  # tuples where theirs has tuples
        assert json.loads(ours_cls(**options).to_json_string()) == json.loads(theirs_cls(**options).to_json_string())


@pytest.mark.parametrize("ours_cls, theirs_cls", PAIRS, ids=["siglip", "siglip2"])
def test_save_load_across_backends(rng, tmp_path, ours_cls, theirs_cls):
    """transformers' test_save_load_backends: a config saved by one backend loads into the other with the same
    to_dict (keys only one side has must be None) and the same pixels."""
    options = _options(rng, ours_cls)
    images = _images(rng)
    for first, second in ((ours_cls, theirs_cls), (theirs_cls, ours_cls)):
        saver = first(**options)
        directory = tmp_path / f"{first.__module__}.{first.__name__}"
        saver.save_pretrained(str(directory))
        loaded = second.from_pretrained(str(directory))
        a, b = saver.to_dict(), loaded.to_dict()
        assert all(a.get(k, b.get(k)) is None for k in set(a) ^ set(b)), set(a) ^ set(b)
        assert {k: a[k] for k in set(a) & set(b)} == {k: b[k] for k in set(a) & set(b)}
        _same_outputs(saver(images, return_tensors="pt"), loaded(images, return_tensors="pt"))


@pytest.mark.parametrize("ours_cls, theirs_cls", PAIRS, ids=["siglip", "siglip2"])
def test_valid_kwargs(rng, ours_cls, theirs_cls):
    """v5's `valid_kwargs`: a TypedDict whose keys are the image options; every one is taken by the constructor
    (the call options too, per call), and the config keys are among transformers' own."""
    keys = set(ours_cls.valid_kwargs.__annotations__)
    assert typing.is_typeddict(ours_cls.valid_kwargs) and ours_cls.valid_kwargs.__total__ is False
    assert keys == {*ours_cls.config_keys, "num_workers", "return_tensors", "return_uint8"}
    assert set(ours_cls.config_keys) <= set(theirs_cls.valid_kwargs.__annotations__)
    # what transformers' image-processing tester does with it: keep the attributes that are valid kwargs
    tester = {**_options(rng, ours_cls), "batch_size": 7, "num_channels": 3, "min_resolution": 30}
    processor = ours_cls(**{k: v for k, v in tester.items() if k in keys})
    assert processor.to_dict() == theirs_cls(**{k: v for k, v in tester.items()
                                                 if k in theirs_cls.valid_kwargs.__annotations__}).to_dict()


@pytest.mark.parametrize("size", [{"height": 18, "width": 30}, [20, 12], 24, {"shortest_edge": 18}])
def test_siglip2_accepts_a_size_as_transformers(rng, tmp_path, size):
    """transformers' Siglip2ImageProcessor takes `size` (NaFlex configs may carry one) and keeps it, unused: the same
    here — the same to_dict, files and pixels as transformers and as without it."""
    options = {k: v for k, v in _options(rng, sf.Siglip2ImageProcessor).items()}
    ours, theirs = sf.Siglip2ImageProcessor(size=size, **options), transformers.Siglip2ImageProcessorPil(
        size=size, **options)
    assert ours.to_dict() == theirs.to_dict() and ours.to_json_string() == theirs.to_json_string()
    images = _images(rng, 3)
    ours_out = ours(images, return_tensors="pt")
    _same_outputs(ours_out, theirs(images, return_tensors="pt"))
    _same_outputs(ours_out, sf.Siglip2ImageProcessor(**options)(images, return_tensors="pt"))
    ours.save_pretrained(tmp_path)
    assert transformers.Siglip2ImageProcessorPil.from_pretrained(tmp_path).to_dict() == theirs.to_dict()
    assert sf.Siglip2ImageProcessor.from_pretrained(tmp_path).to_dict() == ours.to_dict()
    assert "size" not in sf.Siglip2ImageProcessor(**options).to_dict()  # unset: not written (transformers neither)
    with pytest.raises(TypeError, match="per-call size"):
        ours(images, size=size)


@pytest.mark.parametrize("size, match", [(0, "positive int"), ({"height": 4, "depth": 2}, "keys among"),
                                         ({"height": -1}, "positive int"), ("big", "size must be"),
                                         ([1, 2, 3], "size must be")])
def test_siglip2_bad_size(size, match):
    with pytest.raises(ValueError, match=match):
        sf.Siglip2ImageProcessor(size=size)
