"""File helpers shared by the configs, the checkpoint I/O and the preprocessing classes.

Locating a checkpoint directory (local, or a hub id through huggingface_hub), reading a JSON object with errors that
name the file, checking a directory to save into, and writing a file atomically. This module imports nothing else
from siglip_fast (and not torch), so `configuration` and `checkpoint` both build on it and the dependency between
them runs one way: checkpoint -> configuration -> files.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

CONFIG_NAME = "config.json"
_CHECKPOINT_FILES = ["config.json", "*.safetensors", "*.json", "*.bin", "*.model", "*.txt"]


class CheckpointNotFoundError(FileNotFoundError, ValueError):
    """A checkpoint directory or hub id that cannot be found (both a FileNotFoundError and a ValueError)."""


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def resolve_pretrained_dir(path_or_id: str | os.PathLike, *, allow_patterns: Sequence[str] = _CHECKPOINT_FILES,
                           what: str = "from_pretrained", revision: str | None = None, subfolder: str = "",
                           cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                           local_files_only: bool = False, force_download: bool = False) -> str:
    """A local directory as is; otherwise a hub id fetched with huggingface_hub (its local cache first when offline).

    `subfolder` selects a directory inside either; `revision`, `cache_dir`, `token`, `local_files_only` and
    `force_download` go to huggingface_hub. Shared by the models, the configs, the tokenizer, the image processor and
    the processor.
    """
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise TypeError(f"{what}: path_or_id must be a str or os.PathLike, got {type(path_or_id).__name__}")
    path = os.fspath(path_or_id)
    subfolder = os.fspath(subfolder or "")
    if os.path.isdir(path):
        directory = os.path.join(path, subfolder) if subfolder else path
        if not os.path.isdir(directory):
            raise CheckpointNotFoundError(f"{what}: {path!r} has no subfolder {subfolder!r}")
        return directory
    # A hub id is owner/name (every SigLIP checkpoint is google/...); anything else can only be a local path
    looks_like_id = re.fullmatch(r"[\w.\-]+/[\w.\-]+", path) is not None and not path.startswith((".", "-"))
    if os.path.exists(path):
        raise CheckpointNotFoundError(f"{what}: {path!r} is a file, not a checkpoint directory")
    if not looks_like_id:
        raise CheckpointNotFoundError(
            f"{what}: no such directory: {path!r} (expected a checkpoint directory, or a hub id of the form owner/name)"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointNotFoundError(
            f"{what}: no such directory: {path!r}, and huggingface_hub is not installed to fetch it as a hub id "
            "(pip install 'siglip_fast[hub]', or pass a local directory)"
        ) from None
    patterns = [f"{subfolder.strip('/')}/{p}" for p in allow_patterns] if subfolder else list(allow_patterns)
    hub_kwargs = dict(allow_patterns=patterns, revision=revision, cache_dir=cache_dir, token=token)
    try:
        snapshot = snapshot_download(path, local_files_only=local_files_only, force_download=force_download,
                                     **hub_kwargs)
    except Exception as online_error:  # noqa: BLE001 - fall back to the local cache, then report both
        if local_files_only:
            raise CheckpointNotFoundError(
                f"{what}: no such directory: {path!r}, and as a hub id it is not in the local hub cache "
                f"(local_files_only=True): {online_error}"
            ) from online_error
        try:
            snapshot = snapshot_download(path, local_files_only=True, **hub_kwargs)
        except Exception:  # noqa: BLE001
            raise CheckpointNotFoundError(
                f"{what}: no such directory: {path!r}, and as a hub id it could not be fetched from the hub nor "
                f"found in the local cache: {_first_line(online_error)}"
            ) from online_error
    directory = os.path.join(snapshot, subfolder) if subfolder else snapshot
    if not os.path.isdir(directory):
        raise CheckpointNotFoundError(f"{what}: hub repo {path!r} has no subfolder {subfolder!r}")
    return directory


def read_json_file(path: str | os.PathLike, what: str = "file") -> dict[str, Any]:
    """A JSON object from a file, or a ValueError naming the file (not UTF-8, not JSON, not an object)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {os.fspath(path)} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {os.fspath(path)} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {os.fspath(path)} must hold a JSON object, got a JSON {type(data).__name__}")
    return data


def prepare_save_directory(save_directory: Any, what: str = "save_pretrained") -> str:
    """Check `save_directory` (a non-empty path that is not a file) and create it; return it as a str.

    Bad values are a TypeError / ValueError naming the argument; a directory that cannot be created is the OSError
    of os.makedirs, which names the path."""
    if not isinstance(save_directory, (str, os.PathLike)):
        raise TypeError(f"{what}: save_directory must be a str or os.PathLike, got {type(save_directory).__name__}")
    path = os.fspath(save_directory)
    if isinstance(path, bytes):
        raise TypeError(f"{what}: save_directory must be a str path, got bytes {path!r}")
    if not path:
        raise ValueError(f"{what}: save_directory must be a directory path, got the empty string '' (pass '.' for "
                         "the current directory)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what}: save_directory must be a directory, got {path!r}, which is an existing file")
    os.makedirs(path, exist_ok=True)
    return path


def temporary_path(directory: str, name: str) -> str:
    """A fresh hidden name beside `directory/name`, for a file to be moved into place with os.replace."""
    return os.path.join(directory, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def write_temporary(path: str, write: Callable[[str], None]) -> str:
    """`write(tmp)` to a fresh temporary file beside `path` and return its name, for the caller to os.replace.

    On failure the temporary file is removed and the error is raised as an OSError naming `path` (with the errno of
    the original OSError, so a full disk is still errno.ENOSPC): safetensors' SafetensorError and torch's
    RuntimeError are not OSErrors, and an OSError of the write would name the temporary file."""
    tmp = temporary_path(os.path.dirname(path) or ".", os.path.basename(path))
    try:
        write(tmp)
    except Exception as e:
        if os.path.lexists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, e.strerror or _first_line(e), path) from e
        if isinstance(e, (OSError, RuntimeError)) or type(e).__name__ == "SafetensorError":
            # safetensors reports the OS error inside its message: "... (os error 28) at path ..."
            code = re.search(r"os error (\d+)", str(e))
            reason = f"could not write {path}: {_first_line(e)}"
            raise (OSError(int(code.group(1)), reason, path) if code else OSError(reason)) from e
        raise
    return tmp


def write_file_atomically(path: str, write: Callable[[str], None]) -> None:
    """`write(tmp)` to a temporary file beside `path`, then os.replace it into place: a failure leaves `path` as it
    was and no temporary file behind (errors as `write_temporary`)."""
    tmp = write_temporary(path, write)
    try:
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
