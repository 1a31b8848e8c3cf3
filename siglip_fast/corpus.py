"""Embedding a corpus at scale: `embed_corpus(...)` (what `python -m siglip_fast embed` runs) and
`load_embeddings(path)`.

The job
-------
- **Inputs.** Image files and folders (walked recursively, sorted), file lists (`files=`: one path per line),
  WebDataset-style `.tar` shards (samples keyed by member name; `fields` picks what of each sample is embedded: its
  image and/or a text member such as `txt`) and text files (`texts=`: one text per line, blank lines ignored). The
  listing is deterministic: images in input order, then texts (tar captions in input order, then the `texts` files).
  Unreadable items (missing, truncated, not an image, a sample without the asked member, a file found in a folder
  that is neither an image nor a tar) are skipped and reported with their reason, never fatal.
- **Sharded, resumable output.** `out` a directory: item i of the listing belongs to shard i // shard_size; shard k
  is `shard-0000k.npy` (float32, its L2-normalised rows) + `shard-0000k.json` (each row's index and source, and the
  shard's skipped items), written to temporary names and renamed when complete. `manifest.json` records the model,
  the settings and a fingerprint of the input listing: a rerun with the same arguments skips complete shards and
  redoes only the missing ones; a different model, dtype, fields, shard size or input listing is refused
  (`CorpusError`), never mixed. At the end `skipped.jsonl` lists every skipped item. `out` a `.npy` file: the same
  job into `OUT.parts/`, then one `.npy` (+ `.json` listing the rows) assembled from it; earlier files of that name
  are replaced only when the run succeeds.
- **Many processes.** Under `torchrun` (WORLD_SIZE > 1) each rank takes whole shards (shard k -> rank k % world),
  runs on its own device (cuda:LOCAL_RANK; NCCL on GPUs, gloo on CPU) and writes its shards; the result is the
  same rows in the same order as a single-process run.
- **Models.** Any SigLIP / SigLIP 2 checkpoint (`load_model`, `load_processor`): SigLIP and fixed-resolution SigLIP 2
  (`SiglipModel`), NaFlex SigLIP 2 (`Siglip2Model`: each image resized with its aspect ratio kept to at most
  `max_num_patches` patches, patchified and padded by `Siglip2ImageProcessor` in the workers).
- **The pipeline.** Decoding and resizing run in DataLoader worker processes; images travel as raw uint8 pixels
  (SigLIP's normalisation happens in the patch embedding; NaFlex patches are normalised on the device); on
  CUDA batches are pinned, copied with non_blocking, the towers replayed from CUDA graphs (`compile_for_inference`)
  and each batch's result collected one batch later, so the copy, the model and the decoding overlap. Rows stream
  to shards: memory does not grow with the corpus (the input listing, one small record per item, is the only
  per-item state held).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
import shutil
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
TAR_EXTENSIONS = (".tar",)
COMPRESSED_TAR_EXTENSIONS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
DEFAULT_SHARD_SIZE = 10_000
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FORMAT = "siglip_fast.embeddings"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SKIPPED = "skipped.jsonl"

__all__ = ["CorpusError", "CorpusResult", "DEFAULT_SHARD_SIZE", "Item", "ShardedEmbeddings", "collect_inputs",
           "embed_corpus", "load_embeddings"]


class CorpusError(ValueError):
    """A problem with the job's arguments or its output directory (the CLI prints it as a usage error)."""


class Item(NamedTuple):
    """One input of the listing. `kind` is what it would be embedded as ("image" or "text"); `source` a file path,
    a tar path (with `member`, its data at `offset`, `size` bytes) or, for texts from a text file, the text itself;
    `reason` is set when the item is known to be unusable at listing time (it is reported, never embedded)."""

    kind: str
    source: str
    member: str | None = None
    offset: int = 0
    size: int = 0
    reason: str | None = None


@dataclasses.dataclass
class CorpusResult:
    """What one process of the job did: `rows`/`skipped` are the totals of the whole run (rank 0; 0 on other ranks),
    `seconds` the whole call; the shard lists and `rows_written` are this rank's."""

    out: str
    rows: int
    skipped: int
    items: int
    shards: int
    shards_written: list[int]
    shards_reused: list[int]
    seconds: float
    rank: int = 0
    world_size: int = 1
    input_wait_s: float = 0.0  # time this rank's loop waited for decoded batches
    rows_written: int = 0  # rows this rank embedded in this call
    loop_seconds: float = 0.0  # this rank's embedding loop (from the first batch requested to the last shard written)

    @property
    def rows_per_s(self) -> float:
        """This rank's embedding rate over its loop (model loading and listing excluded)."""
        return self.rows_written / self.loop_seconds if self.loop_seconds > 0 else 0.0


def _short_error(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0]
    text = f"{type(e).__name__}: {line}"
    return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------


def _parse_fields(fields) -> tuple[str, ...]:
    if isinstance(fields, str):
        fields = fields.split(",")
    out = tuple(f.strip().lower().lstrip(".") for f in fields if f and f.strip())
    if not out:
        raise CorpusError("fields: expected 'image' and/or text member extensions such as 'txt', got nothing")
    if len(set(out)) != len(out):
        raise CorpusError(f"fields: {','.join(out)} names a field twice")
    for f in out:
        if f != "image" and ("." + f) in IMAGE_EXTENSIONS:
            raise CorpusError(f"fields: {f!r} is an image extension; use 'image' (the sample's image, any format)")
    return out


