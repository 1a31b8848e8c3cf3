"""SigLIP 2's NaFlex image processor: pixel-for-pixel transformers' `Siglip2ImageProcessorPil` (v5).

Per image:
  1. (RGB conversion only with do_convert_rgb=True: transformers' Siglip2 processors leave it unset, i.e. off);
  2. the aspect-preserving target size: the largest scale (binary search, transformers' exact loop) at which
     ceil(h·s / p)·p x ceil(w·s / p)·p holds at most `max_num_patches` patches of `patch_size` pixels;
  3. `PIL.Image.resize((W, H), BILINEAR)` on uint8, then rescale and normalise as transformers (float32);
  4. patches in row-major order, each flattened as (p, p, C) → `pixel_values` (max_num_patches, p·p·C), zero-padded;
     `pixel_attention_mask` (max_num_patches,) int32, 1 for real patches; `spatial_shapes` (rows, cols).

The class is a `SiglipImageProcessor` (siglip_fast.image_processing): inputs, RGB conversion, resize, rescale and
normalise, threads, per-call options and files are its code; this module adds the size rule (step 2), the patches
and the outputs (step 4). With torchvision
installed transformers' `AutoImageProcessor` picks the torchvision class instead, whose antialiased bilinear resize
differs from PIL's by rounding (a unit of uint8 on some pixels); this class matches the PIL one, which is also what
transformers uses without torchvision.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import PIL.Image
import torch

from .image_processing import BatchFeature, SiglipImageProcessor, SiglipImageProcessorKwargs

_CONFIG_KEYS = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                "image_std", "do_convert_rgb", "patch_size", "max_num_patches")
# the keys transformers' SizeDict has: a `size` in a NaFlex config may hold any of them
_SIZE_KEYS = ("height", "width", "longest_edge", "shortest_edge", "max_height", "max_width", "min_pixels",
              "max_pixels")


def get_image_size_for_max_num_patches(image_height: int, image_width: int, patch_size: int, max_num_patches: int,
                                       eps: float = 1e-5) -> tuple[int, int]:
    """The (height, width), multiples of patch_size, of the aspect-preserving resize to at most max_num_patches
    patches (at least one patch a side): transformers' binary search, step for step."""

    def scaled(scale: float, size: int) -> int:
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    scale_min, scale_max = eps / 10, 100.0
    while (scale_max - scale_min) >= eps:
        scale = (scale_min + scale_max) / 2
        h, w = scaled(scale, image_height), scaled(scale, image_width)
        if (h / patch_size) * (w / patch_size) <= max_num_patches:
            scale_min = scale
        else:
            scale_max = scale
    return scaled(scale_min, image_height), scaled(scale_min, image_width)


