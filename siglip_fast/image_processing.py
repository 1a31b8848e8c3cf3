"""SigLIP's image processor: pixel-for-pixel transformers' PIL backend (`SiglipImageProcessorPil`, v5).

Pipeline per image (reference/hf-siglip.md §4.2):
  1. RGB conversion: an image with alpha (a band or `transparency` info) is composited onto white, anything else
     goes through `convert("RGB")`; 1-channel arrays are repeated, 4-channel arrays composited onto white;
  2. `PIL.Image.resize((W, H), BICUBIC)` on uint8 (float arrays in [0, 1] are scaled to uint8 for PIL and back,
     as transformers does);
  3. rescale `(x.astype(float64) * rescale_factor).astype(float32)`, normalise `(x - mean) / std` in float32, CHW.

Steps 2-3 are exact but cheaper than transformers': the image stays a PIL image from decoding to resize, and for
uint8 pixels rescale + normalise are one lookup in a 256-entry table per channel, computed with the very same
float operations, so the result is bitwise identical. `return_uint8=True` stops after step 2 and returns the
resized uint8 pixels (a quarter of the bytes) for the fused patch-embedding path, which folds SigLIP's
normalisation `(x / 255 - 0.5) / 0.5` into its weights.

Paths and bytes are decoded like transformers' `load_image`: EXIF orientation applied, then `convert("RGB")`.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence, TypedDict

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from .checkpoint import resolve_pretrained_dir
from .tokenization import BatchEncoding, _read_json

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
_CONFIG_KEYS = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                "image_std", "do_convert_rgb")
_METADATA_KEYS = ("image_processor_type", "processor_class", "feature_extractor_type", "auto_map", "backend",
                  "default_to_square")


# transformers v4's warning (SiglipImageProcessor.preprocess, `is_scaled_image(images[0])`); v5 gives none.
RESCALE_WARNING = ("It looks like you are trying to rescale already rescaled images. If the input images have pixel "
                   "values between 0 and 1, set `do_rescale=False` to avoid rescaling them again.")
_WIDE_PIL_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


class BatchFeature(BatchEncoding):
    """The dict returned by the image processor and the processor (`pixel_values`, `input_ids`...)."""


def _describe(x: Any) -> str:
    if isinstance(x, PIL.Image.Image):
        return f"PIL image mode {x.mode} size {x.size}"
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__name__} shape {tuple(x.shape)} dtype {x.dtype}"
    return type(x).__name__


def _channel_axis(shape: tuple, where: str) -> int:
    """transformers' infer_channel_dimension_format with num_channels (1, 3, 4): first axis wins a tie."""
    if shape[0] in (1, 3, 4):
        return 0
    if shape[-1] in (1, 3, 4):
        return 2
    raise ValueError(f"{where}: cannot find the channel axis of an image of shape {shape}; expected 1, 3 or 4 "
                     "channels first (C, H, W) or last (H, W, C)")


def _pil_needs_rescale(image: np.ndarray, where: str) -> bool:
    """transformers' `_rescale_for_pil_conversion`: float images in [0, 1] are scaled by 255 to become uint8."""
    if image.dtype == np.uint8:
        return False
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError(f"{where}: float pixels must be finite, got NaN or inf ({_describe(image)})")
    if np.allclose(image, image.astype(int)):
        if np.all(image >= 0) and np.all(image <= 255):
            return False
        raise ValueError(f"{where}: integer-valued pixels must lie in [0, 255], got [{image.min()}, {image.max()}]")
    if np.all(image >= 0) and np.all(image <= 1):
        return True
    raise ValueError(f"{where}: float pixels must lie in [0, 1] (or be integers in [0, 255]), got "
                     f"[{image.min()}, {image.max()}]")


