"""SiglipImageProcessor: bitwise parity with transformers' PIL backend (`SiglipImageProcessorPil`, v5).

Random images of odd sizes in every PIL mode, numpy HWC/CHW uint8/float, torch tensors, files and bytes; the
default path must match exactly (max difference 0), and so must every override.
"""

import json
import struct
import warnings
import zlib

import numpy as np
import PIL.Image
import pytest
import torch

from siglip_fast.image_processing import BatchFeature, SiglipImageProcessor, load_image

# parity tests feed [0, 1] floats on purpose; the warning itself is tested in
# test_float_images_in_unit_range_warn_like_transformers_v4 (pytest.warns sees it regardless of this filter)
pytestmark = pytest.mark.filterwarnings("ignore:.*It looks like you are trying to rescale already rescaled")


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
    mode, _, values = mode.partition(" ")  # e.g. "I;16 low": 16-bit storage, 8-bit values
    if mode in ("I;16", "I;16B", "I;16L"):
        high = 256 if values == "low" else 65536
        data = rng.integers(0, high, (h, w)).astype(">u2" if mode == "I;16B" else "<u2")
        return PIL.Image.frombytes(mode, (w, h), data.tobytes())
    if mode == "I":
        low, high = (0, 256) if values == "low" else (-300, 70000)
        return PIL.Image.fromarray(rng.integers(low, high, (h, w), dtype=np.int32))
    if mode == "F":
        low, high = {"unit": (0, 1), "low": (0, 255)}.get(values, (-5, 400))
        return PIL.Image.fromarray(rng.uniform(low, high, (h, w)).astype(np.float32))
    if mode in ("LA", "RGBA"):
        return PIL.Image.fromarray(rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8), mode=mode)
    image = _rgb(rng, h, w)
    if mode in ("RGBa", "PA"):
        image = PIL.Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), mode="RGBA")
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


MODES = ["1", "L", "LA", "P", "P+transparency", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV", "LAB",
         "I", "I low", "I;16", "I;16 low", "I;16B", "I;16B low", "I;16L", "F", "F unit", "F low"]
# what PIL's RGB conversion (transformers' too) does with wide values: clip to [0, 255], or truncate [0, 1] to 0/1
CLIPPED = {"I", "I;16", "I;16B", "I;16L", "F"}
BLACKENED = {"F unit"}


@pytest.mark.parametrize("mode", MODES)
def test_pil_modes_match_transformers(hf_pil_cls, rng, mode):
    """Every PIL mode, including 16/32-bit integer and float images at several value ranges: bit-exact with
    transformers (both convert with PIL), and a warning where that conversion clips or blackens the values."""
    image = _pil_in_mode(rng, mode)
    ours, theirs = SiglipImageProcessor(), hf_pil_cls()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ours(image, return_tensors="pt")["pixel_values"]
    _equal(got, theirs(image, return_tensors="pt")["pixel_values"])
    messages = [str(w.message) for w in caught]
    if mode in CLIPPED:
        assert len(messages) == 1 and f"mode {mode.split()[0]!r} image has values in" in messages[0], messages
        assert "clips them to [0, 255]" in messages[0]
    elif mode in BLACKENED:
        assert len(messages) == 1 and "becomes black" in messages[0], messages
        assert float(got.max()) < -0.99  # what transformers gives too: 0/1 out of 255
    else:
        assert messages == [], messages
    size = {"height": 19, "width": 45}  # odd and upsampling one way, downsampling the other
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _equal(ours(image, size=size, return_tensors="np")["pixel_values"],
               theirs(image, size=size, return_tensors="np")["pixel_values"])


@pytest.mark.parametrize("mode", ["I", "I;16", "I;16 low", "F", "F unit", "L", "RGBA"])
def test_pil_modes_without_rgb_conversion_fail_clearly(hf_pil_cls, rng, mode):
    """do_convert_rgb=False: transformers fails on these too (some with 'mean must have 1 elements'); ours names
    the image, its mode and the fix."""
    image = _pil_in_mode(rng, mode)
    with pytest.raises(ValueError):
        hf_pil_cls(do_convert_rgb=False)(image)
    with pytest.raises(ValueError, match=rf"images\[0\]: expected a 3-channel \(RGB\) image, got a PIL image mode "
                                         rf"{mode.split()[0]} size .*pass do_convert_rgb=True"):
        SiglipImageProcessor(do_convert_rgb=False)(image)


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
    with pytest.raises(ValueError, match=r"images\[0\]: expected a 3-channel"):
        proc(np.asarray(_pil_in_mode(rng, "RGBA")), do_convert_rgb=False)
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


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (and whose data is a few bytes): what PIL sees of a huge image
    before decoding it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + \
        chunk(b"IEND", b"")


