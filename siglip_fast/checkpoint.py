"""Checkpoint I/O: read and write the files transformers reads and writes, strictly.

Reading accepts `model.safetensors`, sharded `model.safetensors.index.json`, and `pytorch_model.bin` (+ its index),
loaded with `weights_only=True`; keys of a full SiglipModel, of a tower with its `vision_model.`/`text_model.` prefix
(transformers v4 and the hub) or without it (transformers v5). The model is built on the meta device and each tensor
is read straight into its final dtype and device, so a checkpoint is never held twice in memory. Anything missing,
unexpected or of the wrong shape is listed in one ValueError.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
_CHECKPOINT_FILES = ["config.json", "*.safetensors", "*.json", "*.bin", "*.model", "*.txt"]

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64,
}


def parse_dtype(dtype: Any) -> torch.dtype | None:
    """None or 'auto' → None (keep the stored dtype); a torch.dtype or its name → that dtype."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype must be None, 'auto', a torch floating dtype or one of {sorted(_DTYPES)}, got {dtype!r}")


class CheckpointNotFoundError(FileNotFoundError, ValueError):
    """A checkpoint directory or hub id that cannot be found (both a FileNotFoundError and a ValueError)."""


def resolve_pretrained_dir(path_or_id: str | os.PathLike, *, allow_patterns: Sequence[str] = _CHECKPOINT_FILES,
                           what: str = "from_pretrained", revision: str | None = None) -> str:
    """A local directory as is; otherwise a hub id fetched with huggingface_hub (its local cache first when offline).

    Shared by the models, the tokenizer, the image processor and the processor.
    """
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise TypeError(f"{what}: path_or_id must be a str or os.PathLike, got {type(path_or_id).__name__}")
    path = os.fspath(path_or_id)
    if os.path.isdir(path):
        return path
    looks_like_id = re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", path) is not None and not path.startswith((".", "-"))
    if not looks_like_id or os.path.exists(path):
        raise CheckpointNotFoundError(
            f"{what}: {path!r} is not a directory; the checkpoint directory does not exist (expected a checkpoint "
            "directory or a hub id)"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointNotFoundError(
            f"{what}: {path!r} is not a local directory, and huggingface_hub is not installed to fetch it as a hub "
            "id (pip install 'siglip_fast[hub]', or pass a local directory)"
        ) from None
    try:
        return snapshot_download(path, allow_patterns=list(allow_patterns), revision=revision)
    except Exception as online_error:  # noqa: BLE001 - fall back to the local cache, then report both
        try:
            return snapshot_download(path, allow_patterns=list(allow_patterns), revision=revision,
                                     local_files_only=True)
        except Exception:  # noqa: BLE001
            raise CheckpointNotFoundError(
                f"{what}: could not fetch {path!r} from the hub nor find it in the local cache: {online_error}"
            ) from online_error


def _weight_files(directory: str) -> list[str]:
    for index_name in (SAFE_INDEX, TORCH_INDEX):
        index_path = os.path.join(directory, index_name)
        if os.path.isfile(index_path):
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index_path} has no weight_map")
            return [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
    for name in (SAFE_WEIGHTS, TORCH_WEIGHTS):
        if os.path.isfile(os.path.join(directory, name)):
            return [os.path.join(directory, name)]
    raise ValueError(
        f"no weights in {directory}: expected {SAFE_WEIGHTS}, {SAFE_INDEX}, {TORCH_WEIGHTS} or {TORCH_INDEX}"
    )


def _iter_tensors(path: str, device: torch.device):
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
        yield from state.items()


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


class PretrainedMixin:
    """from_pretrained / save_pretrained for the model classes (which set config_class and base_model_prefix)."""

    base_model_prefix: str | None = None

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, dtype=None, device=None, backend: str = "auto",
                        config=None, torch_dtype=None, attn_implementation: str | None = None):
        """Load a transformers SigLIP checkpoint (local directory, or hub id with huggingface_hub installed).

        dtype: None/'auto' keeps the stored dtype (transformers v5's default); else a torch dtype or its name.
        device: where the weights are read to (default CPU). backend: see `siglip_fast.ops`.
        `torch_dtype` is accepted as an alias of `dtype`, and `attn_implementation` ("eager" or "sdpa") as an alias
        of `backend`, so transformers call sites keep working.
        """
        if attn_implementation is not None:
            if attn_implementation not in ("eager", "sdpa"):
                raise ValueError(f"attn_implementation {attn_implementation!r} has no siglip_fast equivalent; use "
                                 "backend='triton' (fused kernels), 'sdpa', 'eager' or 'auto'")
            if backend != "auto":
                raise ValueError("pass backend or attn_implementation, not both")
            backend = attn_implementation
        if torch_dtype is not None:
            if dtype is not None:
                raise ValueError("pass dtype or torch_dtype, not both")
            dtype = torch_dtype
        dtype = parse_dtype(dtype)
        device = torch.device(device if device is not None else "cpu")
        directory = resolve_pretrained_dir(path_or_id, what=f"{cls.__name__}.from_pretrained")
        if config is None:
            config = cls.config_class.from_pretrained(directory)
        elif not isinstance(config, cls.config_class):
            raise TypeError(f"config must be a {cls.config_class.__name__}, got {type(config).__name__}")

        with torch.device("meta"):
            model = cls(config, backend=backend)
        expected = dict(model.state_dict())
        # Keys of the other parts of a full SiglipModel checkpoint, ignored when loading a tower (as transformers).
        ignorable = {
            "SiglipVisionModel": ("text_model.", "logit_scale", "logit_bias", "classifier."),
            "SiglipTextModel": ("vision_model.", "logit_scale", "logit_bias"),
            "SiglipForImageClassification": ("text_model.", "logit_scale", "logit_bias"),
        }.get(cls.__name__, ())
        loaded: dict[str, torch.Tensor] = {}
        unexpected, mismatched, seen_mismatched = [], [], set()
        for file in _weight_files(directory):
            for key, tensor in _iter_tensors(file, device):
                name = _map_key(key, expected.keys(), cls.base_model_prefix, ignorable)
                if name is None:
                    continue
                if name not in expected:
                    unexpected.append(key)
                    continue
                if tuple(tensor.shape) != tuple(expected[name].shape):
                    mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)}, model {tuple(expected[name].shape)}")
                    seen_mismatched.add(name)
                    continue
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                loaded[name] = tensor
        missing = [k for k in expected if k not in loaded and k not in seen_mismatched]
        # A classifier is new when a SiglipModel checkpoint is fine-tuned for classification (as in transformers).
        new_classifier = [k for k in missing if k.startswith("classifier.")]
        if new_classifier and cls.__name__ == "SiglipForImageClassification":
            missing = [k for k in missing if not k.startswith("classifier.")]
        if missing or unexpected or mismatched:
            lines = [f"cannot load {path_or_id!s} into {cls.__name__}:"]
            if missing:
                lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
            if unexpected:
                lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
            if mismatched:
                lines.append(f"  shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
            raise ValueError("\n".join(lines))
        model.load_state_dict(loaded, strict=False, assign=True)
        _materialise_rest(model, device, dtype or next(iter(loaded.values())).dtype)
        if new_classifier:
            warnings.warn(f"{cls.__name__}: {', '.join(new_classifier)} not in the checkpoint; initialised randomly "
                          "(train it before use)", stacklevel=2)
            with torch.no_grad():
                model.classifier.weight.normal_(std=config.vision_config.hidden_size**-0.5 * config.initializer_factor)
                model.classifier.bias.zero_()
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write config.json and model.safetensors as transformers does (towers keep their key prefix, which both
        transformers v4 and v5 load)."""
        from safetensors.torch import save_file

        os.makedirs(save_directory, exist_ok=True)
        self.config.set_extra("architectures", [type(self).__name__])
        self.config.dtype = str(self.dtype).removeprefix("torch.")
        self.config.save_pretrained(save_directory)
        prefix = f"{self.base_model_prefix}." if self.base_model_prefix else ""
        state = {prefix + k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(save_directory, SAFE_WEIGHTS), metadata={"format": "pt"})


def _materialise_rest(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Give real storage to what the checkpoint does not hold: position_ids buffers, a new classifier."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta and name == "position_ids":
                module.register_buffer(name, torch.arange(buf.shape[-1], device=device)[None], persistent=False)
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                setattr(module, name, torch.nn.Parameter(torch.empty(param.shape, device=device, dtype=dtype)))