def _compressed_reason(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        return f"cannot read it: {_short_error(e)}"
    for sig, what in ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ", "xz"), (b"\x28\xb5\x2f\xfd", "zstd")):
        if magic.startswith(sig):
            return (f"a {what}-compressed tar: members cannot be read by offset; decompress it "
                    f"(shards of uncompressed .tar are the WebDataset norm)")
    return None


class _Member(NamedTuple):
    name: str
    offset: int
    size: int


def scan_tar(path: str, fields: Sequence[str]) -> tuple[list[Item], list[Item]]:
    """A WebDataset-style tar -> (image items, text items), one per sample and field, in tar order. A sample is the
    members sharing a key (the member path up to the first '.' of its file name); the image field is the sample's
    first member with an image extension, a text field the member with that extension."""
    samples: dict[str, dict[str, _Member]] = {}
    order: list[str] = []
    broken = None
    reason = _compressed_reason(path)
    if reason is not None:
        if "image" in fields:
            return [Item("image", path, reason=reason)], []
        return [], [Item("text", path, reason=reason)]
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                directory, base = posixpath.split(m.name)
                key, _, ext = base.partition(".")
                key = posixpath.join(directory, key)
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                samples[key][ext.lower()] = _Member(m.name, m.offset_data, m.size)
    except (tarfile.TarError, OSError, EOFError) as e:
        broken = f"not a readable tar{' after ' + str(len(order)) + ' samples' if order else ''}: {_short_error(e)}"
    images, texts = [], []
    for key in order:
        members = samples[key]
        for field in fields:
            if field == "image":
                ext = next((e for e in members if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)
                if ext is None:
                    images.append(Item("image", path, key, reason=f"sample {key!r} has no image member "
                                                                  f"(members: {', '.join(sorted(members))})"))
                else:
                    t = members[ext]
                    images.append(Item("image", path, t.name, t.offset, t.size))
            else:
                t = members.get(field)
                if t is None:
                    texts.append(Item("text", path, key, reason=f"sample {key!r} has no .{field} member "
                                                                f"(members: {', '.join(sorted(members))})"))
                else:
                    texts.append(Item("text", path, t.name, t.offset, t.size))
    if broken is not None:
        (images if "image" in fields else texts).append(
            Item("image" if "image" in fields else "text", path, reason=broken))
    return images, texts


def _is_tar_name(path: str) -> bool:
    return path.lower().endswith(TAR_EXTENSIONS + COMPRESSED_TAR_EXTENSIONS)


def _walk(directory: str) -> Iterator[tuple[str, str | None]]:
    """(path, reason or None) for every file under directory, sorted; reason is set for files that are neither
    images nor tars (reported, not embedded)."""
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if name.lower().endswith(IMAGE_EXTENSIONS) or _is_tar_name(name):
                yield path, None
            else:
                ext = os.path.splitext(name)[1] or "(none)"
                yield path, f"not an image or .tar file (extension {ext}); found in folder {directory}"


def _read_lines(path: str, what: str) -> list[str]:
    if os.path.isdir(path):
        raise CorpusError(f"{what}: {path!r} is a directory, expected a UTF-8 text file")
    if not os.path.isfile(path):
        raise CorpusError(f"{what}: {path!r}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return [line for line in f.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{what} {path}: cannot read it as UTF-8 text: {e}") from None


def collect_inputs(inputs: Sequence[str] = (), *, files: Sequence[str] = (), texts: Sequence[str] = (),
                   tar: bool = False, fields: Sequence[str] | str = ("image",)) -> list[Item]:
    """The job's deterministic listing (see the module doc). A missing path given directly is a CorpusError; a
    missing path inside a file list is a skipped item (reported)."""
    fields = _parse_fields(fields)
    images: list[Item] = []
    tar_texts: list[Item] = []

    def add_file(path: str, reason: str | None = None):
        if reason is not None:
            images.append(Item("image", path, reason=reason))
        elif tar or _is_tar_name(path):
            i, t = scan_tar(path, fields)
            images.extend(i)
            tar_texts.extend(t)
        else:
            images.append(Item("image", path))

    def add(path: str, *, listed: bool):
        if os.path.isdir(path):
            for p, reason in _walk(path):
                add_file(p, reason)
        elif os.path.isfile(path):
            add_file(path)
        elif listed:
            images.append(Item("image", path, reason="no such file or directory"))
        else:
            raise CorpusError(f"{path!r}: no such file or directory")

    for path in inputs:
        add(path, listed=False)
    for list_file in files:
        base = os.path.dirname(os.path.abspath(list_file))
        for line in _read_lines(list_file, "--files"):
            entry = line.strip()
            add(entry if os.path.isabs(entry) else os.path.join(base, entry), listed=True)
    text_items = list(tar_texts)
    for path in texts:
        text_items += [Item("text", t) for t in _read_lines(path, "--texts")]
    return images + text_items


def _fingerprint_items(items: Sequence[Item]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.kind}\0{it.source}\0{it.member or ''}\0{it.reason or ''}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _fingerprint_model(path: str) -> str:
    """A checkpoint directory's identity: its config and processor files in full, each weight file's name, size
    and first and last MiB (a retrained checkpoint of the same shape differs there). A hub id: the id itself."""
    h = hashlib.sha256()
    if not os.path.isdir(path):
        h.update(f"id:{path}".encode())
        return h.hexdigest()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            continue
        size = os.path.getsize(full)
        h.update(f"{name}\0{size}\n".encode())
        with open(full, "rb") as f:
            if name.endswith((".json", ".model", ".txt")) or size <= 2 << 20:
                h.update(f.read())
            else:
                h.update(f.read(1 << 20))
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read(1 << 20))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Decoding (runs in DataLoader worker processes)
# ---------------------------------------------------------------------------------------------------------------


def _read_member(item: Item) -> bytes:
    with open(item.source, "rb") as f:
        f.seek(item.offset)
        data = f.read(item.size)
    if len(data) != item.size:
        raise ValueError(f"tar member {item.member!r} is truncated ({len(data)} of {item.size} bytes)")
    return data


def _row(index: int, item: Item) -> dict:
    row = {"index": index, "type": item.kind, "source": item.source}
    if item.member is not None:
        row["member"] = item.member
    return row


class _Decode(torch.utils.data.Dataset):
    """Position -> (index, kind, payload or None, error or None): uint8 (or float) (3, H, W) pixels; for a NaFlex
    processor (`max_num_patches` set) its outputs before rescale and normalisation: (uint8 patches (N, p·p·3),
    pixel_attention_mask (N,), spatial_shapes (rows, cols)), normalised on the model's device (`naflex_pixels`);
    or a text."""

    def __init__(self, items: list[tuple[int, Item]], image_processor, uint8: bool, max_num_patches: int | None = None):
        self.items, self.image_processor, self.uint8 = items, image_processor, uint8
        self.max_num_patches = max_num_patches

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int):
        index, item = self.items[position]
        if item.reason is not None:
            return index, item.kind, None, item.reason
        try:
            if item.kind == "image":
                from .image_processing import load_image

                image = load_image(_read_member(item) if item.member is not None else item.source)
                if self.max_num_patches is not None:  # NaFlex: (uint8 patches, mask, (rows, cols)), padded to N
                    out = self.image_processor([image], num_workers=1, max_num_patches=self.max_num_patches,
                                               do_rescale=False, do_normalize=False)
                    patches = out["pixel_values"][0]
                    if patches.dtype != np.uint8:  # load_image gives 8-bit RGB: never, unless that changes
                        raise ValueError(f"expected uint8 patches from the image processor, got {patches.dtype}")
                    return index, "image", (patches, out["pixel_attention_mask"][0], out["spatial_shapes"][0]), None
                pixels = self.image_processor([image], return_uint8=self.uint8, num_workers=1)["pixel_values"][0]
                return index, "image", pixels, None
            if item.member is None:
                return index, "text", item.source, None
            text = _read_member(item).decode("utf-8").strip()
            if not text:
                return index, "text", None, "empty text"
            return index, "text", text, None
        except Exception as e:  # unreadable, truncated, not an image: reported, never fatal
            return index, item.kind, None, _short_error(e)


