"""Checkpoint I/O: read and write the files transformers reads and writes, strictly.

Reading accepts `model.safetensors`, sharded `model.safetensors.index.json`, and `pytorch_model.bin` (+ its index),
loaded with `weights_only=True`, chosen in transformers' order (a single file before an index, safetensors before
pickles); keys of a full SiglipModel, of a tower with its `vision_model.`/`text_model.` prefix (transformers v4 and
the hub) or without it (transformers v5). The model is built on the meta device and each tensor is read straight
into its final dtype and device, so a checkpoint is never held twice in memory. Anything missing, unexpected or of
the wrong shape is listed in one ValueError, unless the caller asks for transformers' lenient loading.

Writing is atomic: the weights and config.json go to temporary files in the target directory and are moved into
place with `os.replace` (weights first); weight files of other formats or shard layouts left by an older
checkpoint are then removed, so every loader reads exactly what was saved.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from .configuration import COMMON_FIELDS, CONFIG_NAME, _SiglipBaseConfig

# the file helpers live in .files (below both the configs and this module); re-exported here for callers
from .files import (  # noqa: F401
    CheckpointNotFoundError,
    prepare_save_directory,
    read_json_file,
    resolve_pretrained_dir,
    write_temporary,
)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
# Weight files an older checkpoint may have left in a directory we save into (transformers' shard naming).
_STALE_WEIGHTS = re.compile(r"(model\.safetensors\.index\.json|model-\d{5}-of-\d{5}\.safetensors|pytorch_model\.bin"
                            r"|pytorch_model\.bin\.index\.json|pytorch_model-\d{5}-of-\d{5}\.bin)")

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64,
}
_LABEL_FIELDS = ("num_labels", "id2label", "label2id", "problem_type")


def parse_dtype(dtype: Any) -> torch.dtype | None:
    """None or 'auto' → None (the config's dtype, else the checkpoint's, decided by the loader); a torch floating
    dtype or its name → that dtype."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype must be None, 'auto', a torch floating dtype or one of {sorted(_DTYPES)}, got {dtype!r}")