def _composite_pil(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB, with any transparency composited onto white (transformers' `convert_to_rgb`)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _composite_array(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (H, W, 3): 1 channel repeated, 4 channels composited onto white (transformers' numpy rule)."""
    c = image.shape[-1]
    if c == 1:
        return np.repeat(image, 3, axis=-1)
    if c == 4:
        if np.issubdtype(image.dtype, np.floating) and (image.min() < 0.0 or image.max() > 1.0):
            raise ValueError(f"a 4-channel float image must lie in [0, 1] to composite its alpha, got "
                             f"[{image.min()}, {image.max()}]")
        white = 255 if np.issubdtype(image.dtype, np.integer) else 1.0
        alpha = image[..., 3:4] / white
        composite = alpha * image[..., :3] + (1 - alpha) * white
        return np.round(composite).astype(image.dtype) if white == 255 else composite.astype(image.dtype)
    return image


def load_image(source: str | os.PathLike | bytes) -> PIL.Image.Image:
    """Decode an image file or its bytes like transformers' `load_image` (EXIF transpose, then RGB)."""
    what = f"image file {os.fspath(source)!r}" if not isinstance(source, (bytes, bytearray)) else "image bytes"
    try:
        image = PIL.Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source))
        image.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} does not exist") from None
    except PIL.Image.DecompressionBombError as e:  # PIL's guard against images that would exhaust memory
        raise ValueError(f"{what}: the image is too large to decode safely ({e}); PIL refuses images over 2 x "
                         f"PIL.Image.MAX_IMAGE_PIXELS ({PIL.Image.MAX_IMAGE_PIXELS}) pixels: raise that limit if you "
                         "trust this image") from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what} could not be decoded as an image: {e}") from None
    return PIL.ImageOps.exif_transpose(image).convert("RGB")


def _check_size(size: Any) -> dict:
    if isinstance(size, dict) and set(size) == {"height", "width"}:
        h, w = size["height"], size["width"]
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = size
    else:
        raise ValueError(f"size must be {{'height': H, 'width': W}} or (H, W), got {size!r} (SigLIP resizes to an "
                         "exact size; shortest_edge resizing is not supported)")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise ValueError(f"size must hold positive ints, got {size!r}")
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit and h * w > limit:  # PIL's decompression-bomb bound: beyond it a resize only exhausts memory
        raise ValueError(f"size {h}x{w} = {h * w} pixels per image exceeds PIL.Image.MAX_IMAGE_PIXELS ({limit})")
    return {"height": int(h), "width": int(w)}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) and \
        math.isfinite(float(v))


def _check_triple(name: str, value: Any) -> tuple:
    if _is_number(value):
        value = [value] * 3
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(_is_number(v) for v in value):
        raise ValueError(f"{name} must be a float or 3 floats (one per RGB channel), got {value!r}")
    if name == "image_std" and any(float(v) == 0 for v in value):
        raise ValueError(f"image_std must not contain 0 (it divides the pixels), got {value!r}")
    return tuple(float(v) for v in value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return bool(value)


def _check_factor(value: Any) -> float:
    if not _is_number(value):
        raise ValueError(f"rescale_factor must be a finite number, got {value!r}")
    return float(value)


def _check_workers(value: Any) -> int | None:
    if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0):
        raise ValueError(f"num_workers must be None or an int >= 0, got {value!r}")
    return value


class SiglipImageProcessorKwargs(TypedDict, total=False):
    """The options `SiglipImageProcessor` takes, at construction and per call: what transformers v5 reads from an
    image processor's `valid_kwargs` (a TypedDict of its kwargs) to know which keys are image options."""

    do_resize: bool
    size: dict
    resample: int
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: float | Sequence[float]
    image_std: float | Sequence[float]
    do_convert_rgb: bool
    num_workers: int | None
    return_tensors: str | None
    return_uint8: bool


