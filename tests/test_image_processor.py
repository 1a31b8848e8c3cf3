"""SiglipImageProcessor: bitwise parity with transformers' PIL backend (`SiglipImageProcessorPil`, v5).

Random images of odd sizes in every PIL mode, numpy HWC/CHW uint8/float, torch tensors, files and bytes; the
default path must match exactly (max difference 0), and so must every override.
"""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from siglip_fast.image_processing import BatchFeature, SiglipImageProcessor


@pytest.fixture(scope="module")
def hf_pil_cls():
    transformers = pytest.importorskip("transformers", reason="transformers is the parity peer")
    return transformers.SiglipImageProcessorPil


@pytest.fixture
def rng():
    return np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))  # follows the per-test seed


def _rgb(rng, h, w) -> PIL.Image.Image:
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _pil_in_mode(rng, mode: str) -> PIL.Image.Image:
    h, w = int(rng.integers(17, 61)), int(rng.integers(17, 61))
    if mode == "I;16":
        return PIL.Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "I":
        return PIL.Image.fromarray(rng.integers(-300, 70000, (h, w), dtype=np.int32))
    if mode == "F":
        return PIL.Image.fromarray(rng.uniform(-5, 400, (h, w)).astype(np.float32))
    if mode in ("LA", "RGBA"):
        return PIL.Image.fromarray(rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8), mode=mode)
    image = _rgb(rng, h, w)
    if mode == "P+transparency":
        image = image.convert("P")
        image.info["transparency"] = int(np.asarray(image)[0, 0])
        return image
    return image.convert(mode)


def _equal(ours, theirs):
    assert type(ours) is type(theirs)
    assert ours.dtype == theirs.dtype and tuple(ours.shape) == tuple(theirs.shape)
    diff = np.abs(np.asarray(ours, dtype=np.float64) - np.asarray(theirs, dtype=np.float64)).max()
    assert diff == 0, f"max abs diff {diff}"
    assert not np.isnan(np.asarray(ours, dtype=np.float64)).any()


MODES = ["1", "L", "LA", "P", "P+transparency", "RGB", "RGBA", "CMYK", "I", "F", "I;16", "YCbCr"]


@pytest.mark.parametrize("mode", MODES)
def test_pil_modes_match_transformers(hf_pil_cls, rng, mode):
    image = _pil_in_mode(rng, mode)
    ours, theirs = SiglipImageProcessor(), hf_pil_cls()
    _equal(ours(image, return_tensors="pt")["pixel_values"], theirs(image, return_tensors="pt")["pixel_values"])
    size = {"height": 19, "width": 45}  # odd and upsampling one way, downsampling the other
    _equal(ours(image, size=size, return_tensors="np")["pixel_values"],
           theirs(image, size=size, return_tensors="np")["pixel_values"])


def test_arrays_and_tensors_match_transformers(hf_pil_cls, rng):
    hwc = np.asarray(_rgb(rng, 33, 47))
    alpha = rng.integers(0, 256, (33, 47, 1), dtype=np.uint8)
    inputs = {
        "hwc uint8": hwc,
        "chw uint8": np.ascontiguousarray(hwc.transpose(2, 0, 1)),
        "hwc float32 [0,1]": (hwc / 255).astype(np.float32),
        "chw float64 [0,1]": hwc.transpose(2, 0, 1) / 255,
        "hwc float integer-valued": hwc.astype(np.float32),
        "hwc rgba uint8": np.concatenate([hwc, alpha], -1),
        "hwc rgba float": (np.concatenate([hwc, alpha], -1) / 255).astype(np.float32),
        "hw1 gray": hwc[..., :1].copy(),
        "torch chw uint8": torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))),
        "torch hwc float": torch.from_numpy(hwc / 255),
    }
    ours, theirs = SiglipImageProcessor(), hf_pil_cls()
    for name, image in inputs.items():
        got = ours(image, return_tensors="np")["pixel_values"]
        _equal(got, theirs(image, return_tensors="np")["pixel_values"])
        assert got.shape == (1, 3, 224, 224), name