def parse_device(device: Any, what: str = "device") -> torch.device:
    """A device to load onto, checked up front: it must name a device this machine has (None → CPU).

    An int is a CUDA index (transformers' `device_map=0`). Raises ValueError naming the device otherwise.
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise TypeError(f"{what} must be a str, an int or a torch.device, got {type(device).__name__}")
    spec = f"cuda:{device}" if isinstance(device, int) else device
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{what}={device!r} is not a valid device; expected e.g. 'cpu', 'cuda', 'cuda:1' or a "
                         "CUDA index") from None
    if dev.type == "cpu":
        return torch.device("cpu")  # 'cpu:0' is the CPU: torch's CPU tensors have no index
    if dev.type == "meta":
        raise ValueError(f"{what}='meta' holds no data: a checkpoint cannot be loaded onto it")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what}={device!r}: CUDA is not available on this machine (torch {torch.__version__}, "
                             f"built with CUDA {torch.version.cuda}); load with device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{what}={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(indices 0..{torch.cuda.device_count() - 1})")
        return dev
    try:
        torch.empty(0, device=dev)
    except Exception as e:  # noqa: BLE001 - any backend's way of saying it is not there
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{what}={device!r}: the device is not available on this machine ({reason})") from None
    return dev


# transformers' attn_implementation names -> siglip_fast backends ("siglip_fast_triton" is what the models write in
# config._attn_implementation on the Triton backend, so that value can be given back)
ATTN_IMPLEMENTATIONS = {"eager": "eager", "sdpa": "sdpa", "siglip_fast_triton": "triton"}


def backend_of_attn_implementation(attn_implementation: Any, what: str = "attn_implementation") -> str:
    """The backend for a transformers `attn_implementation` name; a ValueError naming the argument otherwise."""
    if not isinstance(attn_implementation, str):
        raise TypeError(f"{what} must be a str ({', '.join(map(repr, ATTN_IMPLEMENTATIONS))}), got "
                        f"{type(attn_implementation).__name__}")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:  # the first words are transformers' message
        raise ValueError(f'Specified `{what}="{attn_implementation}"` is not supported: it has no siglip_fast '
                         f"equivalent; {what} takes {', '.join(map(repr, ATTN_IMPLEMENTATIONS))}, or use "
                         "backend='triton' (fused kernels), 'sdpa', 'eager' or 'auto'")
    return ATTN_IMPLEMENTATIONS[attn_implementation]


def _config_dtype(config, source) -> torch.dtype | None:
    """The floating dtype a config names in its `dtype` field (None when it names none)."""
    value = getattr(config, "dtype", None)
    if value is None:
        return None
    try:
        return parse_dtype(value)
    except ValueError:
        where = f"config file {os.fspath(source)}: " if source is not None else ""
        raise ValueError(f"{where}{type(config).__name__}.dtype must name a floating dtype ("
                         f"{', '.join(sorted(_DTYPES))}), got {value!r}") from None


def _device_spec(device: Any) -> Any:
    """A comparable form of a device_map value, before checking that the device exists."""
    try:
        dev = torch.device(f"cuda:{device}" if isinstance(device, int) and not isinstance(device, bool) else device)
    except (RuntimeError, TypeError, ValueError):
        return repr(device)
    if dev.type == "cuda" and dev.index is None:  # 'cuda' is the current CUDA device
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return dev


def _device_from_map(device_map: Any) -> torch.device:
    """transformers' `device_map`, for a model that lives on one device: 'auto', a device, or a dict whose values
    all name the same device (`{"": 0}`)."""
    if isinstance(device_map, str) and device_map == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if isinstance(device_map, Mapping):
        if not device_map:
            raise ValueError("device_map is an empty dict: map '' to a device, e.g. device_map={'': 0}")
        if "disk" in device_map.values():
            raise ValueError("device_map offloads to 'disk': siglip_fast supports only single-device placement "
                             "(pass device=... or device_map={'': device})")
        specs = {name: _device_spec(d) for name, d in device_map.items()}
        if len(set(specs.values())) > 1:
            placed = ", ".join(f"{name!r}: {d!r}" for name, d in device_map.items())
            raise ValueError(f"device_map splits the model across devices ({placed}): siglip_fast supports only "
                             "single-device placement (pass device=... or device_map={'': device})")
        name, device = next(iter(device_map.items()))
        return parse_device(device, f"device_map[{name!r}]")
    if isinstance(device_map, str) and device_map in ("balanced", "balanced_low_0", "sequential"):
        raise ValueError(f"device_map={device_map!r} spreads a model over devices: siglip_fast supports only "
                         "single-device placement ('auto', a device, or {'': device})")
    return parse_device(device_map, "device_map")


class CheckpointShapeError(ValueError, RuntimeError):
    """A checkpoint whose weights do not fit the model (mis-shaped keys): a ValueError as siglip_fast's other load
    errors, and a RuntimeError as transformers raises for size mismatches."""


_SAFE_FILES = ["config.json", SAFE_WEIGHTS, SAFE_INDEX, "*.safetensors"]
_TORCH_FILES = ["config.json", TORCH_WEIGHTS, TORCH_INDEX, "*.bin"]


def _resolve_model_dir(path_or_id, use_safetensors: bool | None, **kwargs) -> str:
    """resolve_pretrained_dir for a model: from a hub repo, fetch the config and the weights of one format only —
    safetensors, or the .bin files when the repo has none (or first, with use_safetensors=False) — as transformers."""
    if isinstance(path_or_id, (str, os.PathLike)) and os.path.isdir(path_or_id):
        return resolve_pretrained_dir(path_or_id, **kwargs)
    first, second = (_SAFE_FILES, _TORCH_FILES) if use_safetensors is not False else (_TORCH_FILES, _SAFE_FILES)
    directory = resolve_pretrained_dir(path_or_id, allow_patterns=first, **kwargs)
    if use_safetensors or any(os.path.isfile(os.path.join(directory, name)) for name in first[1:3]):
        return directory
    return resolve_pretrained_dir(path_or_id, allow_patterns=second, **kwargs)


def _index_shards(directory: str, index_path: str) -> list[str]:
    """The shard files an index names, each checked to lie inside `directory` and to exist."""
    index = read_json_file(index_path, "checkpoint index")
    if "weight_map" not in index:
        raise ValueError(f"checkpoint index {index_path} has no 'weight_map' field (tensor name → shard file)")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"checkpoint index {index_path}: field 'weight_map' must be a non-empty object mapping "
                         f"tensor names to shard files, got {type(weight_map).__name__} {str(weight_map)[:80]}")
    shards = []
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"checkpoint index {index_path}: weight_map[{key!r}] must be a shard file name, "
                             f"got {name!r}")
        norm = os.path.normpath(name)
        if os.path.isabs(name) or os.path.splitdrive(name)[0] or norm == os.pardir \
                or norm.startswith(os.pardir + os.sep) or norm.startswith(os.pardir + "/"):
            raise ValueError(f"checkpoint index {index_path}: weight_map[{key!r}] = {name!r} resolves outside the "
                             f"checkpoint directory {directory}; refused")
        if norm not in shards:
            shards.append(norm)
    paths = [os.path.join(directory, name) for name in sorted(shards)]
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"checkpoint index {index_path} names shard {os.path.relpath(path, directory)}, "
                             f"which is not in {directory}")
    return paths


def _weight_files(directory: str, use_safetensors: bool | None = None) -> list[str]:
    """The files to read, in transformers' order: model.safetensors, its index, pytorch_model.bin, its index.

    A single file wins over an index (a stale index never shadows the file save_pretrained wrote).
    use_safetensors=True reads only safetensors; False prefers the .bin files (falling back to safetensors).
    """
    safe, torch_ = [(SAFE_WEIGHTS, False), (SAFE_INDEX, True)], [(TORCH_WEIGHTS, False), (TORCH_INDEX, True)]
    order = {None: safe + torch_, True: safe, False: torch_ + safe}[use_safetensors]
    for name, is_index in order:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return _index_shards(directory, path) if is_index else [path]
    if use_safetensors:
        others = [n for n in (TORCH_WEIGHTS, TORCH_INDEX) if os.path.isfile(os.path.join(directory, n))]
        raise ValueError(f"use_safetensors=True but {directory} has no {SAFE_WEIGHTS} nor {SAFE_INDEX}"
                         + (f" (it has {', '.join(others)}: pass use_safetensors=None or False)" if others else ""))
    raise ValueError(
        f"no weights in {directory}: expected {SAFE_WEIGHTS}, {SAFE_INDEX}, {TORCH_WEIGHTS} or {TORCH_INDEX}"
    )


def _iter_tensors(path: str, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) from one weight file, each read straight onto `device`."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device=str(device)) as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except Exception as e:
            if isinstance(e, ValueError) and "safetensors" not in str(e):
                raise
            raise ValueError(f"could not read {path}: {e}") from e
    else:
        try:
            state = torch.load(path, map_location=device, weights_only=True, mmap=True)
        except Exception as e:
            raise ValueError(f"could not read {path} (loaded with weights_only=True): {e}") from e
        if not isinstance(state, Mapping):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
        yield from state.items()


def _iter_state_dict(state_dict: Mapping, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    for key, tensor in state_dict.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict must map str keys to tensors, got {key!r}: {type(tensor).__name__}")
        yield key, tensor.to(device)


def _map_key(key: str, expected: set[str], prefix: str | None, ignorable: tuple[str, ...]) -> str | None:
    """The model key a checkpoint key loads into; None when it is to be ignored."""
    if key in expected:
        return key
    if prefix and key.startswith(prefix + ".") and key[len(prefix) + 1:] in expected:
        return key[len(prefix) + 1:]
    if prefix and f"{prefix}.{key}" in expected:
        return f"{prefix}.{key}"
    if key.endswith("position_ids") or key.startswith(ignorable):
        return None
    return key  # unexpected: reported by the caller


def _matches(key: str, patterns: Sequence[str] | None) -> bool:
    return bool(patterns) and any(re.search(p, key) for p in patterns)


def _config_fields(config) -> list[str]:
    """The keyword arguments from_pretrained sets on a config: its fields, the keys its file carried, and the
    PreTrainedConfig fields transformers callers set (output switches, labels, ...)."""
    return sorted(set(config._defaults) | set(config._extra_keys) | set(COMMON_FIELDS) | set(_LABEL_FIELDS))


def _apply_config_kwargs(config, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Set the config fields named in kwargs, as transformers' `from_pretrained(path, num_labels=3)` does; return
    the kwargs that are not config fields. A dict given for a sub-config updates that sub-config."""

    fields = _config_fields(config)
    unused = {}
    for key, value in sorted(kwargs.items(), key=lambda kv: kv[0] == "label2id"):  # id2label= resets label2id
        if key not in fields:
            unused[key] = value
            continue
        current = getattr(config, key, None)
        if isinstance(current, _SiglipBaseConfig) and isinstance(value, dict):
            value = type(current).from_dict({**current.to_dict(), **value})
        if key in config._defaults or key in COMMON_FIELDS or key in _LABEL_FIELDS:
            setattr(config, key, value)
        else:
            config.set_extra(key, value)
    config.validate()
    return unused