class SiglipImageProcessor:
    """Images -> `pixel_values` (B, 3, H, W) float32, bitwise equal to transformers' `SiglipImageProcessorPil`.

    Inputs: PIL images, numpy arrays (HWC or CHW; uint8, integer-valued, or float in [0, 1]), torch tensors,
    file paths or encoded bytes; one image or a list. Every option can be overridden per call.
    `return_uint8=True` returns the resized uint8 pixels instead (no rescale/normalise), for models whose patch
    embedding applies SigLIP's normalisation itself; it raises unless this processor's normalisation is SigLIP's.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = SiglipImageProcessorKwargs
    # what a subclass (e.g. SigLIP 2's NaFlex processor) extends: its option names (each an __init__ argument and
    # attribute, overridable per call) and the image_processor_type it writes and accepts
    config_keys: tuple = _CONFIG_KEYS
    image_processor_type = "SiglipImageProcessor"
    config_name = "SiglipImageProcessor config"  # in errors: "not a ..."

    def __init__(
        self,
        do_resize: bool = True,
        size: dict | Sequence[int] | None = None,
        resample: int = 3,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_rgb: bool | None = True,
        num_workers: int | None = None,
    ):
        self.do_resize = _check_bool("do_resize", do_resize)
        self.size = _check_size(size if size is not None else {"height": 224, "width": 224})
        self.resample = self._check_resample(resample)
        self.do_rescale = _check_bool("do_rescale", do_rescale)
        self.rescale_factor = _check_factor(rescale_factor)
        self.do_normalize = _check_bool("do_normalize", do_normalize)
        self.image_mean = _check_triple("image_mean", SIGLIP_MEAN if image_mean is None else image_mean)
        self.image_std = _check_triple("image_std", SIGLIP_STD if image_std is None else image_std)
        # transformers saves a single mean/std given as one number as that number
        self._scalar_keys = {k for k, v in (("image_mean", image_mean), ("image_std", image_std)) if _is_number(v)}
        # v4 saved null = the default
        self.do_convert_rgb = True if do_convert_rgb is None else _check_bool("do_convert_rgb", do_convert_rgb)
        self.num_workers = _check_workers(num_workers)

    @staticmethod
    def _check_resample(resample: Any) -> int:
        valid = {int(m) for m in PIL.Image.Resampling}
        if isinstance(resample, bool) or not isinstance(resample, (int, np.integer)) or int(resample) not in valid:
            raise ValueError(f"resample must be a PIL resampling filter id {sorted(valid)}, got {resample!r}")
        return int(resample)

    # -- one image --------------------------------------------------------------------------------------------

    def _prepare(self, image: Any, where: str, do_convert_rgb: bool):
        """-> a PIL image ready to resize, or a (C, H, W) array (plus whether it was float-[0,1]-scaled)."""
        if isinstance(image, (str, os.PathLike, bytes, bytearray)):
            try:
                image = load_image(image)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        if isinstance(image, PIL.Image.Image):
            if image.width == 0 or image.height == 0:
                raise ValueError(f"{where}: empty image ({_describe(image)})")
            if do_convert_rgb:
                try:
                    return _composite_pil(image)
                except ValueError as e:
                    raise ValueError(f"{where}: cannot convert {_describe(image)} to RGB: {e}") from None
            if len(image.getbands()) != 3:
                raise ValueError(f"{where}: expected a 3-channel (RGB) image, got a {_describe(image)} with "
                                 f"{len(image.getbands())} channel(s) and do_convert_rgb=False; pass "
                                 "do_convert_rgb=True to convert it (alpha composited onto white)")
            array = np.array(image)
            return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu()
            if image.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
                image = image.float()
            if image.is_complex() or image.dtype == torch.bool:
                raise TypeError(f"{where}: pixel dtype must be an integer or float type, got {image.dtype}")
            image = image.numpy()
        if not isinstance(image, np.ndarray):
            raise TypeError(f"{where}: expected a PIL image, numpy array, torch tensor, path or bytes, got "
                            f"{_describe(image)}")
        if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype,
                                                                                                np.floating)):
            raise TypeError(f"{where}: pixel dtype must be an integer or float type, got {image.dtype}")
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise ValueError(f"{where}: expected an image of 2 or 3 dims (H, W[, C]) or (C, H, W), got "
                             f"{_describe(image)}")
        if min(image.shape) == 0:
            raise ValueError(f"{where}: empty image ({_describe(image)})")
        axis = _channel_axis(image.shape, where)
        if do_convert_rgb:
            image = np.moveaxis(_composite_array(np.moveaxis(image, axis, -1)), -1, 0)
        elif axis == 2:
            image = np.moveaxis(image, -1, 0)
        return image

    def _check_channels(self, image, where: str) -> None:
        channels = len(image.getbands()) if isinstance(image, PIL.Image.Image) else image.shape[0]
        if channels != 3:
            raise ValueError(f"{where}: expected a 3-channel (RGB) image after conversion, got {channels} channels "
                             f"({_describe(image)}); pass do_convert_rgb=True to convert grayscale/RGBA images")

    def _resize(self, image, size: dict, resample: int, where: str) -> np.ndarray:
        """-> (C, H, W): uint8 if the pixels were uint8-representable, else float32 in [0, 1] (transformers' rule)."""
        rescaled = False
        if not isinstance(image, PIL.Image.Image):
            rescaled = _pil_needs_rescale(image, where)
            hwc = np.moveaxis(image, 0, -1)
            if rescaled:
                hwc = (hwc.astype(np.float64) * 255).astype(np.float32)
            hwc = hwc.astype(np.uint8)
            image = PIL.Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)
        out = np.asarray(image.resize((size["width"], size["height"]), resample=resample))
        out = np.moveaxis(out[..., None] if out.ndim == 2 else out, -1, 0)
        if rescaled:  # transformers scales float inputs back to [0, 1] after the uint8 resize
            return (out.astype(np.float64) * (1 / 255)).astype(np.float32)
        return out

    @staticmethod
    def _lookup_table(rescale_factor, mean, std, do_rescale, do_normalize) -> np.ndarray:
        """(3, 256) float32: rescale + normalise of every uint8 value, with transformers' exact float ops."""
        values = np.arange(256, dtype=np.uint8)[None, :].repeat(3, axis=0)  # (3, 256) as a CHW "image"
        x = values.astype(np.float32)
        if do_rescale:
            x = (values.astype(np.float64) * rescale_factor).astype(np.float32)
        if do_normalize:
            m, s = np.array(mean, dtype=np.float32), np.array(std, dtype=np.float32)
            x = ((x.T - m) / s).T
        return np.ascontiguousarray(x)

    def _finish(self, image: np.ndarray, table: np.ndarray | None, opts: dict) -> np.ndarray:
        """Rescale and normalise a (C, H, W) image: one table lookup for uint8 RGB, transformers' ops otherwise."""
        if image.dtype == np.uint8 and image.shape[0] == 3 and table is not None:
            index = image.astype(np.intp)
            index += np.arange(3, dtype=np.intp)[:, None, None] * 256
            return np.take(table.reshape(-1), index)
        if opts["do_rescale"]:
            image = (image.astype(np.float64) * opts["rescale_factor"]).astype(np.float32)
        if opts["do_normalize"]:
            if not np.issubdtype(image.dtype, np.floating):
                image = image.astype(np.float32)
            m = np.array(opts["image_mean"], dtype=image.dtype)
            s = np.array(opts["image_std"], dtype=image.dtype)
            image = ((image.T - m) / s).T
        return np.ascontiguousarray(image)

    # -- the call ---------------------------------------------------------------------------------------------

    def is_siglip_normalization(self, **overrides) -> bool:
        """True when rescale + normalise is SigLIP's `(x / 255 - 0.5) / 0.5`, which return_uint8 requires."""
        o = self._options(overrides)
        return (o["do_rescale"] and math.isclose(o["rescale_factor"], 1 / 255, rel_tol=1e-9)
                and o["do_normalize"] and o["image_mean"] == SIGLIP_MEAN and o["image_std"] == SIGLIP_STD)

    def _options(self, overrides: dict) -> dict:
        opts = {k: getattr(self, k) for k in self.config_keys}
        for key, value in overrides.items():
            if key not in opts:
                raise TypeError(f"{type(self).__name__} got an unexpected option {key!r}; valid: {list(opts)}")
            if value is not None:
                opts[key] = self._check_option(key, value)
        return opts

    def _check_option(self, key: str, value: Any) -> Any:
        """The checked value of a per-call option; a subclass with more `config_keys` checks its own here."""
        if key == "size":
            return _check_size(value)
        if key == "resample":
            return self._check_resample(value)
        if key in ("image_mean", "image_std"):
            return _check_triple(key, value)
        if key == "rescale_factor":
            return _check_factor(value)
        return _check_bool(key, value)

    def __call__(self, images: Any, *, return_tensors: str | None = None, return_uint8: bool = False,
                 num_workers: int | None = None, **overrides) -> BatchFeature:
        """Preprocess one image or a list -> BatchFeature(pixel_values=...): a (B, 3, H, W) tensor/array with
        return_tensors 'pt'/'np', else a list of (3, H, W) float32 arrays (uint8 with return_uint8=True)."""
        opts = self._options(overrides)
        return_uint8 = _check_bool("return_uint8", return_uint8)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        if return_uint8 and not self.is_siglip_normalization(**overrides):
            raise ValueError(
                "return_uint8=True needs SigLIP's normalisation (do_rescale with rescale_factor=1/255, do_normalize "
                f"with image_mean=image_std=(0.5, 0.5, 0.5)), which the fused patch embedding assumes; this call has "
                f"do_rescale={opts['do_rescale']}, rescale_factor={opts['rescale_factor']}, do_normalize="
                f"{opts['do_normalize']}, image_mean={opts['image_mean']}, image_std={opts['image_std']}")
        images = self._as_list(images)
        table = None
        if not return_uint8 and (opts["do_rescale"] or opts["do_normalize"]):
            table = self._lookup_table(opts["rescale_factor"], opts["image_mean"], opts["image_std"],
                                       opts["do_rescale"], opts["do_normalize"])

        notes: list[str] = []  # warnings, issued once per call after the (possibly threaded) work

        def one(i_image):
            i, image = i_image
            where = f"images[{i}]"
            note = self._silent_garbage(image, where, opts)
            if note is not None:
                notes.append(note)
            image = self._prepare(image, where, opts["do_convert_rgb"])
            self._check_channels(image, where)
            if opts["do_resize"]:
                image = self._resize(image, self._target_size(image, opts), opts["resample"], where)
            elif isinstance(image, PIL.Image.Image):
                image = np.moveaxis(np.asarray(image), -1, 0)
            image = self._as_uint8(image, where) if return_uint8 else self._finish(image, table, opts)
            return self._postprocess(image, opts, where)

        workers = self.num_workers if num_workers is None else _check_workers(num_workers)
        if workers is None:
            workers = min(8, os.cpu_count() or 1) if len(images) >= 8 else 1
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding and resizing
                pixels = list(pool.map(one, enumerate(images)))
        else:
            pixels = [one(x) for x in enumerate(images)]
        for note in dict.fromkeys(notes):
            warnings.warn(note, UserWarning, stacklevel=2)
        return self._collate(pixels, return_tensors)

    preprocess = __call__

    # what a subclass with another layout (e.g. SigLIP 2's NaFlex patches) overrides: the size each image is
    # resized to, what becomes of it after rescale/normalise, and how the results become the outputs

    def _target_size(self, image, opts: dict) -> dict:
        """{"height", "width"} that `image` (a PIL image or a (C, H, W) array) is resized to."""
        return opts["size"]

    def _postprocess(self, image: np.ndarray, opts: dict, where: str) -> Any:
        """One image's result from its finished (C, H, W) pixels."""
        return image

    def _collate(self, results: list, return_tensors: str | None) -> BatchFeature:
        """The outputs from the images' results: `pixel_values`, stacked into one tensor/array if asked."""
        if return_tensors is not None:
            shapes = {p.shape for p in results}
            if len(shapes) > 1:
                raise ValueError(f"cannot stack images of different sizes {sorted(shapes)} into one tensor; "
                                 "use do_resize=True or return_tensors=None")
            stacked = np.stack(results)
            return BatchFeature(pixel_values=torch.from_numpy(stacked) if return_tensors == "pt" else stacked)
        return BatchFeature(pixel_values=results)

    @staticmethod
    def _silent_garbage(image: Any, where: str, opts: dict) -> str | None:
        """A warning for inputs that transformers turns into near-black or clipped pixels without a word (the output
        stays transformers'): float pixels already in [0, 1] rescaled again (v4's warning and condition), PIL
        16/32-bit or float images whose values RGB conversion clips to [0, 255] or truncates to 0/1."""
        if isinstance(image, PIL.Image.Image):
            if image.mode not in _WIDE_PIL_MODES or not opts["do_convert_rgb"]:
                return None
            try:
                lo, hi = image.getextrema()
            except ValueError:  # PIL cannot for some 16-bit layouts (I;16B)
                array = np.asarray(image)
                lo, hi = array.min().item(), array.max().item()
            if image.mode == "F" and 0 <= lo and hi <= 1 and hi > 0:
                return (f"{where}: a PIL mode 'F' image with values in [0, 1] becomes black: converting it to RGB "
                        "(PIL's convert, as transformers does) truncates every value to 0 or 1 out of 255. Pass it as "
                        "a float numpy array instead (scaled from [0, 1]), or multiply it by 255 first.")
            if lo < 0 or hi > 255:
                return (f"{where}: a PIL mode {image.mode!r} image has values in [{lo}, {hi}]; converting it to RGB "
                        "(PIL's convert, as transformers does) clips them to [0, 255]. Scale it to 8 bits first "
                        "(e.g. np.asarray(image) / 257 for 16-bit data) if that is not what you want.")
            return None
        if not opts["do_rescale"] or not isinstance(image, (np.ndarray, torch.Tensor)):
            return None
        if isinstance(image, torch.Tensor):
            if image.dtype in (torch.uint8, torch.bool) or image.is_complex() or image.numel() == 0:
                return None
        elif image.dtype in (np.uint8, bool) or not np.issubdtype(image.dtype, np.number) or image.size == 0 or \
                np.issubdtype(image.dtype, np.complexfloating):
            return None
        try:
            lo, hi = float(image.min()), float(image.max())
        except (TypeError, ValueError, RuntimeError):
            return None  # reported by the checks that follow
        return f"{where}: {RESCALE_WARNING}" if 0 <= lo and hi <= 1 else None

    @staticmethod
    def _as_list(images: Any) -> list:
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise ValueError("images: got an empty list; expected at least one image")
            return list(images)
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            if images.shape[0] == 0:
                raise ValueError(f"images: got an empty batch {_describe(images)}")
            return list(images)
        return [images]

    @staticmethod
    def _as_uint8(image: np.ndarray, where: str) -> np.ndarray:
        if image.dtype != np.uint8:
            if _pil_needs_rescale(image, where):
                raise ValueError(f"{where}: return_uint8=True needs uint8-valued pixels (PIL images, uint8 or "
                                 f"integer-valued arrays); got float pixels in [0, 1] ({_describe(image)})")
            image = image.astype(np.uint8)
        return np.ascontiguousarray(image)

    # -- files ------------------------------------------------------------------------------------------------

    def _saved(self, key: str):
        value = tuple(getattr(self, key))
        return value[0] if key in self._scalar_keys and len(set(value)) == 1 else value

    def to_dict(self) -> dict:
        """The fields transformers v5's `to_dict` gives (`config_keys` and image_processor_type), in the order of
        its sorted JSON: `image_mean` / `image_std` as tuples (or the one number they were given as), as
        transformers holds them; `to_json_string` / `save_pretrained` write them as JSON lists, as there."""
        out = {"image_processor_type": self.image_processor_type}
        for key in self.config_keys:
            value = getattr(self, key)
            out[key] = self._saved(key) if key in ("image_mean", "image_std") else \
                dict(value) if isinstance(value, dict) else value
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        """The JSON transformers writes (`to_json_string`: sorted keys, 2-space indent, trailing newline)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        if not isinstance(json_file_path, (str, os.PathLike)):
            raise TypeError(f"json_file_path must be a path, got {type(json_file_path).__name__}")
        with open(json_file_path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike) -> "SiglipImageProcessor":
        """Build from a JSON file written by `to_json_file` (ours or transformers'), as transformers'
        `from_json_file`; the fields are checked as `from_dict` checks them."""
        if not isinstance(json_file, (str, os.PathLike)):
            raise TypeError(f"json_file must be a path, got {type(json_file).__name__}")
        with open(json_file, encoding="utf-8") as f:
            config = json.load(f)
        return cls.from_dict(config)

    @classmethod
    def from_dict(cls, config: dict, *, return_unused_kwargs: bool = False, _from_auto: bool = False,
                  **overrides):
        """Build from a preprocessor_config.json dict; `overrides` (e.g. `size={"height": 384, "width": 384}`) win.
        Metadata keys transformers writes are accepted; options SigLIP's processor does not have are refused when
        they would change the output (`do_center_crop`/`do_pad` true), ignored otherwise.

        As transformers' `from_dict`: `_from_auto` (what `AutoImageProcessor` passes) is accepted and changes
        nothing; with `return_unused_kwargs=True` the overrides that are not options of this class are returned,
        `(processor, unused)`, instead of refused."""
        if not isinstance(config, dict):
            raise TypeError(f"image processor config must be a dict, got {type(config).__name__}")
        _check_bool("return_unused_kwargs", return_unused_kwargs)
        _check_bool("_from_auto", _from_auto)
        keys = (*cls.config_keys, "num_workers")
        unused = {k: v for k, v in overrides.items() if k not in keys}
        if unused and not return_unused_kwargs:
            raise TypeError(f"{cls.__name__}.from_dict got an unexpected option {next(iter(unused))!r}; valid: "
                            f"{list(keys)} (or pass return_unused_kwargs=True to get the others back)")
        overrides = {k: v for k, v in overrides.items() if k in keys}
        config = {**config, **overrides}
        unknown = sorted(set(config) - set(keys) - set(_METADATA_KEYS))
        for key in unknown:
            if key in ("do_center_crop", "do_pad") and config[key]:
                raise ValueError(f"image processor config sets {key}=true, which {cls.__name__} does not do")
        kind = config.get("image_processor_type", cls.image_processor_type)
        if not isinstance(kind, str) or kind.removesuffix("Pil").removesuffix("Fast") != cls.image_processor_type:
            raise ValueError(f"not a {cls.config_name}: image_processor_type={kind!r}")
        processor = cls(**{k: config[k] for k in keys if k in config})
        return (processor, unused) if return_unused_kwargs else processor

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write preprocessor_config.json (what transformers' image processors write)."""
        save_directory = os.fspath(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, IMAGE_PROCESSOR_FILE)
        self.to_json_file(path)
        return [path]

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, revision: str | None = None,
                        **overrides) -> "SiglipImageProcessor":
        """Read preprocessor_config.json (v4/hub), or processor_config.json's nested "image_processor" (v5)."""
        directory = resolve_pretrained_dir(path_or_id, allow_patterns=[IMAGE_PROCESSOR_FILE, PROCESSOR_FILE],
                                           what=f"{cls.__name__}.from_pretrained", revision=revision)
        return cls.from_dict(read_image_processor_config(directory), **overrides)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True)})"


def read_image_processor_config(directory: str) -> dict:
    """preprocessor_config.json if present, else processor_config.json["image_processor"]."""
    path = os.path.join(directory, IMAGE_PROCESSOR_FILE)
    if os.path.isfile(path):
        return _read_json(path)
    path = os.path.join(directory, PROCESSOR_FILE)
    if os.path.isfile(path):
        nested = _read_json(path).get("image_processor")
        if isinstance(nested, dict):
            return dict(nested)
    raise FileNotFoundError(f"no {IMAGE_PROCESSOR_FILE}, nor a {PROCESSOR_FILE} with an 'image_processor' entry, "
                            f"in {directory!r}")