@pytest.mark.parametrize("overrides", [
    {"size": {"height": 31, "width": 17}, "resample": 2},
    {"do_normalize": False},
    {"do_rescale": False},
    {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
     "rescale_factor": 1 / 127.5},
    {"do_resize": False, "do_rescale": False, "do_normalize": False},
    {"do_convert_rgb": False},
])
def test_overrides_match_transformers(hf_pil_cls, rng, overrides):
    images = [_rgb(rng, 41, 29), np.asarray(_rgb(rng, 41, 29)), (np.asarray(_rgb(rng, 41, 29)) / 255)]
    ours, theirs = SiglipImageProcessor(), hf_pil_cls()
    for image in images:
        _equal(ours(image, return_tensors="np", **overrides)["pixel_values"],
               theirs(image, return_tensors="np", **overrides)["pixel_values"])
    # the same options given at construction time
    _equal(SiglipImageProcessor(**overrides)(images, return_tensors="np")["pixel_values"],
           hf_pil_cls(**overrides)(images, return_tensors="np")["pixel_values"])


@pytest.mark.parametrize("return_tensors", [None, "np", "pt"])
def test_batches_and_return_types(hf_pil_cls, rng, return_tensors):
    images = [_rgb(rng, 23, 71), _pil_in_mode(rng, "RGBA"), np.asarray(_rgb(rng, 90, 13))]  # mixed sizes/kinds
    ours = SiglipImageProcessor(size={"height": 27, "width": 35})
    theirs = hf_pil_cls(size={"height": 27, "width": 35})
    got = ours(images, return_tensors=return_tensors, num_workers=2)
    assert isinstance(got, BatchFeature) and list(got) == ["pixel_values"]
    expected = theirs(images, return_tensors=return_tensors)["pixel_values"]
    if return_tensors is None:
        assert isinstance(got.pixel_values, list) and len(got.pixel_values) == 3
        for a, b in zip(got.pixel_values, expected, strict=True):
            _equal(a, b)
    else:
        _equal(got.pixel_values, expected)
    batch4d = np.stack([np.asarray(_rgb(rng, 20, 30)) for _ in range(2)])  # (B, H, W, C) array
    _equal(ours(batch4d, return_tensors="np")["pixel_values"], theirs(batch4d, return_tensors="np")["pixel_values"])


def test_paths_and_bytes_match_transformers(hf_pil_cls, rng, tmp_path):
    path = tmp_path / "img.png"
    _pil_in_mode(rng, "RGBA").save(path)
    ours, theirs = SiglipImageProcessor(), hf_pil_cls()
    expected = theirs(str(path), return_tensors="np")["pixel_values"]
    _equal(ours(str(path), return_tensors="np")["pixel_values"], expected)
    _equal(ours(path.read_bytes(), return_tensors="np")["pixel_values"], expected)