_FROM_PRETRAINED_ARGS = (
    "pretrained_model_name_or_path", "path_or_id", "dtype", "torch_dtype", "device", "device_map", "backend",
    "attn_implementation", "config", "state_dict", "output_loading_info", "ignore_mismatched_sizes", "subfolder",
    "use_safetensors", "revision", "cache_dir", "token", "local_files_only", "force_download", "low_cpu_mem_usage",
    "trust_remote_code",
)


class PretrainedMixin:
    """from_pretrained / save_pretrained for the model classes (which set config_class and base_model_prefix)."""

    # the tower attribute a checkpoint's keys may be prefixed with; "" (transformers' PreTrainedModel default) for the
    # models that are not one tower, so `getattr(model, model.base_model_prefix, model)` (integrations do) is the model
    base_model_prefix: str = ""
    # prefixes of the keys of the other parts of a full dual-model checkpoint, skipped when loading a tower or the
    # classifier from one (as transformers)
    _keys_of_other_parts: tuple[str, ...] = ()
    # prefixes of a head that a checkpoint of another class lacks and is initialised fresh (the classifier)
    _new_head_prefixes: tuple[str, ...] = ()
    # transformers' PreTrainedModel attributes: regex patterns of keys that may be missing (initialised, not an
    # error) or unexpected (skipped) when loading; None = none
    _keys_to_ignore_on_load_missing: list[str] | None = None
    _keys_to_ignore_on_load_unexpected: list[str] | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None = None, *, dtype=None,
                        device=None, backend: str = "auto", config=None, state_dict: Mapping | None = None,
                        output_loading_info: bool = False, ignore_mismatched_sizes: bool = False, device_map=None,
                        torch_dtype=None, attn_implementation: str | None = None, subfolder: str = "",
                        use_safetensors: bool | None = None, revision: str | None = None, cache_dir=None,
                        token: str | bool | None = None, local_files_only: bool = False,
                        force_download: bool = False, low_cpu_mem_usage: bool | None = None,
                        trust_remote_code: bool | None = None, **config_kwargs):
        """Load a transformers SigLIP checkpoint (local directory, or hub id with huggingface_hub installed).

        dtype: None/'auto' loads every floating tensor in the config's `dtype` when it has one, else in the dtype
        of the checkpoint's first floating tensor (transformers v5's default, so a checkpoint mixing fp16 and fp32
        loads in one dtype); else a torch dtype or its name.
        device / device_map: where the weights are read to (default CPU), checked up front; `device_map` may be
        'auto' (the current CUDA device, else CPU), a device, or a dict placing the whole model on one device.
        backend: see `siglip_fast.ops`. `torch_dtype` is an alias of `dtype`, `attn_implementation` ("eager" or
        "sdpa") of `backend`, so transformers call sites keep working.

        Strict by default: any missing, unexpected or mis-shaped key is an error listing them all.
        `ignore_mismatched_sizes=True` re-initialises mis-shaped weights (e.g. a classifier with another
        `num_labels`); `output_loading_info=True` loads as transformers does — missing weights freshly initialised,
        unexpected ones ignored — and returns `(model, {"missing_keys", "unexpected_keys", "mismatched_keys",
        "error_msgs"})`. Every re-initialised weight is also named in a warning.

        `from_pretrained(None, config=cfg, state_dict=sd)` loads from a state dict. Other keyword arguments are
        config fields (`num_labels=3`, `output_hidden_states=True`, ...) set on the config read from the checkpoint.
        """
        if "path_or_id" in config_kwargs and pretrained_model_name_or_path is None:  # design.md's name
            pretrained_model_name_or_path = config_kwargs.pop("path_or_id")
        if state_dict is not None and pretrained_model_name_or_path is not None:
            raise ValueError("pass a checkpoint path or state_dict, not both")
        if state_dict is None and pretrained_model_name_or_path is None:
            raise ValueError(f"{cls.__name__}.from_pretrained needs a checkpoint directory, a hub id, or "
                             "state_dict= with config=")
        if state_dict is not None and not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of tensors, got {type(state_dict).__name__}")
        if use_safetensors not in (None, True, False):
            raise TypeError(f"use_safetensors must be None, True or False, got {use_safetensors!r}")
        attn_request = None  # a dict: per part, set on the config (each part's model honours its request)
        if attn_implementation is not None:
            if backend != "auto":
                raise ValueError("pass backend or attn_implementation, not both")
            if isinstance(attn_implementation, Mapping):
                for key, value in attn_implementation.items():
                    backend_of_attn_implementation(value, f"attn_implementation[{key!r}]")
                attn_request = dict(attn_implementation)
            else:
                backend = backend_of_attn_implementation(attn_implementation)
        if torch_dtype is not None:
            if dtype is not None:
                raise ValueError("pass dtype or torch_dtype, not both")
            dtype = torch_dtype
        dtype = parse_dtype(dtype)
        if device is not None and device_map is not None:
            raise ValueError("pass device or device_map, not both")
        device = _device_from_map(device_map) if device_map is not None else parse_device(device)

        what = f"{cls.__name__}.from_pretrained"
        directory = None
        if pretrained_model_name_or_path is not None:
            directory = _resolve_model_dir(
                pretrained_model_name_or_path, use_safetensors, what=what, revision=revision, subfolder=subfolder,
                cache_dir=cache_dir, token=token, local_files_only=local_files_only, force_download=force_download)
        config_source = None  # the file the config was read from, named in a value error
        if isinstance(config, (str, os.PathLike)):
            config_source = config
            config = cls.config_class.from_pretrained(config)
        elif config is None:
            if directory is None:
                raise ValueError(f"{what}(None, state_dict=...) needs config=")
            config_source = os.path.join(directory, "config.json")
            config = cls.config_class.from_pretrained(directory)
        elif isinstance(config, cls.config_class):
            config = copy.deepcopy(config)  # the caller's config is not changed by loading
            if config_kwargs:  # transformers passes them to the model's __init__, which refuses them
                raise TypeError(f"{what}: config field(s) {', '.join(sorted(config_kwargs))} given together with "
                                "config=: set them on the config object instead")
        else:
            raise TypeError(f"config must be a {cls.config_class.__name__} or a path, got {type(config).__name__}")
        if attn_request is not None:
            config._attn_implementation = attn_request  # unknown keys: a ValueError naming them
        unknown = _apply_config_kwargs(config, config_kwargs)
        if unknown:
            raise TypeError(f"{what} got unexpected keyword argument(s) {', '.join(sorted(unknown))}; it accepts "
                            f"{', '.join(_FROM_PRETRAINED_ARGS)}, and the {type(config).__name__} fields "
                            f"{', '.join(_config_fields(config))}")

        try:  # the values, checked before the model is built (the model checks them again), naming the file
            cls._validate_config(config)
        except ValueError as e:
            if config_source is None:
                raise
            raise ValueError(f"config file {os.fspath(config_source)}: {e}") from e
        with torch.device("meta"):
            model = cls(config, backend=backend)
        expected = dict(model.state_dict())
        ignorable = cls._keys_of_other_parts
        if dtype is None:  # transformers' dtype="auto": the config's, else the checkpoint's first floating dtype
            dtype = _config_dtype(config, config_source)
        if state_dict is not None:
            source = _iter_state_dict(state_dict, device)
        else:
            files = _weight_files(directory, use_safetensors)
            source = (item for file in files for item in _iter_tensors(file, device))
        loaded: dict[str, torch.Tensor] = {}
        origin: dict[str, str] = {}  # model key -> the checkpoint key it was read from
        unexpected, ignored, mismatched, not_float, conflicting = [], [], [], [], []
        for key, tensor in source:
            if dtype is None and tensor.is_floating_point():
                dtype = tensor.dtype
            name = _map_key(key, expected.keys(), cls.base_model_prefix, ignorable)
            if name is None:
                if not key.endswith("position_ids"):
                    ignored.append(key)
                continue
            if name not in expected:
                if _matches(key, cls._keys_to_ignore_on_load_unexpected):
                    ignored.append(key)
                else:
                    unexpected.append(key)
                continue
            if expected[name].is_floating_point() and not tensor.is_floating_point():
                not_float.append(f"{key} ({str(tensor.dtype).removeprefix('torch.')})")
                continue
            if tuple(tensor.shape) != tuple(expected[name].shape):
                mismatched.append((name, tensor.shape, expected[name].shape))
                continue
            if tensor.is_floating_point() and tensor.dtype != dtype:
                tensor = tensor.to(dtype)
            if name in origin:  # the same weight twice, with and without the tower prefix
                if name in loaded and not torch.equal(loaded[name], tensor):
                    conflicting.append(f"{origin[name]} / {key}")
                continue
            origin[name] = key
            loaded[name] = tensor
        mismatched_names = {m[0] for m in mismatched}
        missing = [k for k in expected if k not in loaded and k not in mismatched_names]
        # A classifier is new when a SiglipModel checkpoint is fine-tuned for classification (as in transformers);
        # so are the keys of the class's `_keys_to_ignore_on_load_missing` patterns.
        allowed_missing = [k for k in missing if k.startswith(cls._new_head_prefixes)
                           or _matches(k, cls._keys_to_ignore_on_load_missing)]
        errors = []
        if missing != allowed_missing and not output_loading_info:
            strict_missing = [k for k in missing if k not in allowed_missing]
            errors.append(f"  missing keys ({len(strict_missing)}): {', '.join(strict_missing)}")
        if unexpected and not output_loading_info:
            errors.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched and not ignore_mismatched_sizes:
            errors.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(
                f"{k}: checkpoint {tuple(a)}, model {tuple(b)}" for k, a, b in mismatched))
        if not_float:  # never loadable: an integer tensor where the model has a floating-point weight
            errors.append(f"  tensors that must be floating point, of an integer/bool dtype ({len(not_float)}): "
                          f"{', '.join(not_float)}")
        if conflicting:  # never loadable: which of the two is the weight?
            errors.append(f"  weights stored twice, with and without the '{cls.base_model_prefix}.' prefix, with "
                          f"different values ({len(conflicting)}): {', '.join(conflicting)}")
        if errors:
            source_name = "the state_dict" if directory is None else str(pretrained_model_name_or_path)
            hints = []
            if mismatched and not ignore_mismatched_sizes:
                hints.append("ignore_mismatched_sizes=True re-initialises mis-shaped weights")
            if (missing != allowed_missing or unexpected) and not output_loading_info:
                hints.append("output_loading_info=True loads leniently (as transformers) and returns the lists")
            error_cls = CheckpointShapeError if mismatched and not ignore_mismatched_sizes else ValueError
            raise error_cls("\n".join([f"cannot load {source_name} into {cls.__name__}:", *errors]
                                      + ([f"  ({'; '.join(hints)})"] if hints else [])))

        fresh = missing + sorted(mismatched_names)
        _initialise(model, fresh, device, dtype or torch.get_default_dtype())
        model.load_state_dict(loaded, strict=False, assign=True)
        _materialise_buffers(model, device)
        if fresh:
            reasons = {k: f" (Reinit due to size mismatch - ckpt: {tuple(a)} vs model: {tuple(b)})"
                       for k, a, b in mismatched}
            warnings.warn(f"{cls.__name__}: {', '.join(k + reasons.get(k, '') for k in fresh)} not loaded from the "
                          "checkpoint; initialised randomly (train before use)", stacklevel=2)
        model.eval()
        if output_loading_info:
            return model, {"missing_keys": set(missing), "unexpected_keys": set(unexpected) | set(ignored),
                           "mismatched_keys": set(mismatched), "error_msgs": []}
        return model

    _SAVE_PRETRAINED_ARGS = ("save_directory", "safe_serialization", "is_main_process", "max_shard_size",
                             "push_to_hub")

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        **kwargs: Any) -> None:
        """Write config.json and model.safetensors as transformers does (towers keep their key prefix, which both
        transformers v4 and v5 load), atomically: a failure leaves the previous checkpoint as it was.

        Both files are written under temporary names in `save_directory` and moved into place with os.replace,
        weights first; then the weight files of other formats or shardings an older checkpoint left there
        (`model.safetensors.index.json`, `model-0000x-of-0000y.safetensors`, `pytorch_model*.bin[.index.json]`, and
        `model.safetensors` when writing a .bin) are removed, so every loader reads what was saved. The model's config
        is not changed. A write that fails is an OSError naming the file (safetensors' own SafetensorError and
        torch.save's RuntimeError are not OSErrors); a save_directory that is "" or an existing file is a ValueError.

        transformers' keyword arguments: `safe_serialization=False` writes `pytorch_model.bin` (`torch.save` of the
        same state dict) instead, as transformers v4 did (v5 ignores the argument and always writes safetensors);
        `is_main_process=False` writes nothing (the other ranks of a distributed job); `max_shard_size` is accepted
        and ignored: one weight file is always written (a SigLIP checkpoint is at most a few GB, and every loader
        reads a single file); `push_to_hub=True` is refused (siglip_fast saves locally only). Anything else is a
        TypeError.
        """
        push_to_hub = kwargs.pop("push_to_hub", False)
        is_main_process = kwargs.pop("is_main_process", True)
        kwargs.pop("max_shard_size", None)
        if kwargs:
            raise TypeError(f"{type(self).__name__}.save_pretrained got unexpected keyword argument(s) "
                            f"{', '.join(sorted(kwargs))}; it accepts {', '.join(self._SAVE_PRETRAINED_ARGS)}")
        if safe_serialization not in (True, False):
            raise TypeError(f"safe_serialization must be True or False, got {safe_serialization!r}")
        if push_to_hub:
            raise ValueError("save_pretrained(push_to_hub=True) is not supported: siglip_fast saves to a local "
                             "directory only; upload it with huggingface_hub (e.g. HfApi().upload_folder)")
        if not is_main_process:
            return
        from safetensors.torch import save_file

        save_directory = prepare_save_directory(save_directory, f"{type(self).__name__}.save_pretrained")
        config = copy.deepcopy(self.config)
        config.architectures = [type(self).__name__]
        config.dtype = str(self.dtype).removeprefix("torch.")
        prefix = f"{self.base_model_prefix}." if self.base_model_prefix else ""
        state = {prefix + k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        config_text = config.to_json_string()

        def write_weights(tmp: str) -> None:
            if safe_serialization:
                save_file(state, tmp, metadata={"format": "pt"})
            else:
                torch.save(state, tmp)

        def write_config(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(config_text)

        # Both files are complete under temporary names before either replaces the old one; a failed write is an
        # OSError naming the file it was for (safetensors' and torch's own errors are not OSErrors).
        weights_name = SAFE_WEIGHTS if safe_serialization else TORCH_WEIGHTS
        weights_path, config_path = os.path.join(save_directory, weights_name), os.path.join(save_directory,
                                                                                            CONFIG_NAME)
        temporaries = []
        try:
            temporaries.append(write_temporary(weights_path, write_weights))
            temporaries.append(write_temporary(config_path, write_config))
            # safetensors creates its file private (0600); give it the mode a plain write gets here (the umask's),
            # as config.json has: checkpoints are shared
            shutil.copymode(temporaries[1], temporaries[0])
            os.replace(temporaries[0], weights_path)
            os.replace(temporaries[1], config_path)
        finally:
            for tmp in temporaries:
                if os.path.lexists(tmp):
                    os.remove(tmp)
        for name in os.listdir(save_directory):
            path = os.path.join(save_directory, name)
            stale = _STALE_WEIGHTS.fullmatch(name) is not None or name == SAFE_WEIGHTS
            if stale and name != weights_name and os.path.isfile(path):
                os.remove(path)


def _initialise(model: torch.nn.Module, names: list[str], device: torch.device, dtype: torch.dtype) -> None:
    """Give the parameters `names` real storage and the model's own random initialisation (transformers'
    `_init_weights`), leaving everything else alone: the other parameters are still on the meta device, where the
    initialisers do nothing."""
    if not names:
        return
    for name in names:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        old = getattr(module, attr)
        if attr in module._buffers:  # a persistent buffer: zeros (SigLIP has none; kept general)
            module.register_buffer(attr, torch.zeros(old.shape, device=device, dtype=old.dtype))
            continue
        setattr(module, attr, torch.nn.Parameter(torch.empty(old.shape, device=device, dtype=dtype),
                                                 requires_grad=old.requires_grad))
    model.init_weights()


def _materialise_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """Give real storage to the buffers no checkpoint holds (position_ids)."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta and name == "position_ids":
                module.register_buffer(name, torch.arange(buf.shape[-1], device=device)[None], persistent=False)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"internal error: {', '.join(leftover)} left on the meta device after loading")
