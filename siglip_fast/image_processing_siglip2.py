"""SigLIP 2's NaFlex image processor: pixel-for-pixel transformers' `Siglip2ImageProcessorPil` (v5).

Per image:
  1. (RGB conversion only with do_convert_rgb=True: transformers' Siglip2 processors leave it unset, i.e. off);
  2. the aspect-preserving target size: the largest scale (binary search, transformers' exact loop) at which
     ceil(h·s / p)·p x ceil(w·s / p)·p holds at most `max_num_patches` patches of `patch_size` pixels;
  3. `PIL.Image.resize((W, H), BILINEAR)` on uint8, then rescale and normalise as transformers (float32);
  4. patches in row-major order, each flattened as (p, p, C) → `pixel_values` (max_num_patches, p·p·C), zero-padded;
     `pixel_attention_mask` (max_num_patches,) int32, 1 for real patches; `spatial_shapes` (rows, cols).

Steps 1 and 3 are SigLIP's image processor's (siglip_fast.image_processing), reused as they are. With torchvision
installed transformers' `AutoImageProcessor` picks the torchvision class instead, whose antialiased bilinear resize
differs from PIL's by rounding (a unit of uint8 on some pixels); this class matches the PIL one, which is also what
transformers uses without torchvision.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import PIL.Image
import torch

from .checkpoint import resolve_pretrained_dir
from .image_processing import (
    _METADATA_KEYS,
    IMAGE_PROCESSOR_FILE,
    PROCESSOR_FILE,
    SIGLIP_MEAN,
    SIGLIP_STD,
    BatchFeature,
    SiglipImageProcessor,
    _check_triple,
    read_image_processor_config,
)

_CONFIG_KEYS = ("do_resize", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
                "do_convert_rgb", "patch_size", "max_num_patches")


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


class Siglip2ImageProcessor(SiglipImageProcessor):
    """Images → `pixel_values` (B, max_num_patches, p·p·C) float32, `pixel_attention_mask` (B, max_num_patches)
    int32 and `spatial_shapes` (B, 2) int64, bitwise equal to transformers' `Siglip2ImageProcessorPil`.

    Inputs as `SiglipImageProcessor` (PIL images, arrays, tensors, paths, bytes; one or a list); every option can be
    overridden per call (e.g. `max_num_patches=1024`)."""

    model_input_names = ["pixel_values", "pixel_attention_mask", "spatial_shapes"]

    def __init__(
        self,
        do_resize: bool = True,
        resample: int = 2,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean=None,
        image_std=None,
        do_convert_rgb: bool | None = None,
        patch_size: int = 16,
        max_num_patches: int = 256,
        num_workers: int | None = None,
    ):
        super().__init__(do_resize=do_resize, resample=resample, do_rescale=do_rescale, rescale_factor=rescale_factor,
                         do_normalize=do_normalize, image_mean=image_mean, image_std=image_std,
                         do_convert_rgb=do_convert_rgb, num_workers=num_workers)
        self.do_convert_rgb = None if do_convert_rgb is None else bool(do_convert_rgb)  # unset = off, as transformers
        self.patch_size = _positive_int("patch_size", patch_size)
        self.max_num_patches = _positive_int("max_num_patches", max_num_patches)
        del self.size  # NaFlex sizes each image itself

    def _options(self, overrides: dict) -> dict:
        opts = {k: getattr(self, k) for k in _CONFIG_KEYS}
        for key, value in overrides.items():
            if key not in opts:
                raise TypeError(f"Siglip2ImageProcessor got an unexpected option {key!r}; valid: {list(opts)}")
            if value is None:
                continue
            if key == "resample":
                value = self._check_resample(value)
            elif key in ("image_mean", "image_std"):
                value = _check_triple(key, value)
            elif key == "rescale_factor":
                value = float(value)
            elif key in ("patch_size", "max_num_patches"):
                value = _positive_int(key, value)
            else:
                value = bool(value)
            opts[key] = value
        return opts

    def is_siglip_normalization(self, **overrides) -> bool:
        o = self._options(overrides)
        return (o["do_rescale"] and math.isclose(o["rescale_factor"], 1 / 255, rel_tol=1e-9)
                and o["do_normalize"] and o["image_mean"] == SIGLIP_MEAN and o["image_std"] == SIGLIP_STD)

    def __call__(self, images: Any, *, return_tensors: str | None = None, num_workers: int | None = None,
                 **overrides) -> BatchFeature:
        """Preprocess one image or a list → BatchFeature(pixel_values, pixel_attention_mask, spatial_shapes): tensors
        /arrays with return_tensors 'pt'/'np', else lists (of (N, p·p·C) float32 arrays, (N,) int32 masks and
        (rows, cols) tuples)."""
        opts = self._options(overrides)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        p, n_max = opts["patch_size"], opts["max_num_patches"]
        images = self._as_list(images)
        table = None
        if opts["do_rescale"] or opts["do_normalize"]:
            table = self._lookup_table(opts["rescale_factor"], opts["image_mean"], opts["image_std"],
                                       opts["do_rescale"], opts["do_normalize"])

        def one(i_image):
            i, image = i_image
            where = f"images[{i}]"
            image = self._prepare(image, where, bool(opts["do_convert_rgb"]))
            self._check_channels(image, where)
            if isinstance(image, PIL.Image.Image):
                height, width = image.height, image.width
            else:
                height, width = image.shape[-2:]
            if opts["do_resize"]:
                h, w = get_image_size_for_max_num_patches(height, width, p, n_max)
                image = self._resize(image, {"height": h, "width": w}, opts["resample"], where)
            elif isinstance(image, PIL.Image.Image):
                image = np.moveaxis(np.asarray(image), -1, 0)
            if image.shape[-2] % p or image.shape[-1] % p:
                raise ValueError(f"{where}: with do_resize=False the image sides must be multiples of patch_size {p}, "
                                 f"got {tuple(image.shape[-2:])}")
            rows, cols = image.shape[-2] // p, image.shape[-1] // p
            if rows * cols > n_max:
                raise ValueError(f"{where}: {rows} x {cols} patches exceed max_num_patches {n_max} (do_resize=False)")
            image = self._finish(image, table, opts)
            patches = convert_image_to_patches(image, p)  # (rows*cols, p*p*C)
            padded = np.zeros((n_max, patches.shape[1]), dtype=patches.dtype)
            padded[:len(patches)] = patches
            mask = np.zeros((n_max,), dtype=np.int32)
            mask[:len(patches)] = 1
            return padded, mask, (rows, cols)

        workers = self.num_workers if num_workers is None else num_workers
        if workers is None:
            workers = min(8, os.cpu_count() or 1) if len(images) >= 8 else 1
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(one, enumerate(images)))
        else:
            results = [one(x) for x in enumerate(images)]
        pixels, masks, shapes = (list(x) for x in zip(*results, strict=True))
        if return_tensors is None:
            return BatchFeature(pixel_values=pixels, pixel_attention_mask=masks, spatial_shapes=shapes)
        data = {"pixel_values": np.stack(pixels), "pixel_attention_mask": np.stack(masks),
                "spatial_shapes": np.array(shapes, dtype=np.int64)}
        if return_tensors == "pt":
            data = {k: torch.from_numpy(v) for k, v in data.items()}
        return BatchFeature(data)

    preprocess = __call__

    # -- files ------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The preprocessor_config.json fields transformers writes."""
        out = {
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": list(self.image_mean),
            "image_processor_type": "Siglip2ImageProcessor",
            "image_std": list(self.image_std),
            "max_num_patches": self.max_num_patches,
            "patch_size": self.patch_size,
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
        }
        if self.do_convert_rgb is not None:
            out["do_convert_rgb"] = self.do_convert_rgb
        return out

    @classmethod
    def from_dict(cls, config: dict) -> "Siglip2ImageProcessor":
        if not isinstance(config, dict):
            raise TypeError(f"image processor config must be a dict, got {type(config).__name__}")
        kind = config.get("image_processor_type", "Siglip2ImageProcessor")
        if kind.removesuffix("Pil").removesuffix("Fast") != "Siglip2ImageProcessor":
            raise ValueError(f"not a SigLIP 2 (NaFlex) image processor config: image_processor_type={kind!r}")
        unknown = sorted(set(config) - set(_CONFIG_KEYS) - set(_METADATA_KEYS))
        for key in unknown:
            if key in ("do_center_crop", "do_pad") and config[key]:
                raise ValueError(f"image processor config sets {key}=true, which SigLIP 2's processor does not do")
        return cls(**{k: config[k] for k in _CONFIG_KEYS if k in config})

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        save_directory = os.fspath(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, IMAGE_PROCESSOR_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        return [path]

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, revision: str | None = None,
                        **overrides) -> "Siglip2ImageProcessor":
        """Read preprocessor_config.json (hub), or processor_config.json's nested "image_processor" (v5)."""
        directory = resolve_pretrained_dir(path_or_id, allow_patterns=[IMAGE_PROCESSOR_FILE, PROCESSOR_FILE],
                                           what="Siglip2ImageProcessor.from_pretrained", revision=revision)
        config = read_image_processor_config(directory)
        config.update(overrides)
        return cls.from_dict(config)

    def __repr__(self) -> str:
        return f"Siglip2ImageProcessor({json.dumps(self.to_dict(), sort_keys=True)})"