def test_uint8_option(hf_pil_cls, rng):
    images = [_rgb(rng, 45, 67), _pil_in_mode(rng, "LA"), np.asarray(_rgb(rng, 45, 67)).astype(np.float32)]
    proc = SiglipImageProcessor(size={"height": 29, "width": 33})
    pixels = proc(images, return_tensors="pt", return_uint8=True)["pixel_values"]
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 3, 29, 33)
    # round(resize) before normalisation: transformers' resize with rescale and normalise switched off
    resized = hf_pil_cls(size={"height": 29, "width": 33}, do_rescale=False, do_normalize=False)(
        images, return_tensors="pt")["pixel_values"]
    _equal(pixels, resized)
    # normalising afterwards (what the fused patch embedding folds into its weights) gives the default output
    x = ((pixels.numpy().astype(np.float64) * (1 / 255)).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
    _equal(x, proc(images, return_tensors="np")["pixel_values"])
    with pytest.raises(ValueError, match="SigLIP's normalisation"):
        proc(images, return_uint8=True, image_mean=[0.48, 0.46, 0.41])
    with pytest.raises(ValueError, match="SigLIP's normalisation"):
        SiglipImageProcessor(do_normalize=False)(images, return_uint8=True)
    with pytest.raises(ValueError, match="uint8-valued pixels"):
        proc(np.asarray(_rgb(rng, 20, 20)) / 255, return_uint8=True)


def test_bad_input(rng, tmp_path):
    proc = SiglipImageProcessor()
    with pytest.raises(ValueError, match="channel axis"):
        proc(rng.integers(0, 256, (20, 30, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"images\[0\]: expected a 3-channel"):
        proc(_pil_in_mode(rng, "RGBA"), do_convert_rgb=False)
    with pytest.raises(ValueError, match="empty list"):
        proc([])
    with pytest.raises(TypeError, match=r"images\[1\]: expected a PIL image"):
        proc([_rgb(rng, 9, 9), {"not": "an image"}])
    with pytest.raises(ValueError, match="2 or 3 dims"):
        proc(np.zeros((1, 2, 3, 4, 5), dtype=np.uint8) + 1)
    with pytest.raises(ValueError, match="empty image"):
        proc(np.ones((0, 5, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="pixel dtype"):
        proc(np.ones((5, 5, 3), dtype=bool))
    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\]"):
        proc(rng.uniform(-2, 2, (10, 10, 3)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        proc(str(tmp_path / "missing.png"))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 64, dtype=np.uint8)))
    with pytest.raises(ValueError, match="could not be decoded"):
        proc(str(tmp_path / "corrupt.png"))
    with pytest.raises(ValueError, match="could not be decoded"):
        proc(b"definitely not an image")
    with pytest.raises(ValueError, match="different sizes"):
        proc([_rgb(rng, 9, 9), _rgb(rng, 9, 10)], do_resize=False, return_tensors="pt")
    with pytest.raises(TypeError, match="unexpected option 'crop_size'"):
        proc(_rgb(rng, 9, 9), crop_size=3)
    with pytest.raises(ValueError, match="size must be"):
        SiglipImageProcessor(size=224)
    with pytest.raises(ValueError, match="image_mean"):
        SiglipImageProcessor(image_mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="resample"):
        SiglipImageProcessor(resample=42)


def test_config_round_trip(hf_pil_cls, rng, tmp_path):
    ours = SiglipImageProcessor(size={"height": 384, "width": 320}, resample=2, image_mean=[0.1, 0.2, 0.3])
    ours.save_pretrained(tmp_path / "ours")
    theirs = hf_pil_cls.from_pretrained(str(tmp_path / "ours"))
    saved = json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())
    assert saved == json.loads(json.dumps(theirs.to_dict()))
    hf_pil_cls(size={"height": 19, "width": 21}, do_normalize=False).save_pretrained(str(tmp_path / "theirs"))
    loaded = SiglipImageProcessor.from_pretrained(tmp_path / "theirs")
    assert loaded.size == {"height": 19, "width": 21} and loaded.do_normalize is False
    image = _rgb(rng, 40, 50)
    _equal(loaded(image, return_tensors="np")["pixel_values"],
           hf_pil_cls.from_pretrained(str(tmp_path / "theirs"))(image, return_tensors="np")["pixel_values"])
    # v5 processor_config.json with the image processor nested; a v4 `do_convert_rgb: null` means the default
    nested = {"image_processor": {**ours.to_dict(), "do_convert_rgb": None}, "processor_class": "SiglipProcessor"}
    (tmp_path / "v5").mkdir()
    (tmp_path / "v5" / "processor_config.json").write_text(json.dumps(nested))
    assert SiglipImageProcessor.from_pretrained(tmp_path / "v5").to_dict() == ours.to_dict()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        SiglipImageProcessor.from_pretrained(tmp_path)