def test_decompression_bomb_is_a_clear_error_naming_the_image(rng, tmp_path):
    """Issue 23: a 100000 x 100000 PNG gave PIL's DecompressionBombError unwrapped; it is a ValueError naming the
    image (its position, and its file), the pixel count and the limit to raise."""
    side = int(rng.integers(100_000, 120_000))
    data = _png_header_only(side, side)
    path = tmp_path / "huge.png"
    path.write_bytes(data)
    proc = SiglipImageProcessor()
    with pytest.raises(ValueError, match=r"images\[1\]: image file .*huge\.png.* too large to decode safely "
                                         rf"\(Image size \({side * side} pixels\).*MAX_IMAGE_PIXELS"):
        proc([_rgb(rng, 9, 9), str(path)])
    with pytest.raises(ValueError, match=r"images\[0\]: image bytes: the image is too large"):
        proc(data)
    with pytest.raises(ValueError, match="too large to decode safely"):
        load_image(path)


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


# ---------------------------------------------------------------------------------------------------------------
# Issues 13/14: config dicts and JSON as transformers writes them, the double-rescale warning, hostile input
# ---------------------------------------------------------------------------------------------------------------

CONFIGS = [
    {},
    {"size": {"height": 384, "width": 320}, "resample": 2, "image_mean": [0.1, 0.2, 0.3], "do_convert_rgb": False},
    {"size": (19, 21), "rescale_factor": 1 / 127.5, "image_std": 0.25, "do_normalize": False},
]


@pytest.mark.parametrize("config", CONFIGS)
def test_to_dict_and_json_match_transformers(hf_pil_cls, tmp_path, config):
    ours, theirs = SiglipImageProcessor(**config), hf_pil_cls(**config)
    expected = json.loads(theirs.to_json_string())
    mine = ours.to_dict()
    assert json.loads(json.dumps(mine)) == expected and list(mine) == sorted(expected)  # same keys, values, order
    # transformers v5's to_dict itself: image_mean / image_std as tuples (or the one number given), resample an int
    # (an IntEnum there, equal to it), size a plain dict
    assert mine == theirs.to_dict() and type(mine["resample"]) is int and type(mine["size"]) is dict
    for key in ("image_mean", "image_std"):
        assert type(mine[key]) is type(theirs.to_dict()[key]), key
    assert ours.to_json_string() == theirs.to_json_string()
    ours.to_json_file(tmp_path / "ours.json")
    theirs.to_json_file(str(tmp_path / "theirs.json"))
    assert (tmp_path / "ours.json").read_text() == (tmp_path / "theirs.json").read_text()
    ours.save_pretrained(tmp_path / "dir")
    assert (tmp_path / "dir" / "preprocessor_config.json").read_text() == (tmp_path / "theirs.json").read_text()


@pytest.mark.parametrize("config", CONFIGS)
def test_from_json_file_matches_transformers(hf_pil_cls, rng, tmp_path, config):
    hf_pil_cls(**config).to_json_file(str(tmp_path / "theirs.json"))
    ours = SiglipImageProcessor.from_json_file(tmp_path / "theirs.json")
    theirs = hf_pil_cls.from_json_file(str(tmp_path / "theirs.json"))
    assert type(ours) is SiglipImageProcessor
    assert ours.to_json_string() == theirs.to_json_string()
    image = _rgb(rng, 37, 53)
    _equal(ours(image, return_tensors="np")["pixel_values"], theirs(image, return_tensors="np")["pixel_values"])
    SiglipImageProcessor(**config).to_json_file(tmp_path / "ours.json")  # and transformers reads ours
    assert hf_pil_cls.from_json_file(str(tmp_path / "ours.json")).to_json_string() == theirs.to_json_string()
    with pytest.raises(TypeError, match="json_file must be a path"):
        SiglipImageProcessor.from_json_file(3)


