"""Decoding: items -> model-ready batches, in DataLoader worker processes.

Images travel as raw uint8 pixels (SigLIP's normalisation happens in the patch embedding); NaFlex images as the
image processor's uint8 patches, mask and grid (normalised on the device). A JPEG much larger than a fixed-resolution
target is decoded at a reduced size (Pillow's `Image.draft`: the JPEG decoder's 1/2, 1/4 or 1/8 DCT scaling, never
below `DRAFT_MARGIN` times the target on either side) before the usual resize; `draft=False` decodes in full.
Each row's metadata (type, key, source, member, caption) is made here, beside its pixels.
"""

from __future__ import annotations

import io
import os

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from .job import short_error
from .listing import Item

DRAFT_MARGIN = 2  # reduced-size decoding keeps at least twice the target on each side (then the bicubic resize)


def read_range(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise ValueError(f"truncated: {len(data)} of {size} bytes at byte {offset}")
    return data


def open_image(data: bytes | str, draft_side: int | None = None) -> PIL.Image.Image:
    """Decode like `siglip_fast.image_processing.load_image` (EXIF transpose, then RGB); with `draft_side`, a JPEG
    whose sides are both at least twice `draft_side` is decoded at the smallest DCT scale keeping both sides >=
    `draft_side`."""
    what = "image bytes" if isinstance(data, bytes) else f"image file {data!r}"
    try:
        image = PIL.Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        if draft_side is not None and image.format == "JPEG":
            image.draft(image.mode, (draft_side, draft_side))
        image.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} does not exist") from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what} could not be decoded as an image: {e}") from None
    return PIL.ImageOps.exif_transpose(image).convert("RGB")


def draft_side(image_processor, draft: bool) -> int | None:
    """The side a reduced-size JPEG decode must keep for this processor, or None (no reduced decoding: `draft` off,
    or a NaFlex processor, whose target size follows the image's own size)."""
    size = getattr(image_processor, "size", None)
    if not draft or not isinstance(size, dict) or "height" not in size or hasattr(image_processor, "max_num_patches"):
        return None
    return DRAFT_MARGIN * max(size["height"], size["width"])


def row_metadata(item: Item) -> dict:
    row = {"type": item.kind, "source": item.source}
    if item.key is not None:
        row["key"] = item.key
    if item.member is not None:
        row["member"] = item.member
    if item.text is not None:
        row["offset"] = item.offset
    return row


class Decode(torch.utils.data.Dataset):
    """Item -> (unit, metadata, payload or None, error or None): uint8 (3, H, W) pixels (float with `uint8=False`),
    NaFlex (uint8 patches (N, p·p·3), mask (N,), (rows, cols)) or a text. Indexed by the items themselves (the
    batch sampler yields lists of Items)."""

    def __init__(self, image_processor, uint8: bool, max_num_patches: int | None = None, draft: bool = True):
        self.image_processor, self.uint8, self.max_num_patches = image_processor, uint8, max_num_patches
        self.draft_side = draft_side(image_processor, draft)

    def __getitem__(self, item: Item):
        meta, payload, error = self._decode(item)
        return item.unit, meta, payload, error

    def _decode(self, item: Item):
        meta = row_metadata(item)
        if item.reason is not None or item.kind == "none":
            return meta, None, item.reason
        try:
            if item.caption is not None:
                meta["caption"] = read_range(item.source, *item.caption).decode("utf-8", "replace").strip()
            if item.kind == "text":
                if item.text is not None:
                    meta["caption"] = item.text
                    return meta, item.text, None
                text = read_range(item.source, item.offset, item.size).decode("utf-8").strip()
                if not text:
                    return meta, None, "empty text"
                meta["caption"] = text
                return meta, text, None
            if item.member is not None:
                image = open_image(read_range(item.source, item.offset, item.size), self.draft_side)
            else:
                if not os.path.isfile(item.source):
                    what = "no such file" if not os.path.exists(item.source) else "not a regular file"
                    return meta, None, what
                image = open_image(item.source, self.draft_side)
            if self.max_num_patches is not None:
                out = self.image_processor([image], num_workers=1, max_num_patches=self.max_num_patches,
                                           do_rescale=False, do_normalize=False)
                patches = out["pixel_values"][0]
                if patches.dtype != np.uint8:  # open_image gives 8-bit RGB: never, unless that changes
                    raise ValueError(f"expected uint8 patches from the image processor, got {patches.dtype}")
                return meta, (patches, out["pixel_attention_mask"][0], out["spatial_shapes"][0]), None
            return meta, self.image_processor([image], return_uint8=self.uint8, num_workers=1)["pixel_values"][0], None
        except Exception as e:  # unreadable, truncated, not an image, not UTF-8: reported, never fatal
            return meta, None, short_error(e)


def collate(samples):
    """-> {"unit", "kind", "rows" (metadata of the decoded items), "failed" ((metadata, reason) pairs), "pixels" /
    "pixel_attention_mask" / "spatial_shapes" or "texts"}. A batch holds one unit's items of one kind."""
    ok = [(m, p) for _, m, p, e in samples if e is None and p is not None]
    failed = [(m, e) for _, m, p, e in samples if e is not None]
    kind = samples[0][1]["type"]
    batch = {"unit": samples[0][0], "kind": kind, "rows": [m for m, _ in ok], "failed": failed, "pixels": None,
             "texts": None}
    if ok and kind == "image" and isinstance(ok[0][1], tuple):
        batch["pixels"] = torch.from_numpy(np.stack([p[0] for _, p in ok]))
        batch["pixel_attention_mask"] = torch.from_numpy(np.stack([p[1] for _, p in ok]))
        batch["spatial_shapes"] = torch.tensor([tuple(p[2]) for _, p in ok], dtype=torch.long)
    elif ok and kind == "image":
        batch["pixels"] = torch.from_numpy(np.stack([p for _, p in ok]))
    elif ok:
        batch["texts"] = [p for _, p in ok]
    return batch


def batches_of(items: list[Item], batch_size: int) -> list[list[Item]]:
    """One unit's items -> batches of at most batch_size, never mixing images and texts."""
    out, current = [], []
    for item in items:
        if current and (len(current) == batch_size or current[0].kind != item.kind):
            out.append(current)
            current = []
        current.append(item)
    if current:
        out.append(current)
    return out


def decode_loader(batches, image_processor, *, workers: int, pin_memory: bool = False, uint8: bool = True,
                  max_num_patches: int | None = None, draft: bool = True) -> torch.utils.data.DataLoader:
    """The input pipeline: `batches` (an iterable of lists of Items, consumed lazily as the loader prefetches)
    decoded in `workers` processes (0: in this one), in order; each batch as `collate` makes it. With
    `max_num_patches` (a NaFlex `Siglip2ImageProcessor`) `pixels` is its `pixel_values` before rescale and
    normalisation, uint8 (n, max_num_patches, p·p·3), with `pixel_attention_mask` and `spatial_shapes`."""
    return torch.utils.data.DataLoader(
        Decode(image_processor, uint8, max_num_patches, draft), batch_sampler=batches, num_workers=workers,
        collate_fn=collate, pin_memory=pin_memory, prefetch_factor=4 if workers else None)
