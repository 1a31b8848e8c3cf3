"""Reading a finished job: `load_embeddings(path)` -> (array, rows), in input order, memory-mapped.

A directory gives a `ShardedEmbeddings` over its per-unit `.npy` files: an index opens (and verifies against the
manifest: size, header, sha256, once per file) only the files it touches; numpy's indexing semantics exactly (the
index is resolved by numpy itself on a zero-copy array of row numbers). A single `.npy` gives an `np.memmap`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence

import numpy as np

from .writer import MANIFEST, file_problem, read_manifest, unit_paths


class DamagedOutputError(ValueError):
    """A file of a finished job does not match its manifest: names the unit and the file."""


class ShardedEmbeddings:
    """The rows of several `.npy` parts as one read-only (N, D) float32 array; each part is memory-mapped and
    verified when an index first touches it; `np.asarray(x)` loads everything."""

    def __init__(self, parts: list[tuple[str, int, dict | None, str]], dim: int, verify: bool = True):
        """parts: (path, rows, file record (size, sha256) or None, unit name) in order."""
        self._parts = [p for p in parts if p[1]]
        counts = [p[1] for p in self._parts]
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self._maps: dict[int, np.ndarray] = {}
        self._verify = verify
        self.shape = (int(self._starts[-1]), dim)
        self.dtype = np.dtype(np.float32)
        self.ndim = 2
        self.size = self.shape[0] * dim

    def __len__(self) -> int:
        return self.shape[0]

    def part(self, j: int) -> np.ndarray:
        """Part j, memory-mapped (verified on first use)."""
        if j not in self._maps:
            path, rows, meta, name = self._parts[j]
            if meta is not None:
                problem = file_problem(path, meta, rows=rows, dim=self.shape[1], checksum=self._verify)
                if problem:
                    raise DamagedOutputError(f"unit {name!r}: {problem}; rerun the embed command on this output: it "
                                             f"verifies every unit and redoes the damaged ones")
            self._maps[j] = np.load(path, mmap_mode="r")
        return self._maps[j]

    def parts(self) -> Iterator[np.ndarray]:
        for j in range(len(self._parts)):
            yield self.part(j)

    def _gather(self, rows: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
        """rows (any shape) [and cols of the same shape] -> values; reads only the parts those rows are in."""
        out = np.empty(rows.shape, self.dtype) if cols is not None else np.empty(rows.shape + (self.shape[1],),
                                                                                  self.dtype)
        flat_rows = rows.reshape(-1)
        flat_out = out.reshape((-1,) if cols is not None else (-1, self.shape[1]))
        which = np.searchsorted(self._starts, flat_rows, side="right") - 1
        for j in np.unique(which):
            sel = which == j
            local = flat_rows[sel] - self._starts[j]
            part = self.part(int(j))
            flat_out[sel] = part[local, cols.reshape(-1)[sel]] if cols is not None else part[local]
        return out

    def __getitem__(self, key):
        n, d = self.shape
        proxy = np.lib.stride_tricks.as_strided(np.zeros(1, np.int8), shape=(n, d), strides=(0, 0))
        proxy[key]  # numpy checks the key against an (N, D) array without memory: its errors, exactly
        row_key, col_key = (key if isinstance(key, tuple) and len(key) == 2 else (key, None))
        rows = self._simple_rows(row_key)
        if rows is not None and (col_key is None and not isinstance(key, tuple) or self._simple_cols(col_key)):
            out = self._gather(rows, None)  # whole rows, then numpy picks the columns
            out = out if col_key is None else out[..., col_key]
        else:  # any other index: numpy resolves it on zero-copy arrays of row and column numbers (O(N) memory)
            ids = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], (n, d))
            cols = np.broadcast_to(np.arange(d, dtype=np.int64)[None, :], (n, d))
            out = self._gather(np.asarray(ids[key]), np.asarray(cols[key]))
        return out[()] if out.ndim == 0 else out

    def _simple_rows(self, key) -> np.ndarray | None:
        """Row numbers for an int, a slice, an integer array or a 1-D boolean mask (already checked by numpy); None
        for anything else."""
        n = self.shape[0]
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            return np.asarray(int(key) + n if key < 0 else int(key))
        if isinstance(key, slice):
            return np.arange(*key.indices(n), dtype=np.int64)
        if isinstance(key, (list, np.ndarray)):
            a = np.asarray(key)
            if a.dtype.kind in "iu":
                return np.where(a < 0, a + n, a).astype(np.int64)
            if a.dtype == bool and a.ndim == 1:
                return np.flatnonzero(a)
        return None

    @staticmethod
    def _simple_cols(key) -> bool:
        return isinstance(key, slice) or (isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)))

    def __array__(self, dtype=None, copy=None):
        full = self[:]
        return full if dtype is None else full.astype(dtype)

    def __iter__(self):
        for part in self.parts():
            yield from np.asarray(part)

    def __repr__(self) -> str:
        return f"ShardedEmbeddings(shape={self.shape}, parts={len(self._parts)})"


class Rows(Sequence):
    """Row i's metadata (a dict), read one unit's metadata file at a time (the last one cached)."""

    def __init__(self, parts: list[tuple[str, int, int, int, str, dict | None]], verify: bool = True):
        """parts: (metadata path, first line, rows, unit, unit name, file record or None) in order."""
        self._parts = [p for p in parts if p[2]]
        self._starts = np.concatenate([[0], np.cumsum([p[2] for p in self._parts], dtype=np.int64)]).astype(np.int64)
        self._cache: tuple[str, list] | None = None
        self._verify = verify

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _lines(self, path: str, name: str, meta: dict | None) -> list:
        if self._cache is None or self._cache[0] != path:
            problem = file_problem(path, meta, checksum=self._verify) if meta is not None else None
            if problem:
                raise DamagedOutputError(f"unit {name!r}: {problem}; rerun the embed command on this output: it "
                                         f"verifies every unit and redoes the damaged ones")
            with open(path, encoding="utf-8") as f:
                self._cache = (path, [json.loads(line) for line in f])
        return self._cache[1]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"rows indices must be integers or slices, not {type(i).__name__}")
        n = len(self)
        i = int(i) + n if i < 0 else int(i)
        if not 0 <= i < n:
            raise IndexError(f"row {i} out of range for {n} rows")
        j = int(np.searchsorted(self._starts, i, side="right") - 1)
        path, first, _, unit, name, meta = self._parts[j]
        return {**self._lines(path, name, meta)[first + i - int(self._starts[j])], "unit": unit}


def load_embeddings(path: str | os.PathLike, kind: str | None = None, *, verify: bool = True):
    """-> (array (N, D) float32, rows): the embeddings written by `embed_corpus` / `siglip_fast embed`, rows in input
    order, each row a dict naming its source (`type`, `source`, `key` and `member` for tar samples, `caption`, and
    `unit`). A directory: `kind` "image" or "text" picks one tower's rows; by default a job's only kind, or for a job
    with both, its image rows then its text rows. Memory-mapped (a `ShardedEmbeddings` that opens, and with `verify`
    checks by sha256, only the unit files an index touches). A `.npy` file (its `.json` beside it): an `np.memmap`."""
    path = os.fspath(path)
    if kind not in (None, "image", "text"):
        raise ValueError(f"kind: expected None, 'image' or 'text', got {kind!r}")
    if os.path.isdir(path):
        manifest = read_manifest(path)
        if manifest is None:
            raise FileNotFoundError(f"{path}: no {MANIFEST}; not an embeddings directory")
        if not manifest.get("complete"):
            done = len(os.listdir(os.path.join(path, "stats"))) if os.path.isdir(os.path.join(path, "stats")) else 0
            raise ValueError(f"{path}: the run is incomplete ({done} of {manifest['units']['count']} units finished); "
                             f"rerun the same embed command to finish it")
        return _directory(path, manifest, kind, verify)
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


def _directory(path: str, manifest: dict, kind: str | None, verify: bool):
    table, width, dim = manifest["table"], manifest["units"]["width"], manifest["dim"]
    kinds = [kind] if kind is not None else [k for k in ("image", "text") if manifest["rows"][k]] or ["image"]
    parts, meta_parts = [], []
    for k_ in kinds:
        for k, name in enumerate(table["name"]):
            n = table[f"{k_}_rows"][k]
            paths = unit_paths(path, k, width)
            files = table["files"][k]
            parts.append((paths[k_], n, files.get(k_), name))
            first = 0 if k_ == "image" else table["image_rows"][k]
            meta_parts.append((paths["metadata"], first, n, k, name, files.get("metadata")))
    return ShardedEmbeddings(parts, dim, verify), Rows(meta_parts, verify)