def test_from_dict_with_overrides_matches_transformers(hf_pil_cls, rng):
    saved = json.loads(hf_pil_cls(size={"height": 30, "width": 40}).to_json_string())
    overrides = {"resample": 2, "do_normalize": False, "size": {"height": 17, "width": 23}}
    ours = SiglipImageProcessor.from_dict(saved, **overrides)
    theirs = hf_pil_cls.from_dict(saved, **overrides)
    assert ours.to_dict() == theirs.to_dict()
    assert saved["size"] == {"height": 30, "width": 40}  # the given dict is not modified
    image = _rgb(rng, 50, 60)
    _equal(ours(image, return_tensors="np")["pixel_values"], theirs(image, return_tensors="np")["pixel_values"])
    with pytest.raises(TypeError, match="unexpected option 'crop_size'"):
        SiglipImageProcessor.from_dict(saved, crop_size=3)
    with pytest.raises(ValueError, match="do_center_crop=true"):
        SiglipImageProcessor.from_dict({**saved, "do_center_crop": True})
    with pytest.raises(ValueError, match="not a SiglipImageProcessor config: image_processor_type=.CLIPImage"):
        SiglipImageProcessor.from_dict({**saved, "image_processor_type": "CLIPImageProcessor"})


def test_float_images_in_unit_range_warn_like_transformers_v4(hf_pil_cls, rng):
    """Pixels already in [0, 1] rescaled again come out near-black (transformers v5 does so silently): same output,
    plus transformers v4's warning. No warning for uint8, [0, 255] floats or do_rescale=False."""
    unit = (np.asarray(_rgb(rng, 33, 47)) / 255).astype(np.float32)
    ours, theirs = SiglipImageProcessor(), hf_pil_cls()
    for image in (unit, torch.from_numpy(unit), [np.asarray(_rgb(rng, 20, 20)), unit]):
        with pytest.warns(UserWarning, match=r"images\[\d\]: It looks like you are trying to rescale already "
                                             r"rescaled images\. If the input images have pixel values between 0 "
                                             r"and 1, set `do_rescale=False` to avoid rescaling them again\."):
            got = ours(image, return_tensors="np")["pixel_values"]
        _equal(got, theirs(image, return_tensors="np")["pixel_values"])
        assert got[-1].max() < -0.99  # near-black: what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails
        for image, kwargs in ((unit, {"do_rescale": False}), (np.asarray(_rgb(rng, 9, 9)), {}),
                              (np.asarray(_rgb(rng, 9, 9)).astype(np.float32), {}), (_rgb(rng, 9, 9), {})):
            _equal(ours(image, return_tensors="np", **kwargs)["pixel_values"],
                   theirs(image, return_tensors="np", **kwargs)["pixel_values"])


def test_bfloat16_tensors(rng):
    hwc = torch.from_numpy(np.asarray(_rgb(rng, 21, 34)).astype(np.float32))  # integer values: exact in bf16
    proc = SiglipImageProcessor()
    _equal(proc(hwc.to(torch.bfloat16), return_tensors="np")["pixel_values"],
           proc(hwc, return_tensors="np")["pixel_values"])