def _collate(samples):
    ok = [(i, p) for i, _, p, e in samples if e is None]
    failed = [(i, e) for i, _, p, e in samples if e is not None]
    kind = samples[0][1]
    batch = {"kind": kind, "index": [i for i, _ in ok], "failed": failed, "pixels": None, "texts": None}
    if ok and kind == "image" and isinstance(ok[0][1], tuple):  # NaFlex: the three processor outputs, batched
        batch["pixels"] = torch.from_numpy(np.stack([p[0] for _, p in ok]))
        batch["pixel_attention_mask"] = torch.from_numpy(np.stack([p[1] for _, p in ok]))
        batch["spatial_shapes"] = torch.tensor([tuple(p[2]) for _, p in ok], dtype=torch.long)
    elif ok and kind == "image":
        batch["pixels"] = torch.from_numpy(np.stack([p for _, p in ok]))
    elif ok:
        batch["texts"] = [p for _, p in ok]
    return batch


def decode_loader(positions: list[tuple[int, Item]], batches: list[list[int]], image_processor, *, workers: int,
                  pin_memory: bool = False, uint8: bool = True,
                  max_num_patches: int | None = None) -> torch.utils.data.DataLoader:
    """The job's input pipeline: batches (lists of positions into `positions`, (index, Item) pairs) decoded and
    resized in `workers` processes (0: in this one), in order; each batch a dict with `kind`, `index` (the decoded
    items), `pixels` (uint8 (n, 3, H, W)) or `texts`, and `failed` ((index, reason) pairs). With `max_num_patches`
    (a NaFlex `Siglip2ImageProcessor`) `pixels` is its `pixel_values` before rescale and normalisation, uint8
    (n, max_num_patches, p·p·3) (`naflex_pixels` finishes them), with `pixel_attention_mask` (n, max_num_patches) and
    `spatial_shapes` (n, 2). Also benchmarked."""
    return torch.utils.data.DataLoader(
        _Decode(positions, image_processor, uint8, max_num_patches), batch_sampler=batches,
        num_workers=workers if batches else 0,
        collate_fn=_collate, pin_memory=pin_memory, prefetch_factor=4 if workers and batches else None)


# ---------------------------------------------------------------------------------------------------------------
# Output files
# ---------------------------------------------------------------------------------------------------------------


def _tmp(path: str) -> str:
    return f"{path}.tmp.{os.getpid()}"


def _atomic_json(path: str, obj) -> None:
    tmp = _tmp(path)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, path)


def _atomic_npy(path: str, array: np.ndarray) -> None:
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _shard_paths(out_dir: str, shard: int) -> tuple[str, str]:
    base = os.path.join(out_dir, f"shard-{shard:05d}")
    return base + ".npy", base + ".json"


def _shard_complete(out_dir: str, shard: int) -> bool:
    npy, js = _shard_paths(out_dir, shard)
    return os.path.isfile(npy) and os.path.isfile(js)  # the .json is renamed into place last


