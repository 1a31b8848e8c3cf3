"""The output: one set of files per unit, written atomically; the manifest; the lock.

Layout (clip-retrieval's inference layout: autofaiss and embedding-reader read its embedding folders as they are;
its metadata here is JSON lines, not parquet, to need no pyarrow), unit k zero-padded to the width of the unit
count so that a sorted listing is the input order:

    img_emb/img_emb_{k}.npy       float32 (n, D) L2-normalised image rows of unit k (when it has image rows)
    text_emb/text_emb_{k}.npy     float32 (m, D) text rows (when it has text rows)
    metadata/metadata_{k}.jsonl   one JSON object per row: its n image rows, then its m text rows (type, source, key,
                                  member, caption; names that are not UTF-8 as Python's surrogate escapes, so
                                  `os.fsencode(row["source"])` gives back the exact bytes)
    stats/stats_{k}.json          the unit's record, written last: its name, row counts, skipped inputs with their
                                  reasons, the size and sha256 of each file above, who wrote it and how fast
    manifest.json                 the job (description, identity, model fingerprint, unit listing fingerprint) and,
                                  once complete, the per-unit table (rows, skipped, files: O(units))
    skipped.jsonl                 every skipped input, at the end
    lock                          while a job runs: its host, pid and start

A unit is finished when its stats file is in place and its files match it (size, sha256): that set is the job's
state. Every file goes to a temporary name, is flushed to disk and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time

import numpy as np

from .job import CorpusError, short_error

FORMAT = "siglip_fast.embeddings"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SKIPPED = "skipped.jsonl"
LOCK = "lock"
LOCK_STALE_S = 600.0  # a lock whose holder's heartbeat is older than this (another host, unknown liveness) is stale
HEARTBEAT_S = 30.0
FOLDERS = ("img_emb", "text_emb", "metadata", "stats")


class OutputError(CorpusError):
    """Writing the output failed (a full disk, a read-only file system): names the file."""


def unit_paths(out_dir: str, k: int, width: int) -> dict[str, str]:
    s = str(k).zfill(width)
    return {"image": os.path.join(out_dir, "img_emb", f"img_emb_{s}.npy"),
            "text": os.path.join(out_dir, "text_emb", f"text_emb_{s}.npy"),
            "metadata": os.path.join(out_dir, "metadata", f"metadata_{s}.jsonl"),
            "stats": os.path.join(out_dir, "stats", f"stats_{s}.json")}


def _tmp(path: str) -> str:
    return f"{path}.tmp.{socket.gethostname()}.{os.getpid()}"


def _write_atomic(path: str, write) -> tuple[int, str]:
    """write(file) into a temporary, fsync, rename into place -> (size, sha256). An OSError names the file."""
    tmp = _tmp(path)
    try:
        with open(tmp, "wb") as f:
            h = _HashingWriter(f)
            write(h)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return h.size, h.sha.hexdigest()
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise OutputError(f"cannot write {path}: {e.strerror or short_error(e)} (errno {e.errno}); the finished "
                          f"units are intact: free space (or fix the file system) and rerun the same command") from None


class _HashingWriter:
    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        data = bytes(data) if not isinstance(data, bytes) else data
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)


def write_json(path: str, obj) -> tuple[int, str]:
    data = (json.dumps(obj, ensure_ascii=True, separators=(",", ":")) + "\n").encode()
    return _write_atomic(path, lambda f: f.write(data))


def write_unit(out_dir: str, k: int, width: int, name: str, arrays: dict[str, np.ndarray], rows: list[dict],
               skipped: list[dict], extra: dict) -> dict:
    """Unit k's files, then its stats record (the marker that it is finished) -> the record."""
    paths = unit_paths(out_dir, k, width)
    files = {}
    for kind in ("image", "text"):
        a = arrays.get(kind)
        if a is not None and len(a):
            a = np.ascontiguousarray(a, dtype=np.float32)
            os.makedirs(os.path.dirname(paths[kind]), exist_ok=True)
            files[kind] = (os.path.basename(paths[kind]),) + _write_atomic(paths[kind], lambda f, a=a: np.save(f, a))
    lines = "".join(json.dumps(r, ensure_ascii=True, separators=(",", ":")) + "\n" for r in rows).encode()
    files["metadata"] = (os.path.basename(paths["metadata"]),) + _write_atomic(paths["metadata"],
                                                                               lambda f: f.write(lines))
    record = {"unit": k, "name": name,
              "image_rows": int(len(arrays["image"])) if arrays.get("image") is not None else 0,
              "text_rows": int(len(arrays["text"])) if arrays.get("text") is not None else 0,
              "skipped": skipped, "files": {kind: {"name": n, "size": s, "sha256": h}
                                            for kind, (n, s, h) in files.items()}, **extra}
    write_json(paths["stats"], record)
    return record