def test_hostile_options_and_inputs(rng, tmp_path):
    proc = SiglipImageProcessor()
    image = _rgb(rng, 9, 9)
    cases = [
        (lambda: SiglipImageProcessor(do_resize="false"), TypeError, r"do_resize must be a bool, got str \('false'\)"),
        (lambda: SiglipImageProcessor(do_convert_rgb=1), TypeError, "do_convert_rgb must be a bool, got int"),
        (lambda: proc(image, do_normalize="no"), TypeError, "do_normalize must be a bool, got str"),
        (lambda: SiglipImageProcessor(rescale_factor="1/255"), ValueError, "rescale_factor must be a finite number"),
        (lambda: SiglipImageProcessor(rescale_factor=float("nan")), ValueError, "rescale_factor must be a finite"),
        (lambda: SiglipImageProcessor(image_std=[0.5, 0, 0.5]), ValueError, "image_std must not contain 0"),
        (lambda: SiglipImageProcessor(image_mean=["a", 0, 0]), ValueError, "image_mean must be a float or 3 floats"),
        (lambda: SiglipImageProcessor(image_mean=True), ValueError, "image_mean must be a float or 3 floats"),
        (lambda: SiglipImageProcessor(size={"height": -3, "width": 4}), ValueError, "size must hold positive ints"),
        (lambda: SiglipImageProcessor(size={"shortest_edge": 224}), ValueError, "shortest_edge resizing is not"),
        (lambda: SiglipImageProcessor(num_workers=-1), ValueError, "num_workers must be None or an int >= 0"),
        (lambda: proc(image, num_workers="2"), ValueError, "num_workers must be None or an int >= 0"),
        (lambda: proc(None), TypeError, r"images\[0\]: expected a PIL image, numpy array, torch tensor, path or "
                                        r"bytes, got NoneType"),
        (lambda: proc([[image, image]]), TypeError, r"images\[0\]: expected a PIL image.*got list"),
        (lambda: proc(torch.zeros(4, 4, 3, dtype=torch.complex64)), TypeError, "pixel dtype must be an integer"),
        (lambda: proc(np.full((4, 4, 3), np.nan, dtype=np.float32)), ValueError, "pixels must be finite, got NaN"),
        (lambda: proc(torch.full((3, 4, 4), float("inf"))), ValueError, "pixels must be finite, got NaN or inf"),
        (lambda: proc(np.zeros((4, 4, 3), dtype=np.uint16) + 300), ValueError, r"must lie in \[0, 255\]"),
        (lambda: proc(torch.zeros(0, 3, 8, 8)), ValueError, "empty batch"),
        (lambda: proc(image, return_tensors="tf"), ValueError, "return_tensors must be 'pt', 'np' or None"),
        (lambda: proc.to_json_file(3), TypeError, "json_file_path must be a path"),
        (lambda: proc(image, return_uint8="yes"), TypeError, r"return_uint8 must be a bool, got str \('yes'\)"),
        (lambda: SiglipImageProcessor(size={"height": 10**6, "width": 10**6}), ValueError,
         "exceeds PIL.Image.MAX_IMAGE_PIXELS"),
        (lambda: SiglipImageProcessor(size={"height": True, "width": 4}), ValueError, "size must hold positive ints"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    (tmp_path / "preprocessor_config.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"preprocessor_config\.json' is not valid JSON"):
        SiglipImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        SiglipImageProcessor.from_pretrained(tmp_path)


def test_subclass_extension_points(rng, tmp_path):
    """What a SigLIP 2 image processor built on this one overrides: config_keys, image_processor_type,
    _check_option, to_dict (and __init__); per-call overrides, from_dict and from_pretrained then follow."""

    class Sub(SiglipImageProcessor):
        config_keys = (*SiglipImageProcessor.config_keys, "patch_size")
        image_processor_type = "Siglip2ImageProcessor"

        def __init__(self, patch_size: int = 16, **kwargs):
            super().__init__(**kwargs)
            self.patch_size = self._check_option("patch_size", patch_size)

        def _check_option(self, key, value):
            if key == "patch_size":
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f"patch_size must be a positive int, got {value!r}")
                return value
            return super()._check_option(key, value)

        def to_dict(self):
            return {**super().to_dict(), "patch_size": self.patch_size}

    sub = Sub(patch_size=8, size={"height": 16, "width": 16})
    assert sub._options({"patch_size": 4})["patch_size"] == 4
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        sub(_rgb(rng, 9, 9), patch_size=0)
    sub.save_pretrained(tmp_path)
    again = Sub.from_pretrained(tmp_path)
    assert again.to_dict() == sub.to_dict() and again.to_dict()["image_processor_type"] == "Siglip2ImageProcessor"
    with pytest.raises(ValueError, match="not a SiglipImageProcessor config"):
        SiglipImageProcessor.from_pretrained(tmp_path)
    image = _rgb(rng, 20, 30)
    _equal(again(image, return_tensors="np")["pixel_values"],
           SiglipImageProcessor(size={"height": 16, "width": 16})(image, return_tensors="np")["pixel_values"])