def _read_manifest(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise CorpusError(f"{path}: unreadable manifest ({_short_error(e)}); use a new --out directory") from None
    if manifest.get("format") != FORMAT:
        raise CorpusError(f"{path}: not a siglip_fast embeddings manifest")
    return manifest


_IDENTITY_KEYS = ("model_fingerprint", "settings", "inputs", "shard_size")


def _prepare_out_dir(out_dir: str, manifest: dict) -> None:
    """Rank 0: create the directory and its manifest, or check an existing one describes the same job."""
    if os.path.isdir(out_dir):
        old = _read_manifest(out_dir)
        if old is None:
            if any(not n.startswith(".") for n in os.listdir(out_dir)):
                raise CorpusError(f"--out {out_dir}: the directory is not empty and holds no {MANIFEST}; refusing "
                                  f"to write embeddings into it (give a new or empty directory)")
        else:
            diffs = []
            for key in _IDENTITY_KEYS:
                if old.get(key) != manifest[key]:
                    what = {"model_fingerprint": f"the model (was {old.get('model')!r}, now {manifest['model']!r}; "
                                                 f"fingerprints differ)",
                            "settings": f"the settings (was {old.get('settings')}, now {manifest['settings']})",
                            "inputs": f"the input listing (was {old.get('inputs', {}).get('count')} items, now "
                                      f"{manifest['inputs']['count']}; fingerprints differ)",
                            "shard_size": f"the shard size (was {old.get('shard_size')}, now "
                                          f"{manifest['shard_size']})"}[key]
                    diffs.append(what)
            if diffs:
                raise CorpusError(f"--out {out_dir} holds embeddings of a different job: " + "; ".join(diffs)
                                  + ". Refusing to mix them: rerun with the original arguments to finish it, or "
                                    "use a new --out (or delete that one).")
            manifest = {**old, "complete": False}
        for name in os.listdir(out_dir):  # temporaries of a killed run
            if ".tmp." in name:
                try:
                    os.remove(os.path.join(out_dir, name))
                except OSError:
                    pass
    else:
        parent = os.path.dirname(os.path.abspath(out_dir))
        if not os.path.isdir(parent):
            raise CorpusError(f"--out: directory {parent!r} does not exist")
        os.makedirs(out_dir, exist_ok=True)
    _atomic_json(os.path.join(out_dir, MANIFEST), manifest)


# ---------------------------------------------------------------------------------------------------------------
# Reading the result
# ---------------------------------------------------------------------------------------------------------------


class ShardedEmbeddings:
    """The rows of a sharded embeddings directory as one read-only (N, D) array, shard files memory-mapped:
    indexing (ints, slices, integer arrays, `[rows, cols]`) reads only the shards it touches; `np.asarray(x)` loads
    everything."""

    def __init__(self, paths: list[str], counts: list[int], dim: int):
        self._paths, self._counts = paths, counts
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._maps: dict[int, np.ndarray] = {}
        self.shape = (int(self._starts[-1]), dim)
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def shard(self, k: int) -> np.ndarray:
        if k not in self._maps:
            self._maps[k] = np.load(self._paths[k], mmap_mode="r")
        return self._maps[k]

    def shards(self) -> Iterator[np.ndarray]:
        for k in range(len(self._paths)):
            yield self.shard(k)

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.shape[1]), self.dtype)
        which = np.searchsorted(self._starts, idx, side="right") - 1
        for k in np.unique(which):
            sel = which == k
            out[sel] = self.shard(int(k))[idx[sel] - self._starts[k]]
        return out

    def __getitem__(self, key):
        cols = slice(None)
        if isinstance(key, tuple):
            if len(key) != 2:
                raise IndexError(f"too many indices for a 2-d array: {key!r}")
            key, cols = key
        n = self.shape[0]
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            return self._rows(np.array([i]))[0][cols]
        if isinstance(key, slice):
            idx = np.arange(n)[key]
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"row index out of range for {n} rows")
        return self._rows(idx)[:, cols]

    def __array__(self, dtype=None, copy=None):
        full = self[:]
        return full if dtype is None else full.astype(dtype)

    def __repr__(self) -> str:
        return f"ShardedEmbeddings(shape={self.shape}, shards={len(self._paths)})"


class _Rows(Sequence):
    """The row listing of a sharded directory, read one shard's .json at a time (the last one cached)."""

    def __init__(self, json_paths: list[str], starts: np.ndarray):
        self._paths, self._starts = json_paths, starts
        self._cache: tuple[int, list] | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, k: int) -> list:
        if self._cache is None or self._cache[0] != k:
            with open(self._paths[k], encoding="utf-8") as f:
                self._cache = (k, json.load(f)["rows"])
        return self._cache[1]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        i = i + n if i < 0 else i
        if not 0 <= i < n:
            raise IndexError(f"row {i} out of range for {n} rows")
        k = int(np.searchsorted(self._starts, i, side="right") - 1)
        return self._shard(k)[i - int(self._starts[k])]


def load_embeddings(path: str | os.PathLike):
    """-> (array (N, D) float32, rows): the embeddings written by `embed_corpus` / `siglip_fast embed`, from a single
    `.npy` (its `.json` beside it) or a sharded directory, rows in input order, each row a dict naming its source
    (`type`, `source`, `member` for tar members, `index` in the input listing). Memory-mapped: a `.npy` gives a
    read-only `np.memmap`, a directory a `ShardedEmbeddings` that reads only the shards an index touches."""
    path = os.fspath(path)
    if os.path.isdir(path):
        manifest = _read_manifest(path)
        if manifest is None:
            raise FileNotFoundError(f"{path}: no {MANIFEST}; not an embeddings directory")
        if not manifest.get("complete"):
            done = sum(_shard_complete(path, k) for k in range(manifest["num_shards"]))
            raise ValueError(f"{path}: the run is incomplete ({done} of {manifest['num_shards']} shards); rerun the "
                             f"same embed command to finish it")
        k = manifest["num_shards"]
        missing = [s for s in range(k) if not _shard_complete(path, s)]
        if missing:
            raise ValueError(f"{path}: incomplete: shard(s) {missing[:10]} of {k} are missing; rerun the same embed "
                             f"command to rewrite them")
        npys = [_shard_paths(path, s)[0] for s in range(k)]
        jsons = [_shard_paths(path, s)[1] for s in range(k)]
        array = ShardedEmbeddings(npys, manifest["shard_rows"], manifest["dim"])
        return array, _Rows(jsons, array._starts)
    if not path.endswith(".npy") and os.path.isfile(path + ".npy"):
        path += ".npy"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such embeddings file or directory")
    array = np.load(path, mmap_mode="r")
    listing = path[: -len(".npy")] + ".json"
    rows = []
    if os.path.isfile(listing):
        with open(listing, encoding="utf-8") as f:
            rows = json.load(f)["rows"]
    return array, rows