def read_record(out_dir: str, k: int, width: int) -> dict | None:
    path = unit_paths(out_dir, k, width)["stats"]
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"damaged": f"{os.path.basename(path)} is unreadable"}
    if not isinstance(record, dict) or record.get("unit") != k or not isinstance(record.get("files"), dict):
        return {"damaged": f"{os.path.basename(path)} is not unit {k}'s record"}
    return record


def recorded_units(out_dir: str) -> set[int]:
    """The units with a stats record in place (finished, unless verification finds them damaged)."""
    try:
        names = os.listdir(os.path.join(out_dir, "stats"))
    except FileNotFoundError:
        return set()
    out = set()
    for name in names:
        stem = name[len("stats_"):-len(".json")] if name.startswith("stats_") and name.endswith(".json") else ""
        if stem.isdigit():
            out.add(int(stem))
    return out


def file_problem(path: str, meta: dict, *, rows: int | None = None, dim: int | None = None,
                 checksum: bool = True) -> str | None:
    """Why `path` is not the file `meta` (size, sha256) describes, or None. For a .npy, also its header against
    (rows, dim)."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
    except OSError:
        return f"{name} is missing"
    if size != meta["size"]:
        return f"{name} has {size} bytes, its record says {meta['size']}"
    if rows is not None:
        try:
            a = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            return f"{name} is not a readable .npy ({short_error(e)})"
        if a.shape != (rows, dim) or a.dtype != np.float32:
            return f"{name} holds {a.dtype} {a.shape}, its record says float32 ({rows}, {dim})"
    if checksum:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        if h.hexdigest() != meta["sha256"]:
            return f"{name}: checksum mismatch (its content changed after it was written)"
    return None


def unit_problem(out_dir: str, record: dict, width: int, dim: int) -> str | None:
    """Why a finished unit's files do not match its record (row counts, sizes, sha256), or None."""
    if "damaged" in record:
        return record["damaged"]
    k = record["unit"]
    paths = unit_paths(out_dir, k, width)
    try:
        for kind in ("image", "text"):
            n = record[f"{kind}_rows"]
            if n and kind not in record["files"]:
                return f"its record lists {n} {kind} rows but no file"
            if n:
                problem = file_problem(paths[kind], record["files"][kind], rows=n, dim=dim)
                if problem:
                    return problem
        problem = file_problem(paths["metadata"], record["files"]["metadata"])
        if problem:
            return problem
        with open(paths["metadata"], "rb") as f:
            lines = sum(1 for _ in f)
        if lines != record["image_rows"] + record["text_rows"]:
            return (f"{os.path.basename(paths['metadata'])} has {lines} rows, the unit "
                    f"{record['image_rows'] + record['text_rows']}")
    except (KeyError, TypeError):
        return "its record is incomplete"
    return None


def remove_unit(out_dir: str, k: int, width: int) -> None:
    for path in unit_paths(out_dir, k, width).values():
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


# -- manifest -----------------------------------------------------------------------------------------------------