def convert_image_to_patches(image: np.ndarray, patch_size: int) -> np.ndarray:
    """(C, H, W) → (H/p · W/p, p·p·C): row-major patches, each flattened as (p, p, C)."""
    c, h, w = image.shape
    patches = image.reshape(c, h // patch_size, patch_size, w // patch_size, patch_size).transpose(1, 3, 2, 4, 0)
    return patches.reshape((h // patch_size) * (w // patch_size), -1)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_unused_size(size: Any) -> dict | None:
    """A NaFlex `size` as transformers keeps it (an int n is {"height": n, "width": n}, a pair (H, W), a dict of
    SizeDict keys), checked: positive ints only."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = {"height": size, "width": size}
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if not isinstance(size, dict) or not size or not set(size) <= set(_SIZE_KEYS):
        raise ValueError(f"size must be None, an int, (H, W) or a dict with keys among {list(_SIZE_KEYS)}, got "
                         f"{size!r}")
    for key, value in size.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"size[{key!r}] must be a positive int, got {value!r}")
    return {k: int(v) for k, v in size.items()}


class Siglip2ImageProcessorKwargs(SiglipImageProcessorKwargs, total=False):
    """`Siglip2ImageProcessor`'s options (transformers v5's `valid_kwargs`): SigLIP's plus the NaFlex ones."""

    patch_size: int
    max_num_patches: int


class Siglip2ImageProcessor(SiglipImageProcessor):
    """Images → `pixel_values` (B, max_num_patches, p·p·C) float32, `pixel_attention_mask` (B, max_num_patches)
    int32 and `spatial_shapes` (B, 2) int64, bitwise equal to transformers' `Siglip2ImageProcessorPil`.

    Inputs as `SiglipImageProcessor` (PIL images, arrays, tensors, paths, bytes; one or a list); every option can be
    overridden per call (e.g. `max_num_patches=1024`). `return_uint8=True` gives the resized uint8 pixels as patches
    (no rescale/normalise)."""

    model_input_names = ["pixel_values", "pixel_attention_mask", "spatial_shapes"]
    valid_kwargs = Siglip2ImageProcessorKwargs
    config_keys = _CONFIG_KEYS
    image_processor_type = "Siglip2ImageProcessor"
    config_name = "SigLIP 2 (NaFlex) image processor config"

    def __init__(self, *, resample: int = 2, do_convert_rgb: bool | None = None, patch_size: int = 16,
                 max_num_patches: int = 256, size: Any = None, **kwargs: Any):
        """Keyword options as `SiglipImageProcessor`'s (do_resize, do_rescale, rescale_factor, do_normalize,
        image_mean, image_std, num_workers), with `patch_size` and `max_num_patches`. `size` is accepted and kept
        (saved in the config) as transformers does, which does not use it either: NaFlex sizes each image from
        max_num_patches; a per-call `size` is refused, as it would change nothing."""
        super().__init__(resample=resample, do_convert_rgb=do_convert_rgb, **kwargs)
        self.do_convert_rgb = None if do_convert_rgb is None else bool(do_convert_rgb)  # unset = off, as transformers
        self.patch_size = self._check_option("patch_size", patch_size)
        self.max_num_patches = self._check_option("max_num_patches", max_num_patches)
        self.size = _check_unused_size(size)

    def _options(self, overrides: dict) -> dict:
        if overrides.get("size") is not None:
            raise TypeError(f"Siglip2ImageProcessor got a per-call size={overrides['size']!r}, which does not change "
                            "its output: each image is resized to at most max_num_patches patches of patch_size "
                            "pixels (pass max_num_patches=... instead)")
        return super()._options(overrides)

    def _check_option(self, key: str, value: Any) -> Any:
        if key in ("patch_size", "max_num_patches"):
            return _positive_int(key, value)
        if key == "size":
            return _check_unused_size(value)
        return super()._check_option(key, value)

    def _target_size(self, image, opts: dict) -> dict:
        height, width = (image.height, image.width) if isinstance(image, PIL.Image.Image) else image.shape[-2:]
        h, w = get_image_size_for_max_num_patches(height, width, opts["patch_size"], opts["max_num_patches"])
        return {"height": h, "width": w}

    def _postprocess(self, image: np.ndarray, opts: dict, where: str):
        """(C, H, W) → (patches zero-padded to max_num_patches, mask, (rows, cols))."""
        p, n_max = opts["patch_size"], opts["max_num_patches"]
        if image.shape[-2] % p or image.shape[-1] % p:
            raise ValueError(f"{where}: with do_resize=False the image sides must be multiples of patch_size {p}, "
                             f"got {tuple(image.shape[-2:])}")
        rows, cols = image.shape[-2] // p, image.shape[-1] // p
        if rows * cols > n_max:
            raise ValueError(f"{where}: {rows} x {cols} patches exceed max_num_patches {n_max} (do_resize=False)")
        patches = convert_image_to_patches(image, p)  # (rows*cols, p*p*C)
        padded = np.zeros((n_max, patches.shape[1]), dtype=patches.dtype)
        padded[:len(patches)] = patches
        mask = np.zeros((n_max,), dtype=np.int32)
        mask[:len(patches)] = 1
        return padded, mask, (rows, cols)

    def _collate(self, results: list, return_tensors: str | None) -> BatchFeature:
        """BatchFeature(pixel_values, pixel_attention_mask, spatial_shapes): tensors/arrays with return_tensors
        'pt'/'np', else lists (of (N, p·p·C) float32 arrays, (N,) int32 masks and (rows, cols) tuples)."""
        pixels, masks, shapes = (list(x) for x in zip(*results, strict=True))
        if return_tensors is None:
            return BatchFeature(pixel_values=pixels, pixel_attention_mask=masks, spatial_shapes=shapes)
        data = {"pixel_values": np.stack(pixels), "pixel_attention_mask": np.stack(masks),
                "spatial_shapes": np.array(shapes, dtype=np.int64)}
        if return_tensors == "pt":
            data = {k: torch.from_numpy(v) for k, v in data.items()}
        return BatchFeature(data)

    def to_dict(self) -> dict:
        """The preprocessor_config.json fields transformers writes (do_convert_rgb and size only when set)."""
        out = super().to_dict()
        for key in ("do_convert_rgb", "size"):
            if getattr(self, key) is None:
                del out[key]
        return out