# ---------------------------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------------------------


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Progress:
    """One line per rank on stderr: items done, rows/s and an ETA; redrawn in place on a terminal, printed every
    `interval` seconds otherwise (logs)."""

    def __init__(self, total: int, rank: int, world: int, stream=None, interval: float | None = None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if interval is not None else (0.25 if self.tty else 10.0)
        self.total, self.items, self.rows = total, 0, 0
        self.prefix = f"[rank {rank}/{world}] " if world > 1 else ""
        self.t0 = self.last = time.perf_counter()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = self.rows / elapsed if elapsed > 0 else 0.0
        item_rate = self.items / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.items) / item_rate if item_rate > 0 else float("nan")
        pct = 100.0 * self.items / self.total if self.total else 100.0
        eta_s = _hms(eta) if eta == eta else "?"
        return (f"{self.prefix}embedding: {self.items:,}/{self.total:,} items ({pct:.0f}%), {self.rows:,} rows, "
                f"{rate:,.1f} rows/s, ETA {eta_s}")

    def update(self, items: int, rows: int) -> None:
        self.items += items
        self.rows += rows
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._write()

    def _write(self, end: str = "") -> None:
        self.stream.write(("\r" + self.line() + end) if self.tty else self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self._write("\n")
        elif self.items:
            self._write()


# ---------------------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------------------


def _dist_context(device_arg):
    """(rank, world, local_rank, device, created): initialise torch.distributed from torchrun's environment when
    WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(device_arg)
        except (RuntimeError, ValueError):
            raise CorpusError(f"--device: {device_arg!r} is not a device (expected e.g. 'cpu', 'cuda' or "
                              f"'cuda:1')") from None
    if device.type not in ("cpu", "cuda"):
        raise CorpusError(f"--device: {str(device_arg)!r} is not supported (expected 'cpu' or 'cuda[:N]')")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CorpusError(f"--device {device_arg}: CUDA is not available on this machine (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    created = False
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local, device, created
    return 0, 1, 0, device, False


def _all_ok(payload, world: int):
    """Gather one object from every rank; an Exception from any rank is raised on all of them."""
    if world == 1:
        gathered = [payload]
    else:
        import torch.distributed as dist

        gathered = [None] * world
        dist.all_gather_object(gathered, payload)
    for rank, p in enumerate(gathered):
        if isinstance(p, BaseException):
            raise CorpusError(str(p) if world == 1 else f"rank {rank}: {p}")
    return gathered


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CorpusError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


PROCESSOR_FILES = ("spiece.model (SigLIP) or tokenizer.model (SigLIP 2), tokenizer_config.json, processor_config.json "
                   "or preprocessor_config.json")


def load_dual_model(model_path: str, device, dtype, backend):
    """(model, processor) of any SigLIP / SigLIP 2 checkpoint directory or hub id, through `load_model` and
    `load_processor`: a `SiglipModel` (SigLIP, fixed-resolution SigLIP 2) or a `Siglip2Model` (NaFlex), and its
    `SiglipProcessor` / `Siglip2Processor`. CorpusError when either is unusable or the model is not a dual encoder."""
    from . import ops
    from .modeling import SiglipModel
    from .modeling_siglip2 import load_model
    from .processing_siglip2 import load_processor

    try:
        ops.resolve(backend, torch.empty(0, device=device))
    except ValueError as e:
        raise CorpusError(f"--backend {backend}: {e}") from None
    try:
        model = load_model(model_path, dtype=dtype, device=device, backend=backend).eval()
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        raise CorpusError(f"--model {model_path}: {e}") from None
    if not isinstance(model, SiglipModel):
        raise CorpusError(f"--model {model_path}: a {type(model).__name__} checkpoint; this needs both towers (a "
                          f"SiglipModel or Siglip2Model checkpoint, model_type 'siglip' or 'siglip2')")
    try:
        processor = load_processor(model_path)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        raise CorpusError(f"--model {model_path}: no usable processor files ({PROCESSOR_FILES}): {e}") from None
    return model, processor


def naflex_patches(model, processor, max_num_patches: int | None) -> int | None:
    """The max_num_patches images are padded to for a NaFlex model (`max_num_patches`, default the image processor's
    setting); None for a fixed-resolution model, where giving `max_num_patches` is a CorpusError."""
    from .image_processing_siglip2 import Siglip2ImageProcessor
    from .modeling_siglip2 import Siglip2Model

    if max_num_patches is not None and (isinstance(max_num_patches, bool) or not isinstance(max_num_patches, int)
                                        or max_num_patches < 1):
        raise CorpusError(f"--max-num-patches must be an int >= 1, got {max_num_patches!r}")
    naflex_model = isinstance(model, Siglip2Model)
    naflex_images = isinstance(processor.image_processor, Siglip2ImageProcessor)
    if naflex_model != naflex_images:
        raise CorpusError(f"the checkpoint pairs a {type(model).__name__} with a "
                          f"{type(processor.image_processor).__name__}: NaFlex models (Siglip2Model) need the NaFlex "
                          f"image processor (Siglip2ImageProcessor) and fixed-resolution ones a SiglipImageProcessor")
    if not naflex_model:
        if max_num_patches is not None:
            raise CorpusError("--max-num-patches applies to NaFlex SigLIP 2 checkpoints (model_type 'siglip2') "
                              "only; this one has a fixed image size")
        return None
    return processor.image_processor.max_num_patches if max_num_patches is None else max_num_patches


def text_length(processor, model) -> int:
    """Tokens per text: SigLIP's training setting, padded to max_length with truncation, max_length the tokenizer's
    model_max_length for SigLIP and 64 for SigLIP 2 (the `Siglip2Processor` default), both at most the model's
    max_position_embeddings."""
    from .processing_siglip2 import TEXT_DEFAULTS, Siglip2Processor

    limit = model.config.text_config.max_position_embeddings
    if isinstance(processor, Siglip2Processor):
        return min(TEXT_DEFAULTS["max_length"], limit)
    return min(processor.tokenizer.model_max_length, limit)


def _batches(positions: list[tuple[int, Item]], shard_of, batch_size: int) -> list[list[int]]:
    """Lists of positions: never across a shard or an image/text boundary, at most batch_size each."""
    batches, current, key = [], [], None
    for pos, (index, item) in enumerate(positions):
        k = (shard_of(index), item.kind)
        if current and (k != key or len(current) == batch_size):
            batches.append(current)
            current = []
        key = k
        current.append(pos)
    if current:
        batches.append(current)
    return batches


class NaflexNormalizer:
    """Finishes the workers' uint8 NaFlex patches on the model's device: rescale + normalise through the image
    processor's own (3, 256) float32 lookup table (the values its float path computes for every uint8, so the result
    is bitwise its `pixel_values`), padding patches zero. The workers send a quarter of the bytes and skip the
    float work, the largest part of their time at 1024 patches."""

    def __init__(self, image_processor, device):
        ip = image_processor
        table = ip._lookup_table(ip.rescale_factor, ip.image_mean, ip.image_std, ip.do_rescale, ip.do_normalize)
        self.table = torch.from_numpy(table.reshape(-1)).to(device)  # (3 * 256,): channel c's values at c * 256
        dim = 3 * ip.patch_size**2
        self.offsets = (torch.arange(dim, device=device, dtype=torch.int32) % 3) * 256  # (p, p, C) flattening

    def __call__(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """uint8 (B, N, p·p·3), mask (B, N) -> float32 (B, N, p·p·3)."""
        values = self.table[patches.to(torch.int32) + self.offsets]
        return torch.where(mask.bool()[..., None], values, 0.0)


class _Encoder:
    """Runs the towers on batches from the loader; on CUDA through CUDA-graph runners, results collected one batch
    late so the device-to-host copy overlaps the next batch."""

    def __init__(self, model, processor, device, dtype, batch_size: int, cuda_graph: bool,
                 max_num_patches: int | None = None):
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        self.batch_size, self.cuda_graph = batch_size, cuda_graph
        self.max_num_patches = max_num_patches  # set for a NaFlex model
        self.naflex = None if max_num_patches is None else NaflexNormalizer(processor.image_processor, device)
        self.text_length = text_length(processor, model)
        self._vision = self._text = None

    def _features(self, batch) -> torch.Tensor:
        cuda = self.device.type == "cuda"
        if batch["kind"] == "image":
            if self.max_num_patches is not None:  # NaFlex: pixel_values, pixel_attention_mask and spatial_shapes
                mask = batch["pixel_attention_mask"].to(self.device, non_blocking=cuda)
                inputs = {"pixel_values": self.naflex(batch["pixels"].to(self.device, non_blocking=cuda),
                                                      mask).to(self.dtype),
                          "pixel_attention_mask": mask,
                          "spatial_shapes": batch["spatial_shapes"].to(self.device, non_blocking=cuda)}
                if self.cuda_graph:
                    if self._vision is None:
                        self._vision = self.model.vision_model.compile_for_inference(
                            self.batch_size, max_num_patches=self.max_num_patches)
                    return self._vision(**inputs).pooler_output
                return self.model.get_image_features(**inputs).pooler_output
            x = batch["pixels"].to(self.device, non_blocking=cuda)
            x = x if x.dtype == torch.uint8 else x.to(self.dtype)
            if self.cuda_graph:
                if self._vision is None:
                    self._vision = self.model.vision_model.compile_for_inference(
                        self.batch_size, image_size=tuple(x.shape[2:]), pixel_dtype=x.dtype)
                return self._vision(pixel_values=x).pooler_output
            return self.model.get_image_features(pixel_values=x).pooler_output
        enc = self.processor.tokenizer(batch["texts"], padding="max_length", truncation=True,
                                       max_length=self.text_length, return_tensors="pt")
        enc = {k: v.to(self.device, non_blocking=cuda) for k, v in enc.items()}
        if self.cuda_graph:
            if self._text is None:
                self._text = self.model.text_model.compile_for_inference(
                    self.batch_size, seq_len=self.text_length, with_attention_mask="attention_mask" in enc)
            return self._text(**enc).pooler_output
        return self.model.get_text_features(**enc).pooler_output

    def launch(self, batch):
        """-> (host float32 tensor (n, D), event or None); the copy may still be in flight until event syncs."""
        with torch.inference_mode():
            emb = torch.nn.functional.normalize(self._features(batch).float(), dim=-1)
            if self.device.type != "cuda":
                return emb, None
            host = torch.empty(emb.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(emb, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            return host, event


def embed_corpus(inputs: Sequence[str] = (), out: str = "embeddings", *, model: str, files: Sequence[str] = (),
                 texts: Sequence[str] = (), tar: bool = False, fields: Sequence[str] | str = ("image",),
                 shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 32, workers: int | None = None,
                 device=None, dtype=None, backend: str = "auto", cuda_graph: bool | None = None,
                 max_num_patches: int | None = None, progress: bool = True, stream=None) -> CorpusResult:
    """Embed a corpus (see the module doc); returns this process's `CorpusResult`. Call it the same way on every
    rank under torchrun (the CLI does). `out` ending in .npy: one file (+ .json); otherwise a sharded directory.
    `workers`: decoding processes per rank (0 decodes in this process; default min(8, cores per rank - 1)).
    `cuda_graph` (default: on CUDA) runs the towers through `compile_for_inference` runners: replayed from CUDA
    graphs on a GPU; True on CPU runs the same static-batch runners without a graph (a test of that path).

    `model` is any SigLIP / SigLIP 2 checkpoint (`load_model` / `load_processor`). For a NaFlex SigLIP 2 one
    (`Siglip2Model`), the decoding workers run its `Siglip2ImageProcessor` at `max_num_patches` (default: the
    processor's): each image resized with its aspect ratio kept to at most that many patches, patchified and padded;
    the model gets `pixel_values`, `pixel_attention_mask` and `spatial_shapes`. Texts of SigLIP 2 are padded to 64
    tokens with truncation (its processor's default) and lowercased by its tokenizer when that is `Siglip2Tokenizer`
    (SigLIP 2 was trained on lowercased text)."""
    stream = stream or sys.stderr
    t_start = time.perf_counter()
    for name, value, low in (("shard_size", shard_size, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CorpusError(f"--{name.replace('_', '-')} must be an int >= {low}, got {value!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise CorpusError(f"--workers must be an int >= 0, got {workers!r}")
    if max_num_patches is not None and (isinstance(max_num_patches, bool) or not isinstance(max_num_patches, int)
                                        or max_num_patches < 1):
        raise CorpusError(f"--max-num-patches must be an int >= 1, got {max_num_patches!r}")
    out = os.fspath(out)
    single = out.endswith(".npy")
    if single:
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            raise CorpusError(f"--out: directory {parent!r} does not exist")
        if os.path.isdir(out):
            raise CorpusError(f"--out {out}: is a directory; a .npy output must be a file")
    elif os.path.isfile(out):
        raise CorpusError(f"--out {out}: is a file; give a directory for sharded output (or a .npy file name)")
    rank, world, local, device, created = _dist_context(device)
    try:
        return _run(inputs, out, single, model, files, texts, tar, fields, shard_size, batch_size, workers, device,
                    dtype, backend, cuda_graph, max_num_patches, progress, stream, rank, world, t_start)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(inputs, out, single, model_path, files, texts, tar, fields, shard_size, batch_size, workers, device, dtype,
         backend, cuda_graph, max_num_patches, progress, stream, rank, world, t_start) -> CorpusResult:
    dtype = _resolve_dtype(dtype, device)
    fields = _parse_fields(fields)
    try:
        items = collect_inputs(inputs, files=files, texts=texts, tar=tar, fields=fields)
        if not items:
            raise CorpusError("nothing to embed: give image files or directories (with image files in them), tar "
                              "shards, --files lists and/or --texts files")
        payload = _fingerprint_items(items)
    except CorpusError as e:
        payload = e
    gathered = _all_ok(payload, world)
    if len(set(gathered)) > 1:
        raise CorpusError("the ranks listed different inputs (same arguments, different files on their machines?): "
                          "every rank must see the same input listing")

    model, processor = load_dual_model(model_path, device, dtype, backend)
    image_processor = processor.image_processor
    n_patches = naflex_patches(model, processor, max_num_patches)
    uint8 = n_patches is None and image_processor.is_siglip_normalization()
    dim = model.config.text_config.projection_size
    num_shards = -(-len(items) // shard_size)
    out_dir = out + ".parts" if single else out
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "model": model_path,
        "model_fingerprint": _fingerprint_model(model_path),
        "settings": {"dtype": str(dtype).removeprefix("torch."), "fields": list(fields),
                     "text_length": text_length(processor, model),
                     "image_size": image_processor.size if hasattr(image_processor, "size") else None},
        "inputs": {"count": len(items), "fingerprint": gathered[0]},
        "shard_size": shard_size, "num_shards": num_shards, "dim": dim, "complete": False,
    }
    if n_patches is not None:  # NaFlex: the padded patch count changes the embeddings (part of the job's identity)
        manifest["settings"]["max_num_patches"] = n_patches
    status = None
    if rank == 0:
        try:
            _prepare_out_dir(out_dir, manifest)
        except (CorpusError, OSError) as e:
            status = e if isinstance(e, CorpusError) else CorpusError(f"--out {out_dir}: {_short_error(e)}")
    _all_ok(status, world)

    mine = list(range(rank, num_shards, world))
    reused = [s for s in mine if _shard_complete(out_dir, s)]
    todo = [s for s in mine if s not in set(reused)]
    positions = [(i, items[i]) for s in todo for i in range(s * shard_size, min((s + 1) * shard_size, len(items)))]
    n_items = len(items)
    del items  # the rank keeps only its pending items
    shard_of = lambda index: index // shard_size  # noqa: E731
    batches = _batches(positions, shard_of, batch_size)
    last_batch_of = {shard_of(positions[b[0]][0]): k for k, b in enumerate(batches)}

    if workers is None:
        per_rank = (os.cpu_count() or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        workers = max(1, min(8, per_rank - 1))
    cuda = device.type == "cuda"
    loader = decode_loader(positions, batches, image_processor, workers=workers, pin_memory=cuda, uint8=uint8,
                           max_num_patches=n_patches)
    encoder = _Encoder(model, processor, device, dtype, batch_size, cuda if cuda_graph is None else cuda_graph,
                       n_patches)

    bar = _Progress(len(positions), rank, world, stream) if progress else None
    if progress and reused:
        stream.write(f"{bar.prefix}{len(reused)} of {len(mine)} shards already complete in {out_dir}: "
                     f"skipping them\n")
    parts: dict[int, list] = {}
    written, wait_s, rows_written = [], 0.0, 0
    t0 = time.perf_counter()

    def finish(k, batch, launched):
        nonlocal rows_written
        shard = shard_of(positions[batches[k][0]][0])
        acc = parts.setdefault(shard, [[], [], []])  # arrays, rows, skipped
        if launched is not None:
            host, event = launched
            if event is not None:
                event.synchronize()
            acc[0].append(host.numpy().copy() if event is not None else host.numpy())
        lookup = dict(positions[p] for p in batches[k])
        acc[1] += [_row(i, lookup[i]) for i in batch["index"]]
        acc[2] += [{**_row(i, lookup[i]), "reason": reason} for i, reason in batch["failed"]]
        n_rows = len(batch["index"])
        rows_written += n_rows
        if bar is not None:
            bar.update(len(batches[k]), n_rows)
        if last_batch_of[shard] == k:
            arrays, rows, skipped = parts.pop(shard)
            matrix = np.concatenate(arrays) if arrays else np.zeros((0, dim), np.float32)
            npy, js = _shard_paths(out_dir, shard)
            _atomic_npy(npy, np.ascontiguousarray(matrix, dtype=np.float32))
            _atomic_json(js, {"shard": shard, "items": [shard * shard_size, min((shard + 1) * shard_size, n_items)],
                              "rows": rows, "skipped": skipped})
            written.append(shard)

    inflight = None
    it = iter(loader)
    for k in range(len(batches)):
        t_wait = time.perf_counter()
        batch = next(it)
        wait_s += time.perf_counter() - t_wait
        launched = encoder.launch(batch) if batch["index"] else None
        if inflight is not None:
            finish(*inflight)
        inflight = (k, batch, launched)
    if inflight is not None:
        finish(*inflight)
    del it, loader
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
        stream.write(f"{bar.prefix}done: {len(written)} shard(s) written, {len(reused)} reused, {rows_written:,} rows "
                     f"in {seconds:.1f} s ({rows_written / seconds if seconds > 0 else 0:,.1f} rows/s; waited on "
                     f"input {100 * wait_s / seconds if seconds > 0 else 0:.0f}% of the time)\n")
        stream.flush()

    _barrier(world)
    total_rows = total_skipped = 0
    status = None
    if rank == 0:
        try:
            total_rows, total_skipped = _finalize(out_dir, manifest, single, out, stream if progress else None)
        except OSError as e:
            status = CorpusError(f"--out {out}: {_short_error(e)}")
    _all_ok(status, world)
    return CorpusResult(out=out, rows=total_rows, skipped=total_skipped, items=manifest["inputs"]["count"],
                        shards=num_shards, shards_written=written, shards_reused=reused,
                        seconds=time.perf_counter() - t_start, rank=rank, world_size=world, input_wait_s=wait_s,
                        rows_written=rows_written, loop_seconds=seconds)


def _finalize(out_dir: str, manifest: dict, single: bool, out: str, stream) -> tuple[int, int]:
    """Rank 0, after every shard is written: counts, skipped.jsonl and the completed manifest; for a .npy output,
    the single file assembled from the shards (renamed into place only when it has rows)."""
    k = manifest["num_shards"]
    missing = [s for s in range(k) if not _shard_complete(out_dir, s)]
    if missing:
        raise OSError(f"shards {missing[:10]} are missing after every rank finished")
    counts, skipped_total = [], 0
    skipped_path = os.path.join(out_dir, SKIPPED)
    tmp = _tmp(skipped_path)
    shown: list[dict] = []
    with open(tmp, "w", encoding="utf-8") as f:
        for s in range(k):
            npy, js = _shard_paths(out_dir, s)
            with open(js, encoding="utf-8") as g:
                skipped = json.load(g)["skipped"]
            counts.append(int(np.load(npy, mmap_mode="r").shape[0]))
            for entry in skipped:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            skipped_total += len(skipped)
            shown += skipped[: max(0, 20 - len(shown))]
    os.replace(tmp, skipped_path)
    total = sum(counts)
    manifest = {**manifest, "complete": True, "shard_rows": counts, "rows": total, "skipped": skipped_total,
                "skipped_file": SKIPPED}
    _atomic_json(os.path.join(out_dir, MANIFEST), manifest)
    if single:
        if total:
            _assemble(out_dir, manifest, out)
    if stream is not None:
        where = out if single and total else out_dir
        if total:
            stream.write(f"wrote {total:,} embeddings of dim {manifest['dim']} to {where}"
                         + (f" (rows listed in {out[:-4]}.json)" if single else f" ({k} shard(s), {MANIFEST})") + "\n")
        if skipped_total:
            stream.write(f"skipped {skipped_total} unreadable or unusable input(s):\n")
            for entry in shown:
                name = entry["source"] if entry["type"] == "image" or "member" in entry else repr(entry["source"])
                name += f" [{entry['member']}]" if "member" in entry else ""
                stream.write(f"  {name}: {entry['reason']}\n")
            if skipped_total > len(shown):
                stream.write(f"  ... {skipped_total - len(shown)} more\n")
            if not single:
                stream.write(f"  (all listed in {skipped_path})\n")
        stream.flush()
    if single:
        shutil.rmtree(out_dir, ignore_errors=True)
    return total, skipped_total


def _assemble(out_dir: str, manifest: dict, out: str) -> None:
    """The shards -> one .npy and its .json listing, streamed (never the whole matrix in memory), each written to a
    temporary name and renamed into place."""
    k, total, dim = manifest["num_shards"], manifest["rows"], manifest["dim"]
    listing = out[: -len(".npy")] + ".json"
    tmp_npy, tmp_json = _tmp(out), _tmp(listing)
    try:
        target = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.float32, shape=(total, dim))
        start = 0
        with open(tmp_json, "w", encoding="utf-8") as f:
            f.write("{" + f'"model": {json.dumps(manifest["model"])}, "shape": [{total}, {dim}], "rows": [')
            first = True
            skipped_all = []
            for s in range(k):
                npy, js = _shard_paths(out_dir, s)
                block = np.load(npy, mmap_mode="r")
                target[start:start + len(block)] = block
                start += len(block)
                with open(js, encoding="utf-8") as g:
                    shard = json.load(g)
                for row in shard["rows"]:
                    f.write(("" if first else ",") + "\n " + json.dumps(row, ensure_ascii=False))
                    first = False
                skipped_all += shard["skipped"]
            f.write('\n], "skipped": ' + json.dumps(skipped_all, ensure_ascii=False) + "}\n")
        target.flush()
        del target
        os.replace(tmp_npy, out)
        os.replace(tmp_json, listing)
    finally:
        for t in (tmp_npy, tmp_json):
            if os.path.exists(t):
                os.remove(t)