def read_manifest(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise CorpusError(f"{path}: unreadable manifest ({short_error(e)}); use a new --out directory") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorpusError(f"{path}: not a siglip_fast embeddings manifest")
    return manifest


def _differences(old: dict, new: dict) -> list[str]:
    diffs = []
    if old.get("model_fingerprint") != new["model_fingerprint"]:
        diffs.append(f"the model (was {old.get('model')!r}, now {new['model']!r}; fingerprints differ)")
    for key, value in new["identity"].items():
        if old.get("identity", {}).get(key) != value:
            diffs.append(f"{key} (was {old.get('identity', {}).get(key)!r}, now {value!r})")
    if old.get("units") != new["units"]:
        diffs.append(f"the input listing (was {old.get('units', {}).get('count')} units, now "
                     f"{new['units']['count']}; fingerprints differ)")
    return diffs


def prepare(out_dir: str, manifest: dict) -> dict:
    """Create the output and its manifest, or check an existing one describes the same job -> the manifest."""
    if os.path.isdir(out_dir):
        old = read_manifest(out_dir)
        if old is None:
            if any(n != LOCK and not n.startswith(".") for n in os.listdir(out_dir)):
                raise CorpusError(f"--out {out_dir}: the directory is not empty and holds no {MANIFEST}; refusing "
                                  f"to write embeddings into it (give a new or empty directory)")
        else:
            if old.get("version") != FORMAT_VERSION:
                raise CorpusError(f"--out {out_dir}: written by another version of the job (format "
                                  f"{old.get('version')}, this one writes {FORMAT_VERSION}); use a new --out")
            diffs = _differences(old, manifest)
            if diffs:
                raise CorpusError(f"--out {out_dir} holds embeddings of a different job: " + "; ".join(diffs)
                                  + ". Refusing to mix them: rerun with the original arguments to finish it, or "
                                    "use a new --out (or delete that one).")
            manifest = {**old, "job": manifest["job"], "complete": False}
            manifest.pop("table", None)
        for folder in FOLDERS:  # temporaries of a killed run
            directory = os.path.join(out_dir, folder)
            if os.path.isdir(directory):
                for name in os.listdir(directory):
                    if ".tmp." in name:
                        try:
                            os.remove(os.path.join(directory, name))
                        except OSError:
                            pass
    else:
        parent = os.path.dirname(os.path.abspath(out_dir))
        if not os.path.isdir(parent):
            raise CorpusError(f"--out: directory {parent!r} does not exist")
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create {out_dir}: {e.strerror or e}") from None
    for folder in ("metadata", "stats"):  # img_emb/ and text_emb/ when the first unit with such rows is written
        try:
            os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create {os.path.join(out_dir, folder)}: {e.strerror or e}") from None
    write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest


# -- lock ---------------------------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """`out/lock`, created exclusively: one job per output. Another job's live lock is refused, naming its host and
    pid; a lock left by a dead job is taken over (same host and its pid is gone, the same torchrun run restarting,
    or no heartbeat for LOCK_STALE_S)."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, LOCK)
        self.stop = threading.Event()
        self.thread = None
        self.note = None

    def acquire(self) -> Lock:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
              "run_id": os.environ.get("TORCHELASTIC_RUN_ID")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_stale(me)
                continue
            except OSError as e:
                raise OutputError(f"cannot create {self.path}: {e.strerror or e}") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()
            return self
        raise CorpusError(f"{self.path}: could not take the lock")

    def _check_stale(self, me: dict) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                other = json.load(f)
            age = time.time() - os.path.getmtime(self.path)
        except (OSError, ValueError):
            other, age = {}, LOCK_STALE_S + 1
        host, pid = other.get("host"), other.get("pid")
        dead = (host == me["host"] and isinstance(pid, int) and not _alive(pid)) or age > LOCK_STALE_S or \
               (me["run_id"] is not None and other.get("run_id") == me["run_id"] and pid != me["pid"])
        if not dead:
            raise CorpusError(f"{os.path.dirname(self.path)} is being written by another job (host {host}, pid "
                              f"{pid}, its lock refreshed {age:.0f} s ago): two jobs on one output would interleave. "
                              f"Wait for it, or if it is dead delete {self.path}")
        self.note = f"took over the lock of a job that is gone (host {host}, pid {pid})"
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self.stop.set()
        try:
            os.remove(self.path)
        except OSError:
            pass


# -- the end ------------------------------------------------------------------------------------------------------

def finalize(out_dir: str, manifest: dict, width: int, records: list[dict]) -> dict:
    """Every unit finished: skipped.jsonl and the completed manifest with the per-unit table -> the manifest."""
    path = os.path.join(out_dir, SKIPPED)
    lines = "".join(json.dumps({**s, "unit": r["unit"]}, ensure_ascii=True) + "\n" for r in records
                    for s in r["skipped"]).encode()
    _write_atomic(path, lambda f: f.write(lines))
    table = {"name": [r["name"] for r in records], "image_rows": [r["image_rows"] for r in records],
             "text_rows": [r["text_rows"] for r in records], "skipped": [len(r["skipped"]) for r in records],
             "files": [r["files"] for r in records]}
    manifest = {**manifest, "complete": True, "table": table,
                "rows": {"image": sum(table["image_rows"]), "text": sum(table["text_rows"])},
                "skipped": sum(table["skipped"]), "skipped_file": SKIPPED}
    write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest
